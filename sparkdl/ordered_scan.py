"""A global ordered scan of count rows in Spark, summarized per partition: the exact rank statistics behind ROC AUC
(`sparkdl.evaluate`) and the two-sample Kolmogorov–Smirnov distance (`sparkdl.monitor`), with no one-task shuffle."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F


def ordered_scan(
    counts: DataFrame,
    row_aggregates: Mapping[str, tuple[str, Callable[[Column, Column], Column]]],
) -> list[dict[str, Any]]:
    """Per-partition summaries of a global ordered scan: exact rank statistics without one-task shuffles.

    `counts` has one row per (`g`, `v`): `g` a group key (int), `v` the sort key (double), and two count
    columns `a` and `b` (long). Spark sorts it globally by (g, v) (range partitioning: each partition holds a
    contiguous run of keys), then, within each (partition, g), a window computes the running sums `A` = Σa and
    `B` = Σb up to and including the row. `row_aggregates` maps an output name to (aggregate: "sum" | "max" |
    "min", fn(A, B) -> Column), evaluated per row and aggregated per (partition, g); the expression may also
    use other columns of `counts`.

    Returns one dict per (partition, g) with keys g, v_min, a_tot, b_tot and the named aggregates (Python ints
    for decimals), sorted by (g, v_min). The caller stitches partitions together with offsets: the true
    running sums of a row are its local `A`, `B` plus the totals of the earlier partitions of the same g.
    """
    ordered = counts.orderBy("g", "v").withColumn("_pid", F.spark_partition_id())
    window = (
        Window.partitionBy("_pid", "g").orderBy("v").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    # Not "A"/"B": Spark column names are case-insensitive, they would replace "a" and "b".
    scanned = ordered.withColumn("_run_a", F.sum("a").over(window)).withColumn(
        "_run_b", F.sum("b").over(window)
    )
    aggs = [F.min("v").alias("v_min"), F.sum("a").alias("a_tot"), F.sum("b").alias("b_tot")]
    for name, (how, fn) in row_aggregates.items():
        if how not in ("sum", "max", "min"):
            raise ValueError(f"row aggregate {name!r}: unknown aggregate {how!r}")
        aggs.append(getattr(F, how)(fn(F.col("_run_a"), F.col("_run_b"))).alias(name))
    rows = scanned.groupBy("_pid", "g").agg(*aggs).collect()
    out = []
    for row in rows:
        item = row.asDict()
        item.pop("_pid")
        for key, value in item.items():
            if key not in ("v_min", "g") and value is not None:
                item[key] = int(value)
        out.append(item)
    out.sort(key=lambda r: (r["g"], r["v_min"]))
    return out
