"""Custom Keras layers of the model zoo, registered so that `load_model(..., safe_mode=True)` can rebuild them.

Each layer is defined once per Keras flavour (`sparkdl.stack.KERAS_FLAVOURS`) from the same code, because
tf_keras and Keras 3 keep separate class hierarchies and registries; `layer_classes(flavour)` defines and
registers them on first use. The module-level names are the tf_keras classes.
"""
from __future__ import annotations

import functools

import tensorflow as tf

from sparkdl import stack


@functools.cache
def layer_classes(flavour: str = "tf_keras") -> dict[str, type]:
    """{"L2Normalize": class} for a Keras flavour, registered as serializable under the package "sparkdl"."""
    K = stack.keras_module(flavour)

    @K.saving.register_keras_serializable(package="sparkdl")
    class L2Normalize(K.layers.Layer):
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

    L2Normalize.__qualname__ = "L2Normalize"
    return {"L2Normalize": L2Normalize}


L2Normalize = layer_classes("tf_keras")["L2Normalize"]
