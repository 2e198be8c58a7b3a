"""The forecasting data path: the `data.forecast` spec and its grid, series built in Spark (one row per entity, gaps
filled and counted, scaling fitted before `test_from`), the errors bad tables get, and windows sliced from the
series cache (periods that never overlap, equal shards per rank, no copy per window)."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from sparkdl.data.forecast import ForecastSpec, Frequency
from sparkdl.data.series import (
    MONTH_END,
    build_series,
    first_step_from,
    grid_frame,
    on_grid,
    seasonal_naive_mae,
    step_time,
    time_of_step,
)
from sparkdl.data.windows import SeriesWindows, gather, iterate_windows, load_series, shard
from sparkdl.errors import ConfigError, ValidationError
from sparkdl.score.forecast import seasonal_naive
from sparkdl.train.prepared import prepare_forecast_data

SPEC = {"time": "ts", "entity": "city", "target": "temp", "covariates": ["hum"], "lookback": 6, "horizon": 3,
        "frequency": "1h", "test_from": "2021-01-03 00:00:00"}


def hourly_table(spark, cities=("a", "b", "c"), hours=72, drop=(), extra=()):
    """(DataFrame, pandas) of hourly rows per city from 2021-01-01 UTC: temp = city offset + hour of day, hum =
    temp / 10; `drop` are (city, hour index) rows left out, `extra` rows appended as they are."""
    rows = []
    for k, city in enumerate(cities):
        for i in range(hours):
            if (city, i) in drop:
                continue
            ts = dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=i)
            temp = 10.0 * k + (i % 24)
            rows.append((city, ts, temp, temp / 10))
    rows += list(extra)
    pdf = pd.DataFrame(rows, columns=["city", "ts", "temp", "hum"])
    return spark.createDataFrame(pdf, "city string, ts timestamp, temp double, hum double"), pdf


# ---------------------------------------------------------------------------------------------------- the spec
def test_spec_parses_the_block_and_names_what_is_wrong():
    spec = ForecastSpec.from_dict(SPEC)
    assert spec.entity == ("city",) and spec.channels == ("temp", "hum") and spec.season == 24
    assert spec.signature.input_shape == (6, 2) and spec.signature.outputs == 3
    assert ForecastSpec.from_dict(spec.to_dict()) == spec
    assert Frequency.parse("15min").default_season() == 96 and Frequency.parse("1d").default_season() == 7
    assert Frequency.parse("3mo").default_season() == 4 and Frequency.parse("1w").default_season() == 52
    for bad, words in ((dict(SPEC, frequency="hourly"), "forecast.frequency"),
                       (dict(SPEC, lookback=0), "forecast.lookback"),
                       (dict(SPEC, colour="red"), "unknown key"),
                       (dict(SPEC, test_from="not a date"), "forecast.test_from"),
                       (dict(SPEC, covariates=["temp"]), "more than once"),
                       ({k: v for k, v in SPEC.items() if k != "horizon"}, "missing required key")):
        with pytest.raises(ConfigError, match=words):
            ForecastSpec.from_dict(bad)
    with pytest.raises(ConfigError, match="forecast.season"):
        ForecastSpec.from_dict(dict(SPEC, frequency="7h"))  # no whole number of steps per day


@pytest.mark.parametrize("frequency, kind, stamp", [
    ("1h", "timestamp", "2021-01-03 05:00:00"), ("15min", "timestamp", "2021-01-03 05:45:00"),
    ("1w", "date", "2021-01-02"), ("1mo", "date", "2021-03-01"), ("3mo", "timestamp", "2021-04-01 06:00:00")])
def test_grid_steps_and_times_invert_each_other(frequency, kind, stamp):
    spec = ForecastSpec.from_dict(dict(SPEC, frequency=frequency))
    tz = "UTC"
    at = pd.Timestamp(stamp, tz=tz)
    if spec.grid.months:
        month = (at.year - 1970) * 12 + at.month - 1
        offset = ((month % spec.grid.count) << 42) + (at - at.normalize().replace(day=1)).value // 1000
    else:
        offset = (at.value // 1000) % spec.grid.step_micros
    step = first_step_from(spec, at, offset)
    back = step_time(spec, kind, step, offset, tz)
    assert (back if kind == "date" else back.tz_convert(tz)) == (at.tz_localize(None) if kind == "date" else at)
    assert first_step_from(spec, at + pd.Timedelta(seconds=1), offset) == step + 1  # just after: the next step


def _one_series_on_grid(spark, pdf, schema, spec):
    """(GridSeries, the local times of the three grid steps after it) of a one-entity table, as forecasting sees
    it: `grid_frame` in Spark, `on_grid` on its rows, `time_of_step` in Spark in the session time zone."""
    from pyspark.sql import functions as F

    long, _ = grid_frame(spark.createDataFrame(pdf, schema), spec)
    g = on_grid(long.toPandas(), list(spec.channels))
    kind = "date" if "ts date" in schema else "timestamp"
    after = spark.range(1, 4).select(time_of_step(spec, kind, F.col("id") + F.lit(g.start + len(g.values) - 1),
                                                  g.offset).alias("t"))
    return g, [r.t for r in after.select(F.date_format("t", "yyyy-MM-dd HH:mm").alias("t")).orderBy("t").collect()]


def test_daily_readings_at_local_midnight_stay_on_the_grid_across_a_dst_change(spark):
    """Berlin's clocks moved on 2021-03-28: a reading at local midnight is 23:00 UTC before and 22:00 UTC after.
    A daily grid counts wall-clock days: no reading is off the grid and forecasts are labelled at local midnight."""
    spec = ForecastSpec.from_dict(dict(SPEC, frequency="1d", lookback=3, horizon=2, test_from=None))
    zone = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "Europe/Berlin")
    try:
        days = pd.date_range("2021-03-20", "2021-04-05", freq="D", tz="Europe/Berlin")
        pdf = pd.DataFrame({"city": "a", "ts": days, "temp": np.arange(len(days), dtype=float), "hum": 1.0})
        g, after = _one_series_on_grid(spark, pdf, "city string, ts timestamp, temp double, hum double", spec)
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)
    assert (g.off_grid, g.duplicates, len(g.values)) == (0, 0, len(days))
    assert g.values[:, 0].tolist() == list(range(len(days)))  # nothing filled in
    assert after == ["2021-04-06 00:00", "2021-04-07 00:00", "2021-04-08 00:00"]
    stamp = pd.Timestamp("2021-03-29", tz="Europe/Berlin")  # the day after the change, on the driver
    step = first_step_from(spec, stamp, g.offset)
    assert step_time(spec, "timestamp", step, g.offset, "Europe/Berlin") == stamp
    assert step_time(spec, "timestamp", step - 2, g.offset, "Europe/Berlin") == pd.Timestamp("2021-03-27",
                                                                                             tz="Europe/Berlin")


@pytest.mark.parametrize("kind", ["date", "timestamp"])
def test_month_end_data_is_anchored_at_the_month_end(spark, kind):
    """Jan 31, Feb 29, Mar 31, ...: from the month's start these are on four offsets (most of Feb's row would be
    off the grid); anchored at the month's end they share one, and forecasts fall on the next month ends."""
    spec = ForecastSpec.from_dict(dict(SPEC, frequency="1mo", lookback=3, horizon=2, test_from=None))
    ends = pd.date_range("2020-02-01", periods=14, freq="MS") - pd.Timedelta(days=1)  # 2020-01-31 .. 2021-02-28
    pdf = pd.DataFrame({"city": "a", "ts": ends.date if kind == "date" else ends.tz_localize("UTC"),
                        "temp": np.arange(14, dtype=float), "hum": 1.0})
    g, after = _one_series_on_grid(spark, pdf, f"city string, ts {kind}, temp double, hum double", spec)
    assert (g.off_grid, len(g.values), bool(g.offset & MONTH_END)) == (0, 14, True)
    assert g.values[:, 0].tolist() == list(range(14))
    assert [t[:10] for t in after] == ["2021-03-31", "2021-04-30", "2021-05-31"]
    assert str(step_time(spec, kind, g.start + 1, g.offset))[:10] == "2020-02-29"
    assert first_step_from(spec, pd.Timestamp("2020-02-15", tz="UTC"), g.offset) == g.start + 1
    # data on the 28th stays anchored at the start (February's 28th is its end, the others' not)
    on_28th = pdf.assign(ts=[d.replace(day=28) for d in pdf.ts])
    g28, _ = _one_series_on_grid(spark, on_28th, f"city string, ts {kind}, temp double, hum double", spec)
    assert (g28.off_grid, bool(g28.offset & MONTH_END)) == (0, False)


def test_entity_pii_keys_series_by_a_salted_hash_and_stores_no_entity_value(spark):
    """`entity_pii`: the preparation saved with the model holds no entity value (customer ids here), finds each
    series' scaling by the values, names series by their hash in reports, and salts per model."""
    from sparkdl.data.forecast_fit import ForecastPreparation
    from sparkdl.model_metadata import data_values

    df, pdf = hourly_table(spark, cities=("cust-0001@acme", "cust-0002@acme"), hours=72)
    spec = ForecastSpec.from_dict(dict(SPEC, entity_pii=True))
    prep = prepare_forecast_data(spec, df, None, validation=None).prep
    stored = json.dumps(prep.to_dict())
    assert "cust-000" not in stored and ForecastPreparation.from_dict(prep.to_dict()) == prep
    mean, _ = prep.scaling(("cust-0002@acme",))
    assert mean[0] == pytest.approx(pdf[pdf.city == "cust-0002@acme"].temp[:48].mean())  # before test_from
    assert prep.entity_label(("cust-0001@acme",)).startswith("h:") and prep.scaling(("someone else",)) is None
    assert "no value stored" in data_values({"preprocessing": prep.to_dict()})["forecast entities"]
    assert prepare_forecast_data(spec, df, None, validation=None).prep.entity_salt != prep.entity_salt
    with pytest.raises(ConfigError, match="entity_pii: the table has no entity column"):
        ForecastSpec.from_dict({k: v for k, v in dict(SPEC, entity_pii=True).items() if k != "entity"})


def test_seasonal_naive_repeats_the_last_season_before_the_window():
    values = np.arange(20, dtype=float)
    naive = seasonal_naive(values, np.array([8]), horizon=5, season=4)
    # first forecast step at position 8: steps 1..4 repeat positions 4..7, step 5 repeats position 4 again
    assert naive.tolist() == [[4.0, 5.0, 6.0, 7.0, 4.0]]
    assert np.isnan(seasonal_naive(values, np.array([2]), 2, 4)).all()
    assert seasonal_naive_mae(values, 4) == 4.0


# ---------------------------------------------------------------------------------------------------- series
def test_series_are_built_once_per_entity_with_gaps_filled_and_scaling_fitted_before_test_from(spark):
    df, pdf = hourly_table(spark, drop={("b", 10), ("b", 11)})
    spec = ForecastSpec.from_dict(SPEC)
    info = build_series(df, spec, test_stamp=spec.test_time("UTC"))
    assert sorted(info.entities) == [("a",), ("b",), ("c",)]
    assert info.data.num_rows == 3 and set(info.length.tolist()) == {72}
    b = info.entities.index(("b",))
    assert info.filled.tolist()[b] == 2 and info.filled.sum() == 2
    # the scaling comes from the first 48 hours only (test_from is hour 48)
    train = pdf[(pdf.city == "a") & (pdf.ts < pd.Timestamp("2021-01-03", tz="UTC"))]
    a = info.entities.index(("a",))
    assert info.mean[a][0] == pytest.approx(train.temp.mean())
    assert info.scale[a][0] == pytest.approx(train.temp.std(ddof=0))
    assert info.naive_mae[a] == pytest.approx(0.0)  # the daily cycle repeats exactly: seasonal naive is perfect
    # the gap is filled by linear interpolation between hours 9 and 12
    values, offsets = load_series(SeriesWindows.of(info.data, info.start, info.length, 6, 3, 2))
    raw = values[offsets[b]:offsets[b] + 72, 0] * info.scale[b][0] + info.mean[b][0]
    assert raw[9:13] == pytest.approx([19.0, 20.0, 21.0, 22.0], abs=1e-4)


def test_nothing_is_interpolated_across_test_from_and_test_gaps_are_filled_from_the_past(spark):
    """Every training value is 1.0, every test value 100 + hour, and the four hours before test_from (hour 48) are
    missing: the training part is filled from itself (scaling fitted on 1.0s: mean 1.0, not pulled towards the
    test values), and a test gap takes the last value before it, never a later one."""
    rows = [("a", dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=i),
             1.0 if i < 48 else 100.0 + i, 0.0) for i in range(72) if i not in (44, 45, 46, 47, 60, 61)]
    df = spark.createDataFrame(pd.DataFrame(rows, columns=["city", "ts", "temp", "hum"]),
                               "city string, ts timestamp, temp double, hum double")
    spec = ForecastSpec.from_dict(SPEC)
    info = build_series(df, spec, test_stamp=spec.test_time("UTC"))
    assert info.mean[0][0] == pytest.approx(1.0) and info.filled.tolist() == [6]
    values, offsets = load_series(SeriesWindows.of(info.data, info.start, info.length, 6, 3, 2))
    raw = values[:72, 0] * info.scale[0][0] + info.mean[0][0]
    assert raw[40:48] == pytest.approx([1.0] * 8)                       # not interpolated towards hour 48's 148
    assert raw[59:63] == pytest.approx([159.0, 159.0, 159.0, 162.0])    # carried forward, not from hour 62


def test_the_series_cache_holds_each_series_once(spark, tmp_path):
    df, _ = hourly_table(spark, cities=tuple("abcdefgh"), hours=400)
    spec = ForecastSpec.from_dict(dict(SPEC, lookback=48, test_from=None))
    info = build_series(df, spec)
    raw = tmp_path / "raw"
    df.write.parquet(str(raw), compression="uncompressed")
    raw_bytes = sum(f.stat().st_size for f in raw.rglob("*.parquet"))
    cache_bytes = sum(_size(f) for f in info.data.files)
    assert cache_bytes <= 1.5 * raw_bytes, (cache_bytes, raw_bytes)
    windows = SeriesWindows.of(info.data, info.start, info.length, 48, 3, 2)
    assert windows.num_rows == 8 * (400 - 48 - 3 + 1)  # every origin, no copy: the windows are slices


def _size(url: str) -> int:
    from sparkdl.uri import filesystem

    fs, path = filesystem(url)
    return fs.get_file_info(path).size


def test_bad_tables_get_every_problem_at_once_with_the_entities_named(spark):
    spec = ForecastSpec.from_dict(SPEC)
    dupe = ("a", dt.datetime(2021, 1, 1, 5, tzinfo=dt.timezone.utc), 1.0, 0.1)
    off = ("c", dt.datetime(2021, 1, 1, 5, 30, tzinfo=dt.timezone.utc), 1.0, 0.1)
    df, _ = hourly_table(spark, extra=[dupe, off])
    short, _ = hourly_table(spark, cities=("z",), hours=5)
    with pytest.raises(ValidationError) as caught:
        build_series(df.unionByName(short), spec)
    message = str(caught.value)
    assert "duplicate rows" in message and "['a']" in message
    assert "off the grid" in message and "'c'" in message
    assert "series too short" in message and "'z'" in message and ">= lookback + horizon = 9" in message
    assert {p.problem for p in caught.value.problems} == {"duplicate rows", "off the grid", "series too short"}


def test_schema_problems_are_named_before_any_spark_job(spark, sparkdl_log):
    df = spark.createDataFrame([("a", "2021-01-01", "warm")], "city string, ts string, temp string")
    spec = ForecastSpec.from_dict(SPEC)
    with pytest.raises(ValidationError) as caught:
        prepare_forecast_data(spec, df, None, 0.1)
    found = {(p.column, p.problem) for p in caught.value.problems}
    assert found == {("ts", "wrong type"), ("temp", "wrong type"), ("hum", "missing column")}
    assert "timestamp or date" in str(caught.value) and "numeric target" in str(caught.value)


# ---------------------------------------------------------------------------------------------------- windows
def test_periods_never_overlap_and_scaling_stays_in_the_training_period(spark):
    df, _ = hourly_table(spark)
    spec = ForecastSpec.from_dict(dict(SPEC, stride=2))
    prepared = prepare_forecast_data(spec, df, None, 0.25)
    prep, train, val = prepared.prep, prepared.train_data, prepared.val_data
    test_step = prep.test_step
    assert prep.val_step == test_step - 12  # the last quarter of the 48 training hours
    for windows, lo, hi in ((train, None, prep.val_step), (val, prep.val_step, test_step)):
        series, positions = windows.origins()
        first_target = np.asarray(windows.starts)[series] + positions
        assert (first_target + spec.horizon <= hi).all()
        if lo is not None:
            assert (first_target >= lo).all()
        assert (positions >= spec.lookback).all()
    assert (np.diff(train.origins()[1][:5]) == 2).all()  # the training stride
    assert train.num_rows == 3 * len(range(6, 36 - 3 + 1, 2)) and val.num_rows == 3 * (12 - 3 + 1)
    assert prep.series['["a"]']["mean"][0] == pytest.approx(11.5)  # hours 0..47 only: (0 + ... + 23) / 24


def test_every_rank_reads_an_equal_disjoint_shard_of_shuffled_windows(spark):
    df, _ = hourly_table(spark)
    spec = ForecastSpec.from_dict(dict(SPEC, test_from=None))
    windows = prepare_forecast_data(spec, df, None, None).train_data
    n = windows.num_rows
    shards = [shard(n, rank, 2, epoch=0, seed=3) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == n // 2 and not set(shards[0]) & set(shards[1])
    assert set(shard(n, 0, 2, epoch=1, seed=3)) != set(shards[0])  # another epoch, another draw
    # what a rank reads is exactly its shard's windows, in whole batches
    values, offsets = load_series(windows)
    series, positions = windows.origins()
    blocks = list(iterate_windows(windows, 1, 2, batch_size=8, shuffle=True, seed=3, epochs=2))
    x = np.concatenate([b[0] for b in blocks])
    y = np.concatenate([b[1] for b in blocks])
    want = np.concatenate([shard(n, 1, 2, e, seed=3) for e in range(2)])
    wx, wy = gather(values, offsets, series[want], positions[want], spec.lookback, spec.horizon)
    assert x.shape == (2 * (n // 2), spec.lookback, 2) and np.array_equal(x, wx) and np.array_equal(y, wy)
    with pytest.raises(ConfigError, match="cannot be shared"):
        shard(3, 0, 4, 0)


def test_a_window_is_its_series_history_and_the_steps_that_follow(spark):
    df, pdf = hourly_table(spark, cities=("a",))
    spec = ForecastSpec.from_dict(dict(SPEC, entity=None, covariates=[], test_from=None))
    prepared = prepare_forecast_data(spec, df.drop("city"), None, None)
    g = on_grid(pd.DataFrame({"_sparkdl_step": np.arange(3), "_sparkdl_offset": [0, 0, 0], "temp": [1.0, np.nan, 3.0]}),
                ["temp"])
    assert g.values[:, 0].tolist() == [1.0, 2.0, 3.0] and g.observed.tolist() == [True, False, True]
    windows = prepared.train_data
    values, offsets = load_series(windows)
    mean, scale = pdf.temp.mean(), pdf.temp.std(ddof=0)
    x, y = gather(values, offsets, np.array([0]), np.array([30]), spec.lookback, spec.horizon)
    assert (x[0, :, 0] * scale + mean) == pytest.approx(pdf.temp.to_numpy()[24:30], abs=1e-4)
    assert (y[0] * scale + mean) == pytest.approx(pdf.temp.to_numpy()[30:33], abs=1e-4)
