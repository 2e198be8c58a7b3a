"""Triplet losses with online mining inside each batch, for embedding models.

Both losses take `y_true` = integer class index per example (shape `(batch,)` or `(batch, 1)`) and
`y_pred` = L2-normalized embeddings `(batch, dim)`, and use Euclidean distances between embeddings.
Batches must hold several examples of the same class (a shuffled batch of 64+ over ~10 classes does).

* `TripletSemiHardLoss` (FaceNet's semi-hard mining): for each anchor/positive pair, the negative is the closest one
  that is still farther than the positive; when none is, the farthest negative. Loss = mean over positive pairs of
  `max(d(a, p) - d(a, n) + margin, 0)`. Memory is O(batch³) — fine up to a few hundred examples per batch.
* `TripletHardLoss` (batch-hard): per anchor, the farthest positive against the closest negative. O(batch²).

Like the layers, the losses are defined per Keras flavour by `loss_classes(flavour)`; the module-level names are
the tf_keras classes.
"""
from __future__ import annotations

import functools

import tensorflow as tf

from sparkdl import stack
from sparkdl.errors import ConfigError

_BIG = 1e9


def pairwise_distances(embeddings: tf.Tensor) -> tf.Tensor:
    """Euclidean distance matrix `(batch, batch)` of the rows of `embeddings`, with a safe gradient at 0."""
    embeddings = tf.cast(embeddings, tf.float32)
    squared_norms = tf.reduce_sum(tf.square(embeddings), axis=1)
    dots = tf.matmul(embeddings, embeddings, transpose_b=True)
    squared = squared_norms[:, None] - 2.0 * dots + squared_norms[None, :]
    squared = tf.maximum(squared, 0.0)
    zero = tf.cast(tf.equal(squared, 0.0), tf.float32)
    distances = tf.sqrt(squared + zero * 1e-16) * (1.0 - zero)  # sqrt'(0) is infinite: keep it off zeros
    return distances


def _label_masks(y_true: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(same label, different label, same label and not the same example) boolean matrices."""
    labels = tf.reshape(tf.cast(y_true, tf.int64), [-1])
    same = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
    return same, tf.logical_not(same), tf.logical_and(same, not_self)


@functools.cache
def loss_classes(flavour: str = "tf_keras") -> dict[str, type]:
    """{"TripletSemiHardLoss": class, "TripletHardLoss": class} for a Keras flavour, registered as serializable."""
    K = stack.keras_module(flavour)

    class _TripletLoss(K.losses.Loss):
        def __init__(self, margin: float = 0.5, name: str | None = None, **kwargs):
            super().__init__(name=name or self.__class__.__name__, **kwargs)
            if float(margin) < 0:
                raise ConfigError(f"{self.__class__.__name__}: margin must be >= 0, got {margin}")
            self.margin = float(margin)

        def get_config(self) -> dict:
            return {**super().get_config(), "margin": self.margin}

    @K.saving.register_keras_serializable(package="sparkdl")
    class TripletSemiHardLoss(_TripletLoss):
        """Triplet loss with semi-hard negative mining (see the module docstring)."""

        def call(self, y_true, y_pred):
            dist = pairwise_distances(y_pred)
            _, negative, positive = _label_masks(y_true)
            # [anchor, positive, negative]: negatives farther from the anchor than the positive is.
            d_an = dist[:, None, :]
            d_ap = dist[:, :, None]
            semi_hard = tf.logical_and(negative[:, None, :], d_an > d_ap)
            has_semi_hard = tf.reduce_any(semi_hard, axis=2)
            closest_semi_hard = tf.reduce_min(tf.where(semi_hard, d_an, _BIG), axis=2)
            farthest_negative = tf.reduce_max(tf.where(negative, dist, -_BIG), axis=1, keepdims=True)
            chosen = tf.where(has_semi_hard, closest_semi_hard, farthest_negative)
            # Anchors with no negative in the batch give no triplet.
            valid = tf.logical_and(positive, tf.reduce_any(negative, axis=1, keepdims=True))
            losses = tf.maximum(dist - chosen + self.margin, 0.0)
            valid = tf.cast(valid, tf.float32)
            return tf.reduce_sum(losses * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)

    @K.saving.register_keras_serializable(package="sparkdl")
    class TripletHardLoss(_TripletLoss):
        """Batch-hard triplet loss: farthest positive vs closest negative per anchor."""

        def call(self, y_true, y_pred):
            dist = pairwise_distances(y_pred)
            _, negative, positive = _label_masks(y_true)
            hardest_positive = tf.reduce_max(tf.where(positive, dist, 0.0), axis=1)
            hardest_negative = tf.reduce_min(tf.where(negative, dist, _BIG), axis=1)
            valid = tf.cast(tf.logical_and(tf.reduce_any(positive, axis=1), tf.reduce_any(negative, axis=1)),
                            tf.float32)
            losses = tf.maximum(hardest_positive - hardest_negative + self.margin, 0.0)
            return tf.reduce_sum(losses * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)

    for cls in (TripletSemiHardLoss, TripletHardLoss):
        cls.__qualname__ = cls.__name__
    return {"TripletSemiHardLoss": TripletSemiHardLoss, "TripletHardLoss": TripletHardLoss}


TripletSemiHardLoss = loss_classes("tf_keras")["TripletSemiHardLoss"]
TripletHardLoss = loss_classes("tf_keras")["TripletHardLoss"]
