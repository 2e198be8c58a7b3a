"""Custom Keras layers of the model zoo, registered so that `load_model(..., safe_mode=True)` can rebuild them."""
from __future__ import annotations

import tensorflow as tf


@tf.keras.saving.register_keras_serializable(package="sparkdl")
class L2Normalize(tf.keras.layers.Layer):
    """Scale each vector along `axis` to unit L2 norm (the output layer of embedding models).

    A named, serializable layer instead of a `Lambda`: Lambda layers carry Python bytecode and are refused by
    `load_model(..., safe_mode=True)`.
    """

    def __init__(self, axis: int = -1, epsilon: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)
        self.epsilon = float(epsilon)

    def call(self, inputs):
        return tf.math.l2_normalize(inputs, axis=self.axis, epsilon=self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon}
