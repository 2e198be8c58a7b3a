"""`sparkdl export REF --format saved_model DIR`: a stored model as a TensorFlow SavedModel whose serving signature
takes the raw feature columns, with the fitted preprocessing inside as TensorFlow ops, for TF Serving / TF Lite.

The signature `serving_default` takes one tensor per feature, named as the column: a `numeric` feature as float64
`[batch]` (NaN stands for a missing value), a `vector` feature as float32 `[batch, size]`. Inside, the same math as
`PreprocessorModel.prepare_batch`: imputation (the fitted mean/median or the constant) where a value is NaN, then
standard or min-max scaling with the fitted statistics, the features concatenated in the spec's order and shaped to
the model's input. It returns `probabilities` (classification; [batch, classes], the binary case as
[1 - p, p]) or `prediction` (regression), and `prediction_index` (classification: the class index). Feature kinds
whose preparation is not a pure tensor computation (categorical vocabularies, text tokenization, image decoding)
are refused with a `ConfigError` naming the feature.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sparkdl.errors import ConfigError
from sparkdl.log import get_logger
from sparkdl.model_metadata import ModelMetadata
from sparkdl.registry import ModelStore

log = get_logger("serving")

EXPORTABLE_KINDS = ("numeric", "vector")


def export_saved_model(ref, directory: str | os.PathLike, store=None) -> Path:
    """Write model `ref` (from `store`) as a SavedModel into `directory` (which must not exist); returns it.

    Raises:
        ConfigError: `directory` exists, or a feature kind cannot be exported (named).
        ModelStoreError: unknown model or version.
    """
    import tensorflow as tf

    store = ModelStore.of(store)
    directory = Path(directory)
    if directory.exists():
        raise ConfigError(f"export: {directory} already exists; give a new folder")
    loaded = store.load(ref)
    metadata = ModelMetadata.from_dict({"name": loaded.ref.name, "version": loaded.ref.version, **loaded.metadata})
    prep = metadata.preprocessor()
    refused = [f"{f.name} ({f.kind})" for f in prep.spec.features if f.kind not in EXPORTABLE_KINDS]
    if refused:
        raise ConfigError(f"export {loaded.ref}: feature(s) {refused} cannot be prepared by TensorFlow ops in a "
                          f"SavedModel (exportable kinds: {EXPORTABLE_KINDS}); serve it with `sparkdl serve`")
    task = metadata.task
    model = loaded.model
    specs = {f.name: (tf.TensorSpec([None], tf.float64, name=f.name) if f.kind == "numeric"
                      else tf.TensorSpec([None, f.size], tf.float32, name=f.name)) for f in prep.spec.features}
    steps = [(f, _constants(f, prep.stats["features"].get(f.name, {}))) for f in prep.spec.features]
    input_shape = tuple(prep.input_shape)

    class Exported(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[specs])
        def serve(self, inputs):
            parts = []
            for f, c in steps:
                x = tf.cast(inputs[f.name], tf.float32)
                if f.kind == "numeric":
                    x = tf.reshape(x, [-1, 1])
                if c["fill"] is not None:
                    x = tf.where(tf.math.is_nan(x), tf.broadcast_to(c["fill"], tf.shape(x)), x)
                x = (x - c["shift"]) / c["divide"]
                parts.append(x)
            features = tf.reshape(tf.concat(parts, axis=1), (-1, *input_shape))
            raw = tf.cast(tf.reshape(self.model(features, training=False), [tf.shape(features)[0], -1]), tf.float32)
            if task == "regression":
                return {"prediction": raw[:, 0]}
            if task == "binary":
                probabilities = tf.concat([1.0 - raw[:, :1], raw[:, :1]], axis=1)
            else:
                probabilities = raw
            return {"probabilities": probabilities,
                    "prediction_index": tf.argmax(probabilities, axis=1, output_type=tf.int32)}

    module = Exported()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    log.info("exported %s as a SavedModel to %s (inputs %s)", loaded.ref, directory, list(specs))
    return directory


def _constants(feature, stats: dict) -> dict:
    """The fill value (None: no imputation), shift and divisor of one feature, as float32 arrays."""
    size = 1 if feature.kind == "numeric" else feature.size

    def vec(value, default=0.0):
        arr = np.asarray(default if value is None else value, dtype=np.float32).reshape(-1)
        return np.broadcast_to(arr, (size,)).astype(np.float32)

    fill = None
    if feature.impute == "constant":
        fill = vec(feature.impute_value)
    elif feature.impute in ("mean", "median"):
        fill = vec(stats.get(feature.impute) if feature.kind == "numeric" else stats.get("mean"))
    shift, divide = vec(0.0), vec(1.0)
    if feature.scale == "standard":
        std = vec(stats.get("std"), 1.0)
        shift, divide = vec(stats.get("mean")), np.where(std > 0, std, 1.0).astype(np.float32)
    elif feature.scale == "minmax":
        lo = vec(stats.get("min"))
        spread = vec(stats.get("max")) - lo
        shift, divide = lo, np.where(spread > 0, spread, 1.0).astype(np.float32)
    return {"fill": fill, "shift": shift, "divide": divide}
