"""`explain_model`: which features drive a model overall and per class, computed in Spark, stored with the model.

    >>> explanation = explain_model("cancer@1", "/lake/cancer_test")
    >>> explanation.top(5)                       # [(feature, mean |attribution|), ...]
    >>> explanation.top(5, by="permutation")     # [(feature, metric drop when shuffled), ...]

Two methods, side by side, on (a sample of) one snapshot of a Delta table:

* **Mean |integrated gradients|** per feature: the per-row attributions of the scoring path (`output=
  "attributions"`) aggregated by one Spark `groupBy` on the predicted class — overall (rows-weighted) and per
  class; for vector and sequence features also per element (a saliency map of an image feature, the attribution
  over time steps of a sequence feature).
* **Permutation importance** (model-agnostic): the metric's drop when one feature's values are shuffled across
  rows, `repeats` times. Rows are first spread over the partitions at random (`repartition` by `rand(seed)`), so
  shuffling within each Arrow batch on the executors is a shuffle across unrelated rows; each batch is prepared
  once and every permutation re-runs the model only. Metrics: "accuracy" (default) or "log_loss" for classifiers,
  "rmse" (default) or "mae" for regression.

The result (`ModelExplanation`) is written as `explanation.json` next to the model version, with
`feature_importance.png`, and `saliency.png` (image features) or `attribution_over_time.png` (sequence features);
`sparkdl models show` lists it.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from sparkdl import lake
from sparkdl.errors import ConfigError, Problem, ValidationError
from sparkdl.explain.integrated_gradients import Attribution
from sparkdl.log import get_logger
from sparkdl.metrics import larger_is_better
from sparkdl.plots import plot_feature_importance, plot_over_time, plot_saliency
from sparkdl.registry import ModelStore
from sparkdl.score.core import check_columns
from sparkdl.score.frame import score_dataframe
from sparkdl.score.model_ref import resolve_model
from sparkdl.score.outputs import plan_output
from sparkdl.score.runtime import get_model
from sparkdl.session_kind import default_parallelism

log = get_logger("explain.model")

EXPLANATION_FILE = "explanation.json"
METRICS = {"classification": ("accuracy", "log_loss"), "regression": ("rmse", "mae")}
_INVALID = "__unexplained__"


@dataclass(frozen=True)
class FeatureImportance:
    """One feature's importance. Attributions of a vector or sequence feature are summed over its elements per
    row before the mean; `per_element` keeps the element means (row-major in `shape`), `over_time` a sequence's
    per-step sums."""

    name: str
    kind: str
    mean_abs_attribution: float
    mean_attribution: float
    per_class: dict = field(default_factory=dict)     # predicted class -> mean |attribution|
    permutation_importance: float | None = None       # mean metric drop over the repeats
    permutation_std: float | None = None
    shape: tuple = ()
    per_element: tuple | None = None
    over_time: tuple | None = None


@dataclass(frozen=True)
class ModelExplanation:
    """What `explain_model` found: settings, the data it ran on and every feature's importance (spec order)."""

    model: str
    table: str
    table_version: int | None
    explained_rows: int
    unexplained_rows: int
    attribution: dict
    metric: str | None
    baseline_metric: float | None
    permutation_rows: int
    repeats: int
    max_abs_delta: float | None
    features: tuple[FeatureImportance, ...]
    plots: tuple[str, ...] = ()

    def top(self, k: int = 10, by: str = "attribution") -> list[tuple[str, float]]:
        """The `k` most important features by "attribution" (mean |integrated gradients|) or "permutation"."""
        if by not in ("attribution", "permutation"):
            raise ConfigError(f"by must be 'attribution' or 'permutation', got {by!r}")
        key = "mean_abs_attribution" if by == "attribution" else "permutation_importance"
        scored = [(f.name, getattr(f, key)) for f in self.features if getattr(f, key) is not None]
        return sorted(scored, key=lambda kv: -kv[1])[:k]

    def summary(self, k: int = 10) -> dict:
        """What a job prints and `sparkdl models show` lists: the data, the top `k` features by each method."""
        return {"model": self.model, "table": self.table, "table_version": self.table_version,
                "rows": self.explained_rows, "top_attribution": self.top(k),
                "top_permutation": self.top(k, by="permutation"),
                "metric": self.metric, "baseline_metric": self.baseline_metric, "plots": list(self.plots)}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelExplanation":
        features = tuple(FeatureImportance(**{**f, "shape": tuple(f.get("shape") or ()),
                                              "per_element": _tuple(f.get("per_element")),
                                              "over_time": _tuple(f.get("over_time"))})
                         for f in data["features"])
        return cls(**{**data, "features": features, "plots": tuple(data.get("plots") or ())})


def _tuple(values):
    return tuple(values) if values is not None else None


def load_explanation(model_ref, store=None) -> ModelExplanation:
    """The stored explanation of a model version.

    Raises:
        ModelStoreError: unknown model, or the version has no explanation yet (run `explain_model`).
    """
    ref, _ = resolve_model(model_ref, store)
    store = ModelStore(ref.root)
    mv = store.resolve(str(ref))
    return ModelExplanation.from_dict(json.loads(store.artifact_path(mv, EXPLANATION_FILE).read_text()))


def explain_model(model_ref, table, version: int | None = None, store=None, spark=None,
                  attribution: Attribution | None = None, sample_rows: int | None = 10_000,
                  permutation: bool = True, repeats: int = 3, metric: str | None = None, seed: int = 0,
                  plots: bool = True, saliency_rows: int = 8) -> ModelExplanation:
    """Explain a stored model on a Delta table: mean |attribution| and permutation importance per feature.

    Args:
        model_ref: store name, `"name@version"` or `ModelVersion` (a Keras classifier or regressor).
        table: the Delta table (path or URI) with the feature columns (and the label, for permutation).
        version: its version (default: the latest).
        store: model store or its root.
        spark: the session (default: the active or embedded one).
        attribution: integrated-gradients settings (default `Attribution()`).
        sample_rows: explain a random sample of at most this many rows (None: all rows).
        permutation: also compute permutation importance (needs the label column).
        repeats: shuffles per feature (the importance is their mean, with the standard deviation).
        metric: permutation metric: "accuracy" (default) / "log_loss", or "rmse" (default) / "mae" for regression.
        seed: seed of the sample and of the shuffles.
        plots: write the PNGs next to the model version.
        saliency_rows: sample rows drawn in `saliency.png` for an image feature.

    Returns:
        the `ModelExplanation`, also written as `explanation.json` next to the model version.

    Raises:
        ConfigError: bad options (an unknown metric, repeats < 1, an embedding model, ...).
        ValidationError: the table lacks a feature column, or the label when `permutation` is on — before any
            Spark job.
        ModelStoreError / TableError: unknown model or unreadable table.
    """
    attribution = attribution or Attribution()
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ConfigError(f"repeats must be an int >= 1, got {repeats!r}")
    if sample_rows is not None and (not isinstance(sample_rows, int) or sample_rows < 1):
        raise ConfigError(f"sample_rows must be a positive int or None, got {sample_rows!r}")
    ref, meta = resolve_model(model_ref, store)
    store = ModelStore(ref.root)
    mv = store.resolve(str(ref))
    plan = plan_output("attributions", meta, attribution)  # refuses embedding models and bad targets
    spec = meta.spec
    family = "regression" if plan.task == "regression" else "classification"
    metric = metric or METRICS[family][0]
    if permutation and metric not in METRICS[family]:
        raise ConfigError(f"metric must be one of {METRICS[family]} for a {plan.task} model, got {metric!r}")
    df, snap = lake.read_table(table, version=version, spark=spark)
    where = f"explain_model({ref}, table={snap.table}@{snap.version})"
    check_columns(df, spec, [], where)
    if permutation:
        if spec.label is None:
            raise ConfigError(f"{where}: the model's spec has no label, so permutation importance has no metric; "
                              f"pass permutation=False")
        if spec.label.name not in df.columns:
            raise ValidationError(f"{where}: permutation importance needs the label column {spec.label.name!r}; "
                                  f"the table has {df.columns}",
                                  [Problem(spec.label.name, "missing column", "the label", f"columns {df.columns}")])
    columns = spec.feature_names + ([spec.label.name] if permutation else [])
    sample = _sample(df.select(*dict.fromkeys(columns)), snap.num_rows, sample_rows, seed).persist()
    try:
        per_class, counts, max_delta = _attribution_means(sample, ref, attribution, spec, plan.task, store)
        perm, base_metric, perm_rows = (_permutation(sample, ref, spec, plan.task, metric, repeats, seed)
                                        if permutation else ({}, None, 0))
        features = _importances(spec, per_class, counts, perm)
        explained = sum(n for k, n in counts.items() if k != _INVALID)
        explanation = ModelExplanation(
            str(ref), snap.table, snap.version, explained, counts.get(_INVALID, 0), asdict(attribution),
            metric if permutation else None, base_metric, perm_rows, repeats if permutation else 0, max_delta,
            features)
        if plots:
            paths = _plots(explanation, sample, ref, attribution, spec, store, mv, saliency_rows)
            explanation = replace(explanation, plots=tuple(paths))
    finally:
        sample.unpersist()
    store.add_artifact(mv, EXPLANATION_FILE, json.loads(json.dumps(explanation.to_dict(), default=_finite)))
    log.info("%s: top features by attribution %s; by permutation %s", where, explanation.top(5),
             explanation.top(5, by="permutation"))
    return explanation


def _finite(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _sample(df, num_rows: int | None, sample_rows: int | None, seed: int):
    if sample_rows is None:
        return df
    total = num_rows if num_rows is not None else df.count()
    if total <= sample_rows:
        return df
    return df.sample(False, min(1.0, 1.2 * sample_rows / total), seed).limit(sample_rows)


def _attribution_means(sample, ref, attribution, spec, task, store):
    """({class: {feature: (mean |a|, mean a, element means | None)}}, {class: rows}, max |delta|) in one job."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.ml.stat import Summarizer
    from pyspark.sql import functions as F

    scored = score_dataframe(sample, ref, output="attributions", output_col="_x", keep_columns=[],
                             store=store, attribution=attribution)
    x = F.col("_x")
    key = F.when(x.isNull(), F.lit(_INVALID)).otherwise(
        F.lit("all") if task == "regression" else x["prediction"].cast("string")).alias("_class")
    aggs = [F.count(F.lit(1)).alias("_rows"), F.max(F.abs(x["delta"])).alias("_delta")]
    arrays = []
    for i, f in enumerate(spec.features):
        a = x["features"][f.name]
        if f.kind in ("vector", "sequence"):
            arrays.append(f.name)
            aggs += [F.avg(F.aggregate(F.transform(a, F.abs), F.lit(0.0), lambda acc, v: acc + v)).alias(f"abs{i}"),
                     F.avg(F.aggregate(a, F.lit(0.0), lambda acc, v: acc + v)).alias(f"sum{i}"),
                     Summarizer.mean(array_to_vector(F.transform(a, F.abs))).alias(f"el{i}")]
        else:
            aggs += [F.avg(F.abs(a)).alias(f"abs{i}"), F.avg(a).alias(f"sum{i}")]
    rows = scored.groupBy(key).agg(*aggs).collect()
    per_class, counts, max_delta = {}, {}, None
    for row in rows:
        counts[row["_class"]] = int(row["_rows"])
        if row["_class"] == _INVALID:
            continue
        delta = row["_delta"]
        max_delta = delta if max_delta is None else max(max_delta, delta)
        per_class[row["_class"]] = {
            f.name: (float(row[f"abs{i}"]), float(row[f"sum{i}"]),
                     row[f"el{i}"].toArray() if f.name in arrays else None)
            for i, f in enumerate(spec.features)}
    return per_class, counts, max_delta


def _importances(spec, per_class, counts, perm) -> tuple[FeatureImportance, ...]:
    total = sum(counts[c] for c in per_class) or 1
    out = []
    for f in spec.features:
        weights = {c: counts[c] / total for c in per_class}
        mean_abs = sum(weights[c] * per_class[c][f.name][0] for c in per_class)
        mean = sum(weights[c] * per_class[c][f.name][1] for c in per_class)
        elements = None
        if f.kind in ("vector", "sequence") and per_class:
            elements = sum(weights[c] * per_class[c][f.name][2] for c in per_class)
        over_time = None
        if f.kind == "sequence" and elements is not None:
            over_time = tuple(float(v) for v in np.asarray(elements).reshape(f.shape).sum(axis=1))
        drop, std = perm.get(f.name, (None, None))
        out.append(FeatureImportance(
            f.name, f.kind, float(mean_abs), float(mean),
            {c: float(per_class[c][f.name][0]) for c in sorted(per_class)}, drop, std, tuple(f.shape),
            tuple(float(v) for v in elements) if elements is not None else None, over_time))
    return tuple(out)


# ------------------------------------------------------------------------------------------------ permutation
_STATS = ("rows", "correct", "log_loss", "sq_err", "abs_err")


def _batch_stats(out: np.ndarray, labels: np.ndarray, task: str) -> tuple[float, ...]:
    n = len(labels)
    out = out.reshape(n, -1).astype(np.float64)
    if task == "regression":
        err = out[:, 0] - labels
        return float(n), 0.0, 0.0, float(np.sum(err * err)), float(np.sum(np.abs(err)))
    labels = labels.astype(np.int64)
    if task == "binary":
        p1 = np.clip(out[:, 0], 1e-7, 1 - 1e-7)
        predicted = (out[:, 0] >= 0.5).astype(np.int64)
        likelihood = np.where(labels == 1, p1, 1 - p1)
    else:
        predicted = out.argmax(axis=1)
        likelihood = np.clip(out[np.arange(n), labels], 1e-7, 1.0)
    return float(n), float(np.sum(predicted == labels)), float(-np.sum(np.log(likelihood))), 0.0, 0.0


def permutation_function(ref, task: str, repeats: int, seed: int):
    """The `mapInArrow` body: per Arrow batch, metric statistics of the unshuffled rows ("", repeat 0) and of each
    feature shuffled `repeats` times (a fresh permutation of the valid rows each time)."""

    def stats(batches):
        import pyarrow as pa
        from pyspark import TaskContext

        loaded = get_model(ref)
        fn = loaded.predict_fn("out")
        prep = loaded.preprocessor
        context = TaskContext.get()
        rng = np.random.default_rng([seed, context.partitionId() if context else 0])

        def predict(x):
            return np.asarray(fn(x))

        for batch in batches:
            prepared = prep.prepare_batch(batch, with_label=True)
            x = prepared.features[prepared.valid]
            y = prepared.labels[prepared.valid]
            if not len(y):
                continue
            flat = x.reshape(len(y), -1)
            rows = [("", 0, *_batch_stats(predict(x), y, task))]
            for slot in prep.slots:
                for r in range(repeats):
                    shuffled = flat.copy()
                    shuffled[:, slot.start:slot.start + slot.width] = flat[rng.permutation(len(y)),
                                                                           slot.start:slot.start + slot.width]
                    rows.append((slot.name, r, *_batch_stats(predict(shuffled.reshape(x.shape)), y, task)))
            cols = list(zip(*rows))
            yield pa.RecordBatch.from_arrays(
                [pa.array(cols[0], pa.string()), pa.array(cols[1], pa.int32())]
                + [pa.array(c, pa.float64()) for c in cols[2:]], names=["feature", "repeat", *_STATS])

    return stats


def _metric(values: dict, metric: str) -> float:
    rows = values["rows"]
    return {"accuracy": values["correct"] / rows, "log_loss": values["log_loss"] / rows,
            "rmse": math.sqrt(values["sq_err"] / rows), "mae": values["abs_err"] / rows}[metric]


def _permutation(sample, ref, spec, task, metric, repeats, seed):
    """({feature: (mean drop, std)}, metric on the unshuffled rows, rows used)."""
    from pyspark.sql import functions as F

    schema = "feature string, repeat int, " + ", ".join(f"{s} double" for s in _STATS)
    spread = sample.repartition(max(2, default_parallelism(sample.sparkSession) or 2), F.rand(seed))
    stats = spread.mapInArrow(permutation_function(ref, task, repeats, seed), schema)
    rows = stats.groupBy("feature", "repeat").agg(*[F.sum(s).alias(s) for s in _STATS]).collect()
    table = {(r["feature"], r["repeat"]): {s: r[s] for s in _STATS} for r in rows}
    if ("", 0) not in table:
        return {}, None, 0
    base = _metric(table[("", 0)], metric)
    higher_is_better = larger_is_better(metric)
    out = {}
    for f in spec.features:
        drops = [(base - _metric(table[(f.name, r)], metric)) if higher_is_better
                 else (_metric(table[(f.name, r)], metric) - base) for r in range(repeats) if (f.name, r) in table]
        if drops:
            out[f.name] = (float(np.mean(drops)), float(np.std(drops)))
    return out, float(base), int(table[("", 0)]["rows"])


# ------------------------------------------------------------------------------------------------ plots
def _plots(explanation, sample, ref, attribution, spec, store, mv, saliency_rows) -> list[str]:
    paths = []
    panels = {"mean |integrated gradients|": {f.name: f.mean_abs_attribution for f in explanation.features}}
    errors = None
    if explanation.metric is not None:
        title = f"permutation ({explanation.metric} {'drop' if explanation.metric == 'accuracy' else 'rise'})"
        panels[title] = {f.name: f.permutation_importance for f in explanation.features
                         if f.permutation_importance is not None}
        errors = {title: {f.name: f.permutation_std or 0.0 for f in explanation.features}}
    if explanation.explained_rows:
        paths.append(plot_feature_importance(panels, store.artifact_path(mv, "feature_importance.png",
                                                                           must_exist=False), errors))
    sequences = {f.name: f.over_time for f in explanation.features if f.over_time}
    if sequences:
        paths.append(plot_over_time(sequences, store.artifact_path(mv, "attribution_over_time.png",
                                                                    must_exist=False)))
    images = [f for f in spec.features if f.kind == "vector" and len(f.shape) in (2, 3)]
    if images and saliency_rows > 0 and explanation.explained_rows:
        f = images[0]
        rows = score_dataframe(sample.limit(saliency_rows), ref, output="attributions", output_col="_x",
                               keep_columns=[f.name], store=store, attribution=attribution) \
            .where("_x IS NOT NULL").collect()
        if rows:
            pictures = [np.asarray(r[f.name], dtype=float).reshape(f.shape) for r in rows]
            maps = [np.asarray(r["_x"]["features"][f.name], dtype=float).reshape(f.shape) for r in rows]
            titles = [f"pred {r['_x']['prediction']}" for r in rows]
            paths.append(plot_saliency(pictures, maps, titles, store.artifact_path(mv, "saliency.png",
                                                                                   must_exist=False)))
    return paths
