"""Distributed metrics (sparkdl.evaluate) against scikit-learn on the same predictions, and the PNG plots."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from sparkdl.errors import ValidationError
from sparkdl.evaluate import classification_metrics, evaluate_predictions, regression_metrics, save_report
from sparkdl.plots import plot_confusion_matrix, plot_history

TOL = 1e-9
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _frame(spark, pdf: pd.DataFrame, schema: str | None = None, partitions: int = 4):
    """`pdf` as a Spark DataFrame over several partitions, so the ordered scans cross partition borders."""
    return spark.createDataFrame(pdf, schema=schema).repartition(partitions)


def _assert_matches_sklearn(result: dict, y: np.ndarray, pred: np.ndarray, k: int) -> None:
    labels = list(range(k))
    assert result["count"] == len(y)
    assert result["num_classes"] == k
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=TOL)
    assert result["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0
    )
    for c, name in enumerate(result["labels"]):
        got = result["per_class"][name]
        assert got["precision"] == pytest.approx(precision[c], abs=TOL)
        assert got["recall"] == pytest.approx(recall[c], abs=TOL)
        assert got["f1"] == pytest.approx(f1[c], abs=TOL)
        assert got["support"] == support[c]
    for average, key in (("macro", "macro_avg"), ("weighted", "weighted_avg")):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y, pred, labels=labels, average=average, zero_division=0
        )
        assert result[key]["precision"] == pytest.approx(p, abs=TOL)
        assert result[key]["recall"] == pytest.approx(r, abs=TOL)
        assert result[key]["f1"] == pytest.approx(f, abs=TOL)


@pytest.fixture(scope="module")
def binary_data():
    rng = np.random.default_rng(7)
    n = 3000
    y = rng.integers(0, 2, n)
    # Scores rounded to 2 decimals: many ties, within and across classes.
    score = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1), 2)
    pred = (score >= 0.5).astype(int)
    return pd.DataFrame({"label": y, "prediction": pred, "score": score})


@pytest.fixture(scope="module")
def multiclass_data():
    rng = np.random.default_rng(11)
    n, k = 4000, 4
    y = rng.integers(0, k, n)
    # Integer weights 1..6 (+3 on the true class half the time) normalized: probabilities with many exact
    # ties.
    weights = rng.integers(1, 7, (n, k)).astype(float)
    weights[np.arange(n), y] += 3 * rng.integers(0, 2, n)
    prob = weights / weights.sum(axis=1, keepdims=True)
    pred = prob.argmax(axis=1)
    return y, pred, prob, k


@pytest.mark.both_sessions
def test_binary_metrics_match_sklearn(spark, binary_data):
    df = _frame(spark, binary_data)
    result = classification_metrics(df, probability_col="score")
    y, pred, score = (binary_data[c].to_numpy() for c in ("label", "prediction", "score"))
    assert len(np.unique(score)) < len(score) / 10  # ties really are present
    _assert_matches_sklearn(result, y, pred, 2)
    assert result["task"] == "binary"
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(y, score), abs=TOL)
    assert result["precision"] == pytest.approx(skm.precision_score(y, pred), abs=TOL)
    assert result["recall"] == pytest.approx(skm.recall_score(y, pred), abs=TOL)
    assert result["f1"] == pytest.approx(skm.f1_score(y, pred), abs=TOL)


def test_binary_auc_from_probability_array_and_double_labels(spark, binary_data):
    pdf = pd.DataFrame(
        {
            "y": binary_data["label"].astype(float),  # Spark ML style: double class indices
            "p": binary_data["prediction"].astype(float),
            "probs": [[1.0 - s, s] for s in binary_data["score"]],
        }
    )
    result = classification_metrics(
        _frame(spark, pdf, "y double, p double, probs array<double>"),
        label_col="y",
        prediction_col="p",
        probability_col="probs",
    )
    assert result["roc_auc"] == pytest.approx(
        skm.roc_auc_score(binary_data["label"], binary_data["score"]), abs=TOL
    )


@pytest.mark.both_sessions
def test_multiclass_metrics_and_ovr_macro_auc_match_sklearn(spark, multiclass_data):
    y, pred, prob, k = multiclass_data
    pdf = pd.DataFrame({"label": y, "prediction": pred, "probability": list(prob)})
    df = _frame(spark, pdf, "label long, prediction long, probability array<double>")
    result = classification_metrics(df, probability_col="probability")
    _assert_matches_sklearn(result, y, pred, k)
    assert result["task"] == "multiclass"
    assert result["roc_auc"] == pytest.approx(
        skm.roc_auc_score(y, prob, multi_class="ovr", average="macro"), abs=TOL
    )
    for c in range(k):
        assert result["roc_auc_per_class"][str(c)] == pytest.approx(
            skm.roc_auc_score(y == c, prob[:, c]), abs=TOL
        )


def test_multiclass_float_probabilities_and_class_names(spark, multiclass_data):
    y, pred, prob, k = multiclass_data
    prob32 = prob.astype(np.float32)
    pdf = pd.DataFrame(
        {"label": y.astype(np.int32), "prediction": pred.astype(np.int32), "probability": list(prob32)}
    )
    df = _frame(spark, pdf, "label int, prediction int, probability array<float>")
    names = ["cat", "dog", "bird", "fish"]
    result = evaluate_predictions(df, "multiclass", probability_col="probability", num_classes=k)
    named = classification_metrics(df, probability_col="probability", labels=names)
    expected = np.mean([skm.roc_auc_score(y == c, prob32[:, c].astype(np.float64)) for c in range(k)])
    assert result["roc_auc"] == pytest.approx(expected, abs=TOL)
    assert named["labels"] == names
    assert named["per_class"]["dog"] == result["per_class"]["1"]
    assert named["confusion_matrix"] == result["confusion_matrix"]


def test_num_classes_counts_classes_never_seen(spark):
    pdf = pd.DataFrame({"label": [0, 1, 1, 0], "prediction": [0, 1, 0, 0]})
    result = classification_metrics(spark.createDataFrame(pdf), num_classes=3)
    assert (
        result["confusion_matrix"]
        == skm.confusion_matrix(pdf.label, pdf.prediction, labels=[0, 1, 2]).tolist()
    )
    assert result["per_class"]["2"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_regression_metrics_match_sklearn(spark):
    rng = np.random.default_rng(3)
    y = rng.normal(10, 3, 2500)
    pred = y + rng.normal(0.5, 1.5, 2500)
    df = _frame(
        spark, pd.DataFrame({"target": y, "yhat": pred.astype(np.float32)}), "target double, yhat float"
    )
    pred32 = pred.astype(np.float32).astype(np.float64)
    result = regression_metrics(df, "target", "yhat")
    assert result["count"] == 2500
    assert result["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, pred32)), rel=TOL)
    assert result["mae"] == pytest.approx(skm.mean_absolute_error(y, pred32), rel=TOL)
    assert result["r2"] == pytest.approx(skm.r2_score(y, pred32), rel=TOL)
    assert evaluate_predictions(df, "regression", "target", "yhat") == result


def test_missing_column_error_names_it_and_lists_columns(spark, binary_data):
    df = spark.createDataFrame(binary_data.head(10))
    with pytest.raises(
        ValidationError, match=r"'labels'.*missing.*columns present: label, prediction, score"
    ):
        classification_metrics(df, label_col="labels")
    with pytest.raises(ValidationError, match=r"probability column 'proba' is missing"):
        evaluate_predictions(df, "binary", probability_col="proba")
    with pytest.raises(ValidationError, match=r"prediction column 'pred' is missing"):
        regression_metrics(df, "label", "pred")


def test_type_and_value_errors(spark):
    strings = spark.createDataFrame([("a", 0)], "label string, prediction int")
    with pytest.raises(ValidationError, match=r"label column 'label' must be numeric.*got string"):
        classification_metrics(strings)
    frame = spark.createDataFrame([(0, 1), (2, 1), (1, 3)], "label int, prediction int")
    with pytest.raises(
        ValidationError, match=r"label column 'label' holds values \[2\] outside \[0, 2\)"
    ) as info:
        classification_metrics(frame, num_classes=2)
    assert {p["column"] for p in info.value.problems} == {"label", "prediction"}
    halves = spark.createDataFrame([(0.5, 1.0)], "label double, prediction double")
    with pytest.raises(ValidationError, match=r"non-integral value 0.5"):
        classification_metrics(halves)
    nulls = spark.createDataFrame([(None, 1), (0, 0)], "label int, prediction int")
    with pytest.raises(ValidationError, match=r"'label' holds null"):
        classification_metrics(nulls)
    short = spark.createDataFrame(
        [(0, 0, [1.0, 0.0]), (2, 2, [0.0, 1.0])], "label int, prediction int, p array<double>"
    )
    with pytest.raises(ValidationError, match=r"'p' must hold 3 class probabilities"):
        classification_metrics(short, probability_col="p")
    scalar = spark.createDataFrame([(0, 0, 0.1), (2, 2, 0.9)], "label int, prediction int, p double")
    with pytest.raises(ValidationError, match=r"single score.*3 classes"):
        classification_metrics(scalar, probability_col="p")
    text_prob = spark.createDataFrame([(0, 0, "x")], "label int, prediction int, p string")
    with pytest.raises(ValidationError, match=r"probability column 'p' must be"):
        classification_metrics(text_prob, probability_col="p")
    with pytest.raises(ValidationError, match=r"task must be one of"):
        evaluate_predictions(frame, "ranking")


def test_empty_input_errors(spark):
    empty = spark.createDataFrame([], "label int, prediction int")
    with pytest.raises(ValidationError, match="empty"):
        classification_metrics(empty)
    with pytest.raises(ValidationError, match="empty"):
        regression_metrics(empty)


def test_auc_undefined_with_one_class(spark):
    df = spark.createDataFrame([(1, 1, 0.9), (1, 0, 0.2)], "label int, prediction int, s double")
    result = classification_metrics(df, probability_col="s")
    assert result["roc_auc"] is None
    try:  # scikit-learn refuses too: older versions raise ValueError, newer ones return NaN with a warning
        reference = skm.roc_auc_score([1, 1], [0.9, 0.2])
    except ValueError:
        reference = float("nan")
    assert np.isnan(reference)


def test_save_report_round_trip(spark, binary_data, tmp_path):
    result = classification_metrics(_frame(spark, binary_data), probability_col="score")
    result["not_finite"] = float("nan")
    path = save_report(result, tmp_path / "report")
    assert path.endswith("metrics.json")
    with open(path, encoding="utf-8") as handle:
        loaded = json.load(handle)
    assert loaded["confusion_matrix"] == result["confusion_matrix"]
    assert loaded["roc_auc"] == result["roc_auc"]
    assert loaded["per_class"] == result["per_class"]
    assert loaded["not_finite"] is None
    with pytest.raises(ValidationError, match="metrics must be a dict"):
        save_report([1, 2], tmp_path)


def _assert_png(path: str) -> np.ndarray:
    import matplotlib.image as mpimg

    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_MAGIC
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # something was drawn
    return image


def test_plot_history_writes_png(tmp_path):
    history = {
        "loss": [0.9, 0.6, 0.4],
        "val_loss": [1.0, 0.7, 0.5],
        "accuracy": [0.5, 0.7, 0.8],
        "val_accuracy": [0.45, 0.65, 0.75],
        "auc": [0.6, 0.7, 0.8],
    }
    path = plot_history(history, tmp_path / "plots" / "history.png")
    _assert_png(path)
    with pytest.raises(ValidationError, match="non-empty"):
        plot_history({}, tmp_path / "h.png")
    with pytest.raises(ValidationError, match=r"history\['loss'\]"):
        plot_history({"loss": ["a"]}, tmp_path / "h.png")


def test_plot_confusion_matrix_writes_png(spark, multiclass_data, tmp_path):
    y, pred, prob, k = multiclass_data
    matrix = skm.confusion_matrix(y, pred).tolist()
    path = plot_confusion_matrix(matrix, ["a", "b", "c", "d"], tmp_path / "cm.png")
    _assert_png(path)
    _assert_png(plot_confusion_matrix(matrix, None, tmp_path / "cm_norm.png", normalize=True))
    with pytest.raises(ValidationError, match="square"):
        plot_confusion_matrix([[1, 2]], None, tmp_path / "bad.png")
    with pytest.raises(ValidationError, match="3 labels"):
        plot_confusion_matrix(matrix, ["a", "b", "c"], tmp_path / "bad.png")


def test_auc_scan_stitches_partitions(spark, multiclass_data, no_coalesce):
    from pyspark.sql import functions as F

    from sparkdl.ordered_scan import ordered_scan

    y, pred, prob, k = multiclass_data
    pdf = pd.DataFrame({"label": y, "prediction": pred, "probability": list(prob)})
    df = _frame(spark, pdf, "label long, prediction long, probability array<double>")
    counts = (
        df.select(
            F.lit(0).alias("g"),
            F.col("probability")[2].alias("v"),
            (F.col("label") == 2).cast("long").alias("b"),
        )
        .groupBy("g", "v")
        .agg(F.sum(1 - F.col("b")).alias("a"), F.sum("b").alias("b"))
    )
    parts = ordered_scan(counts, {})
    assert len(parts) > 1  # several partitions, each a contiguous run of scores
    assert sum(p["a_tot"] + p["b_tot"] for p in parts) == len(y)
    assert all(a["v_min"] < b["v_min"] for a, b in zip(parts, parts[1:], strict=False))
    result = classification_metrics(df, probability_col="probability")
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob, multi_class="ovr"), abs=TOL)
