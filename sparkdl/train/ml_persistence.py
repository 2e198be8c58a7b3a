"""Spark ML persistence (`MLWritable`/`MLReadable`) of `KerasEstimator` and `SparkDLModel`, so that
`Pipeline([..., KerasEstimator(...)])` and its `PipelineModel` save and load like stock stages.

Layout under the stage's path (written through Spark, like Spark ML's own `DefaultParamsWriter`):

    metadata/          one JSON line: class, uid, Spark version, paramMap, defaultParamMap (+ what is below)
    model/<name>/<v>/  SparkDLModel only: a copy of its model-store version (Keras file, metadata.json, artifacts),
                       so a saved PipelineModel does not depend on the store it was trained with (local paths;
                       elsewhere the metadata keeps the store reference `modelStore` + `modelRef`)

Param values must be JSON: a `FeatureSpec` (or `ForecastSpec`) is written as its dict and a `ModelStore` as its root;
a Keras model or builder function, callbacks, or optimizer, loss or metric objects are refused at save with a
`ConfigError` naming the param (give a zoo name with `hparams`, optimizer/loss/metric names or configs, or save the
fitted model).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReader, MLWriter

from sparkdl.data.forecast import ForecastSpec
from sparkdl.data.spec import FeatureSpec
from sparkdl.errors import ConfigError, ModelStoreError
from sparkdl.log import looks_secret
from sparkdl.registry import ModelStore
from sparkdl.uri import local_path

_TAG = "__sparkdl__"


def _to_json(name: str, value):
    """A param value as JSON, or ConfigError naming the param (and the variable, for a secret-looking `env`)."""
    if name == "env" and isinstance(value, dict):
        secret = sorted(k for k in value if looks_secret(str(k)))
        if secret:
            raise ConfigError(f"KerasEstimator.save: env holds {secret}, which look like secrets; Spark ML "
                              f"persistence would write them in clear. Give the workers secrets through the "
                              f"cluster's environment or secret store, not the estimator's env")
    if isinstance(value, (FeatureSpec, ForecastSpec)):
        return {_TAG: type(value).__name__, "value": value.to_dict()}
    if isinstance(value, ModelStore):
        return {_TAG: "ModelStore", "root": str(value.root)}
    if isinstance(value, tuple):
        value = list(value)
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        kind = type(value).__name__
        raise ConfigError(
            f"KerasEstimator.save: param {name!r} holds a {kind}, which Spark ML persistence cannot write as JSON; "
            f"use a zoo model name with hparams, optimizer/loss/metric names or configs, no callback objects "
            f"(or save the fitted SparkDLModel, whose Keras file the model store keeps)") from None
    return value


def _from_json(value):
    if isinstance(value, dict) and value.get(_TAG) == "FeatureSpec":
        return FeatureSpec.from_dict(value["value"])
    if isinstance(value, dict) and value.get(_TAG) == "ForecastSpec":
        return ForecastSpec.from_dict(value["value"])
    if isinstance(value, dict) and value.get(_TAG) == "ModelStore":
        return ModelStore(value["root"])
    return value


class EstimatorWriter(MLWriter):
    """Writes a `KerasEstimator`'s params (set and default) as Spark ML metadata."""

    def __init__(self, instance):
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        params = {p.name: _to_json(p.name, v) for p, v in self.instance._paramMap.items()}
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession, paramMap=params)


class EstimatorReader(MLReader):
    """Reads what `EstimatorWriter` wrote into a new instance of `cls` (same uid and params)."""

    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path: str):
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        instance = self.cls()
        instance._resetUid(metadata["uid"])
        instance.setParams(**{k: _from_json(v) for k, v in metadata["paramMap"].items()})
        return instance


class ModelWriter(MLWriter):
    """Writes a `SparkDLModel`: its params, its store reference, and (local paths) a copy of its version."""

    def __init__(self, instance):
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        version = self.instance.getModelVersion()
        extra = {"modelStore": str(self.instance.getModelStore().root), "modelRef": str(version)}
        folder = local_path(path) if "://" in path else path
        if folder is not None:
            self.instance.save(os.path.join(folder, "model"))
            extra["modelCopy"] = f"model/{version.name}/{version.version}"
        params = {p.name: v for p, v in self.instance._paramMap.items()}
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession, extraMetadata=extra,
                                         paramMap=params)


class ModelReader(MLReader):
    """Reads a `SparkDLModel` written by `ModelWriter`: from its copy when there is one, else from its store."""

    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path: str):
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        folder = local_path(path) if "://" in path else path
        copy = Path(folder) / metadata["modelCopy"] if folder is not None and metadata.get("modelCopy") else None
        try:
            if copy is not None and copy.is_dir():
                model = self.cls.load(str(copy))
            else:
                model = self.cls.load(metadata["modelRef"], store=metadata["modelStore"])
        except ModelStoreError as exc:
            raise ModelStoreError(f"{path}: the saved SparkDLModel's model {metadata['modelRef']} cannot be "
                                  f"loaded: {exc}") from exc
        model._resetUid(metadata["uid"])
        for name, value in metadata["paramMap"].items():
            model._set(**{name: value})
        return model
