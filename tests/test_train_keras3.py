"""Keras 3 models trained on 2 real Horovod processes by sparkdl's own step (current stack only).

On the pinned stack (TensorFlow 2.15, Keras 2) there is no Keras 3: these tests skip there with that reason; the
README's test command runs them on the current stack.
"""
from __future__ import annotations

import sys

import cloudpickle
import numpy as np
import pytest

from sparkdl import stack
from sparkdl.train import KerasEstimator
from sparkdl.train.checkpoints import RunFolder

pytestmark = pytest.mark.skipif(stack.keras_version("keras3") is None,
                                reason="Keras 3 exists on the current stack only (constraints-current.txt)")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the callbacks below travel to the workers

from test_train_estimator import accuracy, cancer_spec, digits_spec, fail_then_resume  # noqa: E402


def _keras3_callback_base():
    import keras

    return keras.callbacks.Callback if stack.keras_version("keras3") else object


class WeightDigest(_keras3_callback_base()):
    """Reports each rank's final weights (a float sum per variable) to a file named by rank."""

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def on_train_end(self, logs=None):
        import horovod.tensorflow as hvd

        sums = [float(np.asarray(v).astype(np.float64).sum()) for v in self.model.get_weights()]
        np.save(f"{self.folder}/rank{hvd.rank()}.npy", np.array(sums))


class FailOnceKeras3(_keras3_callback_base()):
    """Raises at the end of epoch `epoch` unless the marker file exists (the first attempt fails)."""

    def __init__(self, marker: str, epoch: int):
        super().__init__()
        self.marker, self.epoch = marker, epoch

    def on_epoch_end(self, epoch, logs=None):
        import os

        if epoch == self.epoch and not os.path.exists(self.marker):
            raise RuntimeError(f"injected failure at epoch {epoch}")


@pytest.mark.slow
def test_keras3_mlp_on_breast_cancer_equal_weights_on_both_ranks(spark, demo_tables, training_store, tmp_path):
    import keras

    from sparkdl.score import score_dataframe

    est = KerasEstimator(model="mlp", keras="keras3", feature_spec=cancer_spec(), epochs=8, batch_size=16,
                         learning_rate=5e-3, num_proc=2, model_store=training_store, model_name="cancer_mlp_k3",
                         run_name="test-cancer-mlp-k3", hparams={"hidden": [32, 16]},
                         callbacks=[WeightDigest(str(tmp_path))])
    fitted = est.fit(demo_tables["breast_cancer_train"])

    assert isinstance(fitted.getModel(), keras.Model)
    assert fitted.getMetadata()["keras_flavour"] == "keras3"
    assert accuracy(fitted, demo_tables["breast_cancer_test"]) >= 0.95
    history = fitted.getHistory()
    assert history["epoch"] == list(range(8)) and len(history["val_accuracy"]) == 8
    assert history["loss"][-1] < history["loss"][0]
    assert 5e-3 <= history["learning_rate"][0] < 1e-2 and history["learning_rate"][1:] == pytest.approx([1e-2] * 7)
    assert [e["epoch"] for e in RunFolder(None, "test-cancer-mlp-k3").epochs_log()] == list(range(8))
    rank0, rank1 = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    np.testing.assert_array_equal(rank0, rank1)  # synchronous SGD: both ranks hold the same weights

    # scoring in Spark equals in-process predict on the same rows
    from sparkdl.lake import read_table

    test_df, _ = read_table(demo_tables["breast_cancer_test"])
    frame = test_df.toPandas().sort_values("id")
    local = fitted.getModel().predict(fitted.getPreprocessor().prepare_batch(frame).features, verbose=0)[:, 0]
    scored = (score_dataframe(test_df, str(fitted.getModelVersion()), store=training_store, output="probabilities",
                              keep_columns=["id"]).toPandas().sort_values("id"))
    probabilities = np.array([np.ravel(p)[-1] for p in scored["probabilities"]], dtype=np.float64)
    np.testing.assert_allclose(probabilities, local, atol=1e-5)


@pytest.mark.slow
def test_keras3_cnn_on_digits(spark, demo_tables, training_store):
    est = KerasEstimator(model="cnn", keras="keras3", feature_spec=digits_spec(), epochs=10, batch_size=32,
                         learning_rate=3e-3, num_proc=2, model_store=training_store, model_name="digits_cnn_k3",
                         run_name="test-digits-cnn-k3")
    fitted = est.fit(demo_tables["digits_train"])
    assert accuracy(fitted, demo_tables["digits_test"]) >= 0.95


@pytest.mark.slow
def test_keras3_rerun_resumes_after_the_last_complete_epoch(spark, demo_tables, training_store, tmp_path):
    marker = tmp_path / "second-run"
    params = dict(model="mlp", keras="keras3", feature_spec=cancer_spec(), epochs=5, batch_size=32,
                  learning_rate=5e-3, num_proc=2, model_store=training_store, model_name="cancer_resume_k3",
                  run_name="test-resume-k3", callbacks=[FailOnceKeras3(str(marker), 2)])
    fitted, _ = fail_then_resume(params, demo_tables["breast_cancer_train"], marker)
    assert accuracy(fitted, demo_tables["breast_cancer_test"]) >= 0.9


class KillRankOnce(_keras3_callback_base()):
    """Rank 1 SIGKILLs its own process at the end of epoch `epoch`, on the first attempt only (`marker`)."""

    def __init__(self, marker: str, epoch: int):
        super().__init__()
        self.marker, self.epoch = marker, epoch

    def on_epoch_end(self, epoch, logs=None):
        import os
        import signal

        if epoch == self.epoch and os.environ.get("HOROVOD_RANK") == "1" and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.both_sessions
def test_keras3_fit_recovers_from_a_killed_rank_inside_the_same_call(spark, demo_tables, training_store, tmp_path):
    marker = tmp_path / "killed"
    fitted = KerasEstimator(model="mlp", keras="keras3", feature_spec=cancer_spec(), epochs=4, batch_size=32,
                            learning_rate=5e-3, num_proc=2, model_store=training_store, model_name="k3_recovery",
                            run_name="test-recovery-k3", callbacks=[KillRankOnce(str(marker), 1)], mlflow=False
                            ).fit(demo_tables["breast_cancer_train"])
    assert marker.exists()
    (recovery,) = fitted.getMetadata()["training"]["recoveries"]
    assert "rank 1" in recovery["cause"] and recovery["epoch"] in (1, 2)  # epoch 1's checkpoint: before or after
    log = [(e["epoch"], e["attempt"]) for e in RunFolder(None, "test-recovery-k3").epochs_log()]
    assert [e for e, a in log if a == 1][:1] == [0] and not [e for e, a in log if a == 2 and e < 1]
    assert fitted.getHistory()["epoch"] == [0, 1, 2, 3]
    assert accuracy(fitted, demo_tables["breast_cancer_test"]) >= 0.9


def _own_keras3_loop(epochs: int) -> dict:
    """A user's HorovodRunner function: a Keras 3 model trained with sparkdl's step and broadcast helpers."""
    import horovod.tensorflow as hvd
    import keras
    import numpy as np

    from sparkdl.train.keras3_worker import broadcast_state, make_train_step

    hvd.init()
    keras.utils.set_random_seed(hvd.rank())  # different initial weights per rank: the broadcast must fix that
    rng = np.random.default_rng(hvd.rank())  # and a different shard of data per rank
    x = rng.normal(size=(512, 8)).astype("float32")
    y = (x.sum(axis=1) > 0).astype("float32")
    inputs = keras.Input(shape=(8,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dense(16, "relu")(inputs)))
    optimizer = keras.optimizers.Adam(0.01 * hvd.size())
    accuracy = keras.metrics.BinaryAccuracy()
    step = make_train_step(model, optimizer, keras.losses.BinaryCrossentropy(), [accuracy])
    broadcast_state(model, optimizer)
    for _ in range(epochs):
        accuracy.reset_state()  # this epoch's training accuracy on this rank's shard
        for i in range(0, len(x), 32):
            step(x[i:i + 32], y[i:i + 32])
    sums = [float(np.asarray(v).astype(np.float64).sum()) for v in model.get_weights()]
    return {"rank": hvd.rank(), "weights": hvd.allgather_object(sums), "accuracy": float(accuracy.result())}


@pytest.mark.slow
def test_a_horovod_runner_function_trains_keras3_with_sparkdls_step(spark):
    from sparkdl.train import HorovodRunner

    result = HorovodRunner(num_proc=2).run(_own_keras3_loop, epochs=5)
    assert result["rank"] == 0 and result["accuracy"] > 0.9
    np.testing.assert_array_equal(result["weights"][0], result["weights"][1])


def test_a_ready_keras3_model_is_accepted_and_keeps_its_flavour():
    import keras

    from sparkdl.data.spec import ModelSignature
    from sparkdl.models import build

    inputs = keras.Input(shape=(4,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    assert build(model, ModelSignature((4,), "binary")) is model
    assert stack.flavour_of(model) == "keras3"
    assert stack.flavour_of(build("mlp", ModelSignature((4,), "binary"))) == "tf_keras"
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    assert model.predict(x, verbose=0).shape == (3, 1)
