"""Loading a `.keras` file with the Keras flavour that saved it (the one loader of training, store and scoring).

A model saved by Keras 2 (TF 2.15's keras, or tf_keras on TF >= 2.16) loads as tf_keras on either stack; a model
saved by Keras 3 loads only where Keras 3 is installed (the current stack). sparkdl's custom layers and losses
are registered for that flavour first, and `safe_mode` stays on (no Lambda bytecode is ever executed).
"""
from __future__ import annotations

import os

from sparkdl import stack
from sparkdl.models.layers import layer_classes
from sparkdl.models.losses import loss_classes

__all__ = ["load_keras_file"]


def load_keras_file(path: str | os.PathLike, compile: bool = False):
    """Load the model in `path` (a `.keras` file) with the flavour that saved it.

    Raises:
        SparkDLError: the file is not a Keras v3 archive, or was saved by a Keras this environment lacks (the
            message names the saving and the installed Keras versions).
        Exception: whatever Keras raises for a file it cannot rebuild (callers wrap it with their context).
    """
    flavour = stack.saved_flavour(path)
    layer_classes(flavour)
    loss_classes(flavour)
    return stack.keras_module(flavour).models.load_model(str(path), compile=compile, safe_mode=True)
