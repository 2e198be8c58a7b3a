#!/usr/bin/env python
"""Scoring throughput: sparkdl's column UDF vs pyspark.ml.functions.predict_batch_udf vs in-process model.predict.

One run on local[2], same data, same model (the reference MLP 32→64→64→1 of /work/shared/stack.md, saved in a
ModelStore with its PreprocessorModel), same sink (Spark's `noop` writer):

* ceiling  – `model.predict(x, batch_size=10_000)` on the same rows as one numpy array, in this process;
* sparkdl  – `model_udf(ref)("features")`: cold first pass (TensorFlow import + model load in each Python worker),
             then warm passes;
* predict_batch_udf – Spark's own batch-inference UDF with the model cached per worker (its documented pattern),
             cold (model load; TensorFlow already imported by then) and warm passes.

Prints rows/s and the ratios against the targets: sparkdl warm ≥ 3× predict_batch_udf warm, ≥ 60% of the
ceiling. `--scale` also scores 10× the rows with sparkdl and checks time ≤ 11× and a flat peak RSS per Python
worker. Figures are noisy on shared machines: compare the ratios of one run.

    .venv/bin/python scripts/benchmarks/bench_score.py --rows 100000
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

FEATURES = 32


def write_data(folder: str, rows: int, files: int, seed: int = 0) -> np.ndarray | None:
    """`rows` × 32 float32 features in one array<float> column, in `files` Parquet files; returns the matrix
    when small enough to keep (for the ceiling), else None."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_file = -(-rows // files)
    keep = [] if rows <= 5_000_000 else None
    start = 0
    for i in range(files):
        n = min(per_file, rows - start)
        if n <= 0:
            break
        x = rng.normal(size=(n, FEATURES)).astype(np.float32)
        offsets = pa.array(np.arange(0, n * FEATURES + 1, FEATURES, dtype=np.int32))
        table = pa.table({"id": np.arange(start, start + n, dtype=np.int64),
                          "features": pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1)))})
        pq.write_table(table, os.path.join(folder, f"part-{i:05d}.parquet"), row_group_size=100_000)
        if keep is not None:
            keep.append(x)
        start += n
    return np.concatenate(keep) if keep is not None else None


def save_model(spark, store_root: str, data_dir: str):
    """The reference MLP (32→64→64→1, regression), briefly fitted, saved with its preprocessing."""
    import tensorflow as tf

    from sparkdl.data.preprocess import Preprocessor
    from sparkdl.data.spec import FeatureSpec
    from sparkdl.models import build
    from sparkdl.registry import ModelStore

    spec = FeatureSpec.from_dict({"features": [{"name": "features", "kind": "vector", "shape": [FEATURES]}],
                                  "label": {"name": "y", "task": "regression"}})
    sample = spark.read.parquet(data_dir).limit(2000).selectExpr("features", "features[0] * 2.0 AS y")
    prep = Preprocessor(spec).fit(sample)
    model = build("mlp", prep.signature, hidden=(64, 64))
    model.compile("adam", "mse")
    x = np.asarray(sample.select("features").toPandas()["features"].tolist(), dtype=np.float32)
    model.fit(x, x[:, 0] * 2.0, epochs=1, batch_size=256, verbose=0)
    metadata = {"preprocessing": prep.to_dict(), "signature": prep.signature.to_dict(),
                "feature_spec": spec.to_dict(), "model_name": "mlp"}
    version = ModelStore(store_root).save("bench_mlp", model, metadata)
    tf.keras.backend.clear_session()
    return version, model


def noop_write(df) -> None:
    df.write.format("noop").mode("overwrite").save()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def worker_peak_rss(spark, tasks: int = 16) -> dict[int, int]:
    """{pid: peak RSS in MiB} of the Python workers that answer `tasks` small tasks."""
    def probe(_):
        import os as _os
        import resource

        yield (_os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)

    pairs = spark.sparkContext.parallelize(range(tasks), tasks).mapPartitions(probe).collect()
    return {pid: rss for pid, rss in pairs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to score (default 1,000,000)")
    parser.add_argument("--files", type=int, default=8, help="Parquet files (≈ Spark partitions)")
    parser.add_argument("--passes", type=int, default=2, help="warm passes per path")
    parser.add_argument("--batch-size", type=int, default=10_000, help="rows per model call / Arrow batch")
    parser.add_argument("--scale", action="store_true", help="also score 10× the rows with sparkdl (time, memory)")
    parser.add_argument("--skip-peer", action="store_true", help="skip predict_batch_udf")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp folder, removed)")
    args = parser.parse_args(argv)

    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import FloatType

    from sparkdl.score import model_udf
    from sparkdl.session import get_spark

    work = args.work or tempfile.mkdtemp(prefix="bench-score-")
    spark = get_spark(master="local[2]", app_name="bench_score",
                      conf={"spark.sql.execution.arrow.maxRecordsPerBatch": str(args.batch_size)})
    try:
        data_dir = os.path.join(work, "data")
        x = write_data(data_dir, args.rows, args.files)
        version, model = save_model(spark, os.path.join(work, "models"), data_dir)
        df = spark.read.parquet(data_dir)
        rows = args.rows
        print(f"rows={rows:,} features={FEATURES} partitions={df.rdd.getNumPartitions()} "
              f"batch={args.batch_size} model={version} (MLP 32-64-64-1)")

        # ceiling: in-process predict on the same numpy rows
        model.predict(x[:args.batch_size], batch_size=args.batch_size, verbose=0)
        t_ceiling = timed(lambda: model.predict(x, batch_size=args.batch_size, verbose=0))

        score = model_udf(version, batch_size=args.batch_size)
        t_sdl_cold = timed(lambda: noop_write(df.select("id", score("features"))))

        model_path = str(version.path / "model.keras")

        def make_predict_fn():
            import tensorflow as tf

            m = tf.keras.models.load_model(model_path, compile=False)

            def predict(inputs: np.ndarray) -> np.ndarray:
                return m.predict(inputs, batch_size=args.batch_size, verbose=0)[:, 0]

            return predict

        peer = predict_batch_udf(make_predict_fn, return_type=FloatType(), batch_size=args.batch_size,
                                 input_tensor_shapes=[[FEATURES]])
        t_peer_cold = None if args.skip_peer else timed(lambda: noop_write(df.select("id", peer("features"))))

        sdl, pbu = [], []
        for _ in range(args.passes):  # interleaved, so both see the same machine load
            sdl.append(timed(lambda: noop_write(df.select("id", score("features")))))
            if not args.skip_peer:
                pbu.append(timed(lambda: noop_write(df.select("id", peer("features")))))
        t_sdl, t_pbu = min(sdl), (min(pbu) if pbu else None)

        def rate(t):
            return rows / t if t else float("nan")

        print(f"{'path':42s} {'rows/s':>12s}")
        print(f"{'model.predict in-process (ceiling)':42s} {rate(t_ceiling):12,.0f}")
        print(f"{'sparkdl model_udf, warm (best of passes)':42s} {rate(t_sdl):12,.0f}")
        print(f"{'sparkdl model_udf, cold first pass':42s} {rate(t_sdl_cold):12,.0f}")
        if not args.skip_peer:
            print(f"{'predict_batch_udf, warm (best of passes)':42s} {rate(t_pbu):12,.0f}")
            print(f"{'predict_batch_udf, cold first pass':42s} {rate(t_peer_cold):12,.0f}")
        ok = True
        share = t_ceiling / t_sdl
        print(f"sparkdl warm / ceiling             = {share:6.2f}  (target >= 0.60)")
        ok &= share >= 0.6
        if not args.skip_peer:
            speedup = t_pbu / t_sdl
            print(f"sparkdl warm / predict_batch_udf warm = {speedup:6.2f}x (target >= 3)")
            print(f"sparkdl cold / predict_batch_udf cold = {t_peer_cold / t_sdl_cold:6.2f}x")
            ok &= speedup >= 3.0

        if args.scale:
            rss_before = worker_peak_rss(spark)
            big_dir = os.path.join(work, "data10x")
            write_data(big_dir, rows * 10, args.files * 10, seed=1)
            big = spark.read.parquet(big_dir)
            t_big = timed(lambda: noop_write(big.select("id", score("features"))))
            rss_after = worker_peak_rss(spark)
            ratio = t_big / t_sdl
            print(f"scale: {rows * 10:,} rows in {t_big:.1f}s ({rate(t_big) * 10:,.0f} rows/s); "
                  f"time ratio 10x/1x = {ratio:.2f} (target <= 11)")
            print(f"scale: peak RSS per Python worker (MiB) after 1x: {sorted(rss_before.values())}, "
                  f"after 10x: {sorted(rss_after.values())}")
            grown = max(rss_after.values()) - max(rss_before.values())
            print(f"scale: peak RSS growth {grown} MiB (flat = within 25% of the 1x peak)")
            ok &= ratio <= 11 and grown <= 0.25 * max(rss_before.values())
        print("targets met" if ok else "targets NOT met (see figures above; shared machines are noisy)")
        return 0
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
