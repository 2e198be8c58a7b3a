"""Per-example clipped gradient sums for DP-SGD (`sparkdl.train.dp_worker`), in one of two ways.

* **Ghost clipping**, when every trainable variable is the kernel or bias of a `Dense` layer applied once per
  forward pass to a (batch, features) input, as in the zoo's `mlp`: example i's gradient of such a layer is the
  outer product of the layer's input a_i and the loss gradient g_i at its pre-activation output, so its squared
  norm is |a_i|²·|g_i|² (+ |g_i|² for the bias) and the sum of the clipped gradients is aᵀ(c ⊙ g). One forward
  and one backward pass to the layers' outputs; no per-example gradient is ever materialised (Goodfellow 2015;
  Lee & Kifer 2021).
* **The per-example Jacobian** (TensorFlow's pfor) for any other model.

Both give the same sums (tests/test_train_dp_clipping.py checks it on both Keras flavours).
"""
from __future__ import annotations

import contextlib

from sparkdl.errors import GhostClippingUnsupported
from sparkdl.log import get_logger

log = get_logger("train.dp")


def _layers(model):
    stack = [model]
    while stack:
        layer = stack.pop()
        yield layer
        stack.extend(getattr(layer, "layers", None) or [])


def ghost_layers(model, variables) -> dict | None:
    """{id(variable): (Dense layer, "kernel" | "bias")} when ghost clipping covers every variable, else None."""
    owners = {}
    for layer in _layers(model):
        if type(layer).__name__ != "Dense":
            continue
        if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
            return None
        for part in ("kernel", "bias"):
            variable = getattr(layer, part, None)
            if variable is not None:
                owners[id(variable)] = (layer, part)
    if not variables or any(id(v) not in owners for v in variables):
        return None
    return owners


@contextlib.contextmanager
def _recording(layers, records: list):
    """Each Dense layer of `layers` computes its output itself while inside, recording (layer, input, z)."""
    import tensorflow as tf

    def recorder(layer):
        def call(inputs, *args, **kwargs):
            if inputs.shape.rank != 2:
                raise GhostClippingUnsupported(f"layer {layer.name!r} gets a rank-{inputs.shape.rank} input")
            z = tf.matmul(inputs, layer.kernel)
            if layer.bias is not None:
                z = z + layer.bias
            records.append((layer, inputs, z))
            return layer.activation(z) if layer.activation is not None else z
        return call

    for layer in layers:
        layer.call = recorder(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.call


def clipped_sum_function(model, variables, per_example_loss, clip_norm: float, method: str = "auto"):
    """A function (x, y, weight) -> (clipped gradient sums in `variables`' order, Σ weight·loss).

    `per_example_loss(model, x, y)` gives one loss per row (training mode). Rows with weight 0 (padding) add
    nothing; the others are each clipped to `clip_norm` in L2 over all variables. `method` "auto": ghost clipping
    when the model allows it (see the module docstring), else the per-example Jacobian; "jacobian": always the
    Jacobian. The function's `.method` says which it uses.
    """
    import tensorflow as tf

    clip = float(clip_norm)

    @tf.function
    def jacobian_sum(x, y, weight):
        with tf.GradientTape() as tape:
            losses = per_example_loss(model, x, y)
        jacobians = tape.jacobian(losses, list(variables), unconnected_gradients=tf.UnconnectedGradients.ZERO)
        squares = tf.add_n([tf.reduce_sum(tf.reshape(j, [tf.shape(j)[0], -1]) ** 2, axis=1) for j in jacobians])
        factors = weight * tf.minimum(1.0, clip / (tf.sqrt(squares) + 1e-12))
        return [tf.tensordot(factors, j, axes=1) for j in jacobians], tf.reduce_sum(weight * losses)

    owners = ghost_layers(model, variables) if method == "auto" else None
    if owners is None:
        jacobian_sum.method = "jacobian"
        return jacobian_sum
    layers = list({id(layer): layer for layer, _ in owners.values()}.values())

    @tf.function(autograph=False)  # plain Python over lists; its refusal must surface as itself, not a StagingError
    def ghost_sum(x, y, weight):
        records: list = []
        with _recording(layers, records), tf.GradientTape() as tape:
            losses = per_example_loss(model, x, y)
            total = tf.reduce_sum(losses)  # on the tape: the gradient is taken from it
        if sorted(id(r[0]) for r in records) != sorted(id(layer) for layer in layers):
            raise GhostClippingUnsupported("a Dense layer ran more or less than once in the forward pass")
        grads = tape.gradient(total, [z for _, _, z in records])
        squares = tf.zeros_like(losses)
        for (layer, a, _), g in zip(records, grads):
            g_sq = tf.reduce_sum(tf.square(g), axis=1)
            squares += tf.reduce_sum(tf.square(a), axis=1) * g_sq + (g_sq if layer.bias is not None else 0.0)
        factors = weight * tf.minimum(1.0, clip / (tf.sqrt(squares) + 1e-12))
        sums = {}
        for (layer, a, _), g in zip(records, grads):
            scaled = g * factors[:, None]
            sums[id(layer.kernel)] = tf.matmul(a, scaled, transpose_a=True)
            if layer.bias is not None:
                sums[id(layer.bias)] = tf.reduce_sum(scaled, axis=0)
        return [sums[id(v)] for v in variables], tf.reduce_sum(weight * losses)

    def clipped_sum(x, y, weight):
        if clipped_sum.method == "ghost":
            try:
                return ghost_sum(x, y, weight)
            except GhostClippingUnsupported as exc:
                log.info("dp: per-example Jacobian instead of ghost clipping (%s)", exc)
                clipped_sum.method = "jacobian"
        return jacobian_sum(x, y, weight)

    clipped_sum.method = "ghost"
    return clipped_sum


__all__ = ["clipped_sum_function", "ghost_layers"]
