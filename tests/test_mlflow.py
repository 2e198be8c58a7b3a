"""sparkdl.mlflow with a real MLflow (a file tracking store made by the test): a tracked fit, the pyfunc flavour
scored through `mlflow.pyfunc.spark_udf` against sparkdl's own scoring, and the Model Registry."""
from __future__ import annotations

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow", reason="MLflow (mlflow-skinny) is not installed")

from sparkdl.errors import ConfigError  # noqa: E402
from sparkdl.mlflow import tracking  # noqa: E402


def test_tracking_is_decided_by_the_setting_and_the_environment(tracking_uri, monkeypatch):
    assert tracking.tracking_wanted(True) and not tracking.tracking_wanted(False)
    assert tracking.tracking_wanted(None)  # a tracking URI is set
    with pytest.raises(ConfigError, match="mlflow must be True, False or None"):
        tracking.tracking_wanted("yes")


@pytest.mark.slow
def test_a_fit_logs_one_run_and_evaluate_logs_into_it(spark, tracking_uri, demo_tables, training_store):
    from mlflow import MlflowClient
    from test_train_estimator import cancer_spec

    from sparkdl import lake
    from sparkdl.evaluate import evaluate_model
    from sparkdl.train import KerasEstimator

    snap = lake.snapshot(demo_tables["breast_cancer_train"])
    fitted = KerasEstimator(model="mlp", feature_spec=cancer_spec(), epochs=3, batch_size=32, num_proc=2,
                            model_store=training_store, model_name="cancer_tracked", run_name="test-mlflow-fit",
                            hparams={"hidden": [8]}, mlflow_experiment="sparkdl-tests").fit(snap)
    run_id = fitted.getMetadata()[tracking.RUN_ID_KEY]
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "sparkdl-tests"
    params = run.data.params
    assert (params["model"], params["num_proc"], params["batch_size"], params["epochs"]) == ("mlp", "2", "32", "3")
    assert params["hparams.hidden"] == "[8]"
    tags = run.data.tags
    assert tags["sparkdl.source_table"] == snap.table and tags["sparkdl.source_version"] == str(snap.version)
    assert tags[tracking.MODEL_REF_TAG] == str(fitted.getModelVersion())
    losses = client.get_metric_history(run_id, "loss")
    assert [m.step for m in losses] == [0, 1, 2]  # one value per epoch, from the driver
    assert np.allclose([m.value for m in losses], fitted.getHistory()["loss"], rtol=1e-6)

    metrics = evaluate_model(fitted.getModelVersion(), demo_tables["breast_cancer_test"], store=training_store,
                             spark=spark)
    logged = client.get_run(run_id).data.metrics
    assert logged["eval_accuracy"] == pytest.approx(metrics["accuracy"])
    assert {a.path for a in client.list_artifacts(run_id, "evaluation")} >= {"evaluation/training_curves.png"}


@pytest.mark.slow
def test_logged_model_scores_like_sparkdl_through_spark_udf_and_registers(spark, tracking_uri, cancer):
    import sparkdl.mlflow
    from sparkdl.score import score_dataframe

    df, names, version, _, _ = cancer
    info = sparkdl.mlflow.log_model(version, registered_model_name="cancer-sparkdl")
    assert sparkdl.mlflow.load_model(info.model_uri) == str(version)

    udf = mlflow.pyfunc.spark_udf(spark, info.model_uri, result_type="string", env_manager="local")
    through_mlflow = df.withColumn("mlflow", udf(*names)).select("id", "mlflow")
    ours = score_dataframe(df, version, output="prediction", keep_columns=["id"])
    joined = {r.id: (r.prediction, r.mlflow) for r in ours.join(through_mlflow, "id").collect()}
    assert len(joined) == df.count()
    assert all(a == b for a, b in joined.values())

    probabilities_info = sparkdl.mlflow.log_model(version, name="probabilities", output="probabilities")
    pyfunc = mlflow.pyfunc.load_model(probabilities_info.model_uri)
    sample = df.limit(50).toPandas().sort_values("id")
    theirs = np.stack(pyfunc.predict(sample[names]).to_numpy())
    mine = score_dataframe(spark.createDataFrame(sample), version, output="probabilities",
                           keep_columns=["id"]).toPandas().sort_values("id")
    assert np.allclose(theirs, np.stack(mine["probabilities"].to_numpy()), atol=1e-5)

    registered = mlflow.MlflowClient().get_registered_model("cancer-sparkdl")
    assert registered.latest_versions and str(registered.latest_versions[0].version) == "1"
    with pytest.raises(ConfigError, match="output must be one of"):
        sparkdl.mlflow.log_model(version, output="logits")


def test_a_tracking_outage_is_a_warning_and_never_undoes_a_fit(tracking_uri, monkeypatch, sparkdl_log):
    """A tracking server that cannot be reached at the start, and a run that cannot be ended after the model was
    saved: warnings, and the fit's result stands (what `KerasEstimator.fit` calls around the training)."""
    import socket

    from mlflow import MlflowClient

    with socket.socket() as probe:  # a loopback port with nothing listening: connection refused
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    mlflow.set_tracking_uri(f"http://127.0.0.1:{closed}")
    try:
        assert tracking.FitRun.try_start("outage", "sparkdl-tests", {"epochs": 1}, {}) is None
    finally:
        mlflow.set_tracking_uri(tracking_uri)
    assert any("training goes on untracked" in m for m in sparkdl_log)

    run = tracking.FitRun.try_start("outage-later", "sparkdl-tests", {"epochs": 1}, {})
    assert run is not None
    MlflowClient().delete_run(run.run_id)  # the store loses the run while the fit trains
    import shutil
    from pathlib import Path
    from urllib.parse import urlparse

    shutil.rmtree(Path(urlparse(tracking_uri).path) / run.experiment_id / run.run_id)
    run.finish("model@1")  # does not raise
    assert any(f"could not finish run {run.run_id}" in m for m in sparkdl_log)
