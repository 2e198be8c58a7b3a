"""Integrated gradients (Sundararajan et al., 2017) on prepared batches, and their sum per input feature.

For a row x, a baseline x' and the explained output f (the sigmoid output of a binary model, the probability of
the explained class of a multiclass model, the value of a regression model):

    attribution_i = (x_i - x'_i) * ∫₀¹ ∂f(x' + α (x - x')) / ∂x_i dα

The integral is computed by Gauss–Legendre quadrature on `steps` points (as Captum does by default), all rows and
all points of a chunk in one traced gradient call. Completeness — Σ attribution_i = f(x) − f(x') — is the check:
every row reports `delta`, the difference, which shrinks as `steps` grows (tests hold it within 1% of
|f(x) − f(x')| at the default step count for the zoo's MLP and CNN).

Attributions are computed on the model's prepared input and then reported per feature as the user named it
(`feature_attributions`): a numeric column's slot, a categorical column's one-hot slots summed, a vector's or
sequence's values as a flat array in the row-major order of its `shape`.

This module is TensorFlow-free at import; `AttributionKernel` imports TensorFlow when built (in a Python worker).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sparkdl.errors import ConfigError

if TYPE_CHECKING:
    from sparkdl.data.preprocess import PreprocessorModel

BASELINES = ("zeros", "mean")
DEFAULT_STEPS = 64
MAX_STEPS = 1024
POINTS_PER_CALL = 32_768  # rows x steps per gradient call: bounds a call's memory, keeps calls large


@dataclass(frozen=True)
class Attribution:
    """How attributions are computed: integrated gradients with `steps` quadrature points from `baseline`.

    Args:
        steps: Gauss–Legendre points along the path (2..1024; default 64). Cost grows linearly with it.
        baseline: "zeros" (the all-zero prepared row: scaled features at 0 — their training mean when scaled
            with "standard" — and no one-hot slot set) or "mean" (each feature's fitted training mean, prepared).
        target: the class index explained; None explains the predicted class of a multiclass model and class 1
            (the sigmoid output) of a binary one. Regression models explain their value.

    Raises:
        ConfigError: a value out of range, naming the parameter.
    """

    steps: int = DEFAULT_STEPS
    baseline: str = "zeros"
    target: int | None = None

    def __post_init__(self):
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or not 2 <= self.steps <= MAX_STEPS:
            raise ConfigError(f"attribution steps must be an int in [2, {MAX_STEPS}], got {self.steps!r}")
        if self.baseline not in BASELINES:
            raise ConfigError(f"attribution baseline must be one of {BASELINES}, got {self.baseline!r}")
        if self.target is not None and (not isinstance(self.target, int) or isinstance(self.target, bool)
                                        or self.target < 0):
            raise ConfigError(f"attribution target must be a class index >= 0 or None, got {self.target!r}")


def quadrature(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) of `steps`-point Gauss–Legendre quadrature on [0, 1] (the weights sum to 1)."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return ((nodes + 1.0) / 2.0).astype(np.float32), (weights / 2.0).astype(np.float32)


def baseline_row(preprocessor: "PreprocessorModel", baseline: str) -> np.ndarray:
    """The baseline as a prepared row of the model's input shape (float32)."""
    if baseline == "mean":
        return preprocessor.prepared_means()
    return np.zeros(preprocessor.input_shape, dtype=np.float32)


def explained_index(raw: np.ndarray, task: str, target: int | None) -> np.ndarray:
    """Per row, the column of the model output that is explained (int32): binary and regression models have one,
    a multiclass model's is `target`, else the predicted class."""
    n = raw.shape[0]
    if task != "multiclass":
        return np.zeros(n, dtype=np.int32)
    if target is not None:
        return np.full(n, target, dtype=np.int32)
    return raw.reshape(n, -1).argmax(axis=1).astype(np.int32)


class AttributionKernel:
    """Integrated gradients of one Keras model, traced once (any batch size) for a fixed baseline and step count.

    Args:
        model: a built Keras model (tf_keras or Keras 3 on TensorFlow) taking `input_shape` rows.
        input_shape: the model's input shape without the batch dimension.
        baseline: the baseline row (`input_shape`, float32).
        steps: quadrature points.
    """

    def __init__(self, model, input_shape: tuple[int, ...], baseline: np.ndarray, steps: int):
        import tensorflow as tf

        self.input_shape = tuple(int(d) for d in input_shape)
        self.steps = int(steps)
        self.baseline = np.asarray(baseline, dtype=np.float32).reshape(self.input_shape)
        alphas, weights = quadrature(self.steps)
        extra = (1,) * len(self.input_shape)
        alpha = tf.constant(alphas.reshape((1, -1) + extra))
        weight = tf.constant(weights.reshape((1, -1) + extra))
        base = tf.constant(self.baseline[None, None])
        m = self.steps
        shape = self.input_shape

        def integrated(x, index):
            diff = x[:, None] - base                                    # (n, 1, *shape)
            path = tf.reshape(base + alpha * diff, (-1,) + shape)      # (n*m, *shape)
            picks = tf.repeat(index, m)
            with tf.GradientTape() as tape:
                tape.watch(path)
                out = tf.reshape(model(path, training=False), (tf.shape(path)[0], -1))
                chosen = tf.gather(out, picks, axis=1, batch_dims=1)
            grads = tf.reshape(tape.gradient(chosen, path), tf.shape(diff * alpha))
            return tf.reduce_sum(grads * weight, axis=1) * diff[:, 0]

        spec = tf.TensorSpec((None,) + shape, tf.float32)
        self._fn = tf.function(integrated, input_signature=[spec, tf.TensorSpec((None,), tf.int32)])
        out = np.asarray(model(self.baseline[None], training=False)).reshape(-1)
        self.baseline_output = out.astype(np.float64)  # f(baseline) for every output column
        self.rows_per_call = max(1, POINTS_PER_CALL // self.steps)

    def attribute(self, features: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Attributions (n, *input_shape) float32 of prepared `features` for output column `index` per row."""
        n = features.shape[0]
        step = self.rows_per_call
        parts = [np.asarray(self._fn(features[i:i + step], index[i:i + step])) for i in range(0, n, step)]
        if not parts:
            return np.zeros((0,) + self.input_shape, dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def feature_attributions(preprocessor: "PreprocessorModel", attributions: np.ndarray) -> dict[str, np.ndarray]:
    """Attributions per feature as the user named it: (n,) float64 for numeric and categorical features (one-hot
    slots summed), (n, size) float32 for vector and sequence features (row-major in their shape)."""
    flat = attributions.reshape(attributions.shape[0], -1)
    out: dict[str, np.ndarray] = {}
    for slot in preprocessor.slots:
        block = flat[:, slot.start:slot.start + slot.width]
        if slot.kind == "numeric":
            out[slot.name] = block[:, 0].astype(np.float64)
        elif slot.kind == "categorical":
            out[slot.name] = block.sum(axis=1, dtype=np.float64)
        else:
            out[slot.name] = np.ascontiguousarray(block, dtype=np.float32)
    return out
