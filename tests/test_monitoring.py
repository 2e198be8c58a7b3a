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


@pytest.mark.slow
@pytest.mark.skipif(__import__("sparkdl").stack.stack_name() != "pinned",
                    reason="three Horovod fits: the retraining decisions are the same Python on both stacks, and "
                           "training is tested on each")
def test_retraining_fires_once_promotes_a_winner_and_keeps_the_champion_otherwise(spark, lake, tmp_path):
    """The loop through a running server: `sparkdl serve` on concept@production logs its traffic to Delta; the
    traffic drifts and the concept changes (label x1 + x2 > 0 becomes x1 - x2 > 0). `sparkdl monitor --retrain`
    fires on the logged window, trains a challenger on the newest training data, which beats the champion on the
    held-out rows: the alias moves and the server reloads the new version. The same run again does nothing; a later
    window whose challenger must win by more than it can keeps the alias where it is."""
    import json
    import time
    import urllib.request

    import yaml
    from pyspark.sql import functions as F

    pytest.importorskip("prometheus_client", reason="the serve extra (prometheus-client) is not installed")
    from sparkdl import cli, workflows
    from sparkdl.config import load_config
    from sparkdl.lake import read_table, write_table
    from sparkdl.registry import ModelStore
    from sparkdl.serving import ModelServer

    rng = np.random.default_rng(3)

    def rows(n, shift, concept):
        x1, x2 = rng.normal(shift, 1, n), rng.normal(shift, 1, n)
        return pd.DataFrame({"x1": x1, "x2": x2, "y": ((x1 + concept * x2) > 2 * shift * (concept > 0)).astype(int)})

    def get(server, path, payload=None):
        data = json.dumps(payload).encode() if payload is not None else None
        host, port = server.address
        request = urllib.request.Request(f"http://{host}:{port}{path}", data=data,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read())

    write_table(spark.createDataFrame(rows(1500, 0.0, 1)), str(lake / "train"))
    write_table(spark.createDataFrame(rows(800, 1.0, -1)), str(lake / "holdout"))
    job = {"lake": {"root": str(lake)}, "work_dir": str(tmp_path), "registry": {"root": str(tmp_path / "models")},
           "data": {"table": "train", "features": [{"name": "x1", "scale": "standard"},
                                                   {"name": "x2", "scale": "standard"}],
                    "label": {"name": "y", "task": "binary"}},
           "model": {"name": "mlp", "store_name": "concept", "hparams": {"hidden": [16]}},
           "train": {"num_proc": 1, "epochs": 8, "batch_size": 32, "learning_rate": 0.01, "seed": 0},
           "evaluate": {"table": "holdout", "plots": False},
           "monitor": {"table": "log", "timestamp": "_served_at", "columns": ["x1", "x2"], "output_prefix": "mon",
                       "options": {"window": "1 day"},
                       "retrain": {"drift_share": 0.5, "alias": "production", "judge_metric": "accuracy"}}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    cfg = load_config(path)
    champion = workflows.train(cfg, spark=spark).model_ref
    store = ModelStore(tmp_path / "models")
    store.set_alias(champion, "production")
    write_table(spark.createDataFrame(rows(3000, 1.0, -1)), str(lake / "train"))  # the newest training data

    server = ModelServer("concept@production", store=store, port=0, reload_s=0.5, log_table=str(lake / "log")).start()
    try:
        traffic = rows(400, 1.0, -1)  # drifted inputs
        for part in np.array_split(traffic[["x1", "x2"]].to_numpy(), 8):
            get(server, "/invocations", {"dataframe_split": {"columns": ["x1", "x2"], "data": part.tolist()}})
        server.inference_log.flush()
        assert get(server, "/version")["version"] == 1

        assert cli.main(["monitor", "--config", str(path), "--retrain"]) == 0
        decisions = read_table(str(lake / "mon_decisions"))[0].collect()
        assert len(decisions) == 1 and decisions[0]["decision"] == "promoted"
        assert "drift share 2/2" in decisions[0]["tests_fired"]
        assert decisions[0]["challenger_value"] > decisions[0]["champion_value"] + 0.1
        assert decisions[0]["data_version"] == 1
        assert store.resolve("concept@production").version == 2
        deadline = time.monotonic() + 60
        while get(server, "/version")["version"] != 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert get(server, "/version")["version"] == 2  # the server followed the alias
    finally:
        server.stop()
    logged = read_table(str(lake / "log"))[0]
    assert logged.count() == 400 and {r[0] for r in logged.select("_model_version").distinct().collect()} == {1}

    again = workflows.monitor(load_config(path), spark=spark, retrain=True)["retrain"]
    assert again["already_decided"] and store.list_versions("concept") == [1, 2]
    assert read_table(str(lake / "mon_decisions"))[0].count() == 1

    # the same traffic two days later (a batch of scored rows appended to the log): a new window
    write_table(logged.withColumn("_served_at", F.col("_served_at") + F.expr("INTERVAL 2 DAYS")), str(lake / "log"))
    later = workflows.monitor(load_config(path, ["monitor.retrain.min_improvement=1.0"]), spark=spark,
                              retrain=True)["retrain"]
    assert later["decision"] == "kept_champion" and later["challenger"] == "concept@3"
    assert store.resolve("concept@production").version == 2


def test_recent_labeled_windows_join_the_challengers_training_data(spark, lake, tmp_path):
    """`monitor.retrain.recent_windows: 2`: the labeled rows (labels arriving in their own table, joined on the id)
    of the last two daily windows are appended to the newest training data, as the training table's columns and
    types, in the table the challenger trains on; rows without a label and older windows stay out."""
    import yaml

    from sparkdl import workflows
    from sparkdl.config import load_config
    from sparkdl.errors import ConfigError
    from sparkdl.lake import read_table, write_table
    from sparkdl.monitoring.retrain import RetrainPolicy, recent_labeled_rows

    write_table(spark.createDataFrame(pd.DataFrame({"x1": [0.0, 1.0], "y": [0, 1]})), str(lake / "train"))
    log = pd.DataFrame({"id": range(9), "x1": np.arange(9, dtype=float),
                        "ts": [START + (i // 3) * DAY for i in range(9)]})  # three rows a day, days 0..2
    write_table(spark.createDataFrame(log), str(lake / "log"))
    write_table(spark.createDataFrame(pd.DataFrame({"id": [1, 4, 5, 7, 8], "y": [1, 0, 1, 1, 0]})),
                str(lake / "labels"))
    job = {"lake": {"root": str(lake)}, "work_dir": str(tmp_path), "registry": {"root": str(tmp_path / "models")},
           "data": {"table": "train", "features": [{"name": "x1"}], "label": {"name": "y", "task": "binary"}},
           "monitor": {"table": "log", "timestamp": "ts", "labels_table": "labels", "id_columns": ["id"],
                       "output_prefix": "mon", "retrain": {"drift_share": 0.5, "recent_windows": 2}}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    cfg = load_config(path)
    policy = RetrainPolicy.from_dict(cfg.monitor.retrain)
    monitored = {"table": str(lake / "log"), "version": 0}
    uri = workflows._retraining_data(cfg, policy, (START + 2 * DAY, START + 3 * DAY), monitored, spark)
    data = read_table(uri, spark=spark)[0]
    assert data.schema == read_table(str(lake / "train"), spark=spark)[0].schema  # x1 double, y long
    assert sorted(map(tuple, data.toPandas()[["x1", "y"]].to_numpy().tolist())) == [
        (0.0, 0), (1.0, 1), (4.0, 0), (5.0, 1), (7.0, 1), (8.0, 0)]  # day 0's id 1 is too old
    with pytest.raises(ConfigError, match=r"lacks training column\(s\) \['z'\]"):
        train = spark.createDataFrame(pd.DataFrame({"x1": [0.0], "z": [1.0], "y": [0]})).schema
        recent_labeled_rows(read_table(str(lake / "log"), spark=spark)[0], "ts", (START, START + DAY), 1, train,
                            "y", read_table(str(lake / "labels"), spark=spark)[0], ["id"])
    with pytest.raises(ConfigError, match="recent_windows must be an integer >= 0"):
        RetrainPolicy.from_dict({"drift_share": 0.5, "recent_windows": -1})
