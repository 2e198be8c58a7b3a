"""Evaluation metrics computed in Spark over a whole DataFrame of predictions.

No prediction row is collected to the driver: only small aggregates come back (k×k confusion-matrix counts,
one summary row per Spark partition for the ROC AUC scan, one row of sums for regression).

ROC AUC is exact: it is the Mann–Whitney U statistic with average ranks for tied scores, ``AUC = Σ_s pos(s) ·
(neg(< s) + ½ · neg(= s)) / (P · N)``, computed from per-score counts that are globally sorted by Spark (range
partitioning), scanned with a window inside each partition, and stitched together on the driver from one
summary row per partition. Integer arithmetic is kept until the final division, so the result equals
`sklearn.metrics.roc_auc_score` on the same data.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkdl import lake
from sparkdl.data.spec import ANOMALY
from sparkdl.errors import ConfigError, ModelStoreError, Problem, ValidationError
from sparkdl.evaluate_forecast import entity_slices, forecast_metrics, forecast_plots
from sparkdl.evaluation.anomaly import evaluate_anomalies
from sparkdl.evaluation.auc import auc_by_group
from sparkdl.evaluation.gates import Gate, baseline_refs, check_gates, parse_gates
from sparkdl.evaluation.report import TABLE_DDL, long_rows, mlflow_metrics, slice_plots
from sparkdl.evaluation.sliced import SliceOptions, sliced_classification, sliced_regression
from sparkdl.evaluation.slices import Slice, check_slices, parse_slices, referenced_columns
from sparkdl.fileutil import write_atomic
from sparkdl.jsonlines import json_value
from sparkdl.log import get_logger
from sparkdl.metric_history import MetricHistory
from sparkdl.mlflow import tracking
from sparkdl.model_metadata import ModelMetadata
from sparkdl.plots import plot_confusion_matrix, plot_history
from sparkdl.registry import GATES_FILE, ModelStore
from sparkdl.score import score_dataframe
from sparkdl.score.forecast import forecast_frame
from sparkdl.score.model_ref import resolve_model
from sparkdl.session import active_session

log = get_logger("evaluate")

TASKS = ("binary", "multiclass", "regression")
# Most distinct (label, prediction) pairs fetched when num_classes is not given (class count up to ~316).
_MAX_PAIRS_INFERRED = 100_000


# ----------------------------------------------------------------------------------------- validation helpers
def _field(df: DataFrame, name: str, role: str) -> T.StructField:
    """The schema field of column `name`, or a ValidationError naming it and listing the columns present."""
    if not isinstance(name, str) or not name:
        raise ValidationError(f"{role} must be a column name, got {name!r}")
    for field in df.schema.fields:
        if field.name == name:
            return field
    present = ", ".join(df.columns) or "(none)"
    raise ValidationError(
        f"{role} column {name!r} is missing from the DataFrame; columns present: {present}",
        [Problem(name, "missing column", "present", f"columns {df.columns}")],
    )


def _require_numeric(field: T.StructField, role: str) -> None:
    if not isinstance(field.dataType, (T.NumericType, T.BooleanType)):
        raise ValidationError(
            f"{role} column {field.name!r} must be numeric (a class index or a value), "
            f"got {field.dataType.simpleString()}",
            [Problem(field.name, "wrong type", found=field.dataType.simpleString())],
        )


def _is_vector(data_type: T.DataType) -> bool:
    return type(data_type).__name__ == "VectorUDT"


def _probability_column(field: T.StructField) -> tuple[Column, bool]:
    """(column as double or array<double>, is_array) for a probability column; ValidationError otherwise."""
    data_type = field.dataType
    col = F.col(f"`{field.name}`")
    if isinstance(data_type, T.NumericType):
        return col.cast("double"), False
    if isinstance(data_type, T.ArrayType) and isinstance(data_type.elementType, T.NumericType):
        return col.cast("array<double>"), True
    if _is_vector(data_type):
        from pyspark.ml.functions import vector_to_array

        return vector_to_array(col), True
    raise ValidationError(
        f"probability column {field.name!r} must be a double (positive-class probability), an "
        f"array<double|float> or a Spark ML vector of class probabilities, got {data_type.simpleString()}",
        [Problem(field.name, "wrong type", found=data_type.simpleString())],
    )


# --------------------------------------------------------------------------------------------- classification
def classification_metrics(
    df: DataFrame,
    label_col: str = "label",
    prediction_col: str = "prediction",
    probability_col: str | None = None,
    num_classes: int | None = None,
    labels: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Classification metrics of a predictions DataFrame, computed in Spark; ROC AUC when scores are given.

    Accuracy, per-class precision/recall/F1/support, macro and weighted averages, the confusion matrix and ROC
    AUC.

    Params:
        df: predictions; label and prediction are class indices (integer, or floating with integral values as
            in Spark ML; booleans count as 0/1).
        label_col, prediction_col: the true and predicted class index columns.
        probability_col: optional scores for ROC AUC. With 2 classes: the positive-class probability (a
            numeric column), or an array / Spark ML vector whose element [1] is used. With more classes: an
            array / vector of the k class probabilities, and the AUC is one-vs-rest, macro averaged (as
            ``roc_auc_score(y, p, multi_class="ovr", average="macro")``).
        num_classes: number of classes k; inferred as max(label, prediction) + 1 (at least 2) when not given.
        labels: optional class names, index i naming class i (k = len(labels) when num_classes is not given).

    Returns a dict: task ("binary" | "multiclass"), count, num_classes, labels, accuracy, per_class {name:
    {precision, recall, f1, support}}, macro_avg, weighted_avg, confusion_matrix (rows = true class, columns =
    predicted class), roc_auc (None without probability_col, or when a class has no positive or no negative
    rows), roc_auc_per_class (multiclass), and for binary also precision/recall/f1 of class 1.
    Precision/recall/F1 with a zero denominator are 0 (scikit-learn's zero_division=0).

    Raises ValidationError: a missing column (named, with the columns present), a non-numeric
    label/prediction, a probability column of the wrong type or length, nulls/NaN, non-integral class values,
    labels or predictions outside [0, num_classes), an empty DataFrame, or num_classes disagreeing with
    labels.
    """
    label_field = _field(df, label_col, "label")
    prediction_field = _field(df, prediction_col, "prediction")
    _require_numeric(label_field, "label")
    _require_numeric(prediction_field, "prediction")
    prob_field = _field(df, probability_col, "probability") if probability_col is not None else None
    prob, prob_is_array = _probability_column(prob_field) if prob_field is not None else (None, False)
    if labels is not None:
        labels = list(labels)
        if num_classes is not None and num_classes != len(labels):
            raise ValidationError(
                f"num_classes={num_classes} but {len(labels)} labels were given: {labels!r}"
            )
        num_classes = num_classes or len(labels)
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
        raise ValidationError(f"num_classes must be an integer >= 2, got {num_classes!r}")

    narrow = df.select(
        F.col(f"`{label_col}`").cast("double").alias("y"),
        F.col(f"`{prediction_col}`").cast("double").alias("p"),
        *([prob.alias("s")] if prob is not None else []),
    )
    if (
        prob is not None
    ):  # two passes (counts, then the AUC scan): do not recompute the input (e.g. a model UDF)
        narrow = narrow.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        matrix, count, num_classes = _confusion_pass(
            narrow, label_col, prediction_col, probability_col, prob_is_array, num_classes
        )
        metrics = _metrics_from_matrix(matrix, count, num_classes, labels)
        metrics["roc_auc"] = None
        if prob is not None:
            metrics.update(_roc_auc(narrow, num_classes, prob_is_array, metrics["labels"]))
    finally:
        if prob is not None:
            narrow.unpersist()
    return metrics


def _confusion_pass(
    narrow: DataFrame,
    label_col: str,
    prediction_col: str,
    probability_col: str | None,
    prob_is_array: bool,
    num_classes: int | None,
) -> tuple[list[list[int]], int, int]:
    """One aggregation: counts per (label, prediction), with the probability checks folded in; validates
    values."""
    aggs = [F.count(F.lit(1)).alias("n")]
    if probability_col is not None:
        s = F.col("s")
        if prob_is_array:
            bad = s.isNull() | F.exists(s, lambda x: x.isNull() | F.isnan(x))
            aggs += [F.min(F.size(s)).alias("min_len"), F.max(F.size(s)).alias("max_len")]
        else:
            bad = s.isNull() | F.isnan(s)
        aggs.append(F.sum(bad.cast("long")).alias("bad_prob"))
    limit = num_classes * num_classes + 1 if num_classes else _MAX_PAIRS_INFERRED + 1
    rows = narrow.groupBy("y", "p").agg(*aggs).limit(limit).collect()
    if not rows:
        raise ValidationError(
            f"cannot evaluate: the predictions DataFrame is empty (label column {label_col!r})"
        )
    if len(rows) >= limit:
        raise ValidationError(
            f"label {label_col!r} / prediction {prediction_col!r} hold more than {limit - 1} distinct pairs: "
            f"they must be class indices 0..k-1"
            + ("" if num_classes else " (pass num_classes for many classes)")
        )

    def check_value(value: float | None, column: str, role: str) -> int:
        if value is None or math.isnan(value):
            raise ValidationError(
                f"{role} column {column!r} holds null/NaN values; every row needs a class index",
                [Problem(column, "null", "a class index")],
            )
        if value != int(value):
            raise ValidationError(
                f"{role} column {column!r} holds non-integral value {value!r}; expected class "
                f"indices 0..k-1",
                [Problem(column, "non-integral value", "class indices 0..k-1", str(value), samples=(value,))],
            )
        return int(value)

    pairs = [
        (check_value(r["y"], label_col, "label"), check_value(r["p"], prediction_col, "prediction"), r)
        for r in rows
    ]
    if num_classes is None:
        num_classes = max(2, 1 + max(max(t, p) for t, p, _ in pairs))
    problems, messages = [], []
    for column, role, values in (
        (label_col, "label", {t for t, _, _ in pairs}),
        (prediction_col, "prediction", {p for _, p, _ in pairs}),
    ):
        outside = sorted(v for v in values if not 0 <= v < num_classes)
        if outside:
            problems.append(Problem(column, "out of range", f"0..{num_classes - 1}", f"{outside[:10]}",
                                    samples=outside[:10]))
            messages.append(
                f"{role} column {column!r} holds values {outside[:10]} outside [0, {num_classes})"
            )
    if problems:
        raise ValidationError("; ".join(messages), problems)
    if probability_col is not None:
        bad = sum(r["bad_prob"] for _, _, r in pairs)
        if bad:
            raise ValidationError(
                f"probability column {probability_col!r} holds {bad} null/NaN value(s)",
                [Problem(probability_col, "null", count=bad)],
            )
        if prob_is_array:
            low, high = min(r["min_len"] for _, _, r in pairs), max(r["max_len"] for _, _, r in pairs)
            fits = low >= 2 if num_classes == 2 else low == high == num_classes
            if not fits:
                need = (
                    "at least 2 (element [1] is the positive class)" if num_classes == 2 else str(num_classes)
                )
                raise ValidationError(
                    f"probability column {probability_col!r} must hold {need} class probabilities per row, "
                    f"found lengths from {low} to {high}",
                    [Problem(probability_col, "wrong length", expected=need, found=f"lengths {low} to {high}")],
                )
    if probability_col is not None and not prob_is_array and num_classes != 2:
        raise ValidationError(
            f"probability column {probability_col!r} is a single score, which only fits 2 classes; with "
            f"{num_classes} classes it must be an array of class probabilities"
        )
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for t, p, r in pairs:
        matrix[t][p] += int(r["n"])
    return matrix, sum(int(r["n"]) for _, _, r in pairs), num_classes


def _metrics_from_matrix(
    matrix: list[list[int]], count: int, k: int, labels: list[Any] | None
) -> dict[str, Any]:
    names = [str(x) for x in (labels if labels is not None else range(k))]
    per_class: dict[str, dict[str, float | int]] = {}
    for c, name in enumerate(names):
        tp = matrix[c][c]
        predicted = sum(matrix[t][c] for t in range(k))
        support = sum(matrix[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    keys = ("precision", "recall", "f1")
    macro = {key: sum(m[key] for m in per_class.values()) / k for key in keys}
    weighted = {key: sum(m[key] * m["support"] for m in per_class.values()) / count for key in keys}
    metrics: dict[str, Any] = {
        "task": "binary" if k == 2 else "multiclass",
        "count": count,
        "num_classes": k,
        "labels": names,
        "accuracy": sum(matrix[c][c] for c in range(k)) / count,
        "per_class": per_class,
        "macro_avg": macro,
        "weighted_avg": weighted,
        "confusion_matrix": matrix,
    }
    if k == 2:
        metrics.update({key: per_class[names[1]][key] for key in keys})
    return metrics


def _roc_auc(narrow: DataFrame, k: int, prob_is_array: bool, names: list[str]) -> dict[str, Any]:
    y = F.col("y")
    if k == 2:
        score = F.col("s")[1] if prob_is_array else F.col("s")
        scored = narrow.select(F.lit(0).alias("g"), score.alias("v"), (y == 1).cast("long").alias("b"))
    else:
        exploded = narrow.select(y, F.posexplode("s").alias("g", "v"))
        scored = exploded.select("g", "v", (F.col("y") == F.col("g")).cast("long").alias("b"))
    counts = scored.groupBy("g", "v").agg(F.sum(1 - F.col("b")).alias("a"), F.sum("b").alias("b"))
    aucs = auc_by_group(counts)
    if k == 2:
        if aucs.get(0) is None:
            log.warning("ROC AUC is undefined: only one class is present in the labels")
        return {"roc_auc": aucs.get(0)}
    per_class = {names[c]: aucs.get(c) for c in range(k)}
    defined = [v for v in per_class.values() if v is not None]
    if len(defined) < k:
        log.warning(
            "ROC AUC undefined for classes without positive or negative rows: %s; macro over the rest",
            [n for n, v in per_class.items() if v is None],
        )
    return {"roc_auc": sum(defined) / len(defined) if defined else None, "roc_auc_per_class": per_class}


# --------------------------------------------------------------------------------------------- regression
def regression_metrics(
    df: DataFrame, label_col: str = "label", prediction_col: str = "prediction"
) -> dict[str, Any]:
    """RMSE, MAE, R² and the row count, in one aggregation pass.

    R² = 1 − SSE / SST with SST = n · var_pop(label) (Spark's numerically stable variance); like
    scikit-learn's r2_score, a constant label gives 1.0 for a perfect fit and 0.0 otherwise.

    Raises ValidationError: a missing or non-numeric column, null/NaN values, or an empty DataFrame.
    """
    for name, role in ((label_col, "label"), (prediction_col, "prediction")):
        _require_numeric(_field(df, name, role), role)
    y = F.col(f"`{label_col}`").cast("double")
    p = F.col(f"`{prediction_col}`").cast("double")
    err = y - p
    row = df.agg(
        F.count(F.lit(1)).alias("n"),
        F.sum((y.isNull() | F.isnan(y)).cast("long")).alias("bad_y"),
        F.sum((p.isNull() | F.isnan(p)).cast("long")).alias("bad_p"),
        F.sum(err * err).alias("sse"),
        F.sum(F.abs(err)).alias("sae"),
        F.var_pop(y).alias("var"),
    ).first()
    n = int(row["n"])
    if n == 0:
        raise ValidationError(
            f"cannot evaluate: the predictions DataFrame is empty (label column {label_col!r})"
        )
    for column, bad in ((label_col, row["bad_y"]), (prediction_col, row["bad_p"])):
        if bad:
            raise ValidationError(
                f"column {column!r} holds {bad} null/NaN value(s); regression metrics need values "
                f"in every row",
                [Problem(column, "null", count=int(bad))],
            )
    sse, sst = float(row["sse"]), float(row["var"]) * n
    if sst > 0:
        r2 = 1.0 - sse / sst
    else:
        r2 = 1.0 if sse == 0 else 0.0
    return {
        "task": "regression",
        "count": n,
        "rmse": math.sqrt(sse / n),
        "mae": float(row["sae"]) / n,
        "mse": sse / n,
        "r2": r2,
    }


# ---------------------------------------------------------------------------------------- dispatch and report
def evaluate_predictions(
    df: DataFrame,
    task: str,
    label_col: str = "label",
    prediction_col: str = "prediction",
    probability_col: str | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Metrics for `task`: "binary" (num_classes 2), "multiclass" or "regression"; see the functions above.

    Raises ValidationError for an unknown task, num_classes != 2 with "binary", a probability column with
    "regression", and the errors of classification_metrics / regression_metrics.
    """
    if task not in TASKS:
        raise ValidationError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    if task == "regression":
        if probability_col is not None:
            raise ValidationError(
                f"probability column {probability_col!r} makes no sense for task 'regression'"
            )
        return regression_metrics(df, label_col, prediction_col)
    if task == "binary":
        if num_classes not in (None, 2):
            raise ValidationError(f"task 'binary' has 2 classes, got num_classes={num_classes}")
        num_classes = 2
    metrics = classification_metrics(df, label_col, prediction_col, probability_col, num_classes)
    if task == "multiclass":
        metrics["task"] = "multiclass"
    return metrics


def save_report(metrics: Mapping[str, Any], folder: str | os.PathLike) -> str:
    """Write `metrics` to `folder`/metrics.json (folder created if missing); returns the file's path.

    NaN/inf values are written as null. Raises ValidationError if metrics is not a mapping or holds values
    that cannot be written as JSON.
    """
    if not isinstance(metrics, Mapping):
        raise ValidationError(f"metrics must be a dict, got {type(metrics).__name__}")
    path = Path(folder) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        text = json.dumps(_finite(metrics), indent=2, sort_keys=True, default=json_value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"cannot write metrics report to {path}: {exc}") from exc
    write_atomic(path, (text + "\n").encode("utf-8"))
    return str(path)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------------
# A stored model on a Delta table: score with the same UDF as production, then the metrics above.
# ---------------------------------------------------------------------------------------------------------------
def evaluate_model(model_ref, table: str, version: int | None = None, store=None, spark=None, plots: bool = True,
                   history_path: str | None = None, forecast_until: int | None = None,
                   slices: Sequence[Any] | None = None, slice_options: SliceOptions | None = None,
                   gates: Sequence[Any] | None = None, metrics_table: str | None = None) -> dict:
    """Score `table` (a Delta table, optionally pinned to `version`) with a stored model and compute its metrics.

    The label column and task come from the model's feature spec. Metrics are computed in Spark; `metrics.json`
    (plus `confusion_matrix.png` and `training_curves.png` with `plots`) is written next to the model version, and
    one record is appended to the metric history (`<store root>/<name>/metric_history.jsonl` by default).

    With `slices` (see `sparkdl.evaluation.slices`: a column, a crossing, or `{"name", "where"}`), metrics per
    slice with bootstrap intervals (`slice_options`: min_slice_size, n_boot, sensitive for fairness metrics, ...)
    go under "slices", "suppressed" and "fairness", with a `slices_<metric>.png` per headline metric, and in long
    form to the Delta table `metrics_table` when given. With `gates` (`sparkdl.evaluation.gates`), their report is
    "gates" and `gates.json` beside the version: `ModelStore.set_alias` refuses to promote a version whose gates
    failed. A baseline gate scores its baseline model on the same table version with the same slices.

    A forecaster is evaluated on its test windows (origin at or after its `test_from`, and before the grid step
    `forecast_until` when given: a backtest fold) against seasonal naive (`sparkdl.evaluate_forecast`), with
    `forecasts.png` and `error_by_step.png`.

    Returns:
        the metrics dict, with `model`, `data` (table, version) and `unscored_rows` (rows the model could not
        prepare, e.g. nulls without imputation: excluded from the metrics and counted here), and `plots`.

    Raises:
        ModelStoreError: unknown model; ValidationError: the table lacks the label or feature columns;
        ConfigError: a bad slice, gate or option (before any Spark job).
    """
    store = ModelStore.of(store)
    mv = store.resolve(model_ref)
    meta = store.metadata(mv)
    info = ModelMetadata.from_dict(meta)
    slice_specs, gate_specs = parse_slices(slices), parse_gates(gates)
    options = slice_options or SliceOptions()
    if slice_specs and info.forecast is not None and not info.forecast.spec.entity:
        raise ConfigError(f"model {mv} forecasts one series (no forecast.entity): there are no slices of entities")
    if options.sensitive and options.sensitive not in {s.name for s in slice_specs if s.by_value}:
        raise ConfigError(f"sensitive={options.sensitive!r} must name a column or crossing slice among the slices "
                          f"({[s.name for s in slice_specs]})")
    if info.task == ANOMALY:
        if slice_specs or gate_specs:
            raise ConfigError(f"model {mv} is an anomaly detector: it is evaluated on all rows against its known "
                              f"anomalies; slices and gates apply to classifiers and regressors")
        df, snap = lake.read_table(table, version=version, spark=spark)
        metrics, plot_paths = evaluate_anomalies(mv, df, store=store).to_dict(), []
    elif info.forecast is not None:
        metrics, plot_paths, snap = _evaluate_forecaster(mv, info, table, version, store, spark, plots,
                                                         forecast_until, slice_specs, options, gate_specs)
    else:
        metrics, plot_paths, snap = _evaluate_rows(mv, info, table, version, store, spark, plots, slice_specs,
                                                   options, gate_specs)
    if plots and meta.get("history"):
        plot_paths.append(plot_history(meta["history"], store.artifact_path(mv, "training_curves.png",
                                                                            must_exist=False)))
    metrics["model"] = str(mv)
    metrics["data"] = snap.lineage()
    if meta.get("privacy"):  # a DP-SGD fit's guarantee (epsilon, delta, sigma, q, steps), beside its metrics
        metrics["privacy"] = meta["privacy"]
    metrics["plots"] = [str(p) for p in plot_paths]
    if metrics_table and metrics.get("slices"):
        rows = long_rows(metrics, mv.name, mv.version, metrics["data"])
        lake.write_table((spark or active_session()).createDataFrame(rows, TABLE_DDL), metrics_table, mode="append")
    store.add_artifact(mv, "metrics.json", json.loads(json.dumps(_finite(metrics), default=json_value)))
    if gate_specs:
        store.add_artifact(mv, GATES_FILE, json.loads(json.dumps(_finite(metrics["gates"]), default=json_value)))
    history = MetricHistory(history_path or store.root / mv.name / "metric_history.jsonl")
    history.append({"model": str(mv), "metrics": {k: metrics.get(k) for k in _HISTORY_KEYS if k in metrics},
                    "data": snap.lineage()})
    tracking.log_evaluation(meta, {**metrics, **mlflow_metrics(metrics)}, metrics["plots"])
    return metrics


def _evaluate_forecaster(mv, info: ModelMetadata, table: str, version, store, spark, plots: bool,
                         until: int | None = None, slices: Sequence[Slice] = (),
                         options: SliceOptions = SliceOptions(), gates: Sequence[Gate] = ()):
    """(metrics, plot paths, snapshot) of a forecaster on the test windows of `table`, per slice of entities with
    `slices` (see `sparkdl.evaluate_forecast`), and its `gates`: bounds and gaps on the sliced report, and a
    baseline forecaster's report on the same table version and windows."""
    prep = info.forecast
    if prep.test_step is None:
        raise ValidationError(f"model {mv}: it was trained without forecast.test_from, so it has no test period "
                              f"to be evaluated on; set data.forecast.test_from and train it again")
    df, snap = lake.read_table(table, version=version, spark=spark)
    check_slices(slices, df, f"{snap.table}@{snap.version}")
    memberships = entity_slices(df, prep.spec, slices) if slices else None
    ref, _ = resolve_model(mv, store)
    frame = forecast_frame(df, ref, prep, "forecast", mode="test", until=until).persist(StorageLevel.DISK_ONLY)
    try:
        metrics = forecast_metrics(frame, prep.spec, entity_label=prep.entity_label, slices=slices,
                                   memberships=memberships, min_slice_size=options.min_slice_size,
                                   sliced=bool(slices or gates))
        if metrics["count"] == 0:
            raise ValidationError(f"table {snap.table}@{snap.version}: no test window of model {mv} (origin at or "
                                  f"after {prep.spec.test_from} with {prep.spec.horizon} steps after it)")
        paths = forecast_plots(frame, prep.spec, metrics,
                               lambda name: store.artifact_path(mv, name, must_exist=False),
                               entity_label=prep.entity_label) if plots else []
        if plots and slices:
            paths += slice_plots(metrics, "forecast", lambda name: store.artifact_path(mv, name, must_exist=False))
    finally:
        frame.unpersist()
    metrics.update({"task": "forecast", "season": prep.spec.season, "test_from": prep.spec.test_from,
                    "horizon": prep.spec.horizon})
    log.info("model %s: test MAE %.4g (seasonal naive %.4g), MASE %.3g over %d windows of %d series", mv,
             metrics["mae"], metrics["seasonal_naive"]["mae"] or float("nan"), metrics["mase"] or float("nan"),
             metrics["windows"], metrics["series"])
    if gates:
        baselines = {ref: _forecast_baseline_report(ref, mv, store, df, until, slices, memberships, options)
                     for ref in baseline_refs(gates)}
        metrics["gates"] = check_gates(gates, metrics, baselines).to_dict()
        _log_gates(mv, metrics["gates"])
    return metrics, paths, snap


def _forecast_baseline_report(ref: str, candidate, store, df: DataFrame, until, slices, memberships,
                              options: SliceOptions) -> dict | None:
    """The sliced report of baseline forecaster `ref` on the same table version and test windows, or None when
    `ref` does not resolve. Raises ConfigError when it is not a forecaster."""
    found = _resolved_baseline(ref, store)
    if found is None:
        return None
    mv, info = found
    if info.forecast is None:
        raise ConfigError(f"gate baseline {ref} of forecaster {candidate} is not a forecaster: a forecaster is "
                          f"compared with another forecaster on the same windows")
    base_ref, _ = resolve_model(mv, store)
    frame = forecast_frame(df, base_ref, info.forecast, "forecast", mode="test", until=until)
    return forecast_metrics(frame, info.forecast.spec, entity_label=info.forecast.entity_label, slices=slices,
                            memberships=memberships, min_slice_size=options.min_slice_size, sliced=True)


def _prediction_frame(mv, info: ModelMetadata, df: DataFrame, where: str, store, extra: Sequence[str]):
    """The production scoring path (Arrow batches, direct Parquet reads of the snapshot) of a row model over `df`:
    a frame of `label`, `prediction` (class indices for a classifier) and `probability`, plus the `extra` columns
    of `df`; and the number of classes (None for regression)."""
    spec = info.spec
    if spec.label is None:
        raise ValidationError(f"model {mv}: its feature spec has no label, so it cannot be evaluated")
    needed = spec.feature_names + [spec.label.name]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValidationError(f"table {where}: missing column(s) {missing} needed by model {mv}; it has {df.columns}")
    task = spec.label.task
    classification = task != "regression"
    extra = [c for c in extra if c != spec.label.name]
    scored = score_dataframe(df, mv, output="struct" if classification else "prediction", output_col="out",
                             keep_columns=[spec.label.name, *extra], store=store)
    label = F.col(f"`{spec.label.name}`")
    scored = scored.where(F.col("out").isNotNull())
    if not classification:
        return scored.select(label.cast("double").alias("label"), F.col("out").cast("double").alias("prediction"),
                             *[F.col(f"`{c}`") for c in extra]), None
    classes = info.label_classes
    pred, prob = F.col("out.label"), F.col("out.probability")
    if classes and any(not isinstance(c, (int, float)) or isinstance(c, bool) or c != i
                       for i, c in enumerate(classes)):
        # label classes that are not 0..k-1: compare in index space
        index = F.create_map(*[x for i, c in enumerate(classes) for x in (F.lit(c), F.lit(i))])
        label, pred = index[label], index[pred]
    frame = scored.select(label.cast("double").alias("label"), pred.cast("double").alias("prediction"),
                          prob.alias("probability"), *[F.col(f"`{c}`") for c in extra])
    return frame, spec.label.num_classes or (len(classes) if classes else None)


def _evaluate_rows(mv, info: ModelMetadata, table: str, version, store, spark, plots: bool,
                   slices: Sequence[Slice] = (), options: SliceOptions = SliceOptions(), gates: Sequence[Gate] = ()):
    """(metrics, plot paths, snapshot) of a row model: the production scoring path, then the metrics above, and
    with slices or gates the sliced report (and the baselines' on the same snapshot)."""
    df, snap = lake.read_table(table, version=version, spark=spark)
    where = f"{snap.table}@{snap.version}"
    check_slices(slices, df, where)
    task = info.spec.label.task if info.spec.label is not None else None
    extra = referenced_columns(slices, df.columns)
    frame, num_classes = _prediction_frame(mv, info, df, where, store, extra)
    sliced = bool(slices or gates)
    if sliced:
        frame = frame.persist(StorageLevel.MEMORY_AND_DISK)  # scored once for the overall and the sliced passes
    try:
        if task == "regression":
            metrics = evaluate_predictions(frame, task, "label", "prediction")
        else:
            metrics = evaluate_predictions(frame, task, "label", "prediction", "probability",
                                           num_classes=num_classes)
        if sliced:
            report = _sliced_report(frame, metrics, slices, options)
    finally:
        if sliced:
            frame.unpersist()
    total = snap.num_rows if snap.num_rows is not None else df.count()  # the Delta log's stats when it has them
    metrics["unscored_rows"] = int(total - metrics.get("count", 0))
    plot_paths = []
    classes = info.label_classes
    if plots and task != "regression" and metrics.get("confusion_matrix"):
        names = [str(c) for c in classes] if classes else [str(i) for i in range(len(metrics["confusion_matrix"]))]
        plot_paths.append(plot_confusion_matrix(metrics["confusion_matrix"], names,
                                                store.artifact_path(mv, "confusion_matrix.png", must_exist=False)))
    if sliced:
        metrics.update(report)
        baselines = {ref: _baseline_report(ref, store, df, where, slices, options, extra, metrics)
                     for ref in baseline_refs(gates)}
        if gates:
            metrics["gates"] = check_gates(gates, report, baselines).to_dict()
            _log_gates(mv, metrics["gates"])
        if plots:
            plot_paths += slice_plots(report, metrics["task"],
                                      lambda name: store.artifact_path(mv, name, must_exist=False))
    return metrics, plot_paths, snap


def _sliced_report(frame: DataFrame, metrics: dict, slices: Sequence[Slice], options: SliceOptions) -> dict:
    if metrics["task"] == "regression":
        return sliced_regression(frame.withColumnRenamed("label", "y").withColumnRenamed("prediction", "yhat"),
                                 slices, options)
    probability = _probability_column(frame.schema["probability"])[0]
    narrowed = frame.select("*", F.col("label").cast("int").alias("y"), F.col("prediction").cast("int").alias("p"),
                            probability.alias("prob"))
    return sliced_classification(narrowed, slices, metrics["num_classes"], metrics["labels"], options)


def _resolved_baseline(ref: str, store):
    """(version, metadata) of a gate's baseline model, or None when `ref` does not resolve yet (its gates skip)."""
    try:
        mv = store.resolve(ref)
    except ModelStoreError:
        log.info("baseline %s does not resolve: its gates are skipped", ref)
        return None
    return mv, ModelMetadata.from_dict(store.metadata(mv))


def _baseline_report(ref: str, store, df: DataFrame, where: str, slices, options, extra, candidate: dict):
    """The sliced report of baseline model `ref` on the same snapshot, or None when `ref` does not resolve."""
    found = _resolved_baseline(ref, store)
    if found is None:
        return None
    mv, info = found
    frame, num_classes = _prediction_frame(mv, info, df, where, store, extra)
    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        task = candidate["task"]
        if task == "regression":
            return _sliced_report(frame, {"task": task}, slices, options)
        return _sliced_report(frame, {"task": task, "num_classes": num_classes or candidate["num_classes"],
                                      "labels": candidate["labels"]}, slices, replace(options, sensitive=None))
    finally:
        frame.unpersist()


def _log_gates(mv, gates: dict) -> None:
    failed = [r for r in gates["results"] if not r["passed"]]
    if failed:
        log.warning("model %s: %d gate(s) failed: %s", mv, len(failed),
                    "; ".join(f"{r['slice']} {r['metric']}={r['value']} (limit {r['limit']})" for r in failed))
    else:
        log.info("model %s: all %d gate result(s) passed", mv, len(gates["results"]))


_HISTORY_KEYS = ("accuracy", "roc_auc", "macro_avg", "weighted_avg", "rmse", "mae", "r2", "smape", "mase", "count")
