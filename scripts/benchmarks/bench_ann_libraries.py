#!/usr/bin/env python
"""Which approximate-search library `sparkdl.score.build_index` uses, by measurement (issue 47): faiss's IVF-Flat
and HNSW against usearch's HNSW, on one index part's worth of clustered rows, one thread each (one Spark task per
core), against faiss's exact flat search as the truth.

Prints per index: the build time, the search time of `--queries` queries and recall@10. usearch is measured when
installed (`pip install usearch`); it is not a dependency of sparkdl.

    .venv/bin/python scripts/benchmarks/bench_ann_libraries.py --rows 500000
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from timing import load_line

K = 10


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2000, args.dim)).astype(np.float32)
    x = (centres[rng.integers(0, 2000, args.rows)] + 0.35 * rng.normal(size=(args.rows, args.dim))).astype(np.float32)
    q = (centres[rng.integers(0, 2000, args.queries)]
         + 0.35 * rng.normal(size=(args.queries, args.dim))).astype(np.float32)
    exact = faiss.IndexFlatL2(args.dim)
    exact.add(x)
    started = time.perf_counter()
    _, truth = exact.search(q, K)
    print(f"{args.rows:,} rows × {args.dim}, {args.queries} queries, k={K}, one thread")
    exact_ms = 1e3 * (time.perf_counter() - started)
    print(f"{'exact (faiss IndexFlatL2)':<36} build {0:6.1f} s   search {exact_ms:7.1f} ms")

    def report(name: str, build_s: float, search) -> None:
        started = time.perf_counter()
        found = search()
        search_ms = 1e3 * (time.perf_counter() - started)
        hit = np.mean([len(set(found[i]) & set(truth[i])) / K for i in range(len(q))])
        print(f"{name:<36} build {build_s:6.1f} s   search {search_ms:7.1f} ms   recall@10 {hit:.3f}")

    nlist = min(int(4 * np.sqrt(args.rows)), args.rows // 39)
    started = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(args.dim), args.dim, nlist)
    ivf.train(x[rng.choice(args.rows, min(args.rows, 64 * nlist), replace=False)])
    ivf.add(x)
    build_s = time.perf_counter() - started
    for nprobe in (8, 32, 128):
        ivf.nprobe = nprobe
        report(f"faiss IVF-Flat nlist {nlist} nprobe {nprobe}", build_s, lambda: ivf.search(q, K)[1])

    started = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(args.dim, 32)
    hnsw.hnsw.efConstruction = 80
    hnsw.add(x)
    build_s = time.perf_counter() - started
    for ef in (32, 64, 128):
        hnsw.hnsw.efSearch = ef
        report(f"faiss HNSW M 32 efSearch {ef}", build_s, lambda: hnsw.search(q, K)[1])

    try:
        from usearch.index import Index
    except ImportError:
        print("usearch: not installed, skipped")
    else:
        started = time.perf_counter()
        index = Index(ndim=args.dim, metric="l2sq", dtype="f32", connectivity=16, expansion_add=80)
        index.add(np.arange(args.rows), x, threads=1)
        build_s = time.perf_counter() - started
        for ef in (32, 64, 128):
            index.expansion_search = ef
            report(f"usearch HNSW 16 expansion {ef}", build_s, lambda: index.search(q, K, threads=1).keys)
    print(load_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
