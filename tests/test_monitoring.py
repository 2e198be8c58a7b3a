"""Monitoring in windows (sparkdl.monitoring): each window's statistics equal drift_report's on that window's rows,
thresholds learned from the reference's windows, and CBPE's label-free accuracy under a covariate shift."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from sparkdl.evaluation import parse_slices
from sparkdl.monitor import drift_report
from sparkdl.monitoring import MonitorOptions, monitor_frames, monitor_table

DAY = dt.timedelta(days=1)
START = dt.datetime(2026, 3, 1)


def _rows(rng, n: int, day: int, shift: float = 0.0, cats=("a", "b", "c"), p=(0.5, 0.3, 0.2), nulls: float = 0.0):
    x = rng.normal(shift, 1.0, size=n)
    x[rng.random(n) < nulls] = np.nan
    return pd.DataFrame({"ts": [START + day * DAY + dt.timedelta(minutes=int(m)) for m in rng.integers(0, 1440, n)],
                         "x": x, "c": rng.choice(cats, size=n, p=p), "region": rng.choice(["n", "s"], size=n)})


def _spark_frame(spark, pdf):
    pdf = pdf.astype({"x": "float64"})
    return spark.createDataFrame(pdf.replace({np.nan: None}), "ts timestamp, x double, c string, region string")


@pytest.mark.both_sessions
def test_each_window_equals_drift_report_on_its_rows_and_alerts_where_it_shifted(spark):
    rng = np.random.default_rng(0)
    ref_pdf = pd.concat([_rows(rng, 800, d) for d in range(-6, 0)])
    days = [_rows(rng, 600, 0), _rows(rng, 600, 1, shift=1.0), _rows(rng, 600, 2, p=(0.2, 0.3, 0.5), nulls=0.2)]
    reference, current = _spark_frame(spark, ref_pdf), _spark_frame(spark, pd.concat(days))
    options = MonitorOptions(window="1 day", thresholds={"psi": 0.2, "js_distance": 0.1, "chi2_p": 0.01,
                                                         "null_rate": 0.05})
    result = monitor_frames(reference, current, "ts", ["x", "c"], parse_slices(["region"]), options)

    def value(day, column, stat, baseline="reference", slice_="overall"):
        found = [r for r in result["drift"] if r["window_start"] == START + day * DAY and r["column"] == column
                 and r["statistic"] == stat and r["baseline"] == baseline and r["slice"] == slice_]
        assert len(found) == 1, (day, column, stat, baseline, slice_)
        return found[0]

    for day, rows in enumerate(days):
        expected = drift_report(reference, _spark_frame(spark, rows), ["x", "c"], exact_ks=False).columns
        for stat in ("psi", "js_distance", "wasserstein_normalized", "ks"):
            assert value(day, "x", stat)["value"] == pytest.approx(expected["x"][stat], rel=1e-9, abs=1e-12), stat
        assert value(day, "x", "null_rate")["value"] == pytest.approx(expected["x"]["null_rate"]["current"])
        for stat in ("psi", "js_distance", "chi2_p"):
            assert value(day, "c", stat)["value"] == pytest.approx(expected["c"][stat], rel=1e-9, abs=1e-12), stat
    # alerts where the data moved, not on the first day
    assert not value(0, "x", "psi")["alert"] and value(1, "x", "psi")["alert"]
    assert value(2, "c", "psi")["alert"] and value(2, "x", "null_rate")["alert"] and not value(1, "c", "psi")["alert"]
    assert value(1, "x", "out_of_range_rate")["value"] > value(0, "x", "out_of_range_rate")["value"]
    # against the window before: the shift shows on day 1 and goes back on day 2; per slice too
    assert value(1, "x", "psi", "previous")["alert"] and value(2, "x", "psi", "previous")["alert"]
    with pytest.raises(AssertionError):
        value(0, "x", "psi", "previous")  # no window before the first
    assert value(1, "x", "psi", slice_="region=n")["alert"]
    assert {w["slice"] for w in result["windows"]} == {"overall", "region=n", "region=s"}


def test_thresholds_are_learned_from_the_reference_windows(spark):
    rng = np.random.default_rng(1)
    ref_days = [_rows(rng, 500, d) for d in range(-6, 0)]
    reference = _spark_frame(spark, pd.concat(ref_days))
    current = _spark_frame(spark, _rows(rng, 500, 0))
    result = monitor_frames(reference, current, "ts", ["x"], (), MonitorOptions(window="1 day", sigma=3.0))
    psi = [drift_report(reference, _spark_frame(spark, d), ["x"], exact_ks=False).columns["x"]["psi"]
           for d in ref_days]
    learned = result["thresholds"]["psi"]
    assert learned["learned"] and learned["windows"] == 6
    assert learned["value"] == pytest.approx(np.mean(psi) + 3 * np.std(psi, ddof=1), rel=1e-9)
    assert result["thresholds"]["chi2_p"]["learned"] is False  # no categorical column: the constant


@pytest.mark.both_sessions
def test_cbpe_estimates_accuracy_and_auc_under_covariate_shift_and_the_job_writes_delta(spark, lake, tmp_path):
    """A miscalibrated classifier (score sigmoid(3x), truth sigmoid(2x)); the monitored days drift to larger x.
    The estimate from the reference's calibration is within 0.02 of the accuracy realized once labels are
    joined; the drift and performance tables and the plots are written."""
    from sparkdl.lake import read_table, write_table

    rng = np.random.default_rng(2)

    def scored(n, day, shift):
        x = rng.normal(shift, 1.0, size=n)
        y = (rng.random(n) < 1 / (1 + np.exp(-2 * x))).astype(int)
        return pd.DataFrame({"id": np.arange(n) + 100_000 * (day + 10), "ts": [START + day * DAY] * n, "x": x,
                             "score": 1 / (1 + np.exp(-3 * x)), "label": y})

    ref = pd.concat([scored(4000, d, 0.0) for d in range(-5, 0)])
    cur = pd.concat([scored(8000, 0, 0.6), scored(8000, 1, 1.2)])  # within the reference's score range
    write_table(spark.createDataFrame(ref), str(lake / "ref"))
    write_table(spark.createDataFrame(cur.drop(columns="label")), str(lake / "log"))
    write_table(spark.createDataFrame(cur[["id", "label"]]), str(lake / "labels"))
    result = monitor_table(str(lake / "log"), str(lake / "ref"), "ts", columns=["x", "score"], score="score",
                           label="label", labels_table=str(lake / "labels"), id_columns=["id"],
                           output_prefix=str(lake / "mon"), plots_dir=str(tmp_path / "plots"))
    perf = {(r["window_start"], r["metric"], r["kind"]): r["value"] for r in result["performance"]
            if r["slice"] == "overall"}
    for day, part in ((0, cur[cur.ts == START]), (1, cur[cur.ts == START + DAY])):
        start = START + day * DAY
        realized = ((part.score >= 0.5).astype(int) == part.label).mean()
        assert perf[(start, "accuracy", "realized")] == pytest.approx(realized, abs=1e-12)
        assert abs(perf[(start, "accuracy", "estimated")] - realized) < 0.02, (day, perf)
        assert abs(perf[(start, "roc_auc", "estimated")] - perf[(start, "roc_auc", "realized")]) < 0.02
    assert any(r["column"] == "x" and r["alert"] for r in result["alerts"])
    drift, _ = read_table(str(lake / "mon_drift"))
    assert drift.count() == len(result["drift"])
    assert read_table(str(lake / "mon_performance"))[0].where("kind = 'estimated'").count() == 4
    assert any(p.endswith("drift_psi.png") for p in result["plots"])

    # the same as a job: YAML `monitor:` through the CLI
    from sparkdl import cli

    job = tmp_path / "monitor.yaml"
    job.write_text(f"lake: {{root: {lake}}}\nwork_dir: {tmp_path}\nmonitor: {{table: log, reference: ref, "
                   f"timestamp: ts, columns: [x], score: score, label: label, labels_table: labels, "
                   f"id_columns: [id], options: {{window: 1 day}}, output_prefix: mon_cli}}\n")
    assert cli.main(["monitor", "--config", str(job)]) == 0
    assert read_table(str(lake / "mon_cli_performance"))[0].where("kind = 'realized'").count() > 0
