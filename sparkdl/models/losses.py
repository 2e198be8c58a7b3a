"""Losses computed over a whole batch: triplet losses for embedding models, in-batch softmax for two towers.

Both losses take `y_true` = integer class index per example (shape `(batch,)` or `(batch, 1)`) and
`y_pred` = L2-normalized embeddings `(batch, dim)`, and use Euclidean distances between embeddings.
Batches must hold several examples of the same class (a shuffled batch of 64+ over ~10 classes does).

* `TripletSemiHardLoss` (FaceNet's semi-hard mining): for each anchor/positive pair, the negative is the closest one
  that is still farther than the positive; when none is, the farthest negative. Loss = mean over positive pairs of
  `max(d(a, p) - d(a, n) + margin, 0)`. Memory is O(batch³) — fine up to a few hundred examples per batch.
* `TripletHardLoss` (batch-hard): per anchor, the farthest positive against the closest negative. O(batch²).

`InBatchSoftmaxLoss` trains a two-tower model (the zoo's ``two_tower``): `y_pred` holds each row's query embedding
and item embedding side by side `(batch, 2·dim)`, `y_true` the item's index. Each query's positive is its own item;
the negatives are every other item of the batch — of the whole global batch when `share_negatives` and Horovod runs
more than one rank: the item embeddings and indices are all-gathered (Horovod's allgather passes the gradients back
to the rank each item came from), so 2 ranks of 64 rows train like 1 rank of 128. A logit is
`q·i / temperature − log Q(item)`, the log-Q correction for popular items appearing as negatives more often than
their share (Yi et al., RecSys 2019), with Q the item's share of the training rows (`item_counts`); a negative that
is the positive's own item (an accidental hit) is masked out.

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

    @K.saving.register_keras_serializable(package="sparkdl")
    class InBatchSoftmaxLoss(K.losses.Loss):
        """Sampled softmax over the batch's items, shared across Horovod ranks (see the module docstring)."""

        def __init__(self, item_counts=None, temperature: float = 0.05, share_negatives: bool = True,
                     name: str | None = None, **kwargs):
            super().__init__(name=name or "InBatchSoftmaxLoss", **kwargs)
            if not float(temperature) > 0:
                raise ConfigError(f"InBatchSoftmaxLoss: temperature must be > 0, got {temperature}")
            counts = None if item_counts is None else [float(c) for c in item_counts]
            if counts is not None and (not counts or min(counts) < 0 or sum(counts) <= 0):
                raise ConfigError("InBatchSoftmaxLoss: item_counts must be non-negative counts per item index")
            self.item_counts, self.temperature = counts, float(temperature)
            self.share_negatives = bool(share_negatives)

        def get_config(self) -> dict:
            return {**super().get_config(), "item_counts": self.item_counts, "temperature": self.temperature,
                    "share_negatives": self.share_negatives}

        def call(self, y_true, y_pred):
            items = tf.reshape(tf.cast(y_true, tf.int64), [-1])
            y_pred = tf.cast(y_pred, tf.float32)
            dim = tf.shape(y_pred)[1] // 2
            queries, embedded = y_pred[:, :dim], y_pred[:, dim:]
            offset = tf.constant(0, tf.int32)
            all_items, all_embedded = items, embedded
            hvd = _horovod_if_several_ranks() if self.share_negatives else None
            if hvd is not None:  # every rank's items are negatives of every rank's queries
                gathered, ranks = hvd.allgather(embedded), float(hvd.size())
                # Horovod's allgather gradient is the ranks' average; each rank's items need the sum of every
                # rank's loss gradient (the optimizer averages afterwards): the same values, ×size gradient
                all_embedded = gathered * ranks - tf.stop_gradient(gathered) * (ranks - 1.0)
                all_items = hvd.allgather(items)
                sizes = hvd.allgather(tf.shape(items)[:1])
                offset = tf.reduce_sum(sizes[:hvd.rank()])
            logits = tf.matmul(queries, all_embedded, transpose_b=True) / self.temperature
            if self.item_counts is not None:
                counts = tf.constant(self.item_counts, tf.float32)
                log_q = tf.math.log(tf.maximum(tf.gather(counts, all_items), 1.0) / tf.reduce_sum(counts))
                logits -= log_q[None, :]
            rows = tf.shape(items)[0]
            positive = tf.range(rows) + offset
            hit = tf.logical_and(tf.equal(items[:, None], all_items[None, :]),
                                 tf.logical_not(tf.equal(tf.range(tf.shape(all_items)[0])[None, :],
                                                         positive[:, None])))
            logits = tf.where(hit, -_BIG, logits)
            return tf.nn.sparse_softmax_cross_entropy_with_logits(positive, logits)

    for cls in (TripletSemiHardLoss, TripletHardLoss, InBatchSoftmaxLoss):
        cls.__qualname__ = cls.__name__
    return {"TripletSemiHardLoss": TripletSemiHardLoss, "TripletHardLoss": TripletHardLoss,
            "InBatchSoftmaxLoss": InBatchSoftmaxLoss}


def _horovod_if_several_ranks():
    """horovod.tensorflow when it is initialised with more than one rank (a Horovod fit), else None."""
    try:
        import horovod.tensorflow as hvd
    except ImportError:
        return None
    return hvd if hvd.is_initialized() and hvd.size() > 1 else None


TripletSemiHardLoss = loss_classes("tf_keras")["TripletSemiHardLoss"]
TripletHardLoss = loss_classes("tf_keras")["TripletHardLoss"]
InBatchSoftmaxLoss = loss_classes("tf_keras")["InBatchSoftmaxLoss"]
