#!/usr/bin/env python
"""Evaluation by slice against the unsliced evaluation of the same predictions, in one run on local[2].

A binary predictions table (`--rows` rows: label, predicted class, class probabilities, a `segment` column of
`--segments` values; generated in Spark, cached in memory and counted first, so every timing is the evaluation's
own work over the same cached rows):

* unsliced – `classification_metrics` (today's evaluate_model maths: one confusion aggregation and the exact-AUC
             ordered scan);
* sliced   – `sliced_classification` with the overall slice plus one slice per segment (`--segments` + 1 slices),
             every metric per slice (accuracy, precision, recall, F1 and the per-class three, log loss, ECE, exact
             AUC), without bootstrap and with `--n-boot` Poisson-bootstrap replicates.

Prints seconds, rows/s and the ratios sliced / unsliced (targets of issue 43: ≤ 1.2× without bootstrap, ≤ 2× with
100 replicates), and the load average.

    .venv/bin/python scripts/benchmarks/bench_evaluate.py --rows 2000000 --segments 49 --n-boot 100
"""
from __future__ import annotations

import argparse

from timing import load_line, median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--segments", type=int, default=49)
    parser.add_argument("--n-boot", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from pyspark.sql import functions as F

    from sparkdl.evaluate import classification_metrics
    from sparkdl.evaluation import SliceOptions, parse_slices, sliced_classification
    from sparkdl.session import get_spark

    spark = get_spark(master="local[2]", app_name="bench-evaluate", conf={"spark.sql.shuffle.partitions": "4"})
    score = F.rand(1)
    y = (F.rand(2) < F.lit(0.3) + F.lit(0.4) * score).cast("int")
    df = spark.range(args.rows, numPartitions=4).select(
        y.alias("y"), (score > 0.5).cast("int").alias("p"), F.array(1 - score, score).alias("prob"),
        (F.col("id") % args.segments).cast("string").alias("segment")).cache()
    df.count()
    slices = parse_slices([{"columns": ["segment"], "top_k": args.segments}])

    def unsliced():
        classification_metrics(df, "y", "p", "prob", num_classes=2)

    def sliced(n_boot: int):
        report = sliced_classification(df, slices, 2, ["0", "1"], SliceOptions(n_boot=n_boot))
        assert len(report["slices"]) == args.segments + 1

    unsliced()  # warm: codegen, the JIT
    sliced(0)
    base = median_seconds(unsliced, args.rounds)
    plain = median_seconds(lambda: sliced(0), args.rounds)
    boot = median_seconds(lambda: sliced(args.n_boot), max(1, args.rounds - 1))
    print(f"bench_evaluate: {args.rows:,} rows, {args.segments + 1} slices, binary; median of {args.rounds} rounds "
          f"on local[2]")
    for name, seconds in (("unsliced (classification_metrics)", base), ("sliced, no bootstrap", plain),
                          (f"sliced, {args.n_boot} bootstrap replicates", boot)):
        print(f"  {name:<40} {seconds:7.2f} s  {args.rows / seconds:12,.0f} rows/s  {seconds / base:5.2f}x unsliced")
    print(load_line())
    spark.stop()


if __name__ == "__main__":
    main()
