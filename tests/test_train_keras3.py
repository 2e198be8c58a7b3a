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
from sparkdl.errors import TrainingError
from sparkdl.train import KerasEstimator
from sparkdl.train.checkpoints import RunFolder

pytestmark = pytest.mark.skipif(stack.keras_version("keras3") is None,
                                reason="Keras 3 exists on the current stack only (constraints-current.txt)")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the callbacks below travel to the workers

from test_train_estimator import accuracy, cancer_spec, digits_spec  # noqa: E402


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
    with pytest.raises(TrainingError, match="injected failure at epoch 2"):
        KerasEstimator(**params).fit(demo_tables["breast_cancer_train"])
    run = RunFolder(None, "test-resume-k3")
    assert [(e["epoch"], e["attempt"]) for e in run.epochs_log()] == [(0, 1), (1, 1)]
    assert run.latest().epoch == 1

    marker.touch()
    fitted = KerasEstimator(**params).fit(demo_tables["breast_cancer_train"])
    log = [(e["epoch"], e["attempt"]) for e in run.epochs_log()]
    assert log == [(0, 1), (1, 1), (2, 2), (3, 2), (4, 2)]  # epochs 0-1 were not repeated
    history = fitted.getHistory()
    assert history["epoch"] == [0, 1, 2, 3, 4] and len(history["loss"]) == 5
    assert history["loss"][2] < history["loss"][0]  # continued from the checkpointed state
    assert accuracy(fitted, demo_tables["breast_cancer_test"]) >= 0.9


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
