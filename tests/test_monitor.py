"""Drift between reference and current data (sparkdl.monitor.drift_report) and the metric history file."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from sparkdl.errors import ValidationError
from sparkdl.metric_history import MetricHistory
from sparkdl.monitor import NULL, OTHER, DriftReport, drift_report

COLORS = np.array(["red", "green", "blue", "black"])


def _sample(seed: int, n: int = 2500, shift: float = 0.0, color_p=(0.5, 0.3, 0.15, 0.05)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(5.0 + shift * 2.0, 2.0, n)  # shift in units of x's std (2.0)
    return pd.DataFrame(
        {
            "x": np.round(x, 1),  # ties within and across frames
            "z": rng.exponential(1.0, n),
            "k": rng.integers(0, 5, n).astype(np.int32),
            "color": COLORS[rng.choice(4, n, p=color_p)],
            "emb": list(rng.normal(shift, 1.0, (n, 4)).astype(np.float32)),
        }
    )


SCHEMA = "x double, z double, k int, color string, emb array<float>"


@pytest.fixture(scope="module")
def reference(spark):
    return spark.createDataFrame(_sample(1), SCHEMA).repartition(3)


def test_same_distribution_does_not_drift(spark, reference):
    current = spark.createDataFrame(_sample(2), SCHEMA)
    report = drift_report(reference, current)
    assert isinstance(report, DriftReport)
    assert set(report.columns) == {"x", "z", "k", "color", "emb"}
    assert report.drifted == []
    for name, figures in report.columns.items():
        assert figures["psi"] < 0.05, (name, figures["psi"])
    assert report.columns["emb"]["kind"] == "array_mean"
    assert report.columns["color"]["kind"] == "categorical"
    assert len(report.columns["x"]["bins"]["edges"]) == 9
    assert report.reference_rows == report.current_rows == 2500


def test_identical_frames_have_zero_psi_and_ks(reference):
    report = drift_report(reference, reference)
    for figures in report.columns.values():
        assert figures["psi"] == pytest.approx(0.0, abs=1e-12)
        assert figures["ks"] in (None, 0.0)
    assert report.drifted == []


def test_mean_shift_is_detected_with_exact_ks(spark, reference, no_coalesce):
    shifted_pdf = _sample(3, n=2000, shift=1.0)
    current = spark.createDataFrame(shifted_pdf, SCHEMA).repartition(2)
    report = drift_report(reference, current, columns=["x", "z", "emb"])
    assert report.columns["x"]["psi"] > 0.2
    assert report.columns["emb"]["psi"] > 0.2  # the per-row mean of the array moved by +1
    assert report.drifted == ["x", "emb"]
    assert report.columns["z"]["psi"] < 0.1
    ref_pdf = _sample(1)
    for name in ("x", "z"):
        assert report.columns[name]["ks_method"] == "exact"
        expected = ks_2samp(ref_pdf[name], shifted_pdf[name]).statistic
        assert report.columns[name]["ks"] == pytest.approx(expected, abs=1e-12)
    emb_expected = ks_2samp(
        np.stack(ref_pdf.emb).astype(np.float64).mean(axis=1),
        np.stack(shifted_pdf.emb).astype(np.float64).mean(axis=1),
    ).statistic
    assert report.columns["emb"]["ks"] == pytest.approx(emb_expected, abs=1e-12)
    x_ref, x_cur = report.columns["x"]["reference"], report.columns["x"]["current"]
    assert x_ref["mean"] == pytest.approx(ref_pdf.x.mean(), rel=1e-12)
    assert x_ref["std"] == pytest.approx(ref_pdf.x.std(ddof=1), rel=1e-12)
    assert x_cur["mean"] == pytest.approx(shifted_pdf.x.mean(), rel=1e-12)
    # the other statistics, from the same counts: against references computed here from the raw samples
    from scipy.stats import wasserstein_distance

    x = report.columns["x"]
    exact_w = wasserstein_distance(ref_pdf.x, shifted_pdf.x) / ref_pdf.x.std(ddof=1)
    assert x["wasserstein_normalized"] == pytest.approx(exact_w, rel=0.15)  # binned: within a bin's width
    assert x["wasserstein_normalized"] == pytest.approx(1.0, abs=0.2)  # the mean moved by one standard deviation
    p = np.array(x["bins"]["reference"], float) / 2500
    q = np.array(x["bins"]["current"], float) / 2000
    m = (p + q) / 2
    kl = lambda a, b: np.sum(np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / b), 0))  # noqa: E731
    assert x["js_distance"] == pytest.approx(np.sqrt((kl(p, m) + kl(q, m)) / 2), rel=1e-9)
    assert 0.3 < x["js_distance"] < 1 and report.columns["z"]["js_distance"] < 0.1
    assert x["null_rate"] == {"reference": 0.0, "current": 0.0}
    binned = drift_report(reference, current, columns=["x"], exact_ks=False).columns["x"]
    assert binned["ks_method"] == "binned"
    assert 0 < binned["ks"] <= report.columns["x"]["ks"] + 1e-12
    assert binned["psi"] == report.columns["x"]["psi"]


def test_categorical_drift_and_unseen_categories(spark, reference):
    pdf = _sample(4, color_p=(0.1, 0.2, 0.3, 0.4))
    pdf.loc[:299, "color"] = "purple"  # never seen in training
    pdf.loc[300:349, "color"] = None
    report = drift_report(reference, spark.createDataFrame(pdf, SCHEMA), columns=["color", "k"])
    color = report.columns["color"]
    assert color["drifted"] and color["psi"] > 0.2
    assert report.drifted == ["color"]
    assert color["categories"]["current"][OTHER] == 300
    assert color["current"]["nulls"] == 50 == color["categories"]["current"][NULL]
    assert color["categories"]["reference"][OTHER] == 0
    assert color["chi2_p"] < 1e-12 and color["js_distance"] > 0.2
    assert color["null_rate"]["current"] == pytest.approx(50 / len(pdf)) and color["null_rate"]["reference"] == 0
    same = drift_report(reference, spark.createDataFrame(_sample(2), SCHEMA), columns=["color"]).columns["color"]
    assert same["chi2_p"] > 0.01 and same["js_distance"] < 0.05
    assert sum(color["categories"]["current"].values()) == len(pdf)
    top1 = drift_report(reference, spark.createDataFrame(pdf, SCHEMA), columns=["color"], max_categories=1)
    assert set(top1.columns["color"]["categories"]["reference"]) == {"red", OTHER, NULL}


def test_numeric_nulls_get_their_own_bucket(spark, reference):
    pdf = _sample(5)
    pdf.loc[:999, "z"] = np.nan  # NaN counts as missing too
    report = drift_report(reference, spark.createDataFrame(pdf, SCHEMA), columns=["z"])
    z = report.columns["z"]
    assert z["current"]["nulls"] == 1000 and z["bins"]["null"]["current"] == 1000
    assert z["drifted"]


def test_report_serializes(spark, reference):
    report = drift_report(
        reference, spark.createDataFrame(_sample(6, shift=1.0), SCHEMA), columns=["x", "color"]
    )
    loaded = json.loads(report.to_json())
    assert loaded["drifted"] == report.drifted == ["x"]
    assert loaded["columns"]["x"]["psi"] == report.columns["x"]["psi"]
    assert loaded == report.to_dict()


def test_missing_columns_are_named_per_frame(spark, reference):
    current = spark.createDataFrame(_sample(7), SCHEMA).drop("z")
    with pytest.raises(ValidationError, match=r"'z' missing from the current data") as info:
        drift_report(reference, current, columns=["x", "z"])
    (problem,) = info.value.problems
    assert (problem.column, problem.problem, problem.expected) == ("z", "missing column", "present in the current data")
    with pytest.raises(
        ValidationError,
        match=r"'nope' missing from the reference data.*'nope' missing from the " r"current data",
    ):
        drift_report(reference, current, columns=["nope"])
    skipped = drift_report(reference, current, columns=None)
    assert skipped.skipped == {"z": "not in the current data"} and "z" not in skipped.columns


def test_type_errors_and_empty_reference(spark, reference):
    stamps = spark.createDataFrame([(dt.datetime(2024, 1, 1), 1.0)], "ts timestamp, x double")
    with pytest.raises(ValidationError, match=r"column 'ts': type timestamp is not supported.*numeric"):
        drift_report(stamps, stamps, columns=["ts"])
    assert "ts" in drift_report(stamps, stamps).skipped
    as_text = spark.createDataFrame([("1.0",)], "x string")
    with pytest.raises(
        ValidationError, match=r"column 'x' is double in the reference but string in the current"
    ):
        drift_report(reference, as_text, columns=["x"])
    empty = spark.createDataFrame([], SCHEMA)
    with pytest.raises(ValidationError, match=r"reference DataFrame is empty"):
        drift_report(empty, reference)
    with pytest.raises(ValidationError, match=r"bins must be an integer >= 2"):
        drift_report(reference, reference, bins=1)


def test_metric_history_round_trip(tmp_path):
    history = MetricHistory(tmp_path / "monitor" / "history.jsonl")
    assert history.records() == []
    first = history.append(
        {
            "model": "churn",
            "model_version": 1,
            "table": "lake/customers",
            "table_version": 3,
            "metrics": {"accuracy": 0.91, "roc_auc": np.float64(0.95)},
        }
    )
    history.append(
        {
            "model": "churn",
            "model_version": 2,
            "table": "lake/customers",
            "table_version": 4,
            "metrics": {"accuracy": 0.93, "roc_auc": 0.96},
            "timestamp": "2024-05-01T00:00:00+00:00",
        }
    )
    history.append({"model": "price", "model_version": 1, "metrics": {"rmse": 1.5}})
    assert "timestamp" in first and first["metrics"]["roc_auc"] == 0.95
    reopened = MetricHistory(tmp_path / "monitor" / "history.jsonl")
    assert [r["model_version"] for r in reopened.records("churn")] == [1, 2]
    assert len(reopened) == 3 and reopened.records()[0] == first
    frame = reopened.to_pandas()
    assert list(frame["metrics.accuracy"].iloc[:2]) == [0.91, 0.93]
    assert str(frame["timestamp"].dtype).startswith("datetime64")
    assert reopened.to_pandas("price")["metrics.rmse"].tolist() == [1.5]

    with open(history.path, "a", encoding="utf-8") as handle:
        handle.write('{"model": "churn", "metr')  # a writer died mid-line
    assert len(history.records()) == 3
    # the next append ends the torn line first: the history goes on, no record before or after it is lost
    history.append({"model": "churn", "model_version": 3, "metrics": {"accuracy": 0.94}})
    history.append({"model": "price", "model_version": 2, "metrics": {"rmse": 1.2}})
    assert [r["model_version"] for r in history.records("churn")] == [1, 2, 3]
    assert [r["model_version"] for r in history.records("price")] == [1, 2]
    assert history.path.read_text().splitlines()[3] == '{"model": "churn", "metr'


def test_metric_history_rejects_bad_records(tmp_path):
    history = MetricHistory(tmp_path / "h.jsonl")
    with pytest.raises(ValidationError, match="'model'"):
        history.append({"metrics": {"accuracy": 1.0}})
    with pytest.raises(ValidationError, match="'metrics'"):
        history.append({"model": "m"})
    with pytest.raises(ValidationError, match="JSON"):
        history.append({"model": "m", "metrics": {"x": object()}})
    with pytest.raises(ValidationError, match="is a folder"):
        MetricHistory(tmp_path)
    assert history.records() == []
