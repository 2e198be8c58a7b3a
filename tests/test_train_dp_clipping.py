"""Per-example clipping (sparkdl.train.dp_clipping): ghost clipping gives the per-example Jacobian's clipped sums,
on every installed Keras flavour, and models it does not cover fall back to the Jacobian."""
from __future__ import annotations

import numpy as np
import pytest

from sparkdl import stack
from sparkdl.data.spec import ModelSignature
from sparkdl.train.dp_clipping import clipped_sum_function

FLAVOURS = [f for f in stack.KERAS_FLAVOURS if stack.keras_version(f) is not None]


def sums(model, keras, x, y, weight, clip, method):
    import tensorflow as tf

    loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction="none")

    def per_example_loss(model, x, y):
        return tf.reshape(loss_fn(y, model(x, training=True)), [-1])

    fn = clipped_sum_function(model, model.trainable_variables, per_example_loss, clip, method=method)
    out, loss = fn(tf.constant(x), tf.constant(y), tf.constant(weight))
    return fn.method, [np.asarray(o) for o in out], float(loss)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_ghost_clipping_equals_the_per_example_jacobian(flavour):
    from sparkdl.models import build

    keras = stack.keras_module(flavour)
    keras.utils.set_random_seed(0)
    model = build("mlp", ModelSignature((6,), "multiclass", 3), keras=flavour, hidden=(16, 8))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32) * 3
    y = rng.integers(0, 3, 64)
    weight = (np.arange(64) < 50).astype(np.float32)  # 14 padding rows
    for clip in (0.05, 100.0):  # every row clipped; no row clipped
        method, ghost, ghost_loss = sums(model, keras, x, y, weight, clip, "auto")
        assert method == "ghost"
        _, jacobian, jacobian_loss = sums(model, keras, x, y, weight, clip, "jacobian")
        assert ghost_loss == pytest.approx(jacobian_loss, rel=1e-5)
        for g, j in zip(ghost, jacobian):
            np.testing.assert_allclose(g, j, rtol=2e-4, atol=1e-6)
    total = np.sqrt(sum(float(np.square(g).sum()) for g in ghost))
    assert total <= 50 * 100.0


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_models_ghost_clipping_does_not_cover_use_the_jacobian(flavour):
    keras = stack.keras_module(flavour)
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
    y = np.arange(32) % 2
    weight = np.ones(32, np.float32)
    normed = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                               keras.layers.LayerNormalization(), keras.layers.Dense(2, activation="softmax")])
    assert sums(normed, keras, x, y, weight, 1.0, "auto")[0] == "jacobian"  # LayerNormalization's variables

    inputs = keras.Input((4,))
    shared = keras.layers.Dense(4, activation="tanh")
    outputs = keras.layers.Dense(2, activation="softmax")(shared(shared(inputs)))
    twice = keras.Model(inputs, outputs)
    method, fallback, _ = sums(twice, keras, x, y, weight, 1.0, "auto")
    assert method == "jacobian"  # a layer applied twice: found while tracing, then the Jacobian
    _, jacobian, _ = sums(twice, keras, x, y, weight, 1.0, "jacobian")
    for g, j in zip(fallback, jacobian):
        np.testing.assert_allclose(g, j, rtol=1e-5, atol=1e-7)
    assert not any("call" in vars(layer) for layer in twice.layers)  # the recording hooks are gone
