#!/usr/bin/env python
"""Forecasting input: sparkdl's series cache and window reader against a pandas/numpy per-entity reference.

One run, one long table (`--entities` hourly series of `--steps` steps, a target and a covariate, written as a Delta
table by Spark on local[2]), windows of `--lookback` + `--horizon` steps:

* sparkdl   – `build_series` (ONE Spark job: every entity put on its grid, gaps filled, scaling fitted, each series
              written once to the series cache), then the training input `windows_tf_dataset` (rank 0 of 1,
              shuffled) iterated to the end: windows sliced from the series as they are read;
* reference – the table read with pyarrow into pandas, sorted per entity, scaled, windows materialized with numpy's
              `sliding_window_view` (what a user writes by hand, in one process), then shuffled batches of them
              fed to `tf.data.Dataset.from_tensor_slices` and iterated to the end.

Both run warm, as on a running cluster: TensorFlow imported, and Spark's Python workers having built series once
(the first pandas-UDF job of a session also starts and imports its workers: ~2 s more here). Prints windows/s of
building and of the training input, the rate per core (Spark's job uses the session's cores,
the reference one), and the sizes: the series cache and the materialized windows against the raw table (targets:
building + input ≥ 0.5× the reference's rate per core; cache ≤ 1.5× the raw table, windows ≈ lookback×).

    .venv/bin/python scripts/benchmarks/bench_forecast.py --entities 100 --steps 5000
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def make_table(spark, entities: int, steps: int, path: str) -> None:
    from sparkdl import lake

    df = spark.range(entities * steps, numPartitions=4).selectExpr(
        f"concat('s', cast(id div {steps} as string)) as entity",
        f"timestamp_seconds(1577836800 + (id % {steps}) * 3600) as ts",
        f"cast(10 * sin(2 * pi() * (id % {steps}) / 24 + id div {steps}) + randn(1) as double) as target",
        "cast(50 + randn(2) as double) as covariate")
    lake.write_table(df, path, mode="overwrite")


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files
               if f.endswith(".parquet"))


def iterate(ds) -> int:
    n = 0
    for _, y in ds:
        n += int(y.shape[0])
    return n


def run_sparkdl(spark, table: str, spec, batch_size: int, parent: str) -> dict:
    from sparkdl import lake
    from sparkdl.data.series import build_series
    from sparkdl.data.windows import SeriesWindows, windows_tf_dataset

    df, snap = lake.read_table(table, spark=spark)
    started = time.perf_counter()
    info = build_series(df, spec, snap, parent=parent)
    build_s = time.perf_counter() - started
    windows = SeriesWindows.of(info.data, info.start, info.length, spec.lookback, spec.horizon, len(spec.channels))
    started = time.perf_counter()
    n = iterate(windows_tf_dataset(windows, 0, 1, batch_size, shuffle=True, seed=0))
    input_s = time.perf_counter() - started
    cache = sum(os.path.getsize(f.removeprefix("file://")) for f in info.data.files)
    return {"windows": n, "build_s": build_s, "input_s": input_s, "cache_bytes": cache}


def run_reference(table: str, spec, batch_size: int) -> dict:
    import pyarrow.dataset as pads
    import tensorflow as tf

    from sparkdl import lake

    started = time.perf_counter()
    files = lake.snapshot(table).files
    pdf = pads.dataset([f.removeprefix("file://") for f in files], format="parquet").to_table().to_pandas()
    pdf = pdf.sort_values(["entity", "ts"])
    xs, ys = [], []
    for _, part in pdf.groupby("entity", sort=False):
        values = part[["target", "covariate"]].to_numpy(np.float32)
        values = (values - values.mean(axis=0)) / values.std(axis=0)
        view = np.lib.stride_tricks.sliding_window_view(values, spec.lookback + spec.horizon, axis=0)
        xs.append(view[:, :, :spec.lookback].transpose(0, 2, 1))
        ys.append(view[:, 0, spec.lookback:])
    x, y = np.concatenate(xs), np.concatenate(ys)  # materialized: every step copied lookback + horizon times
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    order = np.random.default_rng(0).permutation(len(x))

    def batches():
        for lo in range(0, len(order), batch_size):
            pick = order[lo:lo + batch_size]
            yield x[pick], y[pick]

    ds = tf.data.Dataset.from_generator(batches, output_signature=(
        tf.TensorSpec((None, spec.lookback, 2), tf.float32), tf.TensorSpec((None, spec.horizon), tf.float32)))
    n = iterate(ds.prefetch(4))
    input_s = time.perf_counter() - started
    return {"windows": n, "build_s": build_s, "input_s": input_s, "window_bytes": int(x.nbytes + y.nbytes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entities", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--lookback", type=int, default=72)
    parser.add_argument("--horizon", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    from sparkdl.data.forecast import ForecastSpec
    from sparkdl.session import get_spark

    work = tempfile.mkdtemp(prefix="bench-forecast-")
    try:
        spark = get_spark(master="local[2]", work=work)
        cores = spark.sparkContext.defaultParallelism if hasattr(spark, "sparkContext") else 2
        spec = ForecastSpec(time="ts", entity=("entity",), target="target", covariates=("covariate",),
                            lookback=args.lookback, horizon=args.horizon, frequency="1h")
        table = os.path.join(work, "series")
        make_table(spark, args.entities, args.steps, table)
        import tensorflow  # noqa: F401 - imported before either path is timed

        from sparkdl import lake

        # warm, as a running cluster is: the table's footers, and Python workers that ran a series build before
        warm, _ = lake.read_table(table, spark=spark)
        from sparkdl.data.series import build_series

        build_series(warm.where("entity in ('s0', 's1')"), spec, parent="file://" + os.path.join(work, "warm"))
        ours = run_sparkdl(spark, table, spec, args.batch_size, "file://" + os.path.join(work, "cache"))
        ref = run_reference(table, spec, args.batch_size)
        raw = folder_bytes(table)
        load = os.getloadavg()[0]
        ours_rate = ours["windows"] / (ours["build_s"] * cores + ours["input_s"])  # windows per core-second
        ref_rate = ref["windows"] / (ref["build_s"] + ref["input_s"])
        print(f"\n{args.entities} series x {args.steps} steps, lookback {args.lookback}, horizon {args.horizon}, "
              f"batch {args.batch_size}; {cores} cores; load {load:.2f}")
        print(f"{'':<12}{'windows':>10}{'build s':>10}{'input s':>10}{'input win/s':>14}{'win per core-s':>16}")
        for name, r, rate in (("sparkdl", ours, ours_rate), ("reference", ref, ref_rate)):
            print(f"{name:<12}{r['windows']:>10,}{r['build_s']:>10.2f}{r['input_s']:>10.2f}"
                  f"{r['windows'] / r['input_s']:>14,.0f}{rate:>16,.0f}")
        print(f"rate per core, sparkdl / reference: {ours_rate / ref_rate:.2f}x (target >= 0.5x); training input "
              f"alone: {(ours['windows'] / ours['input_s']) / (ref['windows'] / ref['input_s']):.2f}x")
        print(f"raw table {raw / 2**20:.1f} MiB; series cache {ours['cache_bytes'] / 2**20:.1f} MiB "
              f"({ours['cache_bytes'] / raw:.2f}x raw, target <= 1.5x); materialized windows "
              f"{ref['window_bytes'] / 2**20:.1f} MiB ({ref['window_bytes'] / raw:.1f}x raw)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
