"""The tf_keras rank's training loop: what it prepares before `fit` traces the first step, and the broadcast of
rank 0's state after it (both stacks; the broadcast on 2 real Horovod processes)."""
from __future__ import annotations

import sys

import cloudpickle
import numpy as np
import pytest

from sparkdl import stack
from sparkdl.train import HorovodRunner
from sparkdl.train.keras_worker import build_before_first_trace

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the rank function below travels by value

# (label shape per row, label dtype, model output layers, loss, metrics): each picks its Keras metric class by the
# ranks and last dimensions of labels and predictions.
CASES = {
    "sparse labels, logits": ((), "int64", [("dense", 3)], "sparse_categorical_crossentropy", ["accuracy"]),
    "one-hot labels, softmax": ((3,), "float32", [("softmax", 3)], "categorical_crossentropy", ["accuracy", "mse"]),
    "binary labels, sigmoid": ((1,), "float32", [("sigmoid", 1)], "binary_crossentropy", ["accuracy"]),
    "flat labels, flat output": ((), "float32", [("dense", 1), ("flatten", None)], "mse", ["accuracy", "mae"]),
}


def _compiled(case: str, steps_per_execution: int = 2):
    keras = stack.keras_module("tf_keras")
    label_shape, label_dtype, head, loss, metrics = CASES[case]
    keras.utils.set_random_seed(7)
    layers = [keras.layers.Input((4,)), keras.layers.Dense(8, activation="relu")]
    for kind, units in head:
        if kind == "flatten":
            layers.append(keras.layers.Reshape(()))
        else:
            layers.append(keras.layers.Dense(units, activation=None if kind == "dense" else kind))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, metrics=list(metrics),
                  steps_per_execution=steps_per_execution)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    if label_shape == (3,):
        y = np.eye(3, dtype=label_dtype)[rng.integers(0, 3, 64)]
    elif label_dtype == "int64":
        y = rng.integers(0, 3, (64,) + label_shape)
    else:
        y = (rng.random((64,) + label_shape) > 0.5).astype(label_dtype)
    return model, x, y


def _train(case: str, prebuild: bool):
    """Fit 4 steps; returns (weights, metric class names, how many times the train step was traced)."""
    import tensorflow as tf

    model, x, y = _compiled(case)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    if prebuild:
        build_before_first_trace(model, data.element_spec)
    traces = [0]
    step = model.train_step

    def counted(batch):
        traces[0] += 1
        return step(batch)

    model.train_step = counted
    model.fit(data, epochs=1, steps_per_epoch=4, verbose=0)
    metrics = [(type(m).__name__, getattr(getattr(m, "_fn", None), "__name__", None))
               for m in model.compiled_metrics.metrics]
    return model.get_weights(), metrics, traces[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_building_before_the_first_trace_picks_kerass_own_metrics_and_trains_the_same_weights(case):
    lazy_weights, lazy_metrics, lazy_traces = _train(case, prebuild=False)
    built_weights, built_metrics, built_traces = _train(case, prebuild=True)
    assert built_metrics == lazy_metrics  # e.g. sparse_categorical_accuracy, binary_accuracy: chosen by shapes
    for lazy, built in zip(lazy_weights, built_weights, strict=True):
        np.testing.assert_array_equal(lazy, built)
    # A first trace that creates variables is traced again; AutoGraph's steps_per_execution loop traces twice.
    assert (lazy_traces, built_traces) == (4, 2)


def broadcast_after_one_step():
    """Each rank builds the model from its own seed, takes one step with learning rate 0 on its own data, then
    `BroadcastInitialState` runs; returns (from rank 0) every rank's weights before and after, and optimizer state."""
    import horovod.tensorflow as hvd
    import tensorflow as tf

    from sparkdl.train.keras_worker import BroadcastInitialState

    hvd.init()
    keras = stack.keras_module("tf_keras")
    keras.utils.set_random_seed(100 + hvd.rank())
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.Adam(0.0), loss="mse")
    before = [w.tolist() for w in model.get_weights()]
    x = np.full((8, 4), hvd.rank() + 1.0, dtype="float32")
    model.fit(tf.data.Dataset.from_tensor_slices((x, x[:, :3])).batch(8), epochs=1, verbose=0,
              callbacks=[BroadcastInitialState(0)])
    slots = [np.asarray(v).tolist() for v in model.optimizer.variables()]
    mine = {"before": before, "after": [w.tolist() for w in model.get_weights()], "slots": slots}
    return hvd.allgather_object(mine)


def test_after_the_first_step_every_rank_has_rank_0s_model_and_optimizer_variables(spark):
    ranks = HorovodRunner(num_proc=2, spark=spark).run(broadcast_after_one_step)
    assert len(ranks) == 2
    assert ranks[0]["before"] != ranks[1]["before"]  # different seeds: the ranks started apart
    assert ranks[1]["after"] == ranks[0]["after"] == ranks[0]["before"]  # rank 0's weights (lr 0: unchanged)
    assert ranks[1]["slots"] == ranks[0]["slots"]  # Adam's moments of rank 0's data, and its step count
    assert ranks[0]["slots"][0] == 1 and any(np.any(np.asarray(s)) for s in ranks[0]["slots"][1:])


def test_early_stopping_is_one_rule_for_both_flavours():
    from sparkdl.train.keras_worker import EarlyStopping
    from sparkdl.train.rank_job import EarlyStop

    losses = EarlyStop("val_loss", patience=2)
    assert [losses.should_stop({"val_loss": v}) for v in (1.0, 0.9, 0.95, 0.9, 0.8, 0.85, 0.8)] == \
        [False, False, False, True, False, False, True]  # equal is no improvement
    accuracy = EarlyStop("val_accuracy", patience=1)
    assert [accuracy.should_stop({"val_accuracy": v}) for v in (0.5, 0.6, 0.55)] == [False, False, True]
    assert not EarlyStop("val_loss", None).should_stop({"val_loss": 1.0})
    assert not EarlyStop("val_loss", 1).should_stop({"loss": 1.0})  # no such value: never stops

    class Model:
        stop_training = False

    callback = EarlyStopping("loss", 1)
    callback.set_model(Model())
    for value in (1.0, 1.0):
        callback.on_epoch_end(0, {"loss": value})
    assert callback.model.stop_training
