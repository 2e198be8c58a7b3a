"""Benchmark sparkdl.lake against plain Spark Parquet I/O on the same data, in one run.

* write: `write_table(df, table)` (Parquet files by executors + footer stats + one Delta commit) vs
  `df.write.parquet(path)`; target ratio >= 0.8.
* read: `read_table(table)` (delta-rs snapshot + Spark scan of exactly its files) vs `spark.read.parquet` of the
  folder holding those same files; target ratio >= 0.95.

Each side runs `--repeat` times, alternating, and the median is reported. Reads are forced with the `noop` sink
(every column is decoded, nothing is written). Usage: `python scripts/benchmarks/bench_lake.py --rows 200000`.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows in the test table (default 2,000,000)")
    parser.add_argument("--features", type=int, default=16, help="float columns, also stored as one array<float>")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; the median is reported")
    parser.add_argument("--partitions", type=int, default=4, help="Spark partitions of the written data")
    args = parser.parse_args(argv)

    from pyspark.sql import functions as F

    from sparkdl.lake import read_table, write_table
    from sparkdl.session import get_spark, work_dir

    spark = get_spark(master="local[2]", app_name="bench-lake")
    folder = Path(tempfile.mkdtemp(prefix="bench-lake-", dir=work_dir()))
    try:
        cols = [F.col("id"), (F.col("id") % 10).cast("int").alias("label")]
        cols += [F.rand(seed=k).cast("float").alias(f"x{k}") for k in range(args.features)]
        cols += [F.array(*[F.rand(seed=100 + k).cast("float") for k in range(args.features)]).alias("vec")]
        cols += [F.concat(F.lit("row-"), F.col("id").cast("string")).alias("key")]
        df = spark.range(args.rows, numPartitions=args.partitions).select(*cols).cache()
        df.count()  # materialize once: both writers then measure writing, not generating

        write_lake, write_parquet, tables = [], [], []
        for k in range(args.repeat):
            target = folder / f"plain-{k}"
            write_parquet.append(_time(lambda: df.write.mode("overwrite").parquet(str(target))))
            table = folder / f"table-{k}"
            write_lake.append(_time(lambda: write_table(df, table, mode="error")))
            tables.append(table)
        df.unpersist()

        snap = read_table(tables[0])[1]
        same_files = str(Path(snap.files[0].removeprefix("file://")).parent)  # the folder of exactly those files
        read_lake, read_parquet = [], []
        for _ in range(args.repeat):
            read_parquet.append(_time(lambda: spark.read.parquet(same_files).write.format("noop")
                                      .mode("overwrite").save()))
            read_lake.append(_time(lambda: read_table(tables[0])[0].write.format("noop").mode("overwrite").save()))

        def rate(seconds: list[float]) -> float:
            return args.rows / statistics.median(seconds)

        print(f"rows={args.rows:,} features={args.features} files={snap.num_files} repeat={args.repeat} "
              f"(median of runs; local[2])")
        print(f"write  df.write.parquet      {rate(write_parquet):>14,.0f} rows/s")
        print(f"write  lake.write_table      {rate(write_lake):>14,.0f} rows/s")
        print(f"read   spark.read.parquet    {rate(read_parquet):>14,.0f} rows/s")
        print(f"read   lake.read_table       {rate(read_lake):>14,.0f} rows/s")
        write_ratio = rate(write_lake) / rate(write_parquet)
        read_ratio = rate(read_lake) / rate(read_parquet)
        print(f"ratio  write_table / df.write.parquet    = {write_ratio:.2f}  (target >= 0.80)")
        print(f"ratio  read_table / spark.read.parquet   = {read_ratio:.2f}  (target >= 0.95)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
