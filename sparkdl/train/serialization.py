"""Keras models and optimizer state as bytes, so they travel through pickles and the stage's output.

Models go as Keras v3 (`.keras`) bytes and are loaded with `compile=False` (a model trained under Horovod
carries a `horovod._keras` optimizer class that plain Keras cannot deserialize); the optimizer state goes
separately as an `.npz` of its variables in order (iterations first, then the slots).
"""
from __future__ import annotations

import io
import os
import tempfile

import numpy as np

from sparkdl import stack


def model_to_bytes(model) -> bytes:
    """The model saved in the Keras v3 format (from any thread)."""
    from sparkdl.models.saving import save_keras_file

    with tempfile.TemporaryDirectory(prefix="sparkdl-model-") as tmp:
        path = os.path.join(tmp, "model.keras")
        save_keras_file(model, path)
        with open(path, "rb") as fh:
            return fh.read()


def model_flavour(data: bytes) -> str:
    """The Keras flavour ("tf_keras" or "keras3") that saved these model bytes (see `sparkdl.stack`)."""
    return stack.saved_flavour(io.BytesIO(data))


def model_from_bytes(data: bytes):
    """Load a model from Keras v3 bytes, uncompiled, with the Keras flavour that saved it."""
    from sparkdl.models.saving import load_keras_file

    with tempfile.TemporaryDirectory(prefix="sparkdl-model-") as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as fh:
            fh.write(data)
        return load_keras_file(path, compile=False)


def _variables(optimizer) -> list:
    variables = optimizer.variables
    return list(variables() if callable(variables) else variables)


def optimizer_to_bytes(optimizer) -> bytes:
    """The optimizer's variables (`iterations`, then slot variables) as .npz bytes."""
    buffer = io.BytesIO()
    arrays = {f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(_variables(optimizer))}
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def restore_optimizer(optimizer, trainable_variables, data: bytes) -> int:
    """Create the optimizer's slots for `trainable_variables` and load saved values into them.

    Returns the number of variables restored. Raises ValueError when the saved state does not fit this
    optimizer and model (another optimizer kind or model shape).
    """
    optimizer.build(trainable_variables)
    with np.load(io.BytesIO(data)) as npz:
        arrays = [npz[k] for k in sorted(npz.files)]
    variables = _variables(optimizer)
    if len(arrays) != len(variables):
        raise ValueError(f"the checkpoint holds {len(arrays)} optimizer variables, this optimizer has "
                         f"{len(variables)}: was it saved with another optimizer or model?")
    for var, value in zip(variables, arrays):
        if tuple(var.shape) != tuple(value.shape):
            raise ValueError(f"optimizer variable {var.name}: checkpoint shape {value.shape} != {tuple(var.shape)}")
        var.assign(value)
    return len(arrays)
