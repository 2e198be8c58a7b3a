#!/usr/bin/env python
"""Hyper-parameter search: a `sparkdl.tune` study against the same configurations fitted one after another.

On the demo's breast_cancer Delta table (local[2]), an MLP searched over learning rate, batch size, widths and
dropout (the space of conf/breast_cancer_tune.yaml) for `--trials` trials of `trial_proc=1`: `tune` runs
`parallel` trials at once (default: the 2 task slots) and prunes trials whose per-epoch `val_loss` is worse than
the median. Then the same configurations (the study's own params, same seed) are fitted one after another with
`KerasEstimator.fit`, every fit to the last epoch. Printed: both wall times and their ratio (target <= 0.5), both
best `val_loss` values and their relative difference (target within 2 %), the trials pruned, and the load average.

    .venv/bin/python scripts/benchmarks/bench_tune.py --trials 16 --epochs 8
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.getLogger("sparkdl").setLevel(logging.WARNING)

    from sparkdl.data.spec import FeatureSpec
    from sparkdl.datasets import create_demo_tables
    from sparkdl.lake import read_table, snapshot
    from sparkdl.session import get_spark
    from sparkdl.train import KerasEstimator
    from sparkdl.tune import tune

    space = {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 3e-2},
             "batch_size": {"type": "choice", "values": [16, 32, 64]},
             "hparams.hidden": {"type": "choice", "values": [[16], [32, 16], [64, 32]]},
             "hparams.dropout": {"type": "uniform", "low": 0.0, "high": 0.4}}
    with tempfile.TemporaryDirectory(prefix="sparkdl-bench-tune-") as work:
        spark = get_spark(master="local[2]", conf={"spark.sql.shuffle.partitions": "4"})
        table = create_demo_tables(spark, os.path.join(work, "lake"))["breast_cancer_train"]
        columns = read_table(table)[0].columns
        spec = FeatureSpec.from_dict({
            "features": [{"name": c, "kind": "numeric", "scale": "standard"} for c in columns
                         if c not in ("id", "malignant")],
            "label": {"name": "malignant", "task": "binary"}})
        snap = snapshot(table, spark=spark)

        def estimator(**params) -> KerasEstimator:
            defaults = dict(model="mlp", feature_spec=spec, epochs=args.epochs, batch_size=32, num_proc=1,
                            validation=0.15, seed=args.seed, model_store=os.path.join(work, "models"),
                            model_name="bench_tune", hparams={"hidden": [32, 16]}, mlflow=False,
                            work_dir=work)
            return KerasEstimator(**{**defaults, **params})

        estimator(run_name="warm-up", epochs=1).fit(snap)  # the shared cache and TF start, once
        started = time.perf_counter()
        result = tune(estimator(), snap, space, n_trials=args.trials, trial_proc=1, metric="val_loss",
                      study="bench", seed=args.seed, work=work, spark=spark)
        tune_s = time.perf_counter() - started

        started = time.perf_counter()
        serial = []
        for trial in result.trials:
            params = {k: v for k, v in trial.params.items() if not k.startswith("hparams.")}
            hparams = {k[len("hparams."):]: v for k, v in trial.params.items() if k.startswith("hparams.")}
            fitted = estimator(run_name=f"serial-{trial.number}", **params,
                               hparams={"hidden": [32, 16], **hparams}).fit(snap)
            serial.append(fitted.getHistory()["val_loss"][-1])
        serial_s = time.perf_counter() - started
        spark.stop()

    pruned = sum(t.state == "PRUNED" for t in result.trials)
    failed = sum(t.state == "FAIL" for t in result.trials)
    best_serial = min(serial)
    print(f"tune: {args.trials} trials in {tune_s:.1f} s ({pruned} pruned, {failed} failed), best val_loss "
          f"{result.best_value:.4f}")
    print(f"one after another: {len(serial)} fits in {serial_s:.1f} s, best val_loss {best_serial:.4f}")
    print(f"wall time tune/serial {tune_s / serial_s:.2f}x (target <= 0.5); best value difference "
          f"{abs(result.best_value - best_serial) / best_serial * 100:.1f} % (target <= 2 %); load average "
          f"{os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
