"""Forecasts of a stored forecaster over a long table: one grouped pandas function per entity, in one Spark job.

Each entity's rows are put on the model's grid (`sparkdl.data.series.on_grid`: the training code), scaled with the
series' scaling fitted at training (a series the model never saw: by its own history), cut into windows and run
through the model (one load per Python worker, `sparkdl.score.runtime`). The result is long: per window, `horizon`
rows of the entity column(s), the forecast time under the time column's own name, `step` (1..horizon) and the
forecast.

* `mode="latest"` (`score_table`, `score_stream`): one window per entity, from its latest `lookback` steps; an
  entity with fewer steps gets one row with a `_reason` (quarantined).
* `mode="test"` (`evaluate_model`): every window whose origin (first forecast step) is at or after `test_from`,
  with the `actual` value, the seasonal-naive forecast `naive` (the value one season before, from the history the
  window had), `mase_scale` (the series' training seasonal-naive MAE) and `observed` (false where the actual value
  was filled in, which the metrics leave out).
"""
from __future__ import annotations

import numpy as np

from sparkdl.data.forecast_fit import ForecastPreparation
from sparkdl.data.series import (
    OFFSET,
    SERIES_KEY,
    STEP,
    calendar_days,
    channel_scaling,
    check_forecast_schema,
    first_step_from,
    grid_frame,
    on_grid,
    time_kind,
    time_of_step,
)
from sparkdl.errors import ValidationError
from sparkdl.score.model_ref import ModelRef
from sparkdl.score.outputs import REASON_COL
from sparkdl.score.runtime import get_model

STEP_COL = "step"
ORIGIN_COL = "origin"
TEST_COLUMNS = ("actual", "naive", "mase_scale", "observed")
DUPLICATES_COL, OFF_GRID_COL = "_duplicate_rows", "_off_grid_rows"  # per entity, on its first output row


def seasonal_naive(values: np.ndarray, positions: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Seasonal-naive forecasts (windows × horizon) of windows whose first forecast step is at `positions` of
    `values`: step h repeats the last value of the same season seen before the window (NaN when there is none)."""
    h = np.arange(1, horizon + 1)
    source = positions[:, None] - 1 + h - season * ((h - 1) // season + 1)
    out = values[np.clip(source, 0, None)]
    return np.where(source >= 0, out, np.nan)


def _forecaster(ref: ModelRef, prep: ForecastPreparation, keys: list[str], output_col: str, mode: str,
                until: int | None = None, data_counts: bool = False):
    import pandas as pd

    spec = prep.spec
    channels, lookback, horizon = list(spec.channels), spec.lookback, spec.horizon
    test_stamp = spec.test_time(prep.time_zone)

    def test_step(offset: int) -> int | None:
        """The entity's first test step on its own grid (its offset may not be the model's)."""
        return first_step_from(spec, test_stamp, offset) if test_stamp is not None else prep.test_step

    def run(pdf: pd.DataFrame) -> pd.DataFrame:
        key_values = {k: pdf[k].iloc[0] for k in keys}
        # a test window's inputs are never filled from its own targets (nothing interpolated across test_from)
        g = on_grid(pdf, channels, test_step if mode == "test" and test_stamp is not None else None)
        length = len(g.values)
        if mode == "latest":
            positions = np.array([length]) if length >= lookback else np.zeros(0, np.int64)
        else:
            first_test = test_step(g.offset)
            first = max(lookback, (first_test if first_test is not None else length) - g.start)
            last = length - horizon if until is None else min(length - horizon, until - 1 - g.start)
            positions = np.arange(first, last + 1)
        if len(positions) == 0:
            if mode != "latest":
                return pd.DataFrame(columns=schema_names)
            reason = f"series too short: {length} step(s) on the grid, the model needs lookback = {lookback}"
            short = pd.DataFrame({**{k: [v] for k, v in key_values.items()}, STEP: [None], OFFSET: [g.offset],
                                  STEP_COL: [None], output_col: [None], REASON_COL: [reason]})
            return with_counts(short, g)
        key = list(key_values.values())
        scaling = prep.scaling(key)
        mean, scale = scaling if scaling is not None else map(np.asarray, channel_scaling(g.values[-lookback:]))
        scaled = ((g.values - mean) / scale).astype(np.float32)
        x = scaled[(positions - lookback)[:, None] + np.arange(lookback)]
        pred = np.asarray(get_model(ref).predict_fn("out")(x), np.float64) * scale[0] + mean[0]
        n = len(positions)
        out = {k: np.repeat(np.asarray([v], dtype=object), n * horizon) for k, v in key_values.items()}
        out[STEP] = (g.start + positions[:, None] + np.arange(horizon)).ravel()
        out[OFFSET] = np.full(n * horizon, g.offset, np.int64)  # forecast times on the entity's own grid
        out[STEP_COL] = np.tile(np.arange(1, horizon + 1), n)
        out[output_col] = pred.ravel()
        out[REASON_COL] = np.full(n * horizon, None, dtype=object)
        if mode == "test":
            target_at = positions[:, None] + np.arange(horizon)
            out[ORIGIN_COL] = np.repeat(g.start + positions, horizon)
            out["actual"] = g.values[target_at, 0].ravel()
            out["naive"] = seasonal_naive(g.values[:, 0], positions, horizon, spec.season).ravel()
            mase = prep.naive_mae(key)
            out["mase_scale"] = np.full(n * horizon, np.nan if mase is None else mase)
            out["observed"] = g.observed[target_at].ravel()
        return with_counts(pd.DataFrame(out), g)

    def with_counts(frame: pd.DataFrame, g) -> pd.DataFrame:
        """The entity's duplicate and off-grid row counts on its first row (0 on the others)."""
        if data_counts:
            for col, count in ((DUPLICATES_COL, g.duplicates), (OFF_GRID_COL, g.off_grid)):
                frame[col] = np.where(np.arange(len(frame)) == 0, count, 0)
        return frame

    schema_names = list(keys) + [STEP, OFFSET, STEP_COL, output_col, REASON_COL] + \
        ([ORIGIN_COL, *TEST_COLUMNS] if mode == "test" else []) + \
        ([DUPLICATES_COL, OFF_GRID_COL] if data_counts else [])
    return run


def forecast_frame(df, ref: ModelRef, prep: ForecastPreparation, output_col: str = "forecast",
                   mode: str = "latest", until: int | None = None, data_counts: bool = False):
    """The forecasts of every entity of `df` (see the module docstring), in one Spark job when acted on; with
    `mode="test"`, the windows whose origin is at or after the model's test period and before grid step `until`
    (None: every one). Duplicate (entity, time) rows count once with the mean of their values (whatever the rows'
    order), rows off the entity's grid (another offset than most of its rows) are left out; `data_counts` adds
    how many of each there were per entity (`_duplicate_rows`, `_off_grid_rows`, on its first row).

    Returns a DataFrame of the entity column(s), the time column (the forecast time), `step`, `output_col` and
    `_reason` (null when the entity was forecast); with `mode="test"` also `origin` (the window's first forecast
    time) and `actual`, `naive`, `mase_scale`, `observed`.

    Raises:
        ValidationError: missing or mistyped columns, or a time column of another type than the model's (schema
            only, before any Spark job).
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    spec = prep.spec
    check_forecast_schema(spec, df.schema, f"forecasting with {ref}: the table does not match the model's forecast")
    kind = time_kind(df, spec)
    if kind != prep.time_kind:
        raise ValidationError(f"forecasting with {ref}: column {spec.time!r} is a {kind}, the model was trained "
                              f"on a {prep.time_kind}")
    zone = df.sparkSession.conf.get("spark.sql.session.timeZone") or "UTC"
    if kind == "timestamp" and zone != prep.time_zone and (spec.grid.months or calendar_days(spec, kind)
                                                           or spec.test_from is not None):
        raise ValidationError(f"forecasting with {ref}: the session time zone is {zone}, the model's grid (monthly "
                              f"or daily steps, test_from) was read in {prep.time_zone}; set "
                              f"spark.sql.session.timeZone to {prep.time_zone!r} for this job")
    long, keys = grid_frame(df, spec)
    fields = [long.schema[k] for k in keys] + [
        T.StructField(STEP, T.LongType()), T.StructField(OFFSET, T.LongType()),
        T.StructField(STEP_COL, T.IntegerType()),
        T.StructField(output_col, T.DoubleType()), T.StructField(REASON_COL, T.StringType())]
    if mode == "test":
        fields += [T.StructField(ORIGIN_COL, T.LongType()), T.StructField("actual", T.DoubleType()),
                   T.StructField("naive", T.DoubleType()), T.StructField("mase_scale", T.DoubleType()),
                   T.StructField("observed", T.BooleanType())]
    counts = [DUPLICATES_COL, OFF_GRID_COL] if data_counts else []
    fields += [T.StructField(c, T.LongType()) for c in counts]
    out = long.groupBy(*keys).applyInPandas(_forecaster(ref, prep, keys, output_col, mode, until, data_counts),
                                            T.StructType(fields))
    columns = [*spec.entity, time_of_step(spec, kind, F.col(STEP), F.col(OFFSET)).alias(spec.time), STEP_COL,
               output_col, REASON_COL]
    if mode == "test":
        columns += [time_of_step(spec, kind, F.col(ORIGIN_COL), F.col(OFFSET)).alias(ORIGIN_COL), *TEST_COLUMNS]
        columns += [F.col(SERIES_KEY)] if not spec.entity else []
    return out.select(*columns, *counts)


def data_counts(forecasts) -> dict:
    """{"duplicate_rows", "off_grid_rows"} over a `forecast_frame(..., data_counts=True)`, in one aggregation."""
    from pyspark.sql import functions as F

    row = forecasts.agg(F.sum(DUPLICATES_COL).alias("d"), F.sum(OFF_GRID_COL).alias("o")).first()
    return {"duplicate_rows": int(row["d"] or 0), "off_grid_rows": int(row["o"] or 0)}


__all__ = ["ORIGIN_COL", "STEP_COL", "data_counts", "forecast_frame", "seasonal_naive"]
