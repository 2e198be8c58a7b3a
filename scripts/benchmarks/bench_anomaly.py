#!/usr/bin/env python
"""Anomaly detection (issue 47, item 1): the autoencoder against an IsolationForest on three tables, and its scoring
speed against a row-at-a-time baseline, in one run.

Tables (each: normal rows plus a few known anomalies; the detector trains on all of them, without the label):
* ``cancer``  – scikit-learn's breast cancer (real): the 357 benign rows and 20 malignant ones (seeded sample);
* ``digits``  – scikit-learn's digits (real): the 182 images of a 1 and 20 images of other digits;
* ``sensors`` – 3,000 synthetic readings of 8 sensors driven by 2 hidden factors, 60 of them with each reading
  taken from another row (every value ordinary, the coupling broken), as `tests/test_anomaly.py` makes them.
The detector is sparkdl's whole path: `KerasEstimator(model="autoencoder")` on 2 Horovod ranks, thresholds fitted
after the fit, `evaluate_anomalies` (ROC AUC exact, PR AUC as average precision; the IsolationForest is fitted on
the same prepared rows). Each table is run with `--seeds` seeds; the medians are printed.

Speed: `score_dataframe(output="anomaly")` (Arrow batches, one traced model call per batch, flags in Spark) on
`--rows` rows against a Python UDF calling the model on one row at a time, as a row-at-a-time scorer would; rows/s.

Targets: AUROC ≥ the IsolationForest's on at least 2 of 3 tables; scoring ≥ 3× the row-at-a-time baseline.

    .venv/bin/python scripts/benchmarks/bench_anomaly.py --rows 20000
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from timing import load_line, median_seconds  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))


def tables() -> dict[str, tuple[pd.DataFrame, list[str], dict]]:
    from test_anomaly import READINGS, sensor_readings

    from sparkdl.datasets import breast_cancer_frame, digits_frame

    cancer = breast_cancer_frame()
    cancer = pd.concat([cancer[cancer.malignant == 0], cancer[cancer.malignant == 1].sample(20, random_state=0)])
    cancer = cancer.rename(columns={"malignant": "anomaly_label"})
    cancer_features = [c for c in cancer.columns if c not in ("id", "anomaly_label")]
    digits = digits_frame()
    others = digits[digits.digit != 1].sample(20, random_state=0)
    digits = pd.concat([digits[digits.digit == 1], others]).assign(anomaly_label=lambda d: (d.digit != 1).astype(int))
    digits = digits[["id", "pixels", "anomaly_label"]]
    sensors = sensor_readings().rename(columns={"faulty": "anomaly_label"}).drop(columns=["machine"])
    scaled = [{"name": n, "scale": "standard"} for n in cancer_features]
    return {
        "cancer": (cancer, scaled, {"hidden": [16], "code": 4}),
        "digits": (digits, [{"name": "pixels", "kind": "vector", "shape": [64]}], {"hidden": [32], "code": 4}),
        "sensors": (sensors, [{"name": n, "scale": "standard"} for n in READINGS], {"hidden": [16], "code": 3}),
    }


def detect(spark, frame, features, hparams, seed: int, store: str):
    from sparkdl.evaluation.anomaly import evaluate_anomalies
    from sparkdl.train import KerasEstimator

    df = spark.createDataFrame(frame)
    spec = {"features": features, "label": {"name": "anomaly_label", "task": "anomaly"}}
    epochs = max(15, 6000 // len(frame))  # about the same number of steps on the small tables
    model = KerasEstimator(model="autoencoder", feature_spec=spec, hparams=hparams, epochs=epochs, batch_size=32,
                           num_proc=2, validation=0.0, learning_rate=2e-3, seed=seed, model_store=store,
                           anomaly={"rate": 0.05}).fit(df)
    return model, evaluate_anomalies(model.getModelVersion(), df, store=store, seed=seed), df


def scoring_speed(spark, model, store: str, rows: int) -> tuple[float, float]:
    """(rows/s of score_dataframe, rows/s of a row-at-a-time Python UDF) on `rows` sensor rows."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType
    from test_anomaly import READINGS, sensor_readings

    from sparkdl.score import score_dataframe
    from sparkdl.score.model_ref import resolve_model
    from sparkdl.score.runtime import get_model

    frame = sensor_readings(rows=rows, faults=rows // 50, seed=1)
    df = spark.createDataFrame(frame).repartition(2).cache()
    df.count()
    version = model.getModelVersion()
    batched = median_seconds(lambda: score_dataframe(df, version, output="anomaly", keep_columns=["id"],
                                                     store=store).where("anomaly.is_anomaly").count(), 3)
    ref = resolve_model(version, store)[0]

    def one_row(*values):  # the same model and preprocessing (loaded once per worker), one row per call
        import pyarrow as pa

        loaded = get_model(ref)
        row = pa.table({n: [float(v)] for n, v in zip(READINGS, values)})
        x = loaded.preprocessor.prepare_batch(row, with_label=False).features
        return float(np.mean((np.asarray(loaded.model(x, training=False)) - x) ** 2))

    baseline_rows = min(rows, 4000)
    sample = df.limit(baseline_rows).repartition(2).cache()
    sample.count()
    udf = F.udf(one_row, DoubleType())
    row_at_a_time = median_seconds(lambda: sample.select(udf(*READINGS).alias("s")).where("s > 1").count(), 1)
    return rows / batched, baseline_rows / row_at_a_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rows", type=int, default=20000, help="rows scored in the speed comparison")
    parser.add_argument("--seeds", type=int, default=3, help="fits per table")
    args = parser.parse_args()

    from sparkdl.session import get_spark

    spark = get_spark(master="local[2]", conf={"spark.sql.shuffle.partitions": "4"})
    store = tempfile.mkdtemp(prefix="bench-anomaly-")
    print(f"{'table':<9} {'rows':>5} {'anom':>4} | {'AE ROC':>7} {'IF ROC':>7} | {'AE PR':>6} {'IF PR':>6} | "
          f"precision recall  (medians of {args.seeds} seeds)")
    wins, sensors_model = 0, None
    for name, (frame, features, hparams) in tables().items():
        reports = []
        for seed in range(args.seeds):
            model, report, _ = detect(spark, frame, features, hparams, seed, store)
            reports.append(report)
            if name == "sensors":
                sensors_model = model

        def med(get):
            return float(np.median([get(r) for r in reports]))

        ae, iso = med(lambda r: r.roc_auc), med(lambda r: r.isolation_forest.roc_auc)
        wins += ae >= iso
        print(f"{name:<9} {reports[0].rows:>5} {reports[0].anomalies:>4} | {ae:7.4f} {iso:7.4f} | "
              f"{med(lambda r: r.pr_auc):6.3f} {med(lambda r: r.isolation_forest.pr_auc):6.3f} | "
              f"{med(lambda r: r.precision or 0):9.3f} {med(lambda r: r.recall or 0):6.3f}   "
              f"per seed AE {[round(r.roc_auc, 3) for r in reports]}")
    print(f"autoencoder AUROC >= IsolationForest on {wins} of 3 tables (target: at least 2)")
    started = time.perf_counter()
    fast, slow = scoring_speed(spark, sensors_model, store, args.rows)
    print(f"scoring {args.rows:,} rows: score_dataframe {fast:,.0f} rows/s, row-at-a-time UDF {slow:,.0f} rows/s: "
          f"{fast / slow:.1f}x (target >= 3x) [{time.perf_counter() - started:.0f} s]")
    print(load_line())


if __name__ == "__main__":
    main()
