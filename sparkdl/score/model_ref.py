"""What a scoring closure carries: a small, picklable reference to a model version in a store — never the model.

`resolve_model(model_ref, store)` runs on the driver: it turns a store name, `"name@3"`, a `ModelVersion`, a
`LoadedModel` or a `SparkDLModel` into a `ModelRef(root, name, version)` and reads the version's metadata (no
TensorFlow import). Executors load the model themselves from `ref.root` (see `sparkdl.score.runtime`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sparkdl import stack
from sparkdl.errors import ConfigError
from sparkdl.model_metadata import ModelMetadata
from sparkdl.registry import MODEL_FILE, LoadedModel, ModelStore, ModelVersion


@dataclass(frozen=True)
class ModelRef:
    """A resolved model version: the store root (absolute path), the name and the version number."""

    root: str
    name: str
    version: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.root, self.name, self.version)

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def _store(store):
    if store is None or isinstance(store, ModelStore):
        return store
    if isinstance(store, (str, os.PathLike)):
        return ModelStore(store)
    raise ConfigError(f"store must be a ModelStore, a folder path or None, got {type(store).__name__}")


def _from_spark_model(model, store):
    """(ref, store) from a SparkDLModel-like object: getModelVersion() plus an optional store accessor."""
    version = model.getModelVersion()
    getter = getattr(model, "getModelStore", None)  # SparkDLModel's
    if store is None and callable(getter) and getter():
        store = ModelStore.of(getter())
    if store is None and isinstance(version, ModelVersion):
        store = ModelStore(Path(version.path).parent.parent)
    return version, store


def resolve_model(model_ref, store=None) -> tuple[ModelRef, ModelMetadata]:
    """Resolve `model_ref` to a `ModelRef` and its typed metadata, on the driver.

    Args:
        model_ref: `"name"` (latest), `"name@3"`, `"name@latest"`, a `ModelVersion`, a `LoadedModel`, a
            `ModelRef` (its own store unless `store` is given), or a `SparkDLModel` (anything with
            `getModelVersion()`).
        store: a `ModelStore` or its root folder; default: the store the reference came from, else the default
            store ($SPARKDL_MODEL_STORE or `<work dir>/models`).

    Raises:
        ConfigError: a malformed reference or an unsupported type.
        ModelStoreError: the model or version does not exist (the message lists what does), or its metadata
            records no fitted preprocessing.
        SparkDLError: the model was saved by a Keras this environment lacks (a Keras 3 model on the pinned stack;
            the message names both Keras versions), found here before any Spark job starts.
    """
    store = _store(store)
    if isinstance(model_ref, ModelRef):
        store = store or ModelStore(model_ref.root)
        model_ref = str(model_ref)
    if hasattr(model_ref, "getModelVersion") and callable(model_ref.getModelVersion):
        model_ref, store = _from_spark_model(model_ref, store)
    if isinstance(model_ref, (ModelVersion, LoadedModel)) and store is None:
        store = ModelStore(Path(model_ref.path).parent.parent)
    if not isinstance(model_ref, (str, ModelVersion, LoadedModel)):
        raise ConfigError(f"model_ref must be a model name, 'name@version', a ModelVersion or a SparkDLModel, "
                          f"got {type(model_ref).__name__}")
    store = store or ModelStore()
    version = store.resolve(model_ref)
    raw = store.metadata(version)
    metadata = ModelMetadata.from_dict({"name": version.name, "version": int(version.version), **raw})
    stack.saved_flavour(Path(version.path) / raw.get("model_file", MODEL_FILE))  # executors run this Python
    return ModelRef(str(store.root), version.name, int(version.version)), metadata
