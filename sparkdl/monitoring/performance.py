"""A binary classifier's performance per window: estimated before labels arrive, realized once they do.

**Estimated (CBPE, confidence-based performance estimation).** The model's positive-class scores are calibrated on
the reference, where labels are known: equal-frequency score bins (`approxQuantile`), each bin's positive rate at
its mean score, linear in between (histogram binning, smoothed). In a monitored window, a row with calibrated
probability p and predicted class ŷ is correct with probability p when ŷ = 1 and 1 − p otherwise, so the expected
accuracy is the mean of that; the expected ROC AUC is the Mann–Whitney statistic with each row counted p as a
positive and 1 − p as a negative (at the resolution of `auc_buckets` equal-width score buckets). Valid as long as
the relation between features and label holds (covariate shift), as for NannyML's CBPE.

**Realized.** The labels table is joined on an id, and the metrics of each window and slice come from
`sparkdl.evaluation.sliced_classification` (a window is a slice crossed with the declared ones).

Both from one aggregation over the monitored table.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from sparkdl.errors import ValidationError
from sparkdl.evaluation.sliced import SliceOptions, sliced_classification
from sparkdl.evaluation.slices import Slice, parse_slices, slice_keys
from sparkdl.monitoring.windowed import edges_below, slice_name


@dataclass(frozen=True)
class Calibration:
    """Calibration of a positive-class score: at each reference bin's mean score, the bin's positive rate;
    linear between them (histogram binning, smoothed), constant beyond the ends."""

    scores: tuple[float, ...]
    rates: tuple[float, ...]

    def apply(self, score: Column) -> Column:
        """The calibrated probability of `score`, as one flat Spark expression (no UDF, no CASE chain: either
        session kind)."""
        xs, ys = self.scores, self.rates
        slopes = [(ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]) if xs[i + 1] > xs[i] else 0.0 for i in range(len(xs) - 1)]
        i = edges_below(score, xs)  # 1-based index of the last bin mean <= score
        between = (F.element_at(F.array(*map(F.lit, ys[:-1] or ys)), i)
                   + (score - F.element_at(F.array(*map(F.lit, xs[:-1] or xs)), i))
                   * F.element_at(F.array(*map(F.lit, slopes or [0.0])), i))
        return F.when(i == 0, F.lit(ys[0])).when(i >= len(xs), F.lit(ys[-1])).otherwise(between)


def calibrate(reference: DataFrame, score: str, label: str, bins: int = 50) -> Calibration:
    """Fit the calibration of `score` (the positive-class probability) against `label` (0/1) on the reference:
    `bins` equal-frequency score bins, each bin's mean score and positive rate.

    Raises:
        ValidationError: a missing column, or a reference without both classes.
    """
    for column in (score, label):
        if column not in reference.columns:
            raise ValidationError(f"the reference has no column {column!r}; columns: {reference.columns}")
    s = F.col(f"`{score}`").cast("double")
    staged = reference.select(s.alias("s"), F.col(f"`{label}`").cast("double").alias("y")).where(
        F.col("s").isNotNull() & F.col("y").isNotNull())
    edges = sorted(set(staged.approxQuantile("s", [i / bins for i in range(1, bins)], 1e-3)))
    index = edges_below(F.col("s"), edges)
    rows = sorted(staged.groupBy(index.alias("b")).agg(F.avg("s").alias("s"), F.avg("y").alias("rate"),
                                                       F.sum("y").alias("pos"), F.count(F.lit(1)).alias("n"))
                  .collect(), key=lambda r: r["s"])
    positives, total = sum(r["pos"] for r in rows), sum(r["n"] for r in rows)
    if not 0 < positives < total:
        raise ValidationError(f"calibration needs both classes of {label!r} in the reference")
    return Calibration(tuple(float(r["s"]) for r in rows), tuple(float(r["rate"]) for r in rows))


def estimated_performance(frame: DataFrame, window: Column, score: str, calibration: Calibration,
                          slices: Sequence[Slice] = (), threshold: float = 0.5,
                          auc_buckets: int = 1000) -> list[dict[str, Any]]:
    """Expected accuracy and ROC AUC per (window, slice) of unlabeled scored rows; one aggregation.

    Returns records {window_start, window_end, slice, rows, metric ("accuracy" | "roc_auc"), value}.
    """
    s = F.col(f"`{score}`").cast("double")
    p = calibration.apply(s)
    predicted_positive = s >= F.lit(threshold)
    correct = F.when(predicted_positive, p).otherwise(1 - p)
    bucket = F.least(F.floor(s * auc_buckets).cast("int"), F.lit(auc_buckets - 1))
    staged = frame.where(s.isNotNull()).select(window.start.alias("ws"), window.end.alias("we"),
                                               slice_keys(slices).alias("_k"), p.alias("p"),
                                               correct.alias("c"), bucket.alias("b"))
    rows = staged.select("ws", "we", F.explode("_k").alias("_s"), "p", "c", "b").groupBy(
        "ws", "we", F.col("_s.slice").alias("d"), F.col("_s.value").alias("v"), "b").agg(
        F.count(F.lit(1)).alias("n"), F.sum("p").alias("pos"), F.sum("c").alias("correct")).collect()
    groups: dict[tuple, dict] = {}
    for row in rows:
        g = groups.setdefault((row["ws"], row["we"], slice_name(row["d"], row["v"], slices)),
                              {"n": 0, "correct": 0.0, "pos": np.zeros(auc_buckets), "neg": np.zeros(auc_buckets)})
        g["n"] += int(row["n"])
        g["correct"] += float(row["correct"])
        g["pos"][row["b"]] += float(row["pos"])
        g["neg"][row["b"]] += float(row["n"]) - float(row["pos"])
    out = []
    for (start, end, name), g in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0])):
        pos, neg = g["pos"], g["neg"]
        below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
        total = pos.sum() * neg.sum()
        auc = float((pos * (below + neg / 2)).sum() / total) if total else None
        for metric, value in (("accuracy", g["correct"] / g["n"]), ("roc_auc", auc)):
            out.append({"window_start": start, "window_end": end, "slice": name, "rows": g["n"],
                        "metric": metric, "value": value, "kind": "estimated"})
    return out


def realized_performance(frame: DataFrame, window: Column, score: str, label: str, slices: Sequence[Slice] = (),
                         threshold: float = 0.5, min_rows: int = 30) -> list[dict[str, Any]]:
    """Accuracy, precision, recall, F1, log loss and ROC AUC per (window, slice) of labeled scored rows.

    Returns records like `estimated_performance`'s, kind "realized".
    """
    s = F.col(f"`{score}`").cast("double")
    staged = frame.where(s.isNotNull() & F.col(f"`{label}`").isNotNull()).select(
        "*", F.date_format(window.start, "yyyy-MM-dd'T'HH:mm:ss").alias("_window"),
        F.col(f"`{label}`").cast("int").alias("y"), (s >= F.lit(threshold)).cast("int").alias("p"),
        F.array(1 - s, s).alias("prob"))
    by_window = [Slice("_window", ("_window",), top_k=100_000)]
    for spec in slices:
        if spec.where:
            by_window.append(Slice(f"_window x {spec.name}", ("_window", f"_where_{spec.name}"), top_k=100_000))
            staged = staged.withColumn(f"_where_{spec.name}", F.expr(spec.where))
        else:
            by_window.append(Slice(f"_window x {spec.name}", ("_window", *spec.columns), top_k=100_000))
    report = sliced_classification(staged, parse_slices(by_window), 2, ["0", "1"],
                                   SliceOptions(n_boot=0, min_slice_size=min_rows))
    ends = {r["_window"]: (r["ws"], r["we"]) for r in staged.select(
        "_window", window.start.alias("ws"), window.end.alias("we")).distinct().collect()}
    out = []
    for name, entry in report["slices"].items():
        if not name.startswith("_window="):
            continue
        parts = dict(part.split("=", 1) for part in name.split(", "))
        start, end = ends[parts.pop("_window")]
        slice_name = _realized_name(parts)
        if slice_name is None:
            continue
        for metric in ("accuracy", "precision", "recall", "f1", "log_loss", "roc_auc"):
            out.append({"window_start": start, "window_end": end, "slice": slice_name, "rows": entry["n"],
                        "metric": metric, "value": entry["metrics"][metric]["value"], "kind": "realized"})
    return out


def _realized_name(parts: dict[str, str]) -> str | None:
    """The slice name of a window's crossing (None for the rows outside a `where` slice)."""
    if not parts:
        return "overall"
    where = [k for k in parts if k.startswith("_where_")]
    if where:
        return where[0][len("_where_"):] if parts[where[0]] == "true" else None
    return ", ".join(f"{k}={v}" for k, v in parts.items())
