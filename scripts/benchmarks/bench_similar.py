#!/usr/bin/env python
"""Approximate vs exact nearest neighbours (issue 47): `similar(..., approximate=True)` on the faiss index
`build_index` stored with the model, against today's exact `similar` over the same table, in one run.

Data: `--rows` items (default 1M) × 32 float32 features, drawn around 2,000 cluster centres (embeddings of real
catalogues are clustered), in Parquet; 100 queries drawn the same way. Model: an MLP 32→64→32→10 fitted briefly
in-process on the cluster's class and saved with its preprocessing; the embedding is its 32-wide last hidden
layer. The exact search embeds the whole table on every call; the approximate one searches the index, built once
(its time is printed too). Recall is measured against the exact answer by distance (an approximate neighbour counts
when it is no farther than the exact 10th), for several `nprobe`.

Target: recall@10 ≥ 0.95 of exact at ≥ 10× its speed, at the default `nprobe`.

    .venv/bin/python scripts/benchmarks/bench_similar.py --rows 1000000
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
from timing import load_line, median_seconds  # noqa: E402

FEATURES, CENTRES, K = 32, 2000, 10


def clustered(rng, centres: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    which = rng.integers(0, len(centres), n)
    return (centres[which] + 0.35 * rng.normal(size=(n, FEATURES))).astype(np.float32), which


def as_table(x: np.ndarray, which: np.ndarray, start: int) -> pa.Table:
    offsets = pa.array(np.arange(0, x.size + 1, FEATURES, dtype=np.int32))
    return pa.table({"id": np.arange(start, start + len(x), dtype=np.int64),
                     "features": pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1))),
                     "group": (which % 10).astype(np.int32)})


def write_items(folder: str, rows: int, centres: np.ndarray, files: int = 4) -> None:
    rng = np.random.default_rng(1)
    per_file = -(-rows // files)
    for i in range(files):
        n = min(per_file, rows - i * per_file)
        x, which = clustered(rng, centres, n)
        pq.write_table(as_table(x, which, i * per_file), os.path.join(folder, f"part-{i}.parquet"))


def save_model(spark, store_root: str, centres: np.ndarray):
    from sparkdl.data.preprocess import Preprocessor
    from sparkdl.data.spec import FeatureSpec
    from sparkdl.models import build, default_loss
    from sparkdl.registry import ModelStore

    spec = FeatureSpec.from_dict({"features": [{"name": "features", "kind": "vector", "shape": [FEATURES]}],
                                  "label": {"name": "group", "task": "multiclass", "num_classes": 10},
                                  "id_columns": ["id"]})
    x, which = clustered(np.random.default_rng(2), centres, 20_000)
    sample = spark.createDataFrame(as_table(x, which, 0).to_pandas())
    prep = Preprocessor(spec).fit(sample)
    prepared = prep.prepare_batch(as_table(x, which, 0), with_label=True)
    model = build("mlp", prep.signature, hidden=(64, 32))
    model.compile("adam", default_loss(prep.signature, "mlp"))
    model.fit(prepared.features, prepared.labels, epochs=2, batch_size=256, verbose=0)
    return ModelStore(store_root).save("bench_similar", model, {
        "preprocessing": prep.to_dict(), "signature": prep.signature.to_dict(), "feature_spec": spec.to_dict(),
        "label_classes": prep.label_classes, "model_name": "mlp"})


def recall(approx, exact) -> float:
    kth = exact.groupby("query")["distance"].max()
    hits = (approx["distance"].to_numpy() <= kth.loc[approx["query"]].to_numpy() + 1e-5).sum()
    return hits / (K * exact["query"].nunique())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    from sparkdl.score import build_index, similar
    from sparkdl.score.ann_index import DEFAULT_NPROBE
    from sparkdl.session import get_spark

    work = tempfile.mkdtemp(prefix="bench-similar-")
    try:
        spark = get_spark()
        centres = np.random.default_rng(0).normal(size=(CENTRES, FEATURES)).astype(np.float32) * 2.0
        items_dir = os.path.join(work, "items")
        os.makedirs(items_dir)
        write_items(items_dir, args.rows, centres)
        version = save_model(spark, os.path.join(work, "models"), centres)
        items = spark.read.parquet(items_dir)
        qx, qwhich = clustered(np.random.default_rng(3), centres, args.queries)
        queries = spark.createDataFrame(as_table(qx, qwhich, 10**12).to_pandas()).cache()
        queries.count()

        def exact_search():
            return similar(version, queries, items, k=K, keep_columns=["id"]).toPandas()

        exact = exact_search()  # warm: the model loaded in the Python workers
        exact_s = median_seconds(exact_search, max(1, args.rounds - 1))
        started = time.perf_counter()
        info = build_index(version, items, keep_columns=["id"], partitions=args.partitions)
        build_s = time.perf_counter() - started
        print(f"{args.rows:,} items × {FEATURES} features, {args.queries} queries, k={K}, local[2]")
        print(f"exact similar (embeds the table every call)      {exact_s:8.2f} s")
        print(f"build_index ({len(info.parts)} parts, nlist {info.parts[0].nlist}, once)        {build_s:8.2f} s")
        figures = {}
        for nprobe in sorted({8, DEFAULT_NPROBE, 128}):
            def approx_search(nprobe=nprobe):
                return similar(version, queries, approximate=True, k=K, nprobe=nprobe).toPandas()

            found = approx_search()
            seconds = median_seconds(approx_search, args.rounds)
            figures[nprobe] = (seconds, recall(found, exact))
            default = " (default)" if nprobe == DEFAULT_NPROBE else ""
            print(f"approximate, nprobe {nprobe:>3}{default:<10}                 {seconds:8.2f} s   "
                  f"recall@10 {figures[nprobe][1]:.3f}   speed-up {exact_s / seconds:5.1f}x")
        seconds, hit = figures[DEFAULT_NPROBE]
        print(f"default nprobe: recall {hit:.3f} (target >= 0.95), {exact_s / seconds:.1f}x exact "
              f"(target >= 10x)")
        print(load_line())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
