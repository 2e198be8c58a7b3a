"""`SparkDLModel`: what `KerasEstimator.fit` returns — a Spark ML Transformer over a model-store version."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from pyspark.ml import Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import MLReadable, MLWritable

from sparkdl.data.spec import ModelSignature
from sparkdl.errors import ConfigError, ModelStoreError
from sparkdl.log import get_logger
from sparkdl.model_metadata import ModelMetadata
from sparkdl.registry import METADATA_FILE, ModelStore, ModelVersion
from sparkdl.score import resolve_model, transform_with_model
from sparkdl.score.forecast import forecast_frame
from sparkdl.score.udf import CLASSIFICATION_TASKS, spark_ml_columns
from sparkdl.train.ml_persistence import ModelReader, ModelWriter

log = get_logger("train")


class SparkDLModel(Model, MLReadable, MLWritable):
    """A trained model: a version in the model store, its metadata, and (loaded on demand) the Keras model.

    `transform(df)` adds the `outputCol` column using `sparkdl.score` (one model load per Python worker); a
    forecaster's `transform(df)` returns its forecasts of every entity of the long table `df` instead: `horizon` rows
    each (`sparkdl.score.forecast.forecast_frame`).

    Args:
        model: the Keras model, if already in memory (else loaded from the store on first `getModel()`).
        version: the `sparkdl.registry.ModelVersion`.
        metadata: the version's metadata dict (read from the store if None).
        store: the `ModelStore` holding the version (default: the one the version's path belongs to).
    """

    output = Param(Params._dummy(), "output", "what transform adds: prediction, probability, ... "
                                              "(see sparkdl.score.OUTPUTS)", typeConverter=TypeConverters.toString)
    outputCol = Param(Params._dummy(), "outputCol", "name of the column transform adds",
                      typeConverter=TypeConverters.toString)
    sparkMlColumns = Param(Params._dummy(), "sparkMlColumns",
                           "classifiers: transform adds Spark ML's columns, prediction as a double (the label "
                           "value; string labels stay strings), probability and rawPrediction as vectors, so "
                           "stock evaluators and tuners work; false: sparkdl's prediction column of the label's "
                           "own type only", typeConverter=TypeConverters.toBoolean)

    def __init__(self, model=None, version=None, metadata: dict | None = None, store=None):
        super().__init__()
        self._setDefault(output="prediction", outputCol="prediction", sparkMlColumns=True)
        if version is None:
            raise ConfigError("SparkDLModel needs the model-store version it stands for")
        if store is None:
            store = ModelStore(Path(version.path).parent.parent)
        self._keras = model
        self._version = version
        self._store = store
        self._metadata = metadata if metadata is not None else store.metadata(version)

    def __repr__(self) -> str:
        return f"SparkDLModel({self._version})"

    # ---------------------------------------------------------------------------------------------- accessors
    def getModel(self):
        """The Keras model (uncompiled; loaded from the store on first use)."""
        if self._keras is None:
            self._keras = self._store.load(self._version).model
        return self._keras

    def getModelVersion(self):
        """The `ModelVersion` (name, version, path); `str()` gives the reference `"name@version"`."""
        return self._version

    def getModelStore(self):
        return self._store

    def getMetadata(self) -> dict:
        return dict(self._metadata)

    def getHistory(self) -> dict[str, list]:
        """Keras-style history over all epochs of the run: {"epoch": [...], "loss": [...], "val_loss": [...], ...}."""
        return {k: list(v) for k, v in (self._metadata.get("history") or {}).items()}

    def getMetrics(self) -> dict:
        """The metrics of the last epoch (averaged over the ranks), validation ones included."""
        return dict(self._metadata.get("metrics") or {})

    def getPreprocessor(self):
        """The fitted `PreprocessorModel` (its `prepare_batch` prepares numpy input for `getModel()`)."""
        return ModelMetadata.from_dict(self._metadata).preprocessor()

    def getSignature(self):
        return ModelSignature.from_dict(self._metadata["signature"])

    def getOutput(self) -> str:
        return self.getOrDefault(self.output)

    def setOutput(self, value: str) -> "SparkDLModel":
        return self._set(output=value)

    def getOutputCol(self) -> str:
        return self.getOrDefault(self.outputCol)

    def setOutputCol(self, value: str) -> "SparkDLModel":
        return self._set(outputCol=value)

    def getSparkMlColumns(self) -> bool:
        return self.getOrDefault(self.sparkMlColumns)

    def setSparkMlColumns(self, value: bool) -> "SparkDLModel":
        return self._set(sparkMlColumns=value)

    # ---------------------------------------------------------------------------------------------- transform
    def _transform(self, dataset):
        forecast = ModelMetadata.from_dict(self._metadata).forecast
        if forecast is not None:
            ref, _ = resolve_model(self)
            return forecast_frame(dataset, ref, forecast, self.getOutputCol())
        if (self.getOrDefault(self.sparkMlColumns) and self.getOutput() == "prediction"
                and ModelMetadata.from_dict(self._metadata).task in CLASSIFICATION_TASKS):
            return spark_ml_columns(self, dataset)
        return transform_with_model(self, dataset)

    # ---------------------------------------------------------------------------------------------- persistence
    def write(self) -> ModelWriter:
        """Spark ML persistence (`PipelineModel.save`): params, store reference and a copy of the model version
        (see `sparkdl.train.ml_persistence`). `save`/`load` below keep their model-store meaning."""
        return ModelWriter(self)

    @classmethod
    def read(cls) -> ModelReader:
        return ModelReader(cls)

    def save(self, path: str | os.PathLike | None = None) -> str:
        """The model already lives in the store: without `path`, return its reference `"name@version"`. With
        `path` (another store root, e.g. for export), copy the version folder to `<path>/<name>/<version>` and
        return that folder; `SparkDLModel.load(folder)` or `ModelStore(path).load("name@version")` read it back.

        Raises:
            ConfigError: that version already exists under `path`.
        """
        if path is None:
            return str(self._version)
        target = Path(path) / self._version.name / str(self._version.version)
        if target.exists():
            raise ConfigError(f"SparkDLModel.save: {target} already exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
        shutil.copytree(self._version.path, tmp)
        os.rename(tmp, target)  # readers never see a half-copied version
        log.info("copied model %s to %s", self._version, target)
        return str(target)

    @classmethod
    def load(cls, ref, store=None) -> "SparkDLModel":
        """Load from the store (`"name"`, `"name@3"`, a ModelVersion), from a version folder path
        (`<root>/<name>/<version>`, e.g. a path `save(path)` wrote or a store version's path), or from a folder
        Spark ML persistence wrote (`write().save(path)`, a stage of a saved PipelineModel).

        Raises:
            ModelStoreError: missing or corrupt model/version.
        """
        folder = Path(ref) if isinstance(ref, (str, os.PathLike)) else None
        if folder is not None and (folder / "metadata").is_dir() and not (folder / METADATA_FILE).is_file():
            return cls.read().load(str(ref))  # a stage Spark ML persistence wrote (PipelineModel.load calls this)
        if folder is not None and folder.is_dir() and (folder / METADATA_FILE).is_file():
            # A version folder: its parent is the name folder, its grandparent a store root.
            name, version = folder.parent.name, folder.name
            if not version.isdigit():
                raise ModelStoreError(f"{folder}: not a model-store version folder (<root>/<name>/<version>)")
            store = ModelStore(folder.parent.parent)
            ref = ModelVersion(name, int(version), folder.resolve())
        if store is None or not isinstance(store, ModelStore):
            store = ModelStore(store)
        loaded = store.load(ref)
        return cls(model=loaded.model, version=loaded.ref, metadata=loaded.metadata, store=store)
