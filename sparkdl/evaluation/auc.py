"""Exact ROC AUC per group: the Mann–Whitney U statistic with average ranks for tied scores, in integer arithmetic
until the final division, so it equals `sklearn.metrics.roc_auc_score` on the same data.

* `auc_by_group`: from per-(group, score) counts, by one ordered scan (`sparkdl.ordered_scan`);
* `auc_by_groups_sorted`: rows that each belong to several groups (slices) sorted ONCE by score, each partition
  (a contiguous range of scores: range partitioning keeps tied scores together) counting every group's running
  negatives in pandas. A row in g groups is sorted once, not g times.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from sparkdl.ordered_scan import ordered_scan


def auc_by_group(counts: DataFrame) -> dict[Any, float | None]:
    """Exact ROC AUC per group g from per-(g, score v) counts: `a` negatives, `b` positives.

    Twice the Mann–Whitney U of one score value is pos·(2·neg_below + neg_at) = b·(2A − a), with A the running
    negative count including the value. None for a group without positives or without negatives.
    """
    dec = "decimal(38,0)"

    def twice_u(A: Column, B: Column) -> Column:  # noqa: N803 - the scan's running sums
        return F.col("b").cast(dec) * (F.lit(2) * A - F.col("a")).cast(dec)

    parts = ordered_scan(counts, {"u2": ("sum", twice_u)})
    result: dict[Any, float | None] = {}
    state: dict[Any, list[int]] = {}
    for part in parts:
        u2, neg_before, pos, neg = state.setdefault(part["g"], [0, 0, 0, 0])
        u2 += part["u2"] + 2 * part["b_tot"] * neg_before
        state[part["g"]] = [u2, neg_before + part["a_tot"], pos + part["b_tot"], neg + part["a_tot"]]
    for group, (u2, _, pos, neg) in state.items():
        result[group] = u2 / (2 * pos * neg) if pos and neg else None
    return result


def _partition_u(batches: Iterator) -> Iterator:
    """Per group of one score-sorted partition: twice its local U (negatives below from this partition only), its
    negatives and positives, and the partition id (mapInPandas over `_pid`, `gs`, `v`, `b`)."""
    import pandas as pd

    frames = list(batches)
    if not frames:
        return
    part = pd.concat(frames, ignore_index=True)
    lengths = part["gs"].map(len).to_numpy()
    g = np.concatenate(part["gs"].to_numpy()) if lengths.sum() else np.zeros(0, np.int64)
    v, b = np.repeat(part["v"].to_numpy(), lengths), np.repeat(part["b"].to_numpy(np.int64), lengths)
    if not len(g):
        return
    cells = pd.DataFrame({"g": g, "v": v, "b": b, "a": 1 - b}).groupby(["g", "v"], sort=True)[["a", "b"]].sum()
    a, pos = cells["a"].to_numpy(np.int64), cells["b"].to_numpy(np.int64)
    groups = cells.index.get_level_values("g").to_numpy()
    running = cells.groupby(level="g")["a"].cumsum().to_numpy(np.int64)  # negatives up to and including v
    u2 = pd.Series(pos * (2 * running - a)).groupby(groups).sum()
    totals = cells.groupby(level="g")[["a", "b"]].sum()
    yield pd.DataFrame({"_pid": int(part["_pid"].iloc[0]), "g": totals.index.to_numpy(np.int64),
                        "u2": u2.reindex(totals.index).to_numpy(np.int64),
                        "a_tot": totals["a"].to_numpy(np.int64), "b_tot": totals["b"].to_numpy(np.int64)})


def auc_by_groups_sorted(rows: DataFrame) -> dict[Any, float | None]:
    """Exact ROC AUC per group from rows of `gs` (array<long>: the groups the row is in), `v` (double score) and
    `b` (1 positive, 0 negative), with one global sort by score (see the module docstring). None for a group
    without positives or without negatives."""
    ordered = rows.select("gs", "v", "b").where(F.col("v").isNotNull() & (F.size("gs") > 0)).orderBy("v") \
        .withColumn("_pid", F.spark_partition_id())
    parts = ordered.mapInPandas(_partition_u, "_pid int, g long, u2 long, a_tot long, b_tot long").collect()
    state: dict[Any, list[int]] = {}
    for part in sorted(parts, key=lambda r: r["_pid"]):  # partitions in score order
        u2, neg_before, pos, neg = state.setdefault(part["g"], [0, 0, 0, 0])
        u2 += int(part["u2"]) + 2 * int(part["b_tot"]) * neg_before
        state[part["g"]] = [u2, neg_before + int(part["a_tot"]), pos + int(part["b_tot"]), neg + int(part["a_tot"])]
    return {group: (u2 / (2 * pos * neg) if pos and neg else None) for group, (u2, _, pos, neg) in state.items()}
