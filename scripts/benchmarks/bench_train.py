"""Training throughput: a `num_proc`-process sparkdl fit vs a single-process Keras fit on in-memory numpy.

Both train the same MLP (sparkdl's `mlp`, hidden 64-64) on the same synthetic data with the same per-process
batch size, using the same total number of cores (the single process gets all of them as TensorFlow threads;
each Horovod process gets cores / num_proc). Reported:

* examples/s of each, per core, and the ratio (target: sparkdl >= 90% of the in-memory rate per core);
  epoch rates skip the first epoch (graph tracing, warm-up) and take the median of the rest;
* launch overhead: from `HorovodRunner.run` being called to the first training step on rank 0 (target <= 10 s),
  and, for reference, a no-op Horovod job (call -> function start) and the whole `fit` wall time
  (preprocessing + Petastorm conversion + training + saving).

Both sides use the same Keras `steps_per_execution` (default 8, sparkdl's default; `--steps-per-execution`).
The sparkdl rate is rank 0's epoch rate (steps x batch x ranks / epoch seconds, first epoch skipped), so it
excludes launch, Petastorm conversion and tracing, as the baseline's excludes its first epoch; the baseline reads
numpy arrays, sparkdl reads its Petastorm shard through tf.data (measured not to be the bottleneck: the same
ranks fed from in-memory numpy under `horovodrun` ran at the same rate).

Last measured (2026-11-21, 2-core box, nothing else running, load average 1.8-2.2 incl. this run), command
`bench_train.py --rows 400000 --epochs 3 --batch-size 2048`: single process 2.28-2.41M ex/s, sparkdl 1.08-1.29M
ex/s, ratio per core 0.47-0.53 (with --steps-per-execution 1: 1.89M vs 0.96M, 0.51); launch 5.7-6.6 s.
With --batch-size 8192: 4.14M vs 3.23M, 0.78. Where the gap is: one Horovod/Gloo allreduce per step costs
~1.5-3 ms next to ~0.8-1 ms of compute at batch 2048 (two ranks without DistributedOptimizer: 4.3M ex/s); an
isolated 26 KB allreduce loop takes 0.67 ms at HOROVOD_CYCLE_TIME=0.1 and 2.0 ms at 1.

Usage (small smoke run):  python scripts/benchmarks/bench_train.py --rows 20000 --epochs 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HIDDEN = [64, 64]


def make_data(rows: int, features: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    w = rng.normal(size=features).astype(np.float32)
    y = (x @ w + 0.1 * rng.normal(size=rows) > 0).astype(np.int32)
    return x, y


def baseline(args) -> dict:
    """Single-process Keras on numpy (run in a subprocess so its thread settings are its own)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.cores)
    tf.config.threading.set_inter_op_parallelism_threads(args.cores)
    from sparkdl.data.spec import ModelSignature
    from sparkdl.models import build

    x, y = make_data(args.rows, args.features)
    tf.keras.utils.set_random_seed(0)
    model = build("mlp", ModelSignature((args.features,), "binary", 2), hidden=HIDDEN)
    model.compile(tf.keras.optimizers.Adam(1e-3), "binary_crossentropy", metrics=["accuracy"],
                  steps_per_execution=args.steps_per_execution)
    times: list[float] = []

    class Timer(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, callbacks=[Timer()], verbose=0)
    steady = times[1:] or times
    return {"examples_per_s": args.rows / statistics.median(steady), "epoch_s": times}


def noop():
    return os.getpid()


def distributed(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-train-") as work:  # Petastorm cache, runs, models: all here
        return _distributed(args, work)


def _distributed(args, work: str) -> dict:
    import pandas as pd

    from sparkdl.data.spec import FeatureSpec
    from sparkdl.session import get_spark
    from sparkdl.train import HorovodRunner, KerasEstimator
    from sparkdl.train.checkpoints import RunFolder

    spark = get_spark(master=f"local[{args.cores}]", app_name="bench_train", work=work)
    x, y = make_data(args.rows, args.features)
    frame = pd.DataFrame({"x": list(x), "y": y})
    df = spark.createDataFrame(frame).selectExpr("cast(x as array<float>) as x", "y").repartition(args.num_proc)
    spec = FeatureSpec.from_dict({"features": [{"name": "x", "kind": "vector", "shape": [args.features]}],
                                  "label": {"name": "y", "task": "binary"}})

    runner = HorovodRunner(args.num_proc, spark=spark)
    started = time.perf_counter()
    runner.run(noop)
    noop_s = time.perf_counter() - started
    noop_start = runner.last_run.events.get("fn_start")

    run_name = f"bench-{int(time.time())}"
    est = KerasEstimator(model="mlp", feature_spec=spec, hparams={"hidden": HIDDEN}, batch_size=args.batch_size,
                         epochs=args.epochs, validation=0.0, num_proc=args.num_proc, learning_rate=1e-3,
                         warmup_epochs=0, run_name=run_name, work_dir=work, model_store=os.path.join(work, "m"),
                         steps_per_execution=args.steps_per_execution,
                         env={"HOROVOD_CYCLE_TIME": args.cycle_time} if args.cycle_time else None)
    started = time.perf_counter()
    est.fit(df)
    fit_s = time.perf_counter() - started
    epochs = RunFolder(work, run_name).epochs_log()
    rates = [e["examples_per_s"] for e in epochs]
    steady = rates[1:] or rates
    return {"examples_per_s": statistics.median(steady), "epoch_rates": rates, "launch_s": est.last_run.launch_s,
            "noop_fn_start_s": noop_start, "noop_total_s": noop_s, "fit_s": fit_s,
            "threads_per_proc": est.last_run.threads_per_proc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--cores", type=int, default=None, help="total cores (default: all of this machine)")
    parser.add_argument("--cycle-time", default=None, help="HOROVOD_CYCLE_TIME in ms for the workers "
                        "(default: sparkdl's own setting)")
    parser.add_argument("--steps-per-execution", type=int, default=8, help="Keras steps_per_execution, the same "
                        "for both sides (sparkdl's default is 8)")
    parser.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.cores = args.cores or os.cpu_count() or 2
    if args.baseline_worker:
        print(json.dumps(baseline(args)))
        return

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, __file__, "--baseline-worker", "--rows", str(args.rows), "--features",
           str(args.features), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--cores", str(args.cores), "--steps-per-execution", str(args.steps_per_execution)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    base = json.loads(out.stdout.strip().splitlines()[-1])
    dist = distributed(args)

    per_core_base = base["examples_per_s"] / args.cores
    per_core_dist = dist["examples_per_s"] / args.cores
    ratio = per_core_dist / per_core_base
    print(f"\nbench_train: {args.rows:,} rows x {args.features} features, MLP {HIDDEN}, batch {args.batch_size} "
          f"per process, {args.epochs} epochs, {args.cores} cores, steps_per_execution {args.steps_per_execution}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"  single-process Keras on numpy ({args.cores} threads): {base['examples_per_s']:>12,.0f} examples/s "
          f"({per_core_base:,.0f}/core)")
    print(f"  sparkdl fit, {args.num_proc} Horovod procs x {dist['threads_per_proc']} thread(s): "
          f"{dist['examples_per_s']:>10,.0f} examples/s ({per_core_dist:,.0f}/core)  epoch rates "
          f"{[round(r) for r in dist['epoch_rates']]}")
    print(f"  ratio sparkdl / in-memory, per core: {ratio:.2f}  (target >= 0.90: {'OK' if ratio >= 0.9 else 'MISS'})")
    launch = dist["launch_s"]
    print(f"  launch overhead, run() call -> first step: {launch:.1f} s  "
          f"(target <= 10 s: {'OK' if launch is not None and launch <= 10 else 'MISS'})")
    print(f"  no-op Horovod job: call -> fn start {dist['noop_fn_start_s']:.1f} s, total {dist['noop_total_s']:.1f} s")
    print(f"  whole fit (preprocess + Petastorm + train + save): {dist['fit_s']:.1f} s")


if __name__ == "__main__":
    main()
