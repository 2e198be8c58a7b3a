"""Post-deployment monitoring: data drift between training (reference) and scoring (current) data, computed in
Spark. (The history of evaluation metrics is `sparkdl.metric_history.MetricHistory`, also importable from here.)

Drift, per column kind:

* numeric columns (any Spark numeric type; NaN counts as null):
  - PSI over `bins` quantile bins whose edges come from the reference (`approxQuantile`, one pass over the
    reference for all columns); bins are [e_i, e_i+1) with open ends, duplicate edges are merged, and nulls
    get a bin of their own when either frame has any. The bin counts, null counts, means and standard
    deviations of all columns come from one aggregation per DataFrame.
  - the two-sample Kolmogorov–Smirnov statistic D = sup |F_ref − F_cur|. By default it is exact (equal to
    `scipy.stats.ks_2samp(...).statistic`): the non-null values of both frames are unioned in long format,
    counted per distinct value, sorted by Spark and scanned per partition (see
    `sparkdl.ordered_scan`). With `exact_ks=False` it is read from the binned CDFs instead (no extra
    pass, a lower bound of the exact D).
* array<numeric> columns (e.g. embeddings or a flattened image): the drift of the per-row mean of the array
  (empty or null arrays are null), handled as a numeric column; kind "array_mean".
* beside PSI and KS, from the same counts (no other pass): the Jensen-Shannon distance of the buckets, the
  Wasserstein distance of the binned values divided by the reference's standard deviation (numeric), the χ² test's
  p-value (categorical), and the null rate of each side;
* string and boolean columns: PSI over the reference's `max_categories` most frequent categories plus an
  "__other__" bucket (every other value, including values never seen in training) and a "__null__" bucket
  (nulls, always a bucket of its own).

PSI = Σ (p_cur − p_ref) · ln(p_cur / p_ref), with every bucket fraction floored at `epsilon` so that empty
buckets stay finite. A column drifts when its PSI exceeds `psi_threshold` (0.1–0.2: moderate, > 0.2:
significant, by the usual rule of thumb).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkdl.errors import Problem, ValidationError
from sparkdl.log import get_logger
from sparkdl.metric_history import MetricHistory  # noqa: F401 - its former home: `from sparkdl.monitor import` works
from sparkdl.ordered_scan import ordered_scan

log = get_logger("monitor")

OTHER = "__other__"
NULL = "__null__"
KINDS = ("numeric", "array_mean", "categorical")


# --------------------------------------------------------------------------------------------- report
@dataclass
class DriftReport:
    """The result of `drift_report`.

    `columns` maps each checked column to its figures: kind, psi, drifted, ks (numeric kinds), ks_method,
    reference/current summaries (rows, nulls, and mean/std for numeric kinds) and the bucket counts. `skipped`
    maps columns left out (only when `columns` was not given) to the reason.
    """

    columns: dict[str, dict[str, Any]]
    psi_threshold: float
    bins: int
    reference_rows: int
    current_rows: int
    skipped: dict[str, str] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    @property
    def drifted(self) -> list[str]:
        """The columns whose PSI exceeds the threshold, in column order."""
        return [name for name, figures in self.columns.items() if figures["drifted"]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole report."""
        return {
            "created_at": self.created_at,
            "psi_threshold": self.psi_threshold,
            "bins": self.bins,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "drifted": self.drifted,
            "columns": self.columns,
            "skipped": self.skipped,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)


# ------------------------------------------------------------------------------------------ column resolution
def _kind(data_type: T.DataType) -> str | None:
    if isinstance(data_type, T.NumericType):
        return "numeric"
    if isinstance(data_type, (T.StringType, T.BooleanType)):
        return "categorical"
    if isinstance(data_type, T.ArrayType) and isinstance(data_type.elementType, T.NumericType):
        return "array_mean"
    return None


def resolve_columns(
    reference: DataFrame, current: DataFrame, columns: Sequence[str] | None
) -> tuple[dict[str, str], dict[str, str]]:
    """({column: kind}, {skipped column: reason}); ValidationError for missing or unsupported explicit
    columns."""
    ref_types = {f.name: f.dataType for f in reference.schema.fields}
    cur_types = {f.name: f.dataType for f in current.schema.fields}
    skipped: dict[str, str] = {}
    if columns is None:
        names = [n for n in reference.columns if n in cur_types]
        skipped.update({n: "not in the current data" for n in reference.columns if n not in cur_types})
    else:
        if isinstance(columns, str):
            columns = [columns]
        names = list(dict.fromkeys(columns))
        if not names:
            raise ValidationError("columns is empty: name at least one column to check for drift")
        problems, messages = [], []
        for frame, types in (("reference", ref_types), ("current", cur_types)):
            missing = [n for n in names if n not in types]
            if missing:
                present = ", ".join(types)
                messages.append(f"column(s) {', '.join(map(repr, missing))} missing from the {frame} data "
                                f"(columns present: {present})")
                problems += [Problem(n, "missing column", f"present in the {frame} data", f"columns {present}")
                             for n in missing]
        if problems:
            raise ValidationError("; ".join(messages), problems)
    kinds: dict[str, str] = {}
    for name in names:
        ref_kind, cur_kind = _kind(ref_types[name]), _kind(cur_types[name])
        if ref_kind is None or (cur_kind is None and columns is not None):
            bad = ref_types[name] if ref_kind is None else cur_types[name]
            reason = (
                f"type {bad.simpleString()} is not supported: drift needs a numeric, string/boolean or "
                f"array<numeric> column"
            )
            if columns is not None:
                raise ValidationError(
                    f"column {name!r}: {reason}",
                    [Problem(name, "wrong type", found=bad.simpleString())],
                )
            skipped[name] = reason
            continue
        if ref_kind != cur_kind:
            raise ValidationError(
                f"column {name!r} is {ref_types[name].simpleString()} in the reference but "
                f"{cur_types[name].simpleString()} in the current data",
                [
                    Problem(name, "wrong type", ref_types[name].simpleString(), cur_types[name].simpleString())
                ],
            )
        kinds[name] = ref_kind
    if not kinds:
        raise ValidationError(f"no column to check for drift (skipped: {skipped or 'none'})")
    return kinds, skipped


def drift_value(name: str, kind: str) -> Column:
    """The per-row value checked for drift: double (NaN → null) for numeric kinds, string for categorical."""
    col = F.col(f"`{name}`")
    if kind == "categorical":
        return F.coalesce(col.cast("string"), F.lit(NULL))
    if kind == "array_mean":
        values = col.cast("array<double>")
        total = F.aggregate(values, F.lit(0.0), lambda acc, x: acc + x)
        value = F.when(F.size(values) > 0, total / F.size(values))
    else:
        value = col.cast("double")
    return F.when(~F.isnan(value), value)


# --------------------------------------------------------------------------------------------- drift
# (the formulas and column helpers below are shared with sparkdl.monitoring and sparkdl.serving.live_drift)
def psi_value(ref_counts: Sequence[int], cur_counts: Sequence[int], epsilon: float) -> float:
    ref_total, cur_total = sum(ref_counts), sum(cur_counts)
    psi = 0.0
    for r, c in zip(ref_counts, cur_counts, strict=True):
        p = max(r / ref_total if ref_total else 0.0, epsilon)
        q = max(c / cur_total if cur_total else 0.0, epsilon)
        psi += (q - p) * math.log(q / p)
    return psi


def jensen_shannon(ref_counts: Sequence[int], cur_counts: Sequence[int]) -> float | None:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two bucket distributions (None when one is empty)."""
    from scipy.spatial.distance import jensenshannon

    if not sum(ref_counts) or not sum(cur_counts):
        return None
    return float(jensenshannon(ref_counts, cur_counts, base=2))


def chi2_pvalue(ref_counts: Sequence[int], cur_counts: Sequence[int]) -> float | None:
    """The p-value of the χ² test that both samples come from one distribution over the buckets (the buckets
    neither sample has are left out; None with fewer than two buckets left or an empty sample)."""
    from scipy.stats import chi2_contingency

    pairs = [(r, c) for r, c in zip(ref_counts, cur_counts, strict=True) if r or c]
    if len(pairs) < 2 or not sum(r for r, _ in pairs) or not sum(c for _, c in pairs):
        return None
    return float(chi2_contingency([[r for r, _ in pairs], [c for _, c in pairs]])[1])


def binned_wasserstein(ref_bins: Sequence[int], ref_means: Sequence, cur_bins: Sequence[int], cur_means: Sequence,
                        ref_std: float | None) -> float | None:
    """Wasserstein distance between the two binned distributions, each bin's mass at the mean of its values on
    that side (exact when a bin's values are one point; otherwise off by at most the bins' spread), divided by the
    reference's standard deviation (Evidently's normalized form): None without values on a side or without
    spread."""
    from scipy.stats import wasserstein_distance

    ref = [(float(m), n) for m, n in zip(ref_means, ref_bins, strict=True) if n and m is not None]
    cur = [(float(m), n) for m, n in zip(cur_means, cur_bins, strict=True) if n and m is not None]
    if not ref or not cur or not ref_std:
        return None
    return float(wasserstein_distance([m for m, _ in ref], [m for m, _ in cur], [n for _, n in ref],
                                      [n for _, n in cur]) / ref_std)


def _numeric_aggregates(values: Mapping[str, Column], edges: Mapping[str, list[float]]) -> list[Column]:
    """One row of aggregates: per column the count and mean value per bin, non-null count, mean and sample std."""
    aggs = [F.count(F.lit(1)).alias("_rows")]
    for i, (name, value) in enumerate(values.items()):
        bucket = sum((F.when(value >= F.lit(e), 1).otherwise(0) for e in edges[name]), F.lit(0))
        bucket = F.when(value.isNotNull(), bucket)
        aggs += [
            F.sum(F.when(bucket == b, 1).otherwise(0)).alias(f"c{i}_b{b}")
            for b in range(len(edges[name]) + 1)
        ]
        aggs += [  # each bin's mean value (the Wasserstein distance places a bin's mass there)
            F.avg(F.when(bucket == b, value)).alias(f"c{i}_m{b}") for b in range(len(edges[name]) + 1)
        ]
        aggs += [
            F.count(value).alias(f"c{i}_n"),
            F.avg(value).alias(f"c{i}_mean"),
            F.stddev_samp(value).alias(f"c{i}_std"),
        ]
    return aggs


def _exact_ks(
    reference: DataFrame, current: DataFrame, values: Mapping[str, Column], ref_n: list[int], cur_n: list[int]
) -> list[float | None]:
    """Exact two-sample KS statistic per numeric column (see module docstring); None where a side has no
    values."""

    def long(frame: DataFrame, is_ref: bool) -> DataFrame:
        items = F.array(*[F.struct(F.lit(i).alias("g"), v.alias("v")) for i, v in enumerate(values.values())])
        return (
            frame.select(F.explode(items).alias("x"))
            .select("x.g", "x.v")
            .where(F.col("v").isNotNull())
            .select("g", "v", F.lit(1 if is_ref else 0).alias("a"), F.lit(0 if is_ref else 1).alias("b"))
        )

    counts = (
        long(reference, True)
        .unionByName(long(current, False))
        .groupBy("g", "v")
        .agg(F.sum("a").cast("long").alias("a"), F.sum("b").cast("long").alias("b"))
    )
    dec = "decimal(38,0)"

    def total(sizes: list[int]) -> Column:
        return F.element_at(F.array(*[F.lit(n).cast(dec) for n in sizes]), F.col("g") + 1)

    def gap(run_a: Column, run_b: Column) -> Column:  # (F_ref − F_cur) · n_ref · n_cur, exact in integers
        return run_a.cast(dec) * total(cur_n) - run_b.cast(dec) * total(ref_n)

    parts = ordered_scan(counts, {"d_max": ("max", gap), "d_min": ("min", gap)})
    offsets: dict[int, list[int]] = {}
    extremes: dict[int, int] = {}
    for part in parts:
        g = part["g"]
        off_a, off_b = offsets.get(g, (0, 0))
        shift = off_a * cur_n[g] - off_b * ref_n[g]
        extremes[g] = max(extremes.get(g, 0), abs(part["d_max"] + shift), abs(part["d_min"] + shift))
        offsets[g] = [off_a + part["a_tot"], off_b + part["b_tot"]]
    return [
        extremes.get(i, 0) / (ref_n[i] * cur_n[i]) if ref_n[i] and cur_n[i] else None
        for i in range(len(values))
    ]


def binned_ks(ref_counts: list[int], cur_counts: list[int]) -> float | None:
    ref_total, cur_total = sum(ref_counts), sum(cur_counts)
    if not ref_total or not cur_total:
        return None
    gap = run_r = run_c = 0
    for r, c in zip(ref_counts, cur_counts, strict=True):
        run_r, run_c = run_r + r, run_c + c
        gap = max(gap, abs(run_r / ref_total - run_c / cur_total))
    return gap


def top_categories(
    frame: DataFrame, values: Mapping[str, Column], keep: Mapping[int, list[str]] | None, max_categories: int
) -> list[list[tuple[str, int, int]]]:
    """Per categorical column: (category, count, column total) rows.

    keep=None (reference): the max_categories most frequent categories (ties broken by name), and NULL, with
    the column totals. keep given (current): counts of the kept categories, everything else counted under
    OTHER.
    """
    items = []
    for i, value in enumerate(values.values()):
        if keep is not None:
            value = F.when(value.isin(keep[i]), value).otherwise(F.lit(OTHER))
        items.append(F.struct(F.lit(i).alias("g"), value.alias("v")))
    counts = frame.select(F.explode(F.array(*items)).alias("x")).groupBy("x.g", "x.v").count()
    if keep is None:
        by_count = Window.partitionBy("g").orderBy(F.desc("count"), F.asc("v"))
        counts = (
            counts.withColumn("_rank", F.row_number().over(by_count))
            .withColumn("_total", F.sum("count").over(Window.partitionBy("g")))
            .where((F.col("_rank") <= max_categories) | (F.col("v") == NULL))
        )
    else:
        counts = counts.withColumn("_total", F.sum("count").over(Window.partitionBy("g")))
    out: list[list[tuple[str, int, int]]] = [[] for _ in values]
    for row in counts.collect():
        out[row["g"]].append((row["v"], int(row["count"]), int(row["_total"])))
    return out


def drift_report(
    reference_df: DataFrame,
    current_df: DataFrame,
    columns: Sequence[str] | None = None,
    bins: int = 10,
    psi_threshold: float = 0.2,
    *,
    max_categories: int = 20,
    epsilon: float = 1e-4,
    exact_ks: bool = True,
    relative_error: float = 1e-3,
) -> DriftReport:
    """Data drift of `current_df` against `reference_df` (the training data), per column; see the module
    docstring.

    Params:
        reference_df, current_df: the training data and the scoring data.
        columns: the columns to check; None checks every column present in both frames whose type is supported
            (numeric, string/boolean, array<numeric>) and lists the others in `report.skipped`.
        bins: the number of quantile bins for numeric columns (>= 2).
        psi_threshold: PSI above which a column counts as drifted.
        max_categories: categories of a string column kept by name (the reference's most frequent).
        epsilon: floor of a bucket fraction in the PSI.
        exact_ks: exact KS statistic (one more shuffle over the numeric values of both frames), else from the
            bins.
        relative_error: approxQuantile's relative error for the bin edges.
    Spark passes: reference — emptiness check, quantiles, one aggregation; current — emptiness check, one
    aggregation; one more per frame with string columns; one sort over both with exact_ks.
    Raises ValidationError: explicit columns missing from either frame (named, per frame), a column of an
    unsupported type or of different kinds in the two frames, no column left to check, an empty reference or
    current frame, or bad parameters.
    """
    if not isinstance(bins, int) or bins < 2:
        raise ValidationError(f"bins must be an integer >= 2, got {bins!r}")
    if not (isinstance(psi_threshold, (int, float)) and psi_threshold > 0):
        raise ValidationError(f"psi_threshold must be a positive number, got {psi_threshold!r}")
    if not (isinstance(max_categories, int) and max_categories >= 1):
        raise ValidationError(f"max_categories must be an integer >= 1, got {max_categories!r}")
    if not 0 < epsilon < 1:
        raise ValidationError(f"epsilon must be in (0, 1), got {epsilon!r}")
    kinds, skipped = resolve_columns(reference_df, current_df, columns)
    for frame, label in ((reference_df, "reference"), (current_df, "current")):
        if frame.isEmpty():
            raise ValidationError(f"the {label} DataFrame is empty: drift needs rows on both sides")

    numeric = {n: drift_value(n, k) for n, k in kinds.items() if k != "categorical"}
    categorical = {n: drift_value(n, k) for n, k in kinds.items() if k == "categorical"}
    figures: dict[str, dict[str, Any]] = {}
    ref_rows = cur_rows = None
    if numeric:
        found, ref_rows, cur_rows = _numeric_drift(reference_df, current_df, numeric, kinds, bins, psi_threshold,
                                                   epsilon, exact_ks, relative_error)
        figures.update(found)
    if categorical:
        found, ref_rows, cur_rows = _categorical_drift(reference_df, current_df, categorical, max_categories,
                                                       psi_threshold, epsilon)
        figures.update(found)

    report = DriftReport(
        columns={n: figures[n] for n in kinds},
        psi_threshold=float(psi_threshold),
        bins=bins,
        reference_rows=ref_rows,
        current_rows=cur_rows,
        skipped=skipped,
    )
    if report.drifted:
        log.warning("drift above PSI %.3g in column(s): %s", psi_threshold, ", ".join(report.drifted))
    return report


def _numeric_drift(reference_df: DataFrame, current_df: DataFrame, numeric: dict, kinds: dict, bins: int,
                   psi_threshold: float, epsilon: float, exact_ks: bool, relative_error: float):
    """({column: figures}, reference rows, current rows) of the numeric columns: PSI over the reference's
    quantile bins (plus a null bucket), the KS statistic, summaries. Quantiles, one aggregation per frame, and one
    sort over both with `exact_ks`."""
    probes = [i / bins for i in range(1, bins)]
    staged = reference_df.select(*[v.alias(f"_q{i}") for i, v in enumerate(numeric.values())])
    quantiles = staged.approxQuantile(list(staged.columns), probes, relative_error)
    edges = {name: sorted(set(q)) for name, q in zip(numeric, quantiles, strict=True)}
    ref_agg = reference_df.agg(*_numeric_aggregates(numeric, edges)).first()
    cur_agg = current_df.agg(*_numeric_aggregates(numeric, edges)).first()
    ref_rows, cur_rows = int(ref_agg["_rows"]), int(cur_agg["_rows"])
    ref_n = [int(ref_agg[f"c{i}_n"]) for i in range(len(numeric))]
    cur_n = [int(cur_agg[f"c{i}_n"]) for i in range(len(numeric))]
    ks = _exact_ks(reference_df, current_df, numeric, ref_n, cur_n) if exact_ks else None
    figures = {}
    for i, name in enumerate(numeric):
        ref_bins = [int(ref_agg[f"c{i}_b{b}"]) for b in range(len(edges[name]) + 1)]
        cur_bins = [int(cur_agg[f"c{i}_b{b}"]) for b in range(len(edges[name]) + 1)]
        ref_null, cur_null = ref_rows - ref_n[i], cur_rows - cur_n[i]
        with_nulls = ref_null or cur_null
        psi = psi_value(ref_bins + [ref_null] * bool(with_nulls), cur_bins + [cur_null] * bool(with_nulls), epsilon)
        reference = _summary(ref_rows, ref_null, ref_agg, i)
        figures[name] = {
            "kind": kinds[name], "psi": psi, "drifted": psi > psi_threshold,
            "ks": ks[i] if ks is not None else binned_ks(ref_bins, cur_bins),
            "ks_method": "exact" if ks is not None else "binned",
            "js_distance": jensen_shannon(ref_bins + [ref_null], cur_bins + [cur_null]),
            "wasserstein_normalized": binned_wasserstein(
                ref_bins, [ref_agg[f"c{i}_m{b}"] for b in range(len(ref_bins))],
                cur_bins, [cur_agg[f"c{i}_m{b}"] for b in range(len(cur_bins))], reference["std"]),
            "null_rate": {"reference": ref_null / ref_rows if ref_rows else None,
                          "current": cur_null / cur_rows if cur_rows else None},
            "reference": reference,
            "current": _summary(cur_rows, cur_null, cur_agg, i),
            "bins": {"edges": edges[name], "reference": ref_bins, "current": cur_bins,
                     "null": {"reference": ref_null, "current": cur_null}},
        }
    return figures, ref_rows, cur_rows


def _categorical_drift(reference_df: DataFrame, current_df: DataFrame, categorical: dict, max_categories: int,
                       psi_threshold: float, epsilon: float):
    """({column: figures}, reference rows, current rows) of the categorical columns: PSI over the reference's
    `max_categories` most frequent values, "other" and null. One job per frame."""
    ref_cats = top_categories(reference_df, categorical, None, max_categories)
    keep = {i: [v for v, _, _ in rows] + [NULL] for i, rows in enumerate(ref_cats)}
    cur_cats = top_categories(current_df, categorical, keep, max_categories)
    figures, ref_rows, cur_rows = {}, None, None
    for i, name in enumerate(categorical):
        ref_total = ref_cats[i][0][2]
        ref_counts = {v: n for v, n, _ in ref_cats[i]}
        ref_counts[OTHER] = ref_total - sum(ref_counts.values())
        ref_counts.setdefault(NULL, 0)  # nulls always have their own bucket, never "other"
        cur_counts = {v: n for v, n, _ in cur_cats[i]}
        cur_total = sum(cur_counts.values())
        buckets = list(ref_counts)
        psi = psi_value([ref_counts[b] for b in buckets], [cur_counts.get(b, 0) for b in buckets], epsilon)
        ref_rows, cur_rows = ref_total, cur_total
        ref_list, cur_list = [ref_counts[b] for b in buckets], [cur_counts.get(b, 0) for b in buckets]
        figures[name] = {
            "kind": "categorical", "psi": psi, "drifted": psi > psi_threshold, "ks": None, "ks_method": None,
            "js_distance": jensen_shannon(ref_list, cur_list), "chi2_p": chi2_pvalue(ref_list, cur_list),
            "null_rate": {"reference": ref_counts.get(NULL, 0) / ref_total if ref_total else None,
                          "current": cur_counts.get(NULL, 0) / cur_total if cur_total else None},
            "reference": {"rows": ref_total, "nulls": ref_counts.get(NULL, 0)},
            "current": {"rows": cur_total, "nulls": cur_counts.get(NULL, 0)},
            "categories": {"reference": ref_counts, "current": {b: cur_counts.get(b, 0) for b in buckets}},
        }
    return figures, ref_rows, cur_rows


def _summary(rows: int, nulls: int, agg: Any, i: int) -> dict[str, Any]:
    mean, std = agg[f"c{i}_mean"], agg[f"c{i}_std"]
    return {
        "rows": rows,
        "nulls": nulls,
        "mean": float(mean) if mean is not None else None,
        "std": float(std) if std is not None and not math.isnan(std) else None,
    }
