"""Drift in time windows: every window and slice of a monitored table against the reference (the training data)
and against the window before it, from one pass over the monitored table.

The reference fixes the buckets: quantile bins of each numeric column (`approxQuantile`), the most frequent
categories of each string/boolean column (plus "other" and null), and each numeric column's range. The monitored
table is then read once: each task takes its Arrow batches, puts every row in its slices (as in
`sparkdl.evaluation.slices`) and each value in its bucket (numpy `searchsorted`, the same rule as `_Buckets.bucket`),
and counts rows, sums values (each bucket's mean places its mass for the Wasserstein distance) and counts values out
of the reference's range per (window, slice, column, bucket) with `bincount`; Spark adds the tasks' partial counts.
Every statistic of every window, slice and column comes from these counts on the driver, with `sparkdl.monitor`'s
formulas (PSI, Jensen-Shannon distance, Wasserstein distance normalized by the reference's deviation, binned
Kolmogorov-Smirnov, χ² p-value, null rate) plus the out-of-range rate.

Thresholds are constants, or learned from the reference as NannyML does: the reference (when it has the timestamp
column) is cut into the same windows, each window's statistic against the whole reference is computed from the
same aggregation, and the threshold is their mean + `sigma` standard deviations (for the χ² p-value, mean -
`sigma` deviations, floored at 0).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkdl.config import options_from_mapping
from sparkdl.errors import ConfigError, ValidationError
from sparkdl.evaluation.slices import OVERALL, Slice, check_slices, slice_keys
from sparkdl.log import get_logger
from sparkdl.monitor import (  # one copy of the drift formulas
    NULL,
    OTHER,
    binned_ks,
    binned_wasserstein,
    chi2_pvalue,
    drift_value,
    jensen_shannon,
    psi_value,
    resolve_columns,
    top_categories,
)

log = get_logger("monitoring.windowed")

# statistic -> (constant threshold, whether an alert is a value ABOVE it)
STATISTICS = {"psi": (0.2, True), "js_distance": (0.1, True), "wasserstein_normalized": (0.1, True),
              "ks": (0.1, True), "chi2_p": (0.01, False), "null_rate": (0.05, True),
              "out_of_range_rate": (0.05, True)}
BASELINES = ("reference", "previous")


@dataclass(frozen=True)
class MonitorOptions:
    """How a table is monitored.

    Params:
        window: the window length, a Spark interval ("1 day", "6 hours").
        bins: quantile bins of numeric columns; max_categories: categories kept by name.
        thresholds: statistic -> constant threshold (see STATISTICS); a statistic not named is learned from the
            reference's windows when `learn_thresholds` and the reference has the timestamp column, else its
            default constant.
        sigma: the learned threshold's width in standard deviations.
        min_window_rows: a (window, slice) with fewer rows gets no statistics (reported with its count).
    """

    window: str = "1 day"
    bins: int = 10
    max_categories: int = 20
    thresholds: dict[str, float] = field(default_factory=dict)
    learn_thresholds: bool = True
    sigma: float = 3.0
    min_window_rows: int = 30
    epsilon: float = 1e-4

    def __post_init__(self):
        unknown = sorted(set(self.thresholds) - set(STATISTICS))
        if unknown:
            raise ConfigError(f"thresholds: unknown statistic(s) {unknown}; known: {', '.join(STATISTICS)}")
        if not isinstance(self.bins, int) or self.bins < 2:
            raise ConfigError(f"bins must be an integer >= 2, got {self.bins!r}")
        if not isinstance(self.window, str) or not self.window.strip():
            raise ConfigError(f"window must be a Spark interval such as '1 day', got {self.window!r}")

    @classmethod
    def from_dict(cls, values: dict | None, where: str = "monitor") -> MonitorOptions:
        """From a mapping such as its YAML section; ConfigError names an unknown key."""
        return options_from_mapping(cls, values, where)


def edges_below(value: Column, edges: Sequence[float]) -> Column:
    """How many of `edges` are <= `value` (its bin among edges): a balanced sum of comparisons, compiled (a
    higher-order `filter` runs interpreted) and only log2(len(edges)) deep (Spark Connect caps an expression's
    nesting depth)."""
    terms = [(value >= F.lit(float(e))).cast("int") for e in edges]
    if not terms:
        return F.lit(0)
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


@dataclass(frozen=True)
class _Buckets:
    """The reference's buckets of one column: numeric edges and range, or kept categories."""

    name: str
    kind: str
    value: Column
    edges: tuple[float, ...] = ()
    low: float | None = None
    high: float | None = None
    categories: tuple[str, ...] = ()

    @property
    def size(self) -> int:  # buckets, the null bucket last
        return (len(self.edges) + 1 if self.kind != "categorical" else len(self.categories) + 1) + 1

    def bucket(self) -> Column:
        # flat expressions (no chain of CASEs or sums): Spark Connect caps an expression's nesting depth
        v = self.value
        null = self.size - 1
        if self.kind == "categorical":
            position = F.array_position(F.array(*[F.lit(c) for c in self.categories] or [F.lit(NULL)]), v)
            index = F.when(position > 0, position - 1).otherwise(F.lit(len(self.categories)))  # else "other"
            return F.when(v == F.lit(NULL), F.lit(null)).otherwise(index.cast("int"))
        return F.when(v.isNull(), F.lit(null)).otherwise(edges_below(v, self.edges))

    def out_of_range(self) -> Column:
        if self.kind == "categorical" or self.low is None:
            return F.lit(0)
        return F.when((self.value < F.lit(self.low)) | (self.value > F.lit(self.high)), 1).otherwise(0)


def monitor_frames(reference: DataFrame, current: DataFrame, timestamp: str, columns: Sequence[str] | None = None,
                   slices: Sequence[Slice] = (), options: MonitorOptions = MonitorOptions()) -> dict[str, Any]:
    """Drift of each window (of `timestamp`) and slice of `current`, per column, against `reference` and against
    the previous window.

    Returns {"windows": [{"start", "end", "slice", "rows"}], "drift": [records: window start/end, slice,
    column, statistic, baseline ("reference" | "previous"), value, threshold, alert], "thresholds": {statistic:
    {"value", "learned": bool}}, "alerts": the alerting records}.

    Raises:
        ValidationError / ConfigError: a missing or non-timestamp `timestamp` column, missing or unsupported
            columns, bad slices; an empty reference.
    """
    for frame, side in ((current, "monitored"), (reference, "reference")):
        if side == "monitored" or timestamp in frame.columns:
            field_ = next((f for f in frame.schema.fields if f.name == timestamp), None)
            if field_ is None or not isinstance(field_.dataType, (T.TimestampType, T.TimestampNTZType, T.DateType)):
                found = f"it is {field_.dataType.simpleString()}" if field_ else f"columns: {frame.columns}"
                raise ValidationError(f"the {side} table needs a timestamp column {timestamp!r}; {found}")
    check_slices(slices, current, "the monitored table")
    kinds, skipped = resolve_columns(reference, current, [c for c in columns] if columns else None)
    kinds = {n: k for n, k in kinds.items() if n != timestamp}
    buckets = _reference_buckets(reference, kinds, options)
    window = F.window(F.col(f"`{timestamp}`"), options.window)
    cur = _counts(current, buckets, slices, window)
    ref_has_time = timestamp in reference.columns
    ref_slices = [s for s in slices if all(c in reference.columns for c in s.columns) and not s.where]
    ref = _counts(reference, buckets, ref_slices, window if ref_has_time else None)
    whole_ref = _merge_windows(ref)
    thresholds = _thresholds(ref, whole_ref, buckets, options, ref_has_time)

    records, windows = [], []
    by_slice: dict[str, list] = {}
    for key in sorted(cur):
        by_slice.setdefault(key[1], []).append(key[0])
    for slice_name, starts in by_slice.items():
        previous = None
        for start in starts:
            counts = cur[(start, slice_name)]
            windows.append({"start": start[0], "end": start[1], "slice": slice_name, "rows": counts["rows"]})
            if counts["rows"] < options.min_window_rows:
                previous = None
                continue
            baseline = whole_ref.get(slice_name) or whole_ref[OVERALL]
            for base_name, base in (("reference", baseline), ("previous", previous)):
                if base is None:
                    continue
                for column, stats in _statistics(base, counts, buckets, options).items():
                    for stat, value in stats.items():
                        limit = thresholds[stat]["value"]
                        above = STATISTICS[stat][1]
                        alert = value is not None and (value > limit if above else value < limit)
                        records.append({"window_start": start[0], "window_end": start[1], "slice": slice_name,
                                        "column": column, "statistic": stat, "baseline": base_name,
                                        "value": value, "threshold": limit, "alert": bool(alert)})
            previous = counts
    alerts = [r for r in records if r["alert"]]
    if alerts:
        log.warning("%d drift alert(s) over %d window(s): %s", len(alerts), len(windows),
                    ", ".join(sorted({f"{r['column']}.{r['statistic']}" for r in alerts})[:10]))
    return {"windows": windows, "drift": records, "thresholds": thresholds, "alerts": alerts,
            "skipped": skipped, "columns": kinds}


def _reference_buckets(reference: DataFrame, kinds: dict[str, str], options: MonitorOptions) -> list[_Buckets]:
    if reference.isEmpty():
        raise ValidationError("the reference table is empty: monitoring needs the training data's distribution")
    numeric = {n: drift_value(n, k) for n, k in kinds.items() if k != "categorical"}
    categorical = {n: drift_value(n, k) for n, k in kinds.items() if k == "categorical"}
    out = []
    if numeric:
        probes = [i / options.bins for i in range(1, options.bins)]
        staged = reference.select(*[v.alias(f"_q{i}") for i, v in enumerate(numeric.values())])
        quantiles = staged.approxQuantile(list(staged.columns), probes, 1e-3)
        ranges = staged.agg(*[F.min(c).alias(f"lo{i}") for i, c in enumerate(staged.columns)],
                            *[F.max(c).alias(f"hi{i}") for i, c in enumerate(staged.columns)]).first()
        for i, (name, value) in enumerate(numeric.items()):
            out.append(_Buckets(name, kinds[name], value, tuple(sorted(set(quantiles[i]))), ranges[f"lo{i}"],
                                ranges[f"hi{i}"]))
    if categorical:
        cats = top_categories(reference, categorical, None, options.max_categories)
        for i, (name, value) in enumerate(categorical.items()):
            out.append(_Buckets(name, "categorical", value,
                                categories=tuple(v for v, _, _ in cats[i] if v != NULL)))
    return out


def _counts(frame: DataFrame, buckets: list[_Buckets], slices: Sequence[Slice], window: Column | None) -> dict:
    """{((window start, end) | (None, None), slice name): {"rows", column: {"n": [per bucket], "sum": [...],
    "sq", "oor"}}} from one pass: each task counts its rows' buckets per (window, slice, column) with numpy
    (`_bucket_counter`), and Spark adds the tasks' partial counts (small: windows × slices × columns × buckets)."""
    none = F.lit(None).cast("long")
    win = (F.struct(F.unix_micros(window.start.cast("timestamp")).alias("s"),
                    F.unix_micros(window.end.cast("timestamp")).alias("e"))
           if window is not None else F.struct(none.alias("s"), none.alias("e")))
    staged = frame.select(win.alias("_w"), slice_keys(slices).alias("_k"),
                          *[b.value.alias(f"_v{i}") for i, b in enumerate(buckets)])
    schema = "ws long, we long, d string, sv string, c int, b int, n long, total double, sq double, oor long"
    grouped = (staged.mapInArrow(_bucket_counter(buckets), schema)
               .groupBy("ws", "we", "d", "sv", "c", "b")
               .agg(F.sum("n").alias("n"), F.sum("total").alias("total"), F.sum("sq").alias("sq"),
                    F.sum("oor").alias("oor"))
               .select(F.timestamp_micros("ws").alias("ws"), F.timestamp_micros("we").alias("we"), "d", "sv", "c",
                       "b", "n", "total", "sq", "oor")).collect()
    out: dict = {}
    for row in grouped:
        name = slice_name(row["d"], row["sv"], slices)
        entry = out.setdefault(((row["ws"], row["we"]), name), {"rows": 0})
        b = buckets[row["c"]]
        col = entry.setdefault(b.name, {"n": [0] * b.size, "sum": [0.0] * b.size, "sq": 0.0, "oor": 0})
        col["n"][row["b"]] += int(row["n"])
        col["sum"][row["b"]] += float(row["total"] or 0.0)
        col["sq"] += float(row["sq"] or 0.0)
        col["oor"] += int(row["oor"])
    for entry in out.values():
        entry["rows"] = max(sum(v["n"]) for k, v in entry.items() if k != "rows")
    return out


def _bucket_counter(buckets: list[_Buckets]):
    """The mapInArrow function of `_counts`: per task, for each (window, slice entry) of its rows and each column,
    the count, sum, sum of squares and out-of-range count of the values in each bucket — the buckets of
    `_Buckets.bucket` (edges at or below the value; categories by position, "other", the null bucket last)."""
    specs = [(b.kind, np.asarray(b.edges, np.float64), b.low, b.high, list(b.categories), b.size) for b in buckets]
    width = max(size for *_, size in specs)

    def count(batches):
        import pandas as pd
        import pyarrow as pa

        totals: dict[tuple, np.ndarray] = {}  # (ws, we, d, sv) -> (4, columns, width): n, sum, sq, oor
        for batch in batches:
            if batch.num_rows == 0:
                continue
            w = batch.column("_w")
            ws = w.field("s").to_numpy(zero_copy_only=False)
            we = w.field("e").to_numpy(zero_copy_only=False)
            keys = batch.column("_k")
            lengths = keys.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
            parent = np.repeat(np.arange(batch.num_rows), lengths)
            entries = keys.flatten()
            frame = pd.DataFrame({"ws": ws[parent], "we": we[parent],
                                  "d": entries.field("slice").to_numpy(zero_copy_only=False),
                                  "sv": entries.field("value").to_numpy(zero_copy_only=False)})
            ids, uniques = pd.MultiIndex.from_frame(frame).factorize()
            n_keys = len(uniques)
            acc = np.zeros((4, len(specs), n_keys, width))
            for c, (kind, edges, low, high, categories, size) in enumerate(specs):
                column = batch.column(f"_v{c}")
                if kind == "categorical":
                    values = column.to_numpy(zero_copy_only=False)
                    index = pd.Index(categories).get_indexer(values)
                    bucket = np.where(index >= 0, index, len(categories))
                    bucket = np.where(values == NULL, size - 1, bucket)
                    v = np.zeros(batch.num_rows)
                    oor = np.zeros(batch.num_rows)
                else:
                    v = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
                    null = np.isnan(v)
                    bucket = np.where(null, size - 1, np.searchsorted(edges, np.where(null, 0.0, v), side="right"))
                    oor = ((v < low) | (v > high)).astype(float) if low is not None else np.zeros(batch.num_rows)
                    v = np.where(null, 0.0, v)
                cell = ids * width + bucket[parent]
                for k, weights in enumerate((None, v[parent], (v * v)[parent], oor[parent])):
                    acc[k, c] += np.bincount(cell, weights=weights, minlength=n_keys * width).reshape(n_keys, width)
            for i, key in enumerate(uniques):
                key = tuple(None if isinstance(x, float) and np.isnan(x) else x for x in key)
                totals[key] = totals[key] + acc[:, :, i, :] if key in totals else acc[:, :, i, :].copy()
        rows = {name: [] for name in ("ws", "we", "d", "sv", "c", "b", "n", "total", "sq", "oor")}
        for (ws_, we_, d, sv), acc in totals.items():
            for c, b in zip(*np.nonzero(acc[0])):
                for name, value in (("ws", ws_), ("we", we_), ("d", d), ("sv", sv), ("c", int(c)), ("b", int(b)),
                                    ("n", int(acc[0, c, b])), ("total", float(acc[1, c, b])),
                                    ("sq", float(acc[2, c, b])), ("oor", int(round(acc[3, c, b])))):
                    rows[name].append(value)
        if rows["n"]:
            yield pa.RecordBatch.from_pydict(
                {k: pa.array(v, type=t) for (k, v), t in zip(rows.items(), (
                    pa.int64(), pa.int64(), pa.string(), pa.string(), pa.int32(), pa.int32(), pa.int64(),
                    pa.float64(), pa.float64(), pa.int64()))})

    return count


def slice_name(definition: str, value: str, slices: Sequence[Slice]) -> str:
    """The slice name of a (definition, `slice_keys` value) pair of `slices` (the value itself when unknown)."""
    spec = next((s for s in slices if s.name == definition), None)
    return spec.name_of(value) if spec is not None else value


def _merge_windows(counts: dict) -> dict[str, dict]:
    """The reference's counts summed over its windows, per slice."""
    merged: dict[str, dict] = {}
    for (_, name), entry in counts.items():
        target = merged.setdefault(name, {"rows": 0})
        target["rows"] += entry["rows"]
        for column, col in entry.items():
            if column == "rows":
                continue
            t = target.setdefault(column, {"n": [0] * len(col["n"]), "sum": [0.0] * len(col["n"]), "sq": 0.0,
                                           "oor": 0})
            t["n"] = [a + b for a, b in zip(t["n"], col["n"])]
            t["sum"] = [a + b for a, b in zip(t["sum"], col["sum"])]
            t["sq"] += col["sq"]
            t["oor"] += col["oor"]
    return merged


def _statistics(base: dict, counts: dict, buckets: list[_Buckets], options: MonitorOptions) -> dict[str, dict]:
    """{column: {statistic: value}} of `counts` against `base` (both from `_counts`)."""
    out = {}
    for b in buckets:
        ref, cur = base.get(b.name), counts.get(b.name)
        if ref is None or cur is None:
            continue
        rn, cn = ref["n"], cur["n"]
        stats: dict[str, float | None] = {
            "psi": psi_value(rn, cn, options.epsilon) if sum(rn) and sum(cn) else None,
            "js_distance": jensen_shannon(rn, cn),
            "null_rate": cn[-1] / sum(cn) if sum(cn) else None,
        }
        if b.kind == "categorical":
            stats["chi2_p"] = chi2_pvalue(rn, cn)
        else:
            values_r, values_c = rn[:-1], cn[:-1]
            means_r = [s / n if n else None for s, n in zip(ref["sum"][:-1], values_r)]
            means_c = [s / n if n else None for s, n in zip(cur["sum"][:-1], values_c)]
            std = _std(ref)
            stats["wasserstein_normalized"] = binned_wasserstein(values_r, means_r, values_c, means_c, std)
            stats["ks"] = binned_ks(values_r, values_c)
            stats["out_of_range_rate"] = cur["oor"] / sum(values_c) if sum(values_c) else None
        out[b.name] = stats
    return out


def _std(ref: dict) -> float | None:
    """The reference's sample standard deviation of a numeric column, from its sums."""
    n, total = sum(ref["n"][:-1]), sum(ref["sum"][:-1])
    if n < 2:
        return None
    return math.sqrt(max(ref["sq"] - total * total / n, 0.0) / (n - 1)) or None


def _thresholds(ref_counts: dict, whole: dict, buckets: list[_Buckets], options: MonitorOptions,
                learn: bool) -> dict[str, dict]:
    """Each statistic's threshold: constant when given (or when nothing can be learned), else learned from the
    reference's windows against the whole reference (mean ± sigma deviations over windows and columns)."""
    learned: dict[str, list[float]] = {s: [] for s in STATISTICS}
    if learn and options.learn_thresholds:
        for (start, name), counts in ref_counts.items():
            if name != OVERALL or start[0] is None or counts["rows"] < options.min_window_rows:
                continue
            for stats in _statistics(whole[OVERALL], counts, buckets, options).values():
                for stat, value in stats.items():
                    if value is not None and math.isfinite(value):
                        learned[stat].append(value)
    out = {}
    for stat, (default, above) in STATISTICS.items():
        values = learned[stat]
        if stat in options.thresholds or len(values) < 3:
            out[stat] = {"value": float(options.thresholds.get(stat, default)), "learned": False}
        else:
            mean, std = float(np.mean(values)), float(np.std(values, ddof=1))
            limit = mean + options.sigma * std if above else max(mean - options.sigma * std, 0.0)
            out[stat] = {"value": limit, "learned": True, "windows": len(values)}
    return out


__all__ = ["BASELINES", "MonitorOptions", "OTHER", "STATISTICS", "monitor_frames"]
