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
    """{"L2Normalize": class, "SelectColumns": class} for a Keras flavour, registered as serializable under the
    package "sparkdl"."""
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

    @K.saving.register_keras_serializable(package="sparkdl")
    class SelectColumns(K.layers.Layer):
        """The given columns of a (batch, width) input, in order: routes a flat prepared row's features to the
        tower that reads them (the zoo's two_tower)."""

        def __init__(self, columns=(), **kwargs):
            super().__init__(**kwargs)
            self.columns = [int(c) for c in columns]

        def call(self, inputs):
            return tf.gather(inputs, self.columns, axis=-1)

        def compute_output_shape(self, input_shape):
            return (*tuple(input_shape)[:-1], len(self.columns))

        def get_config(self) -> dict:
            return {**super().get_config(), "columns": list(self.columns)}

    L2Normalize.__qualname__ = "L2Normalize"
    SelectColumns.__qualname__ = "SelectColumns"
    return {"L2Normalize": L2Normalize, "SelectColumns": SelectColumns}


L2Normalize = layer_classes("tf_keras")["L2Normalize"]
