#!/usr/bin/env python
"""gRPC round trips of sparkdl's public calls on a Spark Connect session (issue 46): each call's requests to the
server, counted at the client (`SparkConnectClient`: plan analyses, executions, config reads), for the first call
of a session and a later one. Every round trip is a network latency on a remote cluster; a count is exact where a
timing on a shared machine is noise. Current stack only (the Connect client).

    .venv-current/bin/python scripts/benchmarks/bench_connect_round_trips.py
"""
from __future__ import annotations

import collections
import functools
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))

COUNTED = ("_analyze", "_execute", "_execute_and_fetch_as_iterator", "config")


def count_requests():
    """A Counter of the client's requests by kind, filled while it exists."""
    from pyspark.sql.connect.client import core

    counts: collections.Counter = collections.Counter()
    for name in COUNTED:
        original = getattr(core.SparkConnectClient, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            kind = {"_analyze": "analyze", "config": "config"}.get(_name, "execute")
            counts[kind] += 1
            return _original(self, *args, **kwargs)

        setattr(core.SparkConnectClient, name, functools.wraps(original)(counted))
    return counts


def main() -> int:
    from test_score_udf import DIGITS_SPEC, digits_rows, train_and_save

    from sparkdl.data.spec import FeatureSpec
    from sparkdl.lake import read_table, write_table
    from sparkdl.registry import ModelStore
    from sparkdl.score import build_index, score_dataframe, similar
    from sparkdl.session import get_spark
    from sparkdl.train import KerasEstimator

    spark = get_spark(remote="local[2]")
    counts = count_requests()
    work = tempfile.mkdtemp(prefix="bench-round-trips-")
    store = ModelStore(os.path.join(work, "models"))
    df = spark.createDataFrame(digits_rows(), "id long, pixels array<float>, digit int")
    version, _, _ = train_and_save(store, "digits", DIGITS_SPEC, df, "mlp", {"hidden": (16,)}, epochs=1)
    df.write.parquet(os.path.join(work, "digits.parquet"))
    scan = spark.read.parquet(os.path.join(work, "digits.parquet"))
    table = os.path.join(work, "lake", "digits")
    estimator = KerasEstimator(model="mlp", feature_spec=FeatureSpec.from_dict(DIGITS_SPEC), epochs=1, num_proc=2,
                               batch_size=64, model_store=str(store.root), model_name="digits_fit")
    calls = [
        ("write_table (a DataFrame to a new Delta version)", lambda: write_table(df, table, mode="overwrite")),
        ("read_table(...).count()", lambda: read_table(table)[0].count()),
        ("score_dataframe(parquet scan).collect()",
         lambda: score_dataframe(scan, version, keep_columns=["id"], store=store).collect()),
        ("build_index (2 parts)", lambda: build_index(version, df, keep_columns=["id"], partitions=2,
                                                       overwrite=True, store=store)),
        ("similar(approximate=True, k=5) on 10 queries",
         lambda: similar(version, df.limit(10), approximate=True, k=5, store=store).collect()),
        ("KerasEstimator.fit(Delta table), 2 processes", lambda: estimator.fit(table)),
    ]
    print(f"{'public call':<52} {'first call':>28} {'later call':>28}")
    for label, call in calls:
        figures = []
        for _ in range(2):
            counts.clear()
            call()
            figures.append(f"{sum(counts.values())} ({counts['analyze']} an, {counts['execute']} ex, "
                           f"{counts['config']} cf)")
        print(f"{label:<52} {figures[0]:>28} {figures[1]:>28}")
    print("an: plan analyses (schemas, input files), ex: executions, cf: configuration reads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
