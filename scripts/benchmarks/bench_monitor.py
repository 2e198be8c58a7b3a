#!/usr/bin/env python
"""Monitoring a table in windows against one `count()` of the same table, in one run on local[2].

A Delta table of `--rows` rows × `--columns` numeric columns (standard normals; half of the columns shift by
0.5 sd in the second half of the windows) and a timestamp spread over `--windows` days, and a reference table of
`--reference-rows` rows like the first day, are GENERATED and written first. Then, each the median of `--rounds`:

* count   – `lake.read_table(table)[0].count()` (the issue's peer; it reads the Parquet footers only);
* pass    – one aggregation reading every watched column (a sum each): what one pass over the table costs;
* monitor – `sparkdl.monitoring.monitor_table` over every window (against the reference and the window before),
            overall and `--slices` slices of a `segment` column: PSI, Jensen-Shannon, normalized Wasserstein, binned
            KS, null and out-of-range rates per column, with thresholds learned from the reference's own windows.

Prints seconds, the ratios monitor / count and monitor / pass (issue 44 asks for all windows and slices in ≤ 2
passes) and the load average.

    .venv/bin/python scripts/benchmarks/bench_monitor.py --rows 10000000 --columns 50
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time

from timing import load_line, median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--columns", type=int, default=50)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--reference-rows", type=int, default=200_000)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from pyspark.sql import functions as F

    from sparkdl import lake
    from sparkdl.monitoring import MonitorOptions, monitor_table
    from sparkdl.session import get_spark

    work = tempfile.mkdtemp(prefix="bench-monitor-")
    spark = get_spark(master="local[2]", app_name="bench-monitor", conf={"spark.sql.shuffle.partitions": "4"})
    try:
        names = [f"c{i}" for i in range(args.columns)]

        def frame(rows: int, days: int, seed: int):
            day = (F.col("id") % days).cast("int")
            shift = F.when((day >= days // 2) & F.lit(days > 1), F.lit(0.5)).otherwise(F.lit(0.0))
            cols = [(F.randn(seed + i) + (shift if i % 2 == 0 else F.lit(0.0))).alias(n) for i, n in enumerate(names)]
            return spark.range(rows, numPartitions=8).select(
                F.timestamp_seconds(F.lit(1_767_225_600) + day * 86400 + (F.col("id") % 86400)).alias("ts"),
                (F.floor(F.col("id") / 7) % args.slices).cast("string").alias("segment"), *cols)

        table, reference = f"{work}/log", f"{work}/reference"
        started = time.perf_counter()
        lake.write_table(frame(args.rows, args.windows, 100), table)
        lake.write_table(frame(args.reference_rows, 1, 500), reference)
        written = time.perf_counter() - started

        def count():
            lake.read_table(table, spark=spark)[0].count()

        def one_pass():
            lake.read_table(table, spark=spark)[0].agg(*[F.sum(n) for n in names]).collect()

        def monitor():
            result = monitor_table(table, reference, "ts", columns=names,
                                   slices=[{"columns": ["segment"], "top_k": args.slices}],
                                   options=MonitorOptions(window="1 day"), spark=spark)
            overall = [w for w in result["windows"] if w["slice"] == "overall"]
            assert len(overall) == args.windows and len(result["windows"]) == args.windows * (args.slices + 1)

        count()
        base = median_seconds(count, args.rounds)
        one_pass()
        scan = median_seconds(one_pass, args.rounds)
        seconds = median_seconds(monitor, args.rounds)
        print(f"bench_monitor: {args.rows:,} rows x {args.columns} columns, {args.windows} daily windows, overall + "
              f"{args.slices} slices, reference {args.reference_rows:,} rows (written in {written:.0f} s); median of "
              f"{args.rounds} rounds on local[2]")
        print(f"  count()          {base:7.2f} s  {args.rows / base:12,.0f} rows/s")
        print(f"  one pass         {scan:7.2f} s  {args.rows / scan:12,.0f} rows/s")
        print(f"  monitor_table    {seconds:7.2f} s  {args.rows / seconds:12,.0f} rows/s  "
              f"{seconds / base:5.2f}x count(), {seconds / scan:5.2f}x one pass")
        print(load_line())
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
