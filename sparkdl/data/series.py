"""Series built in Spark from a long table: one row per entity, each series once, contiguous and ordered.

`build_series(df, spec)` runs ONE Spark job over the table: a grouped pandas function per entity puts its rows on
the grid of `spec.frequency` (`sparkdl.data.forecast`), fills missing steps (and missing or non-finite values) by
linear interpolation, counts what it filled, and fits the entity's scaling on the steps before `test_from`. The
series rows go to a Petastorm-format cache (`sparkdl.data.petastorm_io.convert`: same key rules, marker, reuse):

    entity columns... | start (grid step of values[0]) | offset | length | values (length × channels, row-major) |
    mean, scale (per channel) | naive_mae (MASE's scale) | filled | duplicates | off_grid

Nothing is copied per window: `sparkdl.data.windows` slices windows out of these rows as it reads them. Problems
in the data (duplicate (entity, time) rows, times off the grid, series shorter than lookback + horizon) are
counted by the same job and raised afterwards, all at once, naming the entities; schema problems are raised
before any job (`check_forecast_schema`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from sparkdl.data.forecast import MICROS, ForecastSpec
from sparkdl.data.petastorm_io import PetastormDataset, cache_key, convert
from sparkdl.errors import Problem, ValidationError
from sparkdl.log import get_logger
from sparkdl.parquet_reader import read_columns

log = get_logger("data.series")

STEP, OFFSET, SERIES_KEY = "_sparkdl_step", "_sparkdl_offset", "_sparkdl_series"
VALUES = "values"
INFO_COLUMNS = ("start", "offset", "length", "mean", "scale", "naive_mae", "filled", "duplicates", "off_grid")
MONTH_BITS = 42  # a monthly grid's offset: (month within the step) << 42 | microseconds into the month
# a monthly grid anchored at the month's end (`OFFSET_END`, chosen per series by `on_grid`): the flag, and its
# offset's microseconds counted from END_SPAN before the next month's start
MONTH_END, END_SPAN = 1 << 50, 32 * 86400 * MICROS
OFFSET_END = "_sparkdl_offset_end"
DAY_MICROS = 86400 * MICROS


def calendar_days(spec: ForecastSpec, kind: str) -> bool:
    """Whether a timestamp grid of whole days (1d, 1w) counts local wall-clock time (of the session time zone): a
    reading at local midnight stays on the grid across a daylight-saving change."""
    return kind == "timestamp" and not spec.grid.months and spec.grid.step_micros % DAY_MICROS == 0
TIME_TYPES = ("timestamp", "timestamp_ntz", "date")


# ---------------------------------------------------------------------------------------------------- the grid
def time_kind(df, spec: ForecastSpec) -> str:
    """"date" or "timestamp" for the spec's time column (ValidationError otherwise)."""
    name = df.schema[spec.time].dataType.typeName()
    if name not in TIME_TYPES:
        raise ValidationError(f"forecast.time: column {spec.time!r} must be a timestamp or date, found {name}",
                              [Problem(spec.time, "wrong type", "timestamp or date", name)])
    return "date" if name == "date" else "timestamp"


def grid_columns(df, spec: ForecastSpec, month_end: bool = False):
    """(step, offset) Spark columns of each row's time on the spec's grid (exact integer arithmetic). Whole-day
    grids of timestamps count wall-clock time (`calendar_days`); `month_end` gives a monthly grid's offset
    anchored at the month's end (month-end data: Jan 31, Feb 28, ... share one offset)."""
    from pyspark.sql import functions as F

    t = F.col(spec.time)
    kind = time_kind(df, spec)
    micros = (F.expr(f"unix_date(`{spec.time}`)") * F.lit(DAY_MICROS)) if kind == "date" \
        else F.expr(f"unix_micros(CAST(`{spec.time}` AS TIMESTAMP))")
    if calendar_days(spec, kind):
        micros = (F.expr(f"unix_date(CAST(`{spec.time}` AS DATE))") * F.lit(DAY_MICROS)
                  + F.hour(t).cast("long") * F.lit(3600 * MICROS) + F.minute(t).cast("long") * F.lit(60 * MICROS)
                  + F.expr(f"CAST(date_part('SECOND', `{spec.time}`) * 1000000 AS BIGINT)"))
    if not spec.grid.months:
        step = F.lit(spec.grid.step_micros)
        offset = F.pmod(micros, step)
        return ((micros - offset) / step).cast("long"), offset
    month = ((F.year(t) - 1970) * 12 + F.month(t) - 1).cast("long")
    unit = f"trunc(`{spec.time}`, 'MM')" if not month_end else f"add_months(trunc(`{spec.time}`, 'MM'), 1)"
    start = F.expr(f"unix_date({unit})") * F.lit(DAY_MICROS) if kind == "date" \
        else F.expr(f"unix_micros(CAST({unit} AS TIMESTAMP))")
    phase = F.pmod(month, F.lit(spec.grid.count))
    offset = F.shiftleft(phase, MONTH_BITS) + (micros - start)
    if month_end:
        offset = offset + F.lit(MONTH_END + END_SPAN)
    return ((month - phase) / spec.grid.count).cast("long"), offset


def time_of_step(spec: ForecastSpec, kind: str, step_col, offset):
    """The Spark column of the time at grid step `step_col` (the inverse of `grid_columns`), typed like the time
    column (`kind`); `offset` is an int (one grid for all rows) or a column (each entity's own)."""
    from pyspark.sql import Column
    from pyspark.sql import functions as F

    offset = offset if isinstance(offset, Column) else F.lit(int(offset))
    if not spec.grid.months:
        micros = step_col * F.lit(spec.grid.step_micros) + offset
        if kind == "date":
            return F.date_from_unix_date(F.floor(micros / F.lit(DAY_MICROS)).cast("int"))
        if calendar_days(spec, kind):  # wall-clock time in the session time zone
            day = F.date_from_unix_date(F.floor(micros / F.lit(DAY_MICROS)).cast("int"))
            into = F.pmod(micros, F.lit(DAY_MICROS))
            return F.make_timestamp(F.year(day), F.month(day), F.dayofmonth(day),
                                    (into / F.lit(3600 * MICROS)).cast("int"),
                                    (F.pmod(into, F.lit(3600 * MICROS)) / F.lit(60 * MICROS)).cast("int"),
                                    (F.pmod(into, F.lit(60 * MICROS)) / F.lit(MICROS)).cast("decimal(16,6)"))
        return F.timestamp_micros(micros)
    end = offset.bitwiseAND(F.lit(MONTH_END)) != 0
    plain = offset - F.when(end, F.lit(MONTH_END)).otherwise(F.lit(0))
    phase, into = F.shiftright(plain, MONTH_BITS), plain.bitwiseAND(F.lit((1 << MONTH_BITS) - 1))
    month = step_col * F.lit(spec.grid.count) + phase + F.when(end, 1).otherwise(0)
    into = into - F.when(end, F.lit(END_SPAN)).otherwise(F.lit(0))
    first = F.make_date(F.lit(1970) + F.floor(month / 12).cast("int"), F.pmod(month, F.lit(12)).cast("int") + 1,
                        F.lit(1))
    if kind == "date":
        return F.date_add(first, F.floor(into / F.lit(DAY_MICROS)).cast("int"))
    return F.timestamp_micros(F.unix_micros(first.cast("timestamp")) + into)


def _month_parts(offset: int) -> tuple[int, int, bool]:
    """(month within the step, microseconds from the anchor, anchored at the month's end) of a monthly offset."""
    end = bool(int(offset) & MONTH_END)
    plain = int(offset) - (MONTH_END if end else 0)
    return plain >> MONTH_BITS, (plain & ((1 << MONTH_BITS) - 1)) - (END_SPAN if end else 0), end


def _month_time(month: int, into: int, end: bool, tz: str):
    """The pandas Timestamp `into` microseconds after the start of `month` (the next one's when `end`)."""
    import pandas as pd

    month += 1 if end else 0
    first = pd.Timestamp(year=1970 + month // 12, month=month % 12 + 1, day=1, tz=tz)
    return first + pd.Timedelta(microseconds=into)


def step_time(spec: ForecastSpec, kind: str, step: int, offset: int, time_zone: str = "UTC"):
    """The pandas Timestamp of grid step `step` (as `time_of_step`, on the driver: plots, logs)."""
    import pandas as pd

    if not spec.grid.months:
        micros = int(step) * spec.grid.step_micros + int(offset)
        if calendar_days(spec, kind):
            return pd.Timestamp(micros, unit="us").tz_localize(time_zone, ambiguous=True,
                                                              nonexistent="shift_forward")
        stamp = pd.Timestamp(micros, unit="us", tz="UTC")
    else:
        phase, into, end = _month_parts(offset)
        stamp = _month_time(int(step) * spec.grid.count + phase, into, end, "UTC" if kind == "date" else time_zone)
    return stamp.tz_localize(None) if kind == "date" else stamp.tz_convert(time_zone)


def first_step_from(spec: ForecastSpec, stamp, offset: int) -> int:
    """The first grid step (of a series with `offset`) at or after the pandas Timestamp `stamp` (aware, in the
    grid's time zone: UTC for dates)."""
    if not spec.grid.months:
        step = spec.grid.step_micros
        local = stamp.tz_localize(None) if calendar_days(spec, "timestamp") and stamp.tzinfo is not None else stamp
        micros = local.value // 1000
        return -((int(offset) - micros) // step)
    phase, into, end = _month_parts(offset)
    month = (stamp.year - 1970) * 12 + stamp.month - 1
    # the first month (around the stamp's own) whose grid time is at or after the stamp
    at = next(m for m in (month - 1, month, month + 1) if _month_time(m, into, end, str(stamp.tz or "UTC")) >= stamp)
    return -((phase - at) // spec.grid.count)


# ---------------------------------------------------------------------------------------------------- schema
def check_forecast_schema(spec: ForecastSpec, schema, what: str) -> None:
    """Missing columns and wrong types of a forecasting table, from the schema only (no Spark job).

    Raises:
        ValidationError: every problem at once, each naming its column and what was expected.
    """
    fields = {f.name: f.dataType for f in schema.fields}
    problems = []
    for role, names in (("time", [spec.time]), ("entity", list(spec.entity)), ("target", [spec.target]),
                        ("covariate", list(spec.covariates))):
        for name in names:
            if name not in fields:
                problems.append(Problem(name, "missing column", f"the forecast {role} column",
                                        f"columns {sorted(fields)}"))
                continue
            kind = fields[name].typeName()
            if role == "time" and kind not in TIME_TYPES:
                problems.append(Problem(name, "wrong type", "timestamp or date", kind))
            elif role in ("target", "covariate") and kind not in ("byte", "short", "integer", "long", "float",
                                                                 "double", "decimal"):
                problems.append(Problem(name, "wrong type", f"a numeric {role}", kind))
            elif role == "entity" and kind in ("array", "map", "struct", "binary"):
                problems.append(Problem(name, "wrong type", "a string, number or date naming a series", kind))
    if problems:
        raise ValidationError(f"{what}: " + "; ".join(str(p) for p in problems), problems)


# ---------------------------------------------------------------------------------------------------- building
def _series_schema(df, spec: ForecastSpec):
    from pyspark.sql import types as T

    fields = [df.schema[c] for c in spec.entity] or [T.StructField(SERIES_KEY, T.IntegerType())]
    return T.StructType(fields + [
        T.StructField("start", T.LongType()), T.StructField("offset", T.LongType()),
        T.StructField("length", T.IntegerType()), T.StructField(VALUES, T.ArrayType(T.FloatType())),
        T.StructField("mean", T.ArrayType(T.DoubleType())), T.StructField("scale", T.ArrayType(T.DoubleType())),
        T.StructField("naive_mae", T.DoubleType()), T.StructField("filled", T.IntegerType()),
        T.StructField("duplicates", T.IntegerType()), T.StructField("off_grid", T.IntegerType())])


@dataclass(frozen=True)
class GridSeries:
    """One entity's rows on the grid: `values` (length × channels, gaps filled), `observed` (per step: the target
    was in the data, not filled in), `start` (grid step of row 0), `offset`, and the counts of the steps filled and
    of the rows duplicated or off the grid (those rows are dropped)."""

    start: int
    offset: int
    values: np.ndarray
    observed: np.ndarray
    filled: int
    duplicates: int
    off_grid: int


def on_grid(pdf, channels: list[str], test_step=None) -> GridSeries:
    """Put one entity's rows (with the `grid_columns` STEP and OFFSET) on the grid: the most common offset wins
    (of a monthly grid's OFFSET and OFFSET_END, the anchor that puts more rows on one offset),
    duplicate steps take the mean of their values (whatever the rows' order), missing and non-finite values are
    filled (`fill_gaps`). `test_step`
    (offset -> the first grid step of the test period) splits the fill: nothing is interpolated across
    `test_from`, and test steps are filled from the past only."""
    offsets = pdf[OFFSET].to_numpy(np.int64)
    found, counts = np.unique(offsets, return_counts=True)
    if OFFSET_END in pdf.columns:  # a monthly grid: anchored at the month's start, or its end if that fits better
        ends = pdf[OFFSET_END].to_numpy(np.int64)
        found_end, counts_end = np.unique(ends, return_counts=True)
        if counts_end.max() > counts.max():
            offsets, found, counts = ends, found_end, counts_end
    offset = int(found[np.argmax(counts)])
    on = offsets == offset
    rows = pdf[on]
    steps = rows[STEP].to_numpy(np.int64)
    unique_steps, inverse = np.unique(steps, return_inverse=True)
    start, length = int(unique_steps[0]), int(unique_steps[-1] - unique_steps[0] + 1)
    values = rows[channels].to_numpy(np.float64, na_value=np.nan, copy=True)  # pandas may hand out a read-only view
    values[~np.isfinite(values)] = np.nan
    if len(unique_steps) < len(steps):  # duplicates: the mean of each step's known values, order-independent
        known = ~np.isnan(values)
        sums = np.zeros((len(unique_steps), len(channels)))
        counts = np.zeros((len(unique_steps), len(channels)))
        np.add.at(sums, inverse, np.where(known, values, 0.0))
        np.add.at(counts, inverse, known)
        values = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    else:
        values = values[np.argsort(inverse)]
    grid = np.full((length, len(channels)), np.nan)
    grid[unique_steps - start] = values
    missing = int(np.isnan(grid).any(axis=1).sum())
    split = None if test_step is None else int(np.clip(test_step(offset) - start, 0, length))
    return GridSeries(start, offset, fill_gaps(grid, split), ~np.isnan(grid[:, 0]), missing,
                      int(len(steps) - len(unique_steps)), int((~on).sum()))


def series_builder(spec: ForecastSpec, test_stamp, keys: list[str]):
    """The grouped pandas function of `build_series`: one entity's rows in, its series row out."""
    import pandas as pd

    channels = list(spec.channels)

    def test_step(offset: int) -> int:
        return first_step_from(spec, test_stamp, offset)

    def build(pdf: pd.DataFrame) -> pd.DataFrame:
        g = on_grid(pdf, channels, test_step if test_stamp is not None else None)
        length = len(g.values)
        train = length if test_stamp is None else int(np.clip(first_step_from(spec, test_stamp, g.offset) - g.start,
                                                              0, length))
        mean, scale = channel_scaling(g.values[:train])
        out = {k: [pdf[k].iloc[0]] for k in keys}
        out.update({"start": [g.start], "offset": [g.offset], "length": [length],
                    VALUES: [g.values.astype(np.float32).ravel()], "mean": [mean], "scale": [scale],
                    "naive_mae": [seasonal_naive_mae(g.values[:train, 0], spec.season)],
                    "filled": [g.filled], "duplicates": [g.duplicates], "off_grid": [g.off_grid]})
        return pd.DataFrame(out)

    return build


def grid_frame(df, spec: ForecastSpec):
    """(the long table's entity keys, STEP, OFFSET (and a monthly grid's OFFSET_END) and channels as doubles, the
    key column names): what `on_grid` reads, per entity after a groupBy of the keys."""
    from pyspark.sql import functions as F

    step, offset = grid_columns(df, spec)
    ends = [grid_columns(df, spec, month_end=True)[1].alias(OFFSET_END)] if spec.grid.months else []
    keys = list(spec.entity) or [SERIES_KEY]
    long = df.select(*[F.col(c) for c in spec.entity], *([F.lit(0).alias(SERIES_KEY)] if not spec.entity else []),
                     step.alias(STEP), offset.alias(OFFSET), *ends,
                     *[F.col(c).cast("double").alias(c) for c in spec.channels])
    return long, keys


def fill_gaps(grid: np.ndarray, split: int | None = None) -> np.ndarray:
    """Missing values (NaN) of each column filled. Before `split` (the training period; all of it without one):
    linear interpolation between the nearest known steps of that period (the first/last known value at its ends;
    0 for a column with none). From `split` on (the test period): the last value before the gap, so a test step
    is never filled from later (or test) values and no training step from test values."""
    split = len(grid) if split is None else split
    out = grid.copy()
    index = np.arange(split)
    for c in range(grid.shape[1]):
        head = grid[:split, c]
        known = ~np.isnan(head)
        if not known.any():
            out[:split, c] = 0.0
        elif not known.all():
            out[:split, c] = np.interp(index, index[known], head[known])
        if split < len(grid):  # carried forward: each test step takes the last value at or before it
            column = out[:, c] if split > 0 else np.concatenate([[0.0], out[:, c]])
            start = split if split > 0 else split + 1
            valid = ~np.isnan(column)
            valid[:start] = True  # the training period (filled above) counts as known
            last = np.maximum.accumulate(np.where(valid, np.arange(len(column)), 0))
            filled = column[last]
            out[split:, c] = filled[start:]
    return out


def channel_scaling(values: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation (1 where it is 0 or undefined) of `values` (steps × channels)."""
    if len(values) == 0:
        return [0.0] * values.shape[1], [1.0] * values.shape[1]
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
    return [float(v) for v in mean], [float(v) for v in std]


def seasonal_naive_mae(target: np.ndarray, season: int) -> float:
    """Mean |y[t] - y[t - season]| over a series' training steps: the scale of MASE (NaN when too short)."""
    if len(target) <= season:
        return float("nan")
    return float(np.mean(np.abs(target[season:] - target[:-season])))


@dataclass(frozen=True)
class SeriesInfo:
    """The series of a cache, without their values (read from the cache's small columns, on the driver).

    Attributes:
        data: the cache (`values` and the entity columns are what the window reader reads).
        entities: one tuple of entity values per series (`(0,)` for a table that is one series).
        start, offset, length: each series' first grid step, grid offset and number of steps.
        mean, scale: (series × channels) fitted scaling; naive_mae: MASE's scale per series; filled: steps filled.
    """

    data: PetastormDataset
    entities: tuple
    start: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    naive_mae: np.ndarray
    filled: np.ndarray
    problems: tuple = field(default=())

    @property
    def num_series(self) -> int:
        return len(self.entities)


def read_series_info(data: PetastormDataset, spec: ForecastSpec) -> SeriesInfo:
    """The small columns of every series in the cache, in file order (the order the window reader uses)."""
    keys = list(spec.entity) or [SERIES_KEY]
    table = read_columns(data.files, keys + list(INFO_COLUMNS))
    if table is None or table.num_rows == 0:
        raise ValidationError("forecast: the table has no rows to build series from",
                              [Problem(spec.target, "no rows", "at least one series", "0 rows")])
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    entities = tuple(zip(*(cols[k] for k in keys)))
    return SeriesInfo(data, entities, np.asarray(cols["start"], np.int64), np.asarray(cols["offset"], np.int64),
                      np.asarray(cols["length"], np.int64), np.asarray(cols["mean"], np.float64),
                      np.asarray(cols["scale"], np.float64), np.asarray(cols["naive_mae"], np.float64),
                      np.asarray(cols["filled"], np.int64),
                      _problems(spec, entities, cols))


def _problems(spec: ForecastSpec, entities: tuple, cols: dict) -> tuple:
    def named(mask) -> list:
        return [entities[i] if len(entities[i]) > 1 else entities[i][0] for i in np.flatnonzero(mask)][:10]

    entity = ", ".join(spec.entity) or "the series"
    problems = []
    duplicates = np.asarray(cols["duplicates"])
    if duplicates.any():
        problems.append(Problem(spec.time, "duplicate rows", f"one row per ({entity}, {spec.time})",
                                f"{int(duplicates.sum())} duplicate row(s) in series {named(duplicates > 0)}",
                                int(duplicates.sum())))
    off_grid = np.asarray(cols["off_grid"])
    offsets = np.asarray(cols["offset"])
    if off_grid.any() or len(set(offsets.tolist())) > 1:
        mixed = offsets != np.bincount(np.unique(offsets, return_inverse=True)[1]).argmax() \
            if len(set(offsets.tolist())) > 1 else np.zeros(len(offsets), bool)
        bad = (off_grid > 0) | mixed
        problems.append(Problem(spec.time, "off the grid", f"times on one {spec.frequency} grid",
                                f"{int(off_grid.sum())} row(s) between grid steps and {int(mixed.sum())} series on "
                                f"another grid, in series {named(bad)}; choose a frequency that fits the data",
                                int(off_grid.sum() + mixed.sum())))
    lengths = np.asarray(cols["length"])
    short = lengths < spec.window
    if short.any():
        problems.append(Problem(spec.target, "series too short", f">= lookback + horizon = {spec.window} steps",
                                f"{int(short.sum())} series shorter, e.g. {named(short)} with "
                                f"{sorted(set(lengths[short].tolist()))[:5]} steps", int(short.sum())))
    return tuple(problems)


def build_series(df, spec: ForecastSpec, snapshot=None, *, test_stamp=None, parent: str | None = None
                 ) -> SeriesInfo:
    """Build (or find) the series cache of `df` for `spec` in one Spark job; see the module docstring.

    Args:
        df: the long table.
        spec: the forecast spec.
        snapshot: the Delta snapshot `df` reads (the cache key), or None (the plan hash stands in).
        test_stamp: `spec.test_time(...)` in the session's time zone (fits the scaling before it).
        parent: the parent cache folder (default: the session's).

    Raises:
        ValidationError: schema problems (before any job), then data problems (duplicates, off-grid times, short
            series), every one at once with the entities named.
    """
    check_forecast_schema(spec, df.schema, "the forecasting table does not match data.forecast")
    long, keys = grid_frame(df, spec)
    series = long.groupBy(*keys).applyInPandas(series_builder(spec, test_stamp, keys), _series_schema(df, spec))
    fingerprint = hashlib.sha256(json.dumps({"spec": spec.to_dict(), "test": str(test_stamp)},
                                            sort_keys=True).encode()).hexdigest()[:24]
    key = cache_key(df=df, snapshot=snapshot, columns=[spec.time, *keys, *spec.channels], fingerprint=fingerprint,
                    dtype=None, with_label=False, extra={"kind": "series"})
    data = convert(series, key=key, dtype=None, feature_column=VALUES, label_column=None, parent=parent,
                   spark=df.sparkSession)
    info = read_series_info(data, spec)
    if info.problems:
        raise ValidationError("the forecasting table: " + "; ".join(str(p) for p in info.problems),
                              list(info.problems))
    if info.filled.any():
        log.warning("filled %d missing step(s) by interpolation in %d of %d series", int(info.filled.sum()),
                    int((info.filled > 0).sum()), info.num_series)
    return info


__all__ = ["GridSeries", "SeriesInfo", "build_series", "check_forecast_schema", "fill_gaps", "first_step_from",
           "grid_columns", "grid_frame", "on_grid", "read_series_info", "step_time", "time_of_step"]
