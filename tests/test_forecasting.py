"""A forecaster end to end on a Delta table: `KerasEstimator(forecast=...)` with Horovod, evaluation on the test
windows against seasonal naive, forecasts written back to Delta per entity — on both session kinds."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sparkdl import lake, stack
from sparkdl.errors import ConfigError, PromotionRefused, ValidationError
from sparkdl.evaluate import evaluate_model
from sparkdl.score import score_table
from sparkdl.train import KerasEstimator

FORECAST = {"time": "ts", "entity": "city", "target": "temp", "covariates": ["hum"], "lookback": 24,
            "horizon": 6, "frequency": "1h", "test_from": "2021-01-09 00:00:00"}


def city_table(cities=("berlin", "oslo", "rome"), hours=240, seed=0) -> pd.DataFrame:
    """Hourly temperatures with a daily cycle of its own phase and level per city, noise and a covariate."""
    rng = np.random.default_rng(seed)
    parts = []
    for k, city in enumerate(cities):
        i = np.arange(hours)
        temp = 5.0 * k + 4.0 * np.sin(2 * np.pi * i / 24 + k) + rng.normal(0, 0.2, hours)
        parts.append(pd.DataFrame({"city": city, "ts": pd.date_range("2021-01-01", periods=hours, freq="h", tz="UTC"),
                                   "temp": temp, "hum": 50 + 2 * temp}))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def forecaster(spark, tmp_path_factory, training_store):
    """(lake folder, table, fitted SparkDLModel) of an LSTM forecaster on three cities."""
    root = tmp_path_factory.mktemp("forecast-lake")
    table = str(root / "temps")
    lake.write_table(spark.createDataFrame(city_table()), table, mode="overwrite")
    est = KerasEstimator(model="lstm_forecaster", forecast=FORECAST, hparams={"units": 16}, epochs=6, batch_size=32,
                         learning_rate=0.005, num_proc=2, validation=0.1, model_store=training_store,
                         model_name="temps_lstm")
    return root, table, est.fit(table)


@pytest.mark.slow
@pytest.mark.both_sessions
def test_a_forecaster_trains_with_horovod_and_beats_nothing_it_should_not(forecaster, training_store):
    _, table, model = forecaster
    meta = model.getMetadata()
    assert meta["signature"]["input_shape"] == [24, 2] and meta["signature"]["outputs"] == 6
    assert meta["source"]["table"].endswith("temps") and meta["num_proc"] == 2
    prep = meta["preprocessing"]
    assert prep["forecast"]["horizon"] == 6 and set(prep["series"]) == {'["berlin"]', '["oslo"]', '["rome"]'}
    assert prep["val_step"] < prep["test_step"]
    history = model.getHistory()
    assert len(history["loss"]) == 6 and history["loss"][-1] < history["loss"][0] and "val_loss" in history

    metrics = evaluate_model(str(model.getModelVersion()), table, store=training_store)
    assert metrics["task"] == "forecast" and metrics["series"] == 3 and metrics["season"] == 24
    # test windows: origins from hour 192 to 240 - 6, for each city
    assert metrics["windows"] == 3 * (240 - 6 - 192 + 1) and metrics["count"] == metrics["windows"] * 6
    assert len(metrics["mae_by_step"]) == 6 and len(metrics["seasonal_naive"]["mae_by_step"]) == 6
    for key in ("mae", "rmse", "smape", "mase"):
        assert np.isfinite(metrics[key]) and np.isfinite(metrics["seasonal_naive"][key])
    assert metrics["rmse"] >= metrics["mae"] > 0
    assert set(metrics["per_entity"]) == {"berlin", "oslo", "rome"}
    # the daily cycle repeats: seasonal naive's error is the noise's (about 0.2 * sqrt(2) * sqrt(2/pi))
    assert metrics["seasonal_naive"]["mae"] == pytest.approx(0.226, abs=0.05)
    # the model against seasonal naive on the same forecasts: it learned the cycle (a flat forecast of each city's
    # mean would be off by about 2.5), and the verdict is the paired comparison's
    paired = metrics["paired"]
    assert paired["count"] == metrics["count"] and paired["mae"] == pytest.approx(metrics["mae"])
    assert paired["mae"] < 1.0
    assert metrics["beats_seasonal_naive"] == (paired["mae"] < paired["seasonal_naive_mae"])
    names = {Path(p).name for p in metrics["plots"]}
    assert {"forecasts.png", "error_by_step.png", "training_curves.png"} <= names
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in metrics["plots"])


@pytest.mark.slow
@pytest.mark.both_sessions
def test_forecasts_go_to_delta_per_entity_with_lineage_and_short_series_quarantined(spark, forecaster, training_store):
    root, _, model = forecaster
    recent = city_table(hours=260)
    short = pd.DataFrame({"city": "tiny", "ts": pd.date_range("2021-01-01", periods=5, freq="h", tz="UTC"),
                          "temp": 1.0, "hum": 50.0})
    source, target = str(root / "recent"), str(root / "forecasts")
    lake.write_table(spark.createDataFrame(pd.concat([recent, short])), source, mode="overwrite")
    report = score_table(model, source, target, mode="append", store=training_store)
    assert (report.input_rows, report.scored_rows, report.quarantined_rows) == (4, 3, 1)
    assert "series too short" in next(iter(report.reasons))
    out = lake.read_table(target, spark=spark)[0].toPandas()
    assert len(out) == 3 * 6 and sorted(out.columns) == sorted(
        ["city", "ts", "step", "forecast", "_model", "_model_version", "_source_version", "_scored_at"])
    last = recent.ts.max()
    for city, rows in out.groupby("city"):
        times = pd.to_datetime(rows.sort_values("step").ts)
        times = times.dt.tz_localize("UTC") if times.dt.tz is None else times.dt.tz_convert("UTC")
        assert list(rows.sort_values("step").step) == list(range(1, 7))
        assert list(times) == list(pd.date_range(last + dt.timedelta(hours=1), periods=6, freq="h"))
    assert set(out._source_version) == {0} and set(out._model) == {"temps_lstm"}
    # the forecasts follow each city's cycle: nearer the truth than the city's mean is
    truth = city_table(hours=266).set_index(["city", "ts"]).temp
    errors = [abs(r.forecast - truth[(r.city, pd.Timestamp(r.ts).tz_localize("UTC")
                                       if pd.Timestamp(r.ts).tzinfo is None else pd.Timestamp(r.ts))])
              for r in out.itertuples()]
    assert np.mean(errors) < recent.groupby("city").temp.std().mean()
    again = score_table(model, source, target, mode="append", store=training_store)
    assert again.committed["target"] == "already" and again.target_version == report.target_version
    # the Spark ML transform of a forecaster: the same forecasts, as a DataFrame
    frame = model.transform(lake.read_table(source, spark=spark)[0]).where("_reason IS NULL").toPandas()
    merged = frame.merge(out, on=["city", "step"])
    assert len(merged) == 18 and np.allclose(merged.prediction, merged.forecast, atol=1e-5)


@pytest.mark.slow
def test_an_entity_on_another_offset_is_forecast_on_its_own_grid_and_the_time_zone_is_enforced(spark, forecaster):
    """Oslo read at half past the hour (the model was trained on the hour): its forecasts are labelled at half
    past, one step after its own last reading; a job in another session time zone than the model's grid is
    refused, naming both zones."""
    from sparkdl.score import resolve_model
    from sparkdl.score.forecast import forecast_frame

    _, _, model = forecaster
    ref, metadata = resolve_model(model)
    recent = city_table(hours=260)
    recent.loc[recent.city == "oslo", "ts"] += pd.Timedelta(minutes=30)
    df = spark.createDataFrame(recent)
    out = forecast_frame(df, ref, metadata.forecast).where("_reason IS NULL").toPandas()
    for city, rows in out.groupby("city"):
        first = pd.Timestamp(rows.sort_values("step").ts.iloc[0])
        first = first.tz_localize("UTC") if first.tzinfo is None else first.tz_convert("UTC")
        last_reading = recent[recent.city == city].ts.max()
        assert first == last_reading + pd.Timedelta(hours=1), city
    zone = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        with pytest.raises(ValidationError, match=f"session time zone is America/New_York.*read in {zone}"):
            forecast_frame(df, ref, metadata.forecast)
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)


@pytest.mark.slow
def test_duplicate_and_off_grid_rows_at_scoring_are_counted_and_the_forecast_ignores_row_order(spark, forecaster,
                                                                                             training_store):
    """Rome's last reading twice (two values, in either order) counts once with their mean; a Berlin reading at
    ten past is left out; `score_table` reports both counts and the forecasts do not depend on the rows' order."""
    from sparkdl.score import resolve_model
    from sparkdl.score.forecast import data_counts, forecast_frame

    root, _, model = forecaster
    ref, metadata = resolve_model(model)
    recent = city_table(hours=260)
    last = recent[recent.city == "rome"].index[-1]
    first_copy, second_copy = recent.loc[[last]].assign(temp=recent.temp[last] + 3.0), recent.loc[[last]]
    stray = recent[recent.city == "berlin"].iloc[[100]].assign(ts=lambda d: d.ts + pd.Timedelta(minutes=10))
    averaged = recent.copy()
    averaged.loc[last, "temp"] += 1.5
    forecasts = {}
    for name, pdf in {"one order": pd.concat([recent.drop(index=last), first_copy, second_copy, stray]),
                      "other order": pd.concat([second_copy, stray, recent.drop(index=last), first_copy]),
                      "averaged": averaged}.items():
        frame = forecast_frame(spark.createDataFrame(pdf.reset_index(drop=True)), ref, metadata.forecast,
                               data_counts=True).persist()
        forecasts[name] = frame.where("city = 'rome'").orderBy("step").toPandas().forecast.to_numpy()
        counts = data_counts(frame)
        assert counts == ({"duplicate_rows": 0, "off_grid_rows": 0} if name == "averaged"
                          else {"duplicate_rows": 1, "off_grid_rows": 1}), name
        frame.unpersist()
    np.testing.assert_array_equal(forecasts["one order"], forecasts["other order"])
    np.testing.assert_allclose(forecasts["one order"], forecasts["averaged"], rtol=1e-6)
    source = str(root / "recent-with-duplicates")
    lake.write_table(spark.createDataFrame(pd.concat([recent, first_copy, stray]).reset_index(drop=True)), source,
                     mode="overwrite")
    report = score_table(model, source, str(root / "forecasts-with-duplicates"), store=training_store)
    assert report.adjusted == {"duplicate_rows": 1, "off_grid_rows": 1} and report.scored_rows == 3


@pytest.mark.slow
def test_forecast_metrics_per_slice_of_entities_match_the_forecasts_themselves(spark, forecaster, training_store):
    """Slices of a forecaster are slices of entities (each entity in the slices of its latest row): MAE, RMSE and
    sMAPE per slice equal those computed here from the test forecasts in pandas; a small slice is suppressed."""
    from sparkdl.evaluation import SliceOptions
    from sparkdl.score import resolve_model
    from sparkdl.score.forecast import forecast_frame

    root, _, model = forecaster
    table = str(root / "temps-with-regions")
    regions = {"berlin": "north", "oslo": "north", "rome": "south"}
    pdf = city_table().assign(region=lambda d: d.city.map(regions))
    lake.write_table(spark.createDataFrame(pdf), table, mode="overwrite")
    mv = str(model.getModelVersion())
    metrics = evaluate_model(mv, table, store=training_store, plots=True,
                             slices=["region", {"name": "cold", "where": "city = 'oslo'"}])
    ref, metadata = resolve_model(model)
    test = forecast_frame(lake.read_table(table, spark=spark)[0], ref, metadata.forecast, mode="test").toPandas()
    test = test[test.observed]
    err = test.forecast - test.actual
    smape = 200 * err.abs() / (test.actual.abs() + test.forecast.abs())
    expected = {"overall": test.city.notna(), "region=north": test.city.isin(["berlin", "oslo"]),
                "region=south": test.city == "rome", "cold": test.city == "oslo"}
    assert set(metrics["slices"]) == set(expected)
    for name, rows in expected.items():
        got = metrics["slices"][name]
        assert got["n"] == rows.sum() and got["series"] == test.city[rows].nunique(), name
        assert got["metrics"]["mae"]["value"] == pytest.approx(err[rows].abs().mean(), rel=1e-9), name
        assert got["metrics"]["rmse"]["value"] == pytest.approx(np.sqrt((err[rows] ** 2).mean()), rel=1e-9), name
        assert got["metrics"]["smape"]["value"] == pytest.approx(smape[rows].mean(), rel=1e-9), name
    assert metrics["slices"]["overall"]["metrics"]["mae"]["value"] == pytest.approx(metrics["mae"], rel=1e-12)
    assert any(Path(p).name == "slices_mae.png" for p in metrics["plots"])
    tiny = evaluate_model(mv, table, store=training_store, plots=False, slices=["region"],
                          slice_options=SliceOptions(min_slice_size=int(expected["region=north"].sum())))
    assert [s["slice"] for s in tiny["suppressed"]] == ["region=south"] and "region=north" in tiny["slices"]

    # gates on a forecaster: a bound, a gap between slices of entities, and itself as the baseline forecaster
    mae = metrics["slices"]["overall"]["metrics"]["mae"]["value"]
    gap = abs(metrics["slices"]["region=north"]["metrics"]["mae"]["value"]
              - metrics["slices"]["region=south"]["metrics"]["mae"]["value"])
    gated = evaluate_model(mv, table, store=training_store, plots=False, slices=["region"], gates=[
        {"metric": "mae", "max": mae * 1.01}, {"metric": "mae", "between": "region", "max_gap": gap / 2},
        {"metric": "mae", "baseline": mv, "tolerance": 1e-9}])  # Spark's sums differ in the last bits between runs
    results = gated["gates"]["results"]

    def passed(text: str) -> list[bool]:
        return [r["passed"] for r in results if text in r["gate"]]

    assert passed("on slice 'overall'") == [True] and passed("gap between") == [False]
    assert len(passed("no worse than")) == 3 and all(passed("no worse than"))  # overall and both regions
    assert not gated["gates"]["passed"]
    with pytest.raises(PromotionRefused, match="gates failed"):
        training_store.set_alias(mv, "production")


@pytest.mark.slow
def test_bad_forecasting_input_fails_before_any_write(spark, forecaster, training_store, tmp_path):
    root, table, model = forecaster
    target = str(root / "forecasts_bad")
    lake.write_table(spark.createDataFrame(city_table(hours=30)), target, mode="overwrite")
    wrong = str(tmp_path / "wrong")
    lake.write_table(spark.createDataFrame(pd.DataFrame({"city": ["a"], "ts": ["2021-01-01"], "temp": [1.0],
                                                         "hum": [2.0]})), wrong, mode="overwrite")
    with pytest.raises(ValidationError, match="ts: wrong type"):
        score_table(model, wrong, target, mode="overwrite", store=training_store)
    assert lake.latest_version(target) == 0
    with pytest.raises(ConfigError, match="keep_columns do not apply"):
        score_table(model, table, target, keep_columns=["city"], store=training_store)
    with pytest.raises(ConfigError, match="forecast or feature_spec"):
        KerasEstimator(model="lstm_forecaster", forecast=FORECAST, feature_spec={"features": ["temp"]}).fit(table)


@pytest.mark.slow
@pytest.mark.both_sessions
def test_a_stream_forecasts_again_the_entities_that_received_rows(spark, forecaster, training_store, tmp_path):
    from sparkdl.score import score_stream, stream_reports

    root, _, model = forecaster
    source, target, checkpoint = str(tmp_path / "live"), str(tmp_path / "live_forecasts"), str(tmp_path / "ckpt")
    history = city_table(hours=200)
    lake.write_table(spark.createDataFrame(history), source, mode="overwrite")
    _finish(score_stream(model, source, target, checkpoint, trigger="availableNow", store=training_store))
    first = lake.read_table(target, spark=spark)[0].toPandas()
    assert len(first) == 3 * 6 and set(first.city) == {"berlin", "oslo", "rome"}

    later = city_table(hours=210)
    new_rows = later[(later.city == "oslo") & (later.ts > history.ts.max())]
    version = lake.write_table(spark.createDataFrame(new_rows), source, mode="append").version
    _finish(score_stream(model, source, target, checkpoint, trigger="availableNow", store=training_store))
    out = lake.read_table(target, spark=spark)[0].toPandas()
    again = out[out._source_version == version]
    assert set(again.city) == {"oslo"} and len(again) == 6  # only the entity with new rows, from all its history
    first_time = pd.Timestamp(again.sort_values("step").ts.iloc[0])
    first_time = first_time.tz_localize("UTC") if first_time.tzinfo is None else first_time.tz_convert("UTC")
    assert first_time == new_rows.ts.max() + dt.timedelta(hours=1)
    assert [(r.scored_rows, r.quarantined_rows) for r in stream_reports(checkpoint)] == [(3, 0), (1, 0)]


def _finish(query, timeout: int = 240) -> None:
    finished = query.awaitTermination(timeout)
    if not finished:
        query.stop()
    assert finished and query.exception() is None, query.exception()


@pytest.mark.slow
def test_a_job_config_trains_evaluates_and_backtests_a_forecaster(spark, forecaster, tmp_path):
    from sparkdl import workflows
    from sparkdl.config import config_from_dict

    _, table, _ = forecaster
    cfg = config_from_dict({
        "work_dir": str(tmp_path), "registry": {"root": str(tmp_path / "models")},
        "data": {"table": table, "validation": 0.1, "forecast": {**FORECAST, "backtest_folds": 2}},
        "model": {"name": "gru_forecaster", "store_name": "temps_gru", "hparams": {"units": 8}},
        "train": {"num_proc": 2, "epochs": 2, "batch_size": 64}, "evaluate": {"table": table, "plots": False}})
    trained = workflows.train(cfg, spark=spark)
    assert trained.model_ref == "temps_gru@1"
    metrics = workflows.evaluate(cfg, spark=spark)
    assert metrics["model"] == "temps_gru@1" and metrics["windows"] == 3 * (240 - 6 - 192 + 1)
    folds = metrics["backtest"]
    assert [f["fold"] for f in folds] == [1, 2] and [f["model"] for f in folds] == ["temps_gru_backtest@1",
                                                                                      "temps_gru_backtest@2"]
    assert [pd.Timestamp(f["test_from"]).tz_convert("UTC") for f in folds] == [
        pd.Timestamp("2021-01-09", tz="UTC"), pd.Timestamp("2021-01-09 06:00", tz="UTC")]
    assert all(f["windows"] == 3 * 6 and np.isfinite(f["mae"]) and f["seasonal_naive"]["mae"] > 0 for f in folds)
    with pytest.raises(ConfigError, match="remove data.features and data.label"):
        workflows.feature_spec(config_from_dict({"data": {"table": table, "forecast": FORECAST,
                                                          "features": ["temp"]}}))
    with pytest.raises(ConfigError, match="data.forecast: unknown key"):
        workflows.forecast_spec(config_from_dict({"data": {"table": table, "forecast": {**FORECAST, "lag": 1}}}))


@pytest.mark.slow
@pytest.mark.skipif(stack.keras_version("keras3") is None, reason="Keras 3 exists on the current stack only")
def test_a_keras3_forecaster_trains_on_windows_with_sparkdls_step(forecaster, training_store):
    _, table, _ = forecaster
    est = KerasEstimator(model="tcn_forecaster", keras="keras3", forecast=FORECAST, hparams={"filters": 8},
                         epochs=3, batch_size=32, num_proc=2, validation=0.1, model_store=training_store,
                         model_name="temps_tcn_keras3")
    model = est.fit(table)
    history = model.getHistory()
    assert len(history["loss"]) == 3 and history["loss"][-1] < history["loss"][0] and "val_loss" in history
    assert stack.flavour_of(model.getModel()) == "keras3"
    metrics = evaluate_model(str(model.getModelVersion()), table, store=training_store, plots=False)
    assert metrics["windows"] == 3 * (240 - 6 - 192 + 1) and np.isfinite(metrics["mase"])
