"""Training: sparkdl's fit against Horovod's own Spark estimator on the same job, and against in-memory Keras.

Three things are measured in one run, on the same synthetic data (a Delta table of `--rows` x `--features` float
vectors with a linear binary label), the same zoo model (`mlp`, hidden 64-64, sigmoid; `--model cnn` for the
compute-heavier scaling job, sparkdl and in-memory only), Adam at the same effective learning rate
(sparkdl's 1e-3 per process x 2 ranks = Horovod's 2e-3), the same batch per process, epochs and 20% validation:

* **sparkdl's `KerasEstimator.fit`** on the Delta table, and **`horovod.spark.keras.KerasEstimator.fit`** (with a
  `horovod.spark.common.store.LocalStore` in a temporary folder) on the same table read through `sparkdl.lake`,
  interleaved (`--repeats` rounds of sparkdl then Horovod, each from cold: sparkdl's Petastorm cache deleted, a new
  Horovod store). For each: fit wall time; fit call -> first training step; training examples/s over epochs
  2..N (median); final validation accuracy; bytes written (work folder / store); peak driver memory (RSS of the
  driver Python plus the Spark JVM, sampled every 0.1 s) — and sparkdl/Horovod ratios. Horovod's Keras callback
  records its first step and epoch times on rank 0. Horovod compiles its model itself (steps_per_execution 1);
  sparkdl uses its default 8 (`--steps-per-execution`), which is part of what is being compared.
* **scaling**: sparkdl's 2-process rate per core against a single process training the same model on in-memory
  numpy with all cores (target 0.9 per core), and a no-op Horovod job (launch floor).
* sparkdl's own per-phase breakdown of the fit (the `training.phases` of the model's metadata).

Workaround for Horovod on the pinned stack (in this script, not in sparkdl): Horovod 0.28.1's
`get_simple_meta_from_parquet` reads `ParquetDataset.schema.to_arrow_schema()` and `.pieces[i].get_metadata()`,
the legacy pyarrow dataset API that pyarrow 14 no longer returns by default; `_HorovodStore` hands it the new
`ParquetDataset` behind those two names. Nothing else is changed.

Usage:  python scripts/benchmarks/bench_train.py --rows 400000 --epochs 3 --batch-size 2048
        (small smoke run: --rows 20000 --epochs 2)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HIDDEN = [64, 64]
CNN_SIDE = 28       # --model cnn: 28 x 28 x 1 images (the compute-heavier job of the scaling target)
LR = 1e-3          # per process; sparkdl scales it by the ranks, Horovod's estimator is given LR x ranks
VALIDATION = 0.2


def input_shape(args) -> tuple:
    return (CNN_SIDE, CNN_SIDE, 1) if args.model == "cnn" else (args.features,)


def hparams(args) -> dict:
    return {} if args.model == "cnn" else {"hidden": HIDDEN}


def build_model(args):
    """The zoo model both sides train (sparkdl builds the same one from its name and hparams)."""
    from sparkdl.data.spec import ModelSignature
    from sparkdl.models import build

    return build(args.model, ModelSignature(input_shape(args), "binary", 2), **hparams(args))


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

    from sparkdl import stack

    keras = stack.keras_module("tf_keras")  # the zoo's Keras 2 on both stacks (tf.keras is Keras 3 on TF >= 2.16)
    tf.config.threading.set_intra_op_parallelism_threads(args.cores)
    tf.config.threading.set_inter_op_parallelism_threads(args.cores)
    x, y = make_data(args.rows, args.features)
    x = x.reshape((-1, *input_shape(args)))
    keras.utils.set_random_seed(0)
    model = build_model(args)
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy", metrics=["accuracy"],
                  steps_per_execution=args.steps_per_execution)
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, callbacks=[Timer()], verbose=0)
    steady = times[1:] or times
    return {"examples_per_s": args.rows / statistics.median(steady), "epoch_s": times}


def noop():
    return os.getpid()


class DriverMemory:
    """Peak RSS of this process plus its Spark JVM (a child `java` process), sampled every 0.1 s while entered."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status") as status:
                return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            return 0

    @staticmethod
    def _java_children() -> list[int]:
        me, found = os.getpid(), []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        fields = stat.read().rsplit(")", 1)[1].split()
                    with open(f"/proc/{entry}/comm") as comm:
                        name = comm.read().strip()
                except OSError:
                    continue
                if int(fields[1]) == me and name == "java":
                    found.append(int(entry))
        return found

    def _sample(self):
        pids = [os.getpid(), *self._java_children()]
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(self._rss(pid) for pid in pids))
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def folder_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def sparkdl_fit(spark, table: str, args, work: str, round_: int) -> dict:
    from sparkdl.data import petastorm_io
    from sparkdl.data.spec import FeatureSpec
    from sparkdl.train import KerasEstimator
    from sparkdl.train.checkpoints import RunFolder

    petastorm_io.cleanup()  # from cold, as Horovod's side
    spec = FeatureSpec.from_dict({"features": [{"name": "x", "kind": "vector", "shape": list(input_shape(args))}],
                                  "label": {"name": "y", "task": "binary"}})
    run_name = f"bench-{round_}-{int(time.time())}"
    est = KerasEstimator(model=args.model, feature_spec=spec, hparams=hparams(args), batch_size=args.batch_size,
                         epochs=args.epochs, validation=VALIDATION, num_proc=args.num_proc, learning_rate=LR,
                         warmup_epochs=0, run_name=run_name, work_dir=work, model_store=os.path.join(work, "m"),
                         steps_per_execution=args.steps_per_execution,
                         backward_passes_per_step=args.backward_passes_per_step, compression=args.compression,
                         **({"cycle_time_ms": float(args.cycle_time)} if args.cycle_time else {}))
    cache = petastorm_io.parent_cache_dir(spark).removeprefix("file://")
    folders = [work] + ([] if os.path.abspath(cache).startswith(os.path.abspath(work)) else [cache])  # count once
    before = sum(folder_bytes(f) for f in folders)
    called = time.time()
    with DriverMemory() as memory:
        fitted = est.fit(table)
    fit_s = time.time() - called
    written = sum(folder_bytes(f) for f in folders) - before
    epochs = RunFolder(work, run_name).epochs_log()
    rates = [e["examples_per_s"] for e in epochs]
    phases = fitted.getMetadata()["training"]["phases"]
    before_run = sum(phases.get(k, 0.0) for k in ("statistics", "cache"))
    return {"fit_s": fit_s, "first_step_s": before_run + est.last_run.launch_s, "run_launch_s": est.last_run.launch_s,
            "examples_per_s": statistics.median(rates[1:] or rates), "epoch_rates": rates,
            "val_accuracy": fitted.getHistory()["val_accuracy"][-1], "disk_bytes": written,
            "peak_rss": memory.peak, "phases": phases, "threads_per_proc": est.last_run.threads_per_proc,
            "events": est.last_run.events, "standby_ranks": est.last_run.standby_ranks}


class _Schema:  # the legacy pyarrow ParquetSchema's one method Horovod calls
    def __init__(self, schema):
        self._schema = schema

    def to_arrow_schema(self):
        return self._schema


class _Piece:  # the legacy ParquetDatasetPiece's one method Horovod calls
    def __init__(self, fragment):
        self._fragment = fragment

    def get_metadata(self):
        return self._fragment.metadata


class _LegacyView:
    def __init__(self, dataset):
        self.schema, self.pieces = _Schema(dataset.schema), [_Piece(f) for f in dataset.fragments]


def _horovod_store(prefix: str):
    import pyarrow.parquet as pq
    from horovod.spark.common.store import LocalStore

    class _HorovodStore(LocalStore):
        def get_parquet_dataset(self, path):
            return _LegacyView(pq.ParquetDataset(self.get_localized_path(path), filesystem=self.fs))

    return _HorovodStore(prefix)


def _timing_callback(folder: str):
    import tensorflow as tf

    class RankZeroTimes(tf.keras.callbacks.Callback):
        """Rank 0's first-step time and epoch times, written to `folder` (the driver reads them after the fit)."""

        _supports_tf_logs = True

        def __init__(self):
            super().__init__()
            self.first, self.epochs = None, []

        def on_train_batch_end(self, batch, logs=None):  # as sparkdl's first_step: after the first step ran
            if self.first is None:
                self.first = time.time()

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.time()

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append({"seconds": time.time() - self.started, "steps": self.params.get("steps")})

        def on_train_end(self, logs=None):
            import horovod.tensorflow.keras as hvd

            if hvd.rank() == 0:
                with open(os.path.join(folder, "times.json"), "w") as out:
                    json.dump({"first": self.first, "epochs": self.epochs, "size": hvd.size()}, out)

    return RankZeroTimes()


def horovod_fit(df, args, work: str, round_: int) -> dict:
    import horovod.spark.keras as hvd_keras
    import tensorflow as tf

    prefix = os.path.join(work, f"horovod-{round_}")
    os.makedirs(prefix)
    tf.keras.utils.set_random_seed(0)
    model = build_model(args)
    est = hvd_keras.KerasEstimator(
        num_proc=args.num_proc, store=_horovod_store(prefix), model=model,
        optimizer=tf.keras.optimizers.Adam(LR * args.num_proc), loss="binary_crossentropy", metrics=["accuracy"],
        feature_cols=["x"], label_cols=["y"], batch_size=args.batch_size, epochs=args.epochs,
        validation=VALIDATION, verbose=0, random_seed=0, callbacks=[_timing_callback(prefix)])
    called = time.time()
    with DriverMemory() as memory:
        fitted = est.fit(df)
    fit_s = time.time() - called
    with open(os.path.join(prefix, "times.json")) as times_file:
        times = json.load(times_file)
    rates = [e["steps"] * args.batch_size * times["size"] / e["seconds"] for e in times["epochs"]]
    return {"fit_s": fit_s, "first_step_s": times["first"] - called,
            "examples_per_s": statistics.median(rates[1:] or rates), "epoch_rates": rates,
            "val_accuracy": float(fitted.getHistory()["val_accuracy"][-1]), "disk_bytes": folder_bytes(prefix),
            "peak_rss": memory.peak}


def distributed(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-train-") as work:  # table, caches, runs, models, stores: all here
        return _distributed(args, work)


def _distributed(args, work: str) -> dict:
    import pandas as pd

    from sparkdl.lake import read_table, write_table
    from sparkdl.session import get_spark
    from sparkdl.train import HorovodRunner
    from sparkdl.train.runner import STANDBY_CONF

    spark = get_spark(master=f"local[{args.cores}]", app_name="bench_train", work=work)
    x, y = make_data(args.rows, args.features)
    table = os.path.join(work, "lake", "train")
    frame = pd.DataFrame({"x": list(x), "y": y.astype("float32")})
    write_table(spark.createDataFrame(frame).selectExpr("cast(x as array<float>) as x", "cast(y as float) as y")
                .repartition(args.num_proc), table, mode="overwrite")

    if args.no_standby:
        spark.conf.set(STANDBY_CONF, "false")
    runner = HorovodRunner(args.num_proc, spark=spark)
    started = time.perf_counter()
    runner.run(noop)
    out = {"noop_total_s": time.perf_counter() - started, "noop_fn_start_s": runner.last_run.events.get("fn_start"),
           "sparkdl": [], "horovod": []}
    for round_ in range(args.repeats):
        out["sparkdl"].append(sparkdl_fit(spark, table, args, work, round_))
        log_side("sparkdl", round_, out["sparkdl"][-1])
        if not args.no_horovod:
            df, _ = read_table(table)
            out["horovod"].append(horovod_fit(df.repartition(args.num_proc), args, work, round_))
            log_side("horovod", round_, out["horovod"][-1])
    return out


def log_side(name: str, round_: int, result: dict) -> None:
    print(f"  round {round_} {name}: fit {result['fit_s']:.1f} s, first step {result['first_step_s']:.1f} s, "
          f"{result['examples_per_s']:,.0f} ex/s, val acc {result['val_accuracy']:.4f}"
          + (f", {result['standby_ranks']} rank(s) in standby processes" if "standby_ranks" in result else ""),
          file=sys.stderr)


def _median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--features", type=int, default=32, help="vector length of the MLP's input")
    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp", help="the zoo model (cnn: 28x28x1 "
                        "images, sparkdl and the in-memory baseline only)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of (sparkdl fit, Horovod fit)")
    parser.add_argument("--no-horovod", action="store_true", help="skip Horovod's estimator")
    parser.add_argument("--no-standby", action="store_true", help="start every sparkdl rank as a fresh process "
                        "(spark.sparkdl.train.standbyRanks=false), as the first fit of a session does")
    parser.add_argument("--cores", type=int, default=None, help="total cores (default: all of this machine)")
    parser.add_argument("--cycle-time", default=None, help="sparkdl's cycle_time_ms (default: its own 0.1)")
    parser.add_argument("--backward-passes-per-step", type=int, default=1, help="sparkdl's local gradient "
                        "aggregation (KerasEstimator backward_passes_per_step)")
    parser.add_argument("--compression", choices=["none", "fp16"], default="none", help="sparkdl's gradient "
                        "compression")
    parser.add_argument("--steps-per-execution", type=int, default=8, help="sparkdl's (and the in-memory "
                        "baseline's) Keras steps_per_execution")
    parser.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.cores = args.cores or os.cpu_count() or 2
    if args.model == "cnn":
        args.features, args.no_horovod = CNN_SIDE * CNN_SIDE, True
    if args.baseline_worker:
        print(json.dumps(baseline(args)))
        return

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, __file__, "--baseline-worker", "--rows", str(args.rows), "--features",
           str(args.features), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--cores", str(args.cores), "--steps-per-execution", str(args.steps_per_execution), "--model", args.model]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    base = json.loads(out.stdout.strip().splitlines()[-1])
    dist = distributed(args)
    ours, peer = dist["sparkdl"], dist["horovod"]

    model = f"CNN on {CNN_SIDE}x{CNN_SIDE}x1" if args.model == "cnn" else f"MLP {HIDDEN}"
    print(f"\nbench_train: {args.rows:,} rows x {args.features} features, {model}, batch {args.batch_size} "
          f"per process, {args.epochs} epochs, {args.num_proc} processes on {args.cores} cores, sparkdl "
          f"backward_passes_per_step {args.backward_passes_per_step} compression {args.compression}, validation "
          f"{VALIDATION}, {args.repeats} round(s) (medians), load average {os.getloadavg()[0]:.1f}")
    rows = [("fit wall time (s)", "fit_s", "{:.1f}", "<= 0.5"), ("fit call -> first step (s)", "first_step_s",
            "{:.1f}", None), ("training examples/s, epochs 2..N", "examples_per_s", "{:,.0f}", ">= 1.0"),
            ("final validation accuracy", "val_accuracy", "{:.4f}", None),
            ("disk written (MB)", "disk_bytes", "{:.1f}", None), ("peak driver RSS (MB)", "peak_rss", "{:.0f}", None)]
    print(f"  {'':36s} {'sparkdl':>12s} {'Horovod est.':>12s} {'ratio':>7s}  target")
    for label, key, fmt, target in rows:
        scale = 1e6 if key in ("disk_bytes", "peak_rss") else 1.0
        a = _median(ours, key) / scale
        b = _median(peer, key) / scale if peer else float("nan")
        ratio = a / b if peer and b else float("nan")
        verdict = ""
        if target and peer:
            verdict = f"{target}: " + ("OK" if (ratio <= 0.5 if target.startswith("<=") else ratio >= 1.0)
                                        else "MISS")
        print(f"  {label:36s} {fmt.format(a):>12s} {fmt.format(b):>12s} {ratio:>7.2f}  {verdict}")
    phases = ours[-1]["phases"]
    training = phases.get("training", 0.0)
    print("  sparkdl fit phases (s, last round): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
          + f"; fixed overhead (fit - training) {ours[-1]['fit_s'] - training:.1f} s (target <= 10 s)")
    events = sorted(ours[-1]["events"].items(), key=lambda item: item[1])
    print("  sparkdl launch timeline (s after run(), last round): " + ", ".join(f"{k} {v:.1f}" for k, v in events))
    launch = _median(ours, "run_launch_s")
    standby = [r["standby_ranks"] for r in ours]
    print(f"  sparkdl ranks in standby processes, per round: {standby} of {args.num_proc}")
    print(f"  sparkdl run() call -> first step: {launch:.1f} s (target <= 5 s: {'OK' if launch <= 5 else 'MISS'}); "
          f"no-op Horovod job: fn start {dist['noop_fn_start_s']:.1f} s, total {dist['noop_total_s']:.1f} s")
    per_core_base = base["examples_per_s"] / args.cores
    per_core_dist = _median(ours, "examples_per_s") / args.cores
    ratio = per_core_dist / per_core_base
    print(f"  scaling: single-process Keras on numpy ({args.cores} threads) {base['examples_per_s']:,.0f} ex/s; "
          f"sparkdl {args.num_proc} procs x {ours[-1]['threads_per_proc']} thread(s) "
          f"{_median(ours, 'examples_per_s'):,.0f} ex/s; per core {ratio:.2f} (target >= 0.8: "
          f"{'OK' if ratio >= 0.8 else 'MISS'})")


if __name__ == "__main__":
    main()
