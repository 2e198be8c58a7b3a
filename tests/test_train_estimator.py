"""KerasEstimator end to end on local[2]: real Delta demo_tables, real Petastorm, 2 real Horovod processes.

Each fit is small (few epochs, small batches) so the whole file stays within a few minutes on 2 cores.
Test accuracy is measured on held-out Delta demo_tables with `getModel().predict` on numpy prepared by the fitted
`PreprocessorModel.prepare_batch` — the same function Spark used to prepare the training data.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import tensorflow as tf

from sparkdl import stack
from sparkdl.data.spec import FeatureSpec
from sparkdl.errors import ConfigError, TrainingError, ValidationError
from sparkdl.train import KerasEstimator, SparkDLModel
from sparkdl.train.checkpoints import RunFolder

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the failing callback travels to the workers

BREAST_CANCER = ["mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness",
                 "mean_compactness", "mean_concavity", "mean_concave_points", "mean_symmetry",
                 "mean_fractal_dimension", "radius_error", "texture_error", "perimeter_error", "area_error",
                 "smoothness_error", "compactness_error", "concavity_error", "concave_points_error",
                 "symmetry_error", "fractal_dimension_error", "worst_radius", "worst_texture", "worst_perimeter",
                 "worst_area", "worst_smoothness", "worst_compactness", "worst_concavity", "worst_concave_points",
                 "worst_symmetry", "worst_fractal_dimension"]


def cancer_spec() -> FeatureSpec:
    return FeatureSpec.from_dict({
        "features": [{"name": n, "kind": "numeric", "scale": "standard"} for n in BREAST_CANCER],
        "label": {"name": "malignant", "task": "binary"}})


def digits_spec() -> FeatureSpec:
    return FeatureSpec.from_dict({
        "features": [{"name": "pixels", "kind": "vector", "shape": [8, 8, 1]}],
        "label": {"name": "digit", "task": "multiclass", "num_classes": 10}})


def prepared(fitted: SparkDLModel, table: str):
    """Features and labels of a table, prepared by the model's own fitted preprocessor."""
    from sparkdl.lake import read_table

    df, _ = read_table(table)
    batch = fitted.getPreprocessor().prepare_batch(df.toPandas())
    assert batch.valid.all()
    return batch.features, batch.labels


def accuracy(fitted: SparkDLModel, table: str) -> float:
    x, y = prepared(fitted, table)
    scores = fitted.getModel().predict(x, batch_size=256, verbose=0)
    predicted = (scores[:, 0] > 0.5).astype(int) if scores.shape[1] == 1 else scores.argmax(axis=1)
    return float((predicted == y).mean())


# ------------------------------------------------------------------------------------------------ models
@pytest.mark.slow
@pytest.mark.both_sessions
def test_mlp_on_breast_cancer_table(spark, demo_tables, training_store):
    from sparkdl.lake import snapshot

    est = KerasEstimator(model="mlp", feature_spec=cancer_spec(), epochs=8, batch_size=16, learning_rate=5e-3,
                         num_proc=2, model_store=training_store, model_name="cancer_mlp", run_name="test-cancer-mlp",
                         hparams={"hidden": [32, 16]})
    fitted = est.fit(demo_tables["breast_cancer_train"])

    assert accuracy(fitted, demo_tables["breast_cancer_test"]) >= 0.95
    history = fitted.getHistory()
    assert history["epoch"] == list(range(8))
    assert len(history["loss"]) == 8 and len(history["val_accuracy"]) == 8
    assert history["loss"][-1] < history["loss"][0]
    # warm-up from 5e-3 to 5e-3 x 2 ranks over epoch 0, exact afterwards although Keras calls batch hooks only
    # every steps_per_execution (8) steps
    assert 5e-3 <= history["learning_rate"][0] < 1e-2
    assert history["learning_rate"][1:] == pytest.approx([1e-2] * 7)
    meta = fitted.getMetadata()
    source = snapshot(demo_tables["breast_cancer_train"])
    assert meta["source"]["table"] == source.table and meta["source"]["version"] == source.version
    assert meta["num_proc"] == 2 and meta["run_name"] == "test-cancer-mlp" and meta["model_name"] == "mlp"
    assert meta["signature"]["input_shape"] == [30] and meta["label_classes"] is None
    assert meta["metrics"]["val_accuracy"] == history["val_accuracy"][-1]
    assert str(fitted.getModelVersion()) == "cancer_mlp@1"
    # where the fit's time went, recorded with the model: every phase measured; the Horovod job's launch,
    # training and tear-down (from its events) add up to the job's own time
    phases = meta["training"]["phases"]
    assert set(phases) == {"statistics", "cache", "launch", "training", "teardown", "other"}
    assert all(v >= 0 for v in phases.values()) and phases["training"] > 0
    assert phases["launch"] + phases["training"] + phases["teardown"] == pytest.approx(est.last_run.total_s, abs=0.01)
    # the driver saw one line per epoch, and rank 0 left per-epoch checkpoints in the run folder
    run = RunFolder(None, "test-cancer-mlp")
    assert [e["epoch"] for e in run.epochs_log()] == list(range(8))
    assert run.latest().epoch == 7
    assert est.last_run.launch_s is not None and est.last_run.launch_s < est.last_run.total_s
    # load back from the store by reference and by folder
    again = SparkDLModel.load("cancer_mlp@1", store=training_store)
    folder = SparkDLModel.load(fitted.getModelVersion().path)
    x, _ = prepared(fitted, demo_tables["breast_cancer_test"])
    np.testing.assert_allclose(again.getModel().predict(x, verbose=0), fitted.getModel().predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert folder.getHistory() == history
    # transform() scores in Spark through sparkdl.score, agreeing with the in-process predictions
    from sparkdl.lake import read_table

    test_df, _ = read_table(demo_tables["breast_cancer_test"])
    frame = test_df.toPandas().sort_values("id")
    local = (fitted.getModel().predict(fitted.getPreprocessor().prepare_batch(frame).features, verbose=0)[:, 0]
             >= 0.5).astype(int)
    scored = fitted.transform(test_df).select("id", "prediction").toPandas().sort_values("id")
    assert len(scored) == len(frame)
    assert (scored["prediction"].to_numpy() == local).mean() >= 0.99


@pytest.mark.slow
def test_cnn_on_digits_images(spark, demo_tables, training_store):
    from sparkdl.lake import snapshot

    snap = snapshot(demo_tables["digits_train"])
    est = KerasEstimator(model="cnn", feature_spec=digits_spec(), epochs=10, batch_size=32, learning_rate=3e-3,
                         num_proc=2, model_store=training_store, model_name="digits_cnn", run_name="test-digits-cnn")
    fitted = est.fit(snap)  # a Snapshot: that version is read
    assert accuracy(fitted, demo_tables["digits_test"]) >= 0.95
    assert fitted.getMetadata()["signature"]["input_shape"] == [8, 8, 1]
    assert fitted.getMetadata()["source"]["version"] == snap.version


@pytest.mark.slow
def test_lstm_beats_the_naive_baseline_on_a_sequence_task(spark, training_store):
    # label: does the sequence sum to more than 0? Order-free for the model to find, 50/50 for a naive guess.
    rng = np.random.default_rng(3)
    n, steps = 1600, 12
    x = rng.normal(size=(n, steps)).astype(np.float32)
    y = (x.sum(axis=1) > 0).astype(np.int32)
    import pandas as pd

    frame = pd.DataFrame({"seq": list(x), "up": y})
    train, test = frame.iloc[:1280], frame.iloc[1280:]
    df = spark.createDataFrame(train).selectExpr("cast(seq as array<float>) as seq", "up")
    spec = FeatureSpec.from_dict({"features": [{"name": "seq", "kind": "sequence", "shape": [steps, 1]}],
                                  "label": {"name": "up", "task": "binary"}})
    fitted = KerasEstimator(model="lstm", feature_spec=spec, epochs=6, batch_size=32, learning_rate=1e-2,
                            num_proc=2, model_store=training_store, model_name="seq_lstm", run_name="test-seq-lstm",
                            hparams={"units": 16}).fit(df)
    batch = fitted.getPreprocessor().prepare_batch(test)
    predicted = (fitted.getModel().predict(batch.features, verbose=0)[:, 0] > 0.5).astype(int)
    lstm = float((predicted == batch.labels).mean())
    naive = max(float(train["up"].mean()), 1 - float(train["up"].mean()))  # majority class of the training set
    naive_on_test = float(((test["up"].values == 1) if train["up"].mean() >= 0.5 else (test["up"].values == 0)).mean())
    assert lstm >= max(naive, naive_on_test) + 0.2, (lstm, naive, naive_on_test)
    assert fitted.getMetadata()["source"] is None  # a plain DataFrame has no table lineage


@pytest.mark.slow
def test_triplet_embedding_improves_knn_over_raw_pixels(spark, demo_tables, training_store):
    from sparkdl.models import knn_accuracy

    fitted = KerasEstimator(model="embedding", feature_spec=digits_spec(), epochs=6, batch_size=64,
                            learning_rate=2e-3, validation=0.0, num_proc=2, model_store=training_store,
                            model_name="digits_embedding", run_name="test-digits-embedding").fit(
        demo_tables["digits_train"])
    x_train, y_train = prepared(fitted, demo_tables["digits_train"])
    x_test, y_test = prepared(fitted, demo_tables["digits_test"])
    # few-shot k-NN: 5 labelled references per class, where the metric matters most
    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.permutation(np.flatnonzero(y_train == c))[:5] for c in range(10)])
    model = fitted.getModel()
    raw = knn_accuracy(x_train[ref].reshape(len(ref), -1), y_train[ref], x_test.reshape(len(x_test), -1), y_test,
                       k=1)
    emb = knn_accuracy(model.predict(x_train[ref], verbose=0), y_train[ref], model.predict(x_test, verbose=0),
                       y_test, k=1)
    assert emb >= raw + 0.03, (emb, raw)
    assert "val_loss" not in fitted.getHistory()


# ------------------------------------------------------------------------------------------------ resume
class FailOnce(tf.keras.callbacks.Callback):
    """Raises at the start of `epoch` unless `marker` exists (i.e. on the first run only), on every rank."""

    def __init__(self, marker: str, epoch: int):
        super().__init__()
        self.marker, self.epoch = marker, epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch and not Path(self.marker).exists():
            raise RuntimeError(f"injected failure at epoch {epoch}")


def fail_then_resume(params: dict, table: str, marker: Path):
    """Fit twice with `params` (5 epochs, 2 ranks; a callback fails at epoch 2 until `marker` exists): the first
    attempt fails after checkpointing epochs 0-1, the second resumes at epoch 2. Returns (SparkDLModel, RunFolder)."""
    with pytest.raises(TrainingError, match="injected failure at epoch 2"):
        KerasEstimator(**params).fit(table)
    run = RunFolder(None, params["run_name"])
    assert [(e["epoch"], e["attempt"]) for e in run.epochs_log()] == [(0, 1), (1, 1)]
    assert run.latest().epoch == 1

    marker.touch()
    fitted = KerasEstimator(**params).fit(table)
    log = [(e["epoch"], e["attempt"]) for e in run.epochs_log()]
    assert log == [(0, 1), (1, 1), (2, 2), (3, 2), (4, 2)]  # epochs 0-1 were not repeated
    history = fitted.getHistory()
    assert history["epoch"] == [0, 1, 2, 3, 4] and len(history["loss"]) == 5
    assert history["loss"][2] < history["loss"][0]  # continued from the checkpointed state, not from scratch
    # the same rate before and after resuming: warm-up ended in epoch 0
    assert history["learning_rate"][1:] == pytest.approx([params["learning_rate"] * params["num_proc"]] * 4)
    return fitted, run


# Horovod's scaling options, each trained once beside the default. Keras 3 where the stack has it (its own step
# implements them), tf_keras (Horovod's DistributedOptimizer) on the pinned stack.
SCALING_FLAVOUR = "keras3" if stack.keras_version("keras3") is not None else "tf_keras"
SCALING = {
    "default": {},
    "backward_passes_per_step": {"backward_passes_per_step": 2},
    "fp16_compression": {"compression": "fp16"},
    "fusion_and_cycle_time": {"fusion_threshold_mb": 0, "cycle_time_ms": 5},
}


@pytest.fixture(scope="module")
def scaling_fits(demo_tables, training_store):
    fits = {}
    for name, options in SCALING.items():
        est = KerasEstimator(model="mlp", keras=SCALING_FLAVOUR, feature_spec=cancer_spec(), epochs=6, batch_size=16,
                             learning_rate=5e-3, num_proc=2, model_store=training_store, warmup_epochs=0,
                             model_name=f"cancer_{name}", run_name=f"test-scaling-{name}", hparams={"hidden": [32, 16]},
                             **options)
        fitted = est.fit(demo_tables["breast_cancer_train"])
        fits[name] = (fitted, accuracy(fitted, demo_tables["breast_cancer_test"]))
    return fits


@pytest.mark.slow
@pytest.mark.parametrize("option", [name for name in SCALING if name != "default"])
def test_scaling_options_train_to_the_accuracy_of_the_default(scaling_fits, option):
    default, default_accuracy = scaling_fits["default"]
    fitted, test_accuracy = scaling_fits[option]
    assert default_accuracy >= 0.93
    assert test_accuracy >= default_accuracy - 0.03, f"{option}: {test_accuracy:.3f} vs default {default_accuracy:.3f}"
    training = fitted.getMetadata()["training"]
    loss, default_loss = fitted.getHistory()["loss"], default.getHistory()["loss"]
    assert loss[-1] < loss[0]
    if option == "backward_passes_per_step":  # half the updates: a different trajectory, not a no-op
        assert training["backward_passes_per_step"] == 2
        assert loss != pytest.approx(default_loss, rel=1e-3)
    elif option == "fp16_compression":
        assert training["compression"] == "fp16"
    else:  # the same sums in a different schedule: the default's very trajectory
        assert training["horovod_env"] == {"HOROVOD_CYCLE_TIME": "5", "HOROVOD_FUSION_THRESHOLD": "0"}
        assert loss == pytest.approx(default_loss, rel=1e-4)
    assert default.getMetadata()["training"]["horovod_env"] == {"HOROVOD_CYCLE_TIME": "0.1"}


def test_scaling_options_are_checked_before_any_spark_job():
    for bad, match in [({"backward_passes_per_step": 0}, "backward_passes_per_step"),
                       ({"compression": "int8"}, "compression must be one of"),
                       ({"fusion_threshold_mb": -1}, "fusion_threshold_mb"),
                       ({"cycle_time_ms": 0}, "cycle_time_ms")]:
        with pytest.raises(ConfigError, match=match):
            KerasEstimator(feature_spec=digits_spec(), **bad)._checked()


@pytest.mark.slow
def test_rerun_resumes_after_the_last_complete_epoch(spark, demo_tables, training_store, tmp_path):
    marker = tmp_path / "second-run"
    params = dict(model="mlp", feature_spec=cancer_spec(), epochs=5, batch_size=32, learning_rate=5e-3,
                  num_proc=2, model_store=training_store, model_name="cancer_resume", run_name="test-resume",
                  callbacks=[FailOnce(str(marker), 2)])
    fitted, run = fail_then_resume(params, demo_tables["breast_cancer_train"], marker)
    assert accuracy(fitted, demo_tables["breast_cancer_test"]) >= 0.9
    log = [(e["epoch"], e["attempt"]) for e in run.epochs_log()]
    history = fitted.getHistory()

    # rerunning a finished run trains nothing and returns the model it saved
    again = KerasEstimator(**params).fit(demo_tables["breast_cancer_train"])
    assert [(e["epoch"], e["attempt"]) for e in run.epochs_log()] == log
    assert str(again.getModelVersion()) == str(fitted.getModelVersion())
    assert again.getHistory() == history


# ------------------------------------------------------------------------------------------------ bad input
def _no_job_runs(spark, fit):
    """Run `fit` (which must raise) in a job group and return (exception, number of Spark jobs started)."""
    sc = spark.sparkContext
    group = f"bad-input-{id(fit)}"
    sc.setJobGroup(group, "must not start jobs")
    try:
        with pytest.raises(Exception) as info:
            fit()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    return info.value, len(sc.statusTracker().getJobIdsForGroup(group))


@pytest.fixture(scope="module")
def digits_df(spark):
    import pandas as pd

    from sparkdl.datasets import digits_frame

    frame: pd.DataFrame = digits_frame().head(64)
    return spark.createDataFrame(frame).selectExpr("id", "cast(pixels as array<float>) as pixels", "digit")


def test_unknown_model_name_fails_before_any_spark_job(spark, digits_df):
    est = KerasEstimator(model="transformer-xxl", feature_spec=digits_spec(), num_proc=2)
    error, jobs = _no_job_runs(spark, lambda: est.fit(digits_df))
    assert isinstance(error, ConfigError) and "transformer-xxl" in str(error) and "mlp" in str(error)
    assert jobs == 0


def test_missing_label_column_fails_before_any_spark_job(spark, digits_df):
    est = KerasEstimator(model="cnn", feature_spec=digits_spec(), num_proc=2)
    error, jobs = _no_job_runs(spark, lambda: est.fit(digits_df.drop("digit")))
    assert isinstance(error, ValidationError) and "digit" in str(error) and "missing column" in str(error)
    assert jobs == 0


def test_spec_and_model_shape_mismatch_fails_before_any_spark_job(spark, digits_df):
    wrong = tf.keras.Sequential([tf.keras.Input((10,)), tf.keras.layers.Dense(10, activation="softmax")])
    est = KerasEstimator(model=wrong, feature_spec=digits_spec(), num_proc=2)
    error, jobs = _no_job_runs(spark, lambda: est.fit(digits_df))
    assert isinstance(error, ConfigError) and "[8, 8, 1]" in str(error) and "[10]" in str(error)
    assert jobs == 0


def test_too_many_processes_fails_before_any_spark_job(spark, digits_df):
    est = KerasEstimator(model="cnn", feature_spec=digits_spec(), num_proc=4)
    error, jobs = _no_job_runs(spark, lambda: est.fit(digits_df))
    assert isinstance(error, ConfigError) and "num_proc=4" in str(error)
    assert jobs == 0


def test_bad_values_fail_in_one_validation_pass_before_horovod(spark, digits_df, tmp_path):
    from pyspark.sql import functions as F

    bad = digits_df.withColumn("pixels", F.when(F.col("id") < 3, F.array_repeat(F.lit(float("nan")).cast("float"), 64))
                               .otherwise(F.col("pixels"))) \
        .withColumn("digit", F.when(F.col("id") == 5, F.lit(12)).otherwise(F.col("digit")))
    est = KerasEstimator(model="cnn", feature_spec=digits_spec(), num_proc=2, work_dir=str(tmp_path))
    with pytest.raises(ValidationError) as info:
        est.fit(bad)
    message = str(info.value)
    assert "pixels" in message and "digit" in message
    assert {p["column"] for p in info.value.problems} == {"pixels", "digit"}
    assert not list((tmp_path / "runs").rglob("*.keras"))  # nothing trained, no checkpoint


def test_params_follow_spark_ml_conventions():
    est = KerasEstimator(model="mlp", feature_spec=digits_spec(), batch_size=128)
    assert est.getBatchSize() == 128 and est.getEpochs() == 10 and est.getOrDefault("learningRate") == 1e-3
    copy = est.copy({est.batchSize: 8})
    assert copy.getBatchSize() == 8 and est.getBatchSize() == 128
    est.setEpochs(3)
    assert est.getEpochs() == 3
    with pytest.raises(ConfigError, match="unknown parameter"):
        KerasEstimator(batchsize=3)
    with pytest.raises(ConfigError, match="validation"):
        KerasEstimator(feature_spec=digits_spec(), validation=1.5)._checked()
    assert est.getStepsPerExecution() == 8
    with pytest.raises(ConfigError, match="steps_per_execution"):
        KerasEstimator(feature_spec=digits_spec(), steps_per_execution=0)._checked()


# ------------------------------------------------------------------------------------------------ Spark ML persistence
def test_estimator_params_save_and_load_and_objects_spark_ml_cannot_write_are_refused(spark, tmp_path,
                                                                                       training_store):
    est = KerasEstimator(model="mlp", feature_spec=cancer_spec(), epochs=3, batch_size=16, learning_rate=5e-3,
                         hparams={"hidden": [8]}, model_store=training_store, env={"HOROVOD_CYCLE_TIME": "1"})
    est.save(str(tmp_path / "est"))
    again = KerasEstimator.load(str(tmp_path / "est"))
    assert again.uid == est.uid and again.getEpochs() == 3 and again.getBatchSize() == 16
    assert again.getOrDefault("featureSpec") == cancer_spec() and again.getOrDefault("hparams") == {"hidden": [8]}
    assert str(again.getOrDefault("modelStore").root) == str(training_store.root)
    assert again.getOrDefault("env") == {"HOROVOD_CYCLE_TIME": "1"} and again.getNumProc() == 2  # default kept

    keras = stack.keras_module("tf_keras")
    with pytest.raises(ConfigError, match=r"param 'model' holds a Sequential"):
        KerasEstimator(model=keras.Sequential([keras.layers.Dense(1)]), feature_spec=cancer_spec()).save(
            str(tmp_path / "with-a-keras-model"))
    with pytest.raises(ConfigError, match=r"param 'callbacks' holds"):
        KerasEstimator(model="mlp", feature_spec=cancer_spec(), callbacks=[FailOnce("x", 1)]).save(
            str(tmp_path / "with-callbacks"))
    with pytest.raises(ConfigError, match=r"env holds \['AWS_SECRET_ACCESS_KEY'\], which look like secrets"):
        KerasEstimator(model="mlp", feature_spec=cancer_spec(), env={"AWS_SECRET_ACCESS_KEY": "hunter2"}).save(
            str(tmp_path / "with-a-secret"))
    assert not (tmp_path / "with-a-secret").exists()


@pytest.mark.slow
def test_a_pipeline_with_the_estimator_fits_saves_loads_and_tunes_like_stock_stages(spark, demo_tables,
                                                                                   training_store, tmp_path):
    """`Pipeline([SQLTransformer, KerasEstimator])` fits; `PipelineModel.save`/`load` give the same predictions;
    `TrainValidationSplit` over a `ParamGridBuilder` grid of sparkdl params with a stock evaluator picks a model
    (its fits run in Spark ML's thread pool: each stores a loadable model)."""
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.evaluation import BinaryClassificationEvaluator, MulticlassClassificationEvaluator
    from pyspark.ml.feature import SQLTransformer
    from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit

    from sparkdl.lake import read_table

    train, _ = read_table(demo_tables["breast_cancer_train"])
    test, _ = read_table(demo_tables["breast_cancer_test"])
    est = KerasEstimator(model="mlp", feature_spec=cancer_spec(), epochs=3, batch_size=32, learning_rate=5e-3,
                         num_proc=2, model_store=training_store, model_name="cancer_pipeline",
                         hparams={"hidden": [16]})
    pipeline = Pipeline(stages=[SQLTransformer(statement="SELECT * FROM __THIS__ WHERE mean_radius > 0"), est])
    fitted = pipeline.fit(train)
    before = fitted.transform(test).select("id", "prediction").orderBy("id").toPandas()
    fitted.save(str(tmp_path / "pipeline"))
    loaded = PipelineModel.load(str(tmp_path / "pipeline"))
    assert isinstance(loaded.stages[-1], SparkDLModel) and loaded.stages[-1].uid == fitted.stages[-1].uid
    after = loaded.transform(test).select("id", "prediction").orderBy("id").toPandas()
    assert before.equals(after) and len(after) == test.count()

    # Spark ML's classifier columns: stock evaluators and tuners take transform's output as it is
    scored = fitted.transform(test)
    types = {f.name: f.dataType.typeName() for f in scored.schema.fields}
    assert types["prediction"] == "double" and types["probability"] == types["rawPrediction"] == "vectorudt"
    auc = BinaryClassificationEvaluator(labelCol="malignant", rawPredictionCol="rawPrediction").evaluate(scored)
    assert auc >= 0.95
    plain = fitted.stages[-1].copy().setSparkMlColumns(False).transform(test)
    assert plain.schema["prediction"].dataType.typeName() != "double" and "probability" not in plain.columns

    grid = ParamGridBuilder().addGrid(est.learningRate, [1e-4, 5e-3]).build()
    evaluator = MulticlassClassificationEvaluator(labelCol="malignant", metricName="accuracy")
    tuned = TrainValidationSplit(estimator=est, estimatorParamMaps=grid, evaluator=evaluator, trainRatio=0.75,
                                 seed=1).fit(train)
    assert len(tuned.validationMetrics) == 2 and max(tuned.validationMetrics) >= 0.9
    assert evaluator.evaluate(tuned.transform(test)) >= 0.9
