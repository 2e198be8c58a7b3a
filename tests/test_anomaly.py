"""Anomaly detection: an autoencoder trained with Horovod on unlabelled rows (sparkdl.models.build_autoencoder),
thresholds per segment (sparkdl.score.thresholds), flags and contributions when scoring, and its evaluation against
known anomalies beside an IsolationForest (sparkdl.evaluation.anomaly), checked against scikit-learn."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sparkdl.errors import ConfigError, ValidationError

READINGS = [f"sensor_{i}" for i in range(8)]
RATE = 0.03


def sensor_readings(rows: int = 3000, faults: int = 60, seed: int = 0) -> pd.DataFrame:
    """Eight sensors of two machines driven by two hidden factors (machine "b" noisier); `faulty` rows take each
    reading from another row, so every value is ordinary on its own and only their coupling is broken."""
    rng = np.random.default_rng(seed)
    machine = np.where(np.arange(rows) % 2 == 0, "a", "b")
    noise = np.where(machine == "a", 0.1, 0.3)[:, None]
    x = rng.normal(size=(rows, 2)) @ rng.normal(size=(2, 8)) + noise * rng.normal(size=(rows, 8))
    faulty = np.zeros(rows, dtype=np.int32)
    broken = rng.choice(rows, faults, replace=False)
    x[broken] = np.stack([rng.choice(x[:, j], faults) for j in range(8)], axis=1)
    faulty[broken] = 1
    frame = pd.DataFrame(x, columns=READINGS)
    frame.insert(0, "id", np.arange(rows, dtype=np.int64))
    frame["machine"], frame["faulty"] = machine, faulty
    return frame


@pytest.fixture(scope="module")
def sensors(spark):
    return spark.createDataFrame(sensor_readings())


@pytest.fixture(scope="module")
def detector(sensors, tmp_path_factory):
    """An autoencoder fitted on every row (faults included: the detector never reads `faulty`), 2 ranks."""
    from sparkdl.train import KerasEstimator

    spec = {"features": [{"name": n, "scale": "standard"} for n in READINGS],
            "label": {"name": "faulty", "task": "anomaly"}}
    store = tmp_path_factory.mktemp("anomaly-models")
    model = KerasEstimator(model="autoencoder", feature_spec=spec, hparams={"hidden": [16], "code": 3},
                           epochs=15, batch_size=64, num_proc=2, validation=0.0, learning_rate=2e-3,
                           anomaly={"segment_by": ["machine"], "rate": RATE}, model_store=str(store)).fit(sensors)
    return model, store


@pytest.mark.both_sessions
def test_a_detector_flags_per_segment_explains_by_feature_and_beats_isolation_forest(spark, sensors, detector):
    from sklearn.metrics import average_precision_score, roc_auc_score

    from sparkdl.evaluation.anomaly import evaluate_anomalies
    from sparkdl.score import score_dataframe
    from sparkdl.score.thresholds import read_thresholds

    model, store = detector
    version = model.getModelVersion()
    meta = model.getMetadata()
    assert meta["signature"]["task"] == "anomaly" and "label" not in meta["preprocessing"]["spec"]
    thresholds = read_thresholds(version, store=str(store))
    assert thresholds.options.label == "faulty" and thresholds.rows[""] == 3000
    assert set(thresholds.by_segment) == {'["a"]', '["b"]'}
    assert thresholds.by_segment['["b"]'] > 1.1 * thresholds.by_segment['["a"]']  # the noisier machine

    scored = score_dataframe(sensors, version, output="anomaly", keep_columns=["id", "faulty"],
                             store=str(store)).toPandas()
    assert list(scored.columns) == ["id", "faulty", "anomaly"]  # the segment column was only borrowed
    rows = pd.json_normalize([r if isinstance(r, dict) else r.asDict(recursive=True) for r in scored["anomaly"]])
    machine = np.where(scored["id"] % 2 == 0, "a", "b")
    assert (rows["threshold"] == np.where(machine == "a", thresholds.by_segment['["a"]'],
                                          thresholds.by_segment['["b"]'])).all()
    assert (rows["is_anomaly"] == (rows["score"] >= rows["threshold"])).all()
    for m in ("a", "b"):  # each machine flags its expected share of the rows the thresholds were fitted on
        assert abs(rows["is_anomaly"][machine == m].mean() - RATE) < 0.01
    shares = rows[[f"contributions.{n}" for n in READINGS]].to_numpy()
    np.testing.assert_allclose(shares.sum(axis=1), rows["score"], rtol=1e-6)
    assert (shares >= 0).all()

    report = evaluate_anomalies(version, sensors, store=str(store))
    y, s = scored["faulty"].to_numpy(), rows["score"].to_numpy()
    assert report.rows == 3000 and report.anomalies == 60 and report.label == "faulty"
    assert report.roc_auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert report.pr_auc == pytest.approx(average_precision_score(y, s), abs=1e-12)
    flagged = rows["is_anomaly"].to_numpy()
    assert report.precision == pytest.approx(y[flagged].mean())
    assert report.recall == pytest.approx(flagged[y == 1].mean())
    # the coupling of the readings is what breaks: the forest, splitting one reading at a time, ranks worse
    assert report.roc_auc > 0.95 and report.roc_auc > report.isolation_forest.roc_auc
    assert report.pr_auc > report.isolation_forest.pr_auc


def test_score_table_writes_flags_and_mistakes_are_named_before_any_job(spark, sensors, detector, lake):
    from sparkdl.evaluate import evaluate_model
    from sparkdl.lake import read_table, write_table
    from sparkdl.score import model_udf, score_dataframe, score_table
    from sparkdl.score.thresholds import AnomalyOptions
    from sparkdl.train import KerasEstimator

    model, store = detector
    version = model.getModelVersion()
    source = str(lake / "readings")
    write_table(sensors, source)
    report = score_table(version, source, str(lake / "flags"), output="anomaly", keep_columns=["id"],
                         store=str(store))
    assert report.scored_rows == 3000
    written = read_table(str(lake / "flags"))[0]
    assert written.columns[:2] == ["id", "anomaly"]
    assert written.where("anomaly.is_anomaly").count() == pytest.approx(3000 * RATE, abs=30)

    metrics = evaluate_model(version, source, store=str(store), plots=False)  # `sparkdl evaluate` of a detector
    assert metrics["rows"] == 3000 and metrics["roc_auc"] > metrics["isolation_forest"]["roc_auc"]
    assert metrics["data"]["version"] == 0
    with pytest.raises(ConfigError, match="anomaly detector: it is evaluated on all rows"):
        evaluate_model(version, source, store=str(store), slices=["machine"])

    with pytest.raises(ConfigError, match="anomaly detector: it scores \\['prediction', 'anomaly'\\], not "
                                          "'probabilities'"):
        score_dataframe(sensors, version, output="probabilities", store=str(store))
    with pytest.raises(ConfigError, match="output 'anomaly' .* is set in Spark from the segment columns"):
        model_udf(version, output="anomaly", store=str(store))
    with pytest.raises(ValidationError, match="segment column\\(s\\) \\['machine'\\]"):
        score_dataframe(sensors.drop("machine"), version, output="anomaly", store=str(store))
    with pytest.raises(ConfigError, match="rate .* must be in \\(0, 0.5\\]"):
        AnomalyOptions(rate=0.0)
    with pytest.raises(ConfigError, match="give rate or percentile, not both"):
        AnomalyOptions.of({"rate": 0.01, "percentile": 99})
    assert AnomalyOptions.of({"percentile": 99}).rate == pytest.approx(0.01)
    spec = {"features": READINGS}
    with pytest.raises(ConfigError, match="has no label.*model='autoencoder'"):
        KerasEstimator(model="mlp", feature_spec=spec).fit(sensors)
    with pytest.raises(ConfigError, match="anomaly options apply to anomaly detectors"):
        KerasEstimator(feature_spec={**spec, "label": {"name": "faulty", "task": "binary"}},
                       anomaly={"rate": 0.01}).fit(sensors)
    from sparkdl.data.spec import ModelSignature
    from sparkdl.models import build

    with pytest.raises(ConfigError, match="is an anomaly detector: it trains on a spec with no label"):
        build("autoencoder", ModelSignature((8,), "binary", 2))
    with pytest.raises(ConfigError, match="an anomaly signature .* is trained by model 'autoencoder'"):
        build("mlp", ModelSignature((8,), "anomaly"))
    sequence = build("autoencoder", ModelSignature((10, 3), "anomaly"), units=8)  # LSTM encoder and decoder
    assert tuple(sequence.output_shape) == (None, 10, 3)
