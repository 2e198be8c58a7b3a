"""A forecaster's accuracy on its test windows, beside the seasonal-naive forecast, computed in Spark.

The test windows come from `sparkdl.score.forecast.forecast_frame(mode="test")`: every window whose origin is at or
after the model's `test_from`. One aggregation by (entity, step) brings back sums only; the driver combines them
into, for the model and for seasonal naive:

* ``mae``, ``rmse``; ``smape`` (percent, 0..200: ``200 · |f − a| / (|a| + |f|)``); ``mase`` (the error scaled by
  the series' in-sample seasonal-naive MAE over the training period; below 1 beats that naive forecast there);
* ``mae_by_step``: one MAE per horizon step;
* the same per entity (``per_entity``);
* with slices (`sparkdl.evaluation.slices`: a column, a crossing, a named `where`), the same per slice of
  entities (``slices``, in the sliced report's form): an entity belongs to the slices of its latest row
  (`entity_slices`), a column slice keeps its `top_k` values by forecast count and merges the rest into "other",
  and a slice with fewer than `min_slice_size` forecasts is reported as suppressed. Per-slice metrics come from the
  same per-entity sums: no other pass over the forecasts.

Steps whose actual value was filled in (missing in the table) are left out of every metric.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sparkdl.data.forecast import ForecastSpec
from sparkdl.data.series import SERIES_KEY
from sparkdl.evaluation.slices import OVERALL, slice_keys
from sparkdl.log import get_logger
from sparkdl.plots import plot_error_by_step, plot_forecasts
from sparkdl.score.forecast import ORIGIN_COL, STEP_COL

log = get_logger("evaluate.forecast")

METRICS = ("mae", "rmse", "smape", "mase")
PER_ENTITY_LIMIT = 1000   # entities listed in metrics.json (the worst by MAE when there are more)
PLOTTED_SERIES = 4


def _sums(frame, keys: list[str], forecast: str):
    """Per (entity, step) sums of the model's and seasonal naive's errors, collected (small: entities × horizon)."""
    from pyspark.sql import functions as F

    def finite(name):
        return F.when(~F.isnan(F.col(name)), F.col(name))

    actual = F.col("actual")
    aggs = []
    for prefix, column in (("model", forecast), ("naive", "naive")):
        pred = finite(column)
        err = pred - actual
        denom = F.abs(actual) + F.abs(pred)
        scale = F.when(finite("mase_scale") > 0, F.col("mase_scale"))
        aggs += [F.count(pred).alias(f"{prefix}_n"), F.sum(F.abs(err)).alias(f"{prefix}_abs"),
                 F.sum(err * err).alias(f"{prefix}_sq"),
                 F.sum(F.when(denom > 0, 2 * F.abs(err) / denom).otherwise(F.when(pred.isNotNull(), 0.0)))
                 .alias(f"{prefix}_smape"),
                 F.sum(F.abs(err) / scale).alias(f"{prefix}_scaled"),
                 F.count(F.when(scale.isNotNull() & pred.isNotNull(), 1)).alias(f"{prefix}_scaled_n")]
    both = finite(forecast).isNotNull() & finite("naive").isNotNull()  # the windows both forecast: compared
    aggs += [F.count(F.when(both, 1)).alias("both_n"),
             F.sum(F.when(both, F.abs(finite(forecast) - actual))).alias("both_model_abs"),
             F.sum(F.when(both, F.abs(finite("naive") - actual))).alias("both_naive_abs")]
    rows = frame.where(F.col("observed")).groupBy(*keys, STEP_COL).agg(*aggs).collect()
    return [r.asDict() for r in rows]


def _metrics(rows: list[dict], prefix: str, horizon: int) -> dict:
    def total(name):
        return float(sum(r[f"{prefix}_{name}"] or 0.0 for r in rows))

    n, scaled_n = total("n"), total("scaled_n")
    by_step = []
    for step in range(1, horizon + 1):
        at = [r for r in rows if r[STEP_COL] == step]
        count = sum(r[f"{prefix}_n"] or 0 for r in at)
        by_step.append(sum(r[f"{prefix}_abs"] or 0.0 for r in at) / count if count else None)
    return {"mae": total("abs") / n if n else None, "rmse": math.sqrt(total("sq") / n) if n else None,
            "smape": 100.0 * total("smape") / n if n else None,
            "mase": total("scaled") / scaled_n if scaled_n else None, "mae_by_step": by_step, "count": int(n)}


def _name(values: Sequence) -> str:
    return str(values[0]) if len(values) == 1 else "/".join(str(v) for v in values)


def entity_slices(df, spec: ForecastSpec, slices: Sequence) -> dict[tuple, list[tuple[str, str]]]:
    """{entity values: [(slice definition, value)]} from each entity's latest row of `df` (one small job)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = list(spec.entity)
    latest = df.withColumn("_sparkdl_latest", F.row_number().over(
        Window.partitionBy(*keys).orderBy(F.col(f"`{spec.time}`").desc())))
    rows = latest.where(F.col("_sparkdl_latest") == 1).select(*keys, slice_keys(slices).alias("_slices")).collect()
    return {tuple(r[k] for k in keys): [(e["slice"], e["value"]) for e in r["_slices"]] for r in rows}


def _sliced(by_entity: dict[tuple, list[dict]], memberships: dict, slices: Sequence, horizon: int,
            min_size: int) -> dict:
    """The sliced report (`sparkdl.evaluation.sliced`'s form, without intervals) of per-entity sums."""
    groups: dict[tuple[str, str], list[tuple]] = {}
    for entity in by_entity:
        for definition, value in memberships.get(entity, [(OVERALL, OVERALL)]):
            groups.setdefault((definition, value), []).append(entity)
    count = {key: sum(r["model_n"] or 0 for e in members for r in by_entity[e]) for key, members in groups.items()}
    named: dict[tuple[str, str], list[tuple]] = {}
    for spec in slices:
        values = sorted((k for k in groups if k[0] == spec.name), key=lambda k: (-count[k], k[1]))
        if not spec.by_value:
            named.update({(spec.name, spec.name): groups[k] for k in values})
            continue
        for k in values[:spec.top_k]:
            named[(spec.name, spec.name_of(k[1]))] = groups[k]
        if values[spec.top_k:]:
            named[(spec.name, spec.other_label())] = [e for k in values[spec.top_k:] for e in groups[k]]
    report = {"slices": {}, "suppressed": [], "n_boot": 0, "confidence": None}
    for (definition, label), members in [((OVERALL, OVERALL), list(by_entity)), *named.items()]:
        rows = [r for e in members for r in by_entity[e]]
        model, naive = _metrics(rows, "model", horizon), _metrics(rows, "naive", horizon)
        if label != OVERALL and model["count"] < min_size:
            report["suppressed"].append({"slice": label, "definition": definition, "n": model["count"]})
            continue
        report["slices"][label] = {
            "definition": definition, "n": model["count"], "series": len(members),
            "metrics": {**{m: {"value": model[m], "lower": None, "upper": None} for m in METRICS},
                        "seasonal_naive_mae": {"value": naive["mae"], "lower": None, "upper": None}}}
    return report


def forecast_metrics(frame, spec: ForecastSpec, forecast: str = "forecast", entity_label=None,
                     slices: Sequence = (), memberships: dict | None = None, min_slice_size: int = 30,
                     sliced: bool = False) -> dict:
    """The metrics of a test-window frame (see the module docstring), overall and per entity.

    Returns {"mae", "rmse", "smape", "mase", "mae_by_step", "count", "windows", "series", "seasonal_naive": {...},
    "per_entity": {entity: {"mae", ..., "seasonal_naive": {...}}}}; `entity_label` (entity values -> name) names
    the entities (default: their values joined by "/"). With `slices` and their `memberships` (`entity_slices`),
    also "slices" and "suppressed" (see the module docstring); with `sliced` and no slices, the report of the
    overall slice alone (what gates read)."""
    keys = list(spec.entity) or [SERIES_KEY]
    rows = _sums(frame, keys, forecast)
    model = _metrics(rows, "model", spec.horizon)
    naive = _metrics(rows, "naive", spec.horizon)
    by_entity: dict[tuple, list[dict]] = {}
    for r in rows:
        by_entity.setdefault(tuple(r[k] for k in keys), []).append(r)
    per_entity = {}
    for entity, entity_rows in by_entity.items():
        m = _metrics(entity_rows, "model", spec.horizon)
        per_entity[(entity_label or _name)(entity) if spec.entity else "series"] = {
            **{k: m[k] for k in (*METRICS, "count")},
            "seasonal_naive": {k: v for k, v in _metrics(entity_rows, "naive", spec.horizon).items()
                               if k in METRICS}}
    if len(per_entity) > PER_ENTITY_LIMIT:
        worst = sorted(per_entity, key=lambda k: -(per_entity[k]["mae"] or 0.0))[:PER_ENTITY_LIMIT]
        per_entity = {k: per_entity[k] for k in worst}
    windows = sum(r["model_n"] or 0 for r in rows if r[STEP_COL] == 1)
    paired_n = int(sum(r["both_n"] or 0 for r in rows))
    paired = {"count": paired_n,
              "mae": sum(r["both_model_abs"] or 0.0 for r in rows) / paired_n if paired_n else None,
              "seasonal_naive_mae": sum(r["both_naive_abs"] or 0.0 for r in rows) / paired_n if paired_n else None}
    report = _sliced(by_entity, memberships or {}, slices, spec.horizon, min_slice_size) if (slices or sliced) \
        else {}
    return {**model, **report, "windows": int(windows), "series": len(by_entity), "seasonal_naive": naive,
            "per_entity": per_entity, "per_entity_listed": len(per_entity), "paired": paired,
            # on the same forecasts only: seasonal naive has none where a series' history is shorter than a season
            "beats_seasonal_naive": bool(paired_n) and paired["mae"] < paired["seasonal_naive_mae"]}


def forecast_plots(frame, spec: ForecastSpec, metrics: dict, folder_path, forecast: str = "forecast",
                   entity_label=None) -> list[str]:
    """`forecasts.png` (a few series: one-step-ahead forecasts and the last window's, against actual) and
    `error_by_step.png` (the model's and seasonal naive's MAE per step) in `folder_path(name)`'s folder."""
    from pyspark.sql import functions as F

    paths = [plot_error_by_step({"model": metrics["mae_by_step"],
                                 "seasonal naive": metrics["seasonal_naive"]["mae_by_step"]},
                                folder_path("error_by_step.png"))]
    keys = list(spec.entity) or [SERIES_KEY]
    if not spec.entity:
        subset = frame
    else:  # the first few entities in order
        picked = frame.select(*keys).distinct().orderBy(*keys).limit(PLOTTED_SERIES).collect()
        if not picked:
            return paths
        match = None
        for e in picked:
            cond = None
            for k in keys:
                c = F.col(k) == F.lit(e[k])
                cond = c if cond is None else cond & c
            match = cond if match is None else match | cond
        subset = frame.where(match)
    rows = subset.select(*keys, spec.time, ORIGIN_COL, STEP_COL, forecast, "actual").toPandas()
    panels = {}
    for entity, part in rows.groupby(keys, sort=True):
        entity = entity if isinstance(entity, tuple) else (entity,)
        # the actual values at every forecast time, the one-step-ahead forecasts, the last window's forecast
        actual = part.drop_duplicates(spec.time).sort_values(spec.time).set_index(spec.time)["actual"]
        one = part[part[STEP_COL] == 1].set_index(spec.time)[forecast].reindex(actual.index)
        last = part[part[ORIGIN_COL] == part[ORIGIN_COL].max()].sort_values(STEP_COL)
        panels[(entity_label or _name)(entity) if spec.entity else "series"] = {
            "time": actual.index.to_numpy(), "actual": actual.to_numpy(np.float64),
            "forecast": one.to_numpy(np.float64), "last_time": last[spec.time].to_numpy(),
            "last_forecast": last[forecast].to_numpy(np.float64)}
    if panels:
        paths.append(plot_forecasts(panels, folder_path("forecasts.png")))
    return paths


__all__ = ["METRICS", "entity_slices", "forecast_metrics", "forecast_plots"]
