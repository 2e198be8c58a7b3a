"""Metrics per slice with bootstrap confidence intervals, from one aggregation over the predictions.

Each row is exploded into the slices it belongs to (`slices.slice_keys`), and one `groupBy` sums, per slice value
and cell (label, prediction, confidence bin), the row count and the first and second moments of the confidence and
the negative log-likelihood. Every classification metric (accuracy, precision/recall/F1 per class, log loss,
expected calibration error) and every fairness metric is a function of these sums, so slices, metrics and the
bootstrap all come from that one pass; the top-k values of a column slice are chosen afterwards on the driver,
merging the rest into "other" (the sums add up). ROC AUC per slice is exact, from one more ordered scan, and has no
interval.

The intervals are those of the Poisson bootstrap (each row weighted by an independent Poisson(1) draw per
replicate), drawn on the driver from the cells' sums instead of row by row: a cell's total weight is exactly
Poisson(n) (a sum of n Poisson(1) draws), so metrics of counts (accuracy, precision, recall, F1, every fairness
rate) get the Poisson bootstrap's exact distribution; a cell's weighted sums of values (confidence, log-likelihood,
and the regression errors) are drawn normal given that count, with the mean and covariance the row weights would
give (the central limit of a sum of weighted rows). No replicate costs a pass or an aggregate column.

Regression sums (n, squared and absolute error, label and squared label, and their products) give RMSE, MAE and R²
the same way.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from sparkdl.config import options_from_mapping
from sparkdl.errors import ConfigError, ValidationError
from sparkdl.evaluation.auc import auc_by_group
from sparkdl.evaluation.fairness import fairness_metrics
from sparkdl.evaluation.slices import OVERALL, Slice, slice_keys
from sparkdl.log import get_logger

log = get_logger("evaluation.sliced")

# Most (slice value, label, prediction, bin) groups one evaluation collects: a column slice with more distinct
# values than this is an error naming it (use a `where` slice or a coarser column).
MAX_GROUPS = 200_000
_EPS = float(np.finfo(np.float64).eps)  # scikit-learn's log_loss clipping


@dataclass(frozen=True)
class SliceOptions:
    """How slices are evaluated.

    Params:
        min_slice_size: slices with fewer rows are reported as suppressed, without metrics (default 30).
        n_boot: Poisson-bootstrap replicates for the confidence intervals (0: none).
        confidence: the intervals' level (percentile intervals of the replicates).
        seed: the replicates' seed (same seed, same data, same intervals).
        ece_bins: equal-width confidence bins of the expected calibration error.
        sensitive: the name of a column or crossing slice whose groups get fairness metrics.
    """

    min_slice_size: int = 30
    n_boot: int = 100
    confidence: float = 0.95
    seed: int = 0
    ece_bins: int = 10
    sensitive: str | None = None

    @classmethod
    def from_dict(cls, values: dict | None, where: str = "slice_options") -> SliceOptions:
        """From a mapping such as its YAML section; ConfigError names an unknown key."""
        return options_from_mapping(cls, values, where)

    def __post_init__(self):
        for name, low in (("min_slice_size", 1), ("n_boot", 0), ("ece_bins", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must be in (0, 1), got {self.confidence!r}")


@dataclass
class _Group:
    """The sums of one slice value: index 0 of each array is the data as it is, 1..B the replicates."""

    definition: str
    label: str
    n: int = 0
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    raw: list[tuple[str, str]] | None = None  # the (definition, value) keys of the pass it covers

    def __post_init__(self):
        if self.raw is None:
            self.raw = [(self.definition, self.label)]

    def add(self, other: _Group) -> None:
        self.n += other.n
        self.raw = self.raw + other.raw
        for key, value in other.sums.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value.copy()



def sliced_classification(frame: DataFrame, slices: Sequence[Slice], num_classes: int, labels: Sequence[str],
                          options: SliceOptions = SliceOptions()) -> dict[str, Any]:
    """Classification metrics per slice of a predictions frame.

    Params:
        frame: `y` and `p` (class indices 0..k-1, int), optional `prob` (array<double> of the k class
            probabilities) and the columns the slices read.
        slices, options: see `slices.parse_slices` and `SliceOptions`.

    Returns {"slices": {slice name: {"definition", "n", "metrics": {metric: {"value", "lower", "upper"}}}},
    "suppressed": [{"slice", "definition", "n"}], "fairness": ... (with options.sensitive), "n_boot",
    "confidence"}. Metrics: accuracy; precision, recall, f1 (binary: of class 1; multiclass: macro) and
    `precision.<class>` etc. per class; with `prob`: log_loss, ece and roc_auc (exact, no interval).

    Raises:
        ValidationError: an empty frame, or a column slice with too many distinct values.
    """
    k, bins, reps = num_classes, options.ece_bins, options.n_boot
    has_prob = "prob" in frame.columns
    y, p = F.col("y").cast("int"), F.col("p").cast("int")
    if has_prob:
        conf = F.element_at("prob", p + 1)
        true_p = F.element_at("prob", y + 1)
        nll = -F.log(F.greatest(F.least(true_p, F.lit(1 - _EPS)), F.lit(_EPS)))
        bin_ = F.least(F.floor(conf * bins).cast("int"), F.lit(bins - 1))
        score = F.col("prob")[1] if k == 2 else F.col("prob")
    else:
        conf, nll, bin_, score = F.lit(0.0), F.lit(0.0), F.lit(0), F.lit(None)
    narrow = frame.select(y.alias("y"), p.alias("p"), conf.alias("conf"), nll.alias("nll"), bin_.alias("bin"),
                          score.alias("score"), slice_keys(slices).alias("_k"))
    rows = narrow.select("*", F.explode("_k").alias("_s")).select(
        F.col("_s.slice").alias("slice"), F.col("_s.value").alias("value"), "y", "p", "bin", "conf", "nll", "score")
    values = {"conf": F.col("conf"), "nll": F.col("nll")}
    collected = rows.groupBy("slice", "value", "y", "p", "bin").agg(*_moment_sums(values)).limit(
        MAX_GROUPS + 1).collect()
    groups = _groups(collected, len(values), lambda row: (int(row["y"]) * k + int(row["p"])) * bins + int(row["bin"]),
                     k * k * bins, k)
    kept, suppressed = _top_k(groups, slices, options.min_slice_size)
    report = {"slices": {}, "suppressed": suppressed, "n_boot": reps, "confidence": options.confidence}
    for g in kept:
        counts, sums = _replicates(g, reps, options.seed)
        g.sums = {"m": counts.reshape(-1, k, k, bins), "conf": sums[..., 0].reshape(-1, k * k, bins).sum(axis=1),
                  "nll": sums[..., 1].sum(axis=1)}
        report["slices"][g.label] = {"definition": g.definition, "n": g.n,
                                    "metrics": _intervals(_classification_values(g, k, labels, has_prob),
                                                          options.confidence)}
    if has_prob:
        for name, auc in _sliced_auc(rows, kept, k).items():
            report["slices"][name]["metrics"].update(auc)
    if options.sensitive:
        report["fairness"] = _fairness(kept, options, labels)
    return report


def sliced_regression(frame: DataFrame, slices: Sequence[Slice],
                      options: SliceOptions = SliceOptions()) -> dict[str, Any]:
    """RMSE, MAE and R² per slice of a frame with `y` and `yhat` (doubles) and the slice columns; the report has
    the shape of `sliced_classification`'s (no fairness metrics)."""
    reps = options.n_boot
    err = F.col("y") - F.col("yhat")
    narrow = frame.select("y", "yhat", slice_keys(slices).alias("_k"))
    rows = narrow.select("*", F.explode("_k").alias("_s")).select(
        F.col("_s.slice").alias("slice"), F.col("_s.value").alias("value"), "y", "yhat")
    values = {"s2": err * err, "s1": F.abs(err), "y1": F.col("y"), "y2": F.col("y") * F.col("y")}
    collected = rows.groupBy("slice", "value").agg(*_moment_sums(values)).limit(MAX_GROUPS + 1).collect()
    groups = _groups(collected, len(values), lambda row: 0, 1, None)
    kept, suppressed = _top_k(groups, slices, options.min_slice_size)
    report = {"slices": {}, "suppressed": suppressed, "n_boot": reps, "confidence": options.confidence}
    for g in kept:
        counts, sums = _replicates(g, reps, options.seed)
        n, (s2, s1, y1, y2) = counts[:, 0], sums[:, 0, :].T
        with np.errstate(divide="ignore", invalid="ignore"):
            sst = y2 - y1 ** 2 / n
            r2 = np.where(sst > 1e-12 * np.maximum(y2, 1.0), 1 - s2 / sst, np.where(s2 == 0, 1.0, 0.0))
            metrics = {"rmse": np.sqrt(s2 / n), "mae": s1 / n, "r2": r2}
        report["slices"][g.label] = {"definition": g.definition, "n": g.n,
                                    "metrics": _intervals(metrics, options.confidence)}
    return report


# ------------------------------------------------------------------------------------------------- the groups
def _check_collected(collected: list) -> None:
    if not collected:
        raise ValidationError("cannot evaluate slices: the predictions are empty")
    if len(collected) > MAX_GROUPS:
        counts: dict[str, set] = {}
        for row in collected:
            counts.setdefault(row["slice"], set()).add(row["value"])
        worst = max(counts, key=lambda name: len(counts[name]))
        raise ValidationError(f"slice {worst!r} has too many distinct values (over {len(counts[worst])} seen) to "
                              f"evaluate each; slice by a coarser column or a named 'where' expression")


def _moment_sums(values: dict[str, Column]) -> list[Column]:
    """The aggregates of a cell: its count, the sum of each value and of each product of two values."""
    names = list(values)
    aggs = [F.count(F.lit(1)).alias("n")]
    aggs += [F.sum(values[a]).alias(f"s_{i}") for i, a in enumerate(names)]
    aggs += [F.sum(values[a] * values[b]).alias(f"q_{i}_{j}") for i, a in enumerate(names)
             for j, b in enumerate(names) if j >= i]
    return aggs


def _groups(collected: list, d: int, cell_of, cells: int, k: int | None) -> list[_Group]:
    """Per (slice, value): counts (cells,), value sums (cells, d) and product sums (cells, d, d) of its cells."""
    _check_collected(collected)
    groups: dict[tuple[str, str], _Group] = {}
    for row in collected:
        if k is not None and not (0 <= int(row["y"]) < k and 0 <= int(row["p"]) < k):
            raise ValidationError(f"label or prediction outside the {k} classes in slice {row['slice']!r}: "
                                  f"label {row['y']}, prediction {row['p']}")
        g = groups.setdefault((row["slice"], row["value"]), _Group(row["slice"], row["value"]))
        if not g.sums:
            g.sums = {"n": np.zeros(cells), "s": np.zeros((cells, d)), "q": np.zeros((cells, d, d))}
        c = cell_of(row)
        g.n += int(row["n"])
        g.sums["n"][c] += row["n"]
        for i in range(d):
            g.sums["s"][c, i] += row[f"s_{i}"] or 0.0
            for j in range(i, d):
                g.sums["q"][c, i, j] += row[f"q_{i}_{j}"] or 0.0
                g.sums["q"][c, j, i] = g.sums["q"][c, i, j]
    return list(groups.values())


def _replicates(g: _Group, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts (reps + 1, cells), sums (reps + 1, cells, d)): row 0 the data as it is, then Poisson-bootstrap
    replicates drawn from the cells' moments (see the module docstring); seeded by `seed` and the slice's name."""
    n, s, q = g.sums["n"], g.sums["s"], g.sums["q"]
    if reps == 0:
        return n[None], s[None]
    rng = np.random.default_rng([seed, zlib.crc32(g.label.encode())])
    counts = rng.poisson(n, size=(reps, n.size)).astype(float)
    safe = np.maximum(n, 1.0)
    mean = s / safe[:, None]
    cov = q / safe[:, None, None] - mean[:, :, None] * mean[:, None, :]
    eigval, eigvec = np.linalg.eigh(cov)
    root = eigvec * np.sqrt(np.clip(eigval, 0.0, None))[:, None, :]  # cov = root @ root.T
    z = rng.standard_normal((reps, n.size, s.shape[1]))
    sums = counts[..., None] * mean + np.sqrt(counts)[..., None] * np.einsum("cij,rcj->rci", root, z)
    return np.concatenate([n[None], counts]), np.concatenate([s[None], sums])


def _top_k(groups: list[_Group], slices: Sequence[Slice], min_size: int) -> tuple[list[_Group], list[dict]]:
    """Name each group (a column slice's top_k values by count, the rest merged into "other"), then split off the
    slices smaller than `min_size` (the overall slice is always kept)."""
    by_def: dict[str, list[_Group]] = {}
    for g in groups:
        by_def.setdefault(g.definition, []).append(g)
    named: list[_Group] = []
    for definition, members in by_def.items():
        spec = next((s for s in slices if s.name == definition), None)
        if spec is None or not spec.by_value:
            named += members
            continue
        members.sort(key=lambda g: (-g.n, g.label))
        for g in members[:spec.top_k]:
            g.label = spec.name_of(g.label)
            named.append(g)
        if members[spec.top_k:]:
            other = _Group(definition, spec.other_label(), raw=[])
            for g in members[spec.top_k:]:
                other.add(g)
            named.append(other)
    kept = [g for g in named if g.label == OVERALL or g.n >= min_size]
    suppressed = [{"slice": g.label, "definition": g.definition, "n": g.n} for g in named
                  if g.label != OVERALL and g.n < min_size]
    if suppressed:
        log.info("%d slice(s) under min_slice_size=%d suppressed: %s", len(suppressed), min_size,
                 ", ".join(f"{s['slice']} ({s['n']})" for s in suppressed[:10]))
    order = {s.name: i for i, s in enumerate(slices)}
    kept.sort(key=lambda g: (g.label != OVERALL, order.get(g.definition, 0), -g.n, g.label))
    return kept, suppressed


# ------------------------------------------------------------------------------------------------ the metrics
def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, 0 where b is 0 (scikit-learn's zero_division=0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), 0.0)


def confusion(g: _Group) -> np.ndarray:
    """The (replicates + 1, k, k) weighted confusion matrices of a group (rows: label, columns: prediction)."""
    return g.sums["m"].sum(axis=3)


def _classification_values(g: _Group, k: int, labels: Sequence[str], has_prob: bool) -> dict[str, np.ndarray]:
    m = confusion(g)
    n = m.sum(axis=(1, 2))
    tp = np.diagonal(m, axis1=1, axis2=2)
    predicted, support = m.sum(axis=1), m.sum(axis=2)
    precision, recall = _safe_div(tp, predicted), _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    values = {"accuracy": _safe_div(tp.sum(axis=1), n)}
    if k == 2:
        values.update({"precision": precision[:, 1], "recall": recall[:, 1], "f1": f1[:, 1]})
    else:
        values.update({"precision": precision.mean(axis=1), "recall": recall.mean(axis=1), "f1": f1.mean(axis=1)})
    for c, name in enumerate(labels):
        values.update({f"precision.{name}": precision[:, c], f"recall.{name}": recall[:, c], f"f1.{name}": f1[:, c]})
    if has_prob:
        values["log_loss"] = _safe_div(g.sums["nll"], n)
        per_bin = g.sums["m"].sum(axis=(1, 2))  # (reps + 1, bins)
        correct = np.einsum("rccb->rb", g.sums["m"])
        gap = np.abs(correct - g.sums["conf"])  # |acc_b - conf_b| * n_b
        values["ece"] = _safe_div(gap.sum(axis=1), per_bin.sum(axis=1))
    return values


def _intervals(values: dict[str, np.ndarray], confidence: float) -> dict[str, dict[str, float | None]]:
    """{metric: {value, lower, upper}}: index 0 is the value, the percentile interval of the replicates."""
    out = {}
    tail = (1 - confidence) / 2 * 100
    for name, arr in values.items():
        arr = np.asarray(arr, dtype=float)
        lower = upper = None
        reps = arr[1:][np.isfinite(arr[1:])]
        if reps.size:
            lower, upper = (float(v) for v in np.percentile(reps, [tail, 100 - tail]))
        value = float(arr[0]) if np.isfinite(arr[0]) else None
        out[name] = {"value": value, "lower": lower, "upper": upper}
    return out


def _sliced_auc(rows: DataFrame, kept: list[_Group], k: int) -> dict[str, dict]:
    """Exact ROC AUC per kept slice (one-vs-rest macro for k > 2): one ordered scan over (slice, score) counts, each
    kept slice an integer group (slice i, or i * k + class)."""
    to_id = F.create_map(*[x for i, g in enumerate(kept) for d, v in g.raw
                           for x in (F.lit(f"{d}\u0000{v}"), F.lit(i))])
    named = rows.select(to_id[F.concat_ws("\u0000", "slice", "value")].alias("g0"), "y", "score").where(
        F.col("g0").isNotNull())
    if k == 2:
        scored = named.select(F.col("g0").alias("g"), F.col("score").alias("v"),
                              (F.col("y") == 1).cast("long").alias("b"))
    else:
        exploded = named.select("g0", "y", F.posexplode("score").alias("c", "v"))
        scored = exploded.select((F.col("g0") * k + F.col("c")).alias("g"), "v",
                                 (F.col("y") == F.col("c")).cast("long").alias("b"))
    counts = scored.groupBy("g", "v").agg(F.sum(1 - F.col("b")).alias("a"), F.sum("b").alias("b"))
    aucs = auc_by_group(counts)
    out: dict[str, dict] = {}
    for i, g in enumerate(kept):
        if k == 2:
            value = aucs.get(i)
        else:
            defined = [v for v in (aucs.get(i * k + c) for c in range(k)) if v is not None]
            value = sum(defined) / len(defined) if defined else None
        out[g.label] = {"roc_auc": {"value": value, "lower": None, "upper": None}}
    return out


def _fairness(kept: list[_Group], options: SliceOptions, labels: Sequence[str]) -> dict[str, Any]:
    groups = [g for g in kept if g.definition == options.sensitive]
    if len(groups) < 2:
        raise ValidationError(f"fairness: the sensitive slice {options.sensitive!r} has {len(groups)} group(s) of "
                              f"at least min_slice_size={options.min_slice_size} rows; at least 2 are needed "
                              f"(declare it among the slices, as a column or a crossing)")
    matrices = np.stack([confusion(g) for g in groups], axis=1)  # (reps + 1, groups, k, k)
    values = fairness_metrics(matrices, list(labels))
    result: dict[str, Any] = {"sensitive": options.sensitive, "groups": [g.label for g in groups],
                              "metrics": _intervals(values["metrics"], options.confidence)}
    if values.get("per_class"):
        result["per_class"] = {c: _intervals(v, options.confidence) for c, v in values["per_class"].items()}
    result["by_group"] = {g.label: _intervals(v, options.confidence) for g, v in zip(groups, values["by_group"])}
    return result
