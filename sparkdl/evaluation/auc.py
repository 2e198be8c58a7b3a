"""Exact ROC AUC per group from per-(group, score) counts: the Mann–Whitney U statistic with average ranks for tied
scores, from one ordered scan (`sparkdl.ordered_scan`); integer arithmetic until the final division, so it equals
`sklearn.metrics.roc_auc_score` on the same data."""
from __future__ import annotations

from typing import Any

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
