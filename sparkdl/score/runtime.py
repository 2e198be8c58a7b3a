"""Executor side of scoring: one model load per Python worker, TensorFlow sized to the task, Arrow in and out.

`get_scorer(ref)` returns the process's `Scorer` for a `ModelRef`, loading the model from the store the first time
only: scorers live in a module-level cache keyed by (store root, name, version), so every batch and every task a
reused Python worker runs shares one model. Nothing heavy travels in a closure. `load_count()` tells how many
models this process loaded (tests read it from inside a task).

Before TensorFlow is first imported in a worker, `sparkdl.tf_runtime.configure_tensorflow()` (the set-up training
ranks use too) pins it to the task: intra-op threads = `spark.task.cpus` (so two tasks on two cores do not each start
a pool as wide as the machine), and, when the task was given GPUs, `CUDA_VISIBLE_DEVICES` = those addresses with
memory growth on. A reused worker keeps the threads and devices of its first scoring task.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from sparkdl import stack
from sparkdl.data.spec import ANOMALY
from sparkdl.errors import ValidationError
from sparkdl.explain.integrated_gradients import AttributionKernel, baseline_row, explained_index, feature_attributions
from sparkdl.log import get_logger
from sparkdl.model_metadata import ModelMetadata
from sparkdl.registry import ModelStore, ModelVersion
from sparkdl.score.model_ref import ModelRef
from sparkdl.score.outputs import EMBEDDING_MODEL, TOWER_OUTPUTS, Explained, OutputPlan
from sparkdl.tf_runtime import configure_tensorflow

log = get_logger("score.runtime")

CHUNK_ROWS = 100_000  # rows per scoring call on a long Arrow batch (bounds a call's memory)
_LOCK = threading.RLock()
_MODELS: dict[tuple, "LoadedScoringModel"] = {}
_LOADS: list[tuple] = []


def load_count(ref: ModelRef | None = None) -> int:
    """How many times this process loaded a model from the store (all models, or only `ref`)."""
    with _LOCK:
        return len(_LOADS) if ref is None else sum(1 for k in _LOADS if k == ref.key)


def loaded_models() -> list[tuple[str, str, int]]:
    """The (store root, name, version) keys of the models cached in this process."""
    with _LOCK:
        return list(_MODELS)


def release(ref: ModelRef) -> None:
    """Drop this process's cached model and scorers of `ref` (a server that moved to another version frees the
    old one's memory once its last request is answered)."""
    with _LOCK:
        _MODELS.pop(ref.key, None)
        for key in [k for k in _SCORERS if k[0] == ref.key]:
            del _SCORERS[key]


def clear_cache() -> None:
    """Drop this process's cached models (the load counter is kept)."""
    with _LOCK:
        _MODELS.clear()
        _SCORERS.clear()


class LoadedScoringModel:
    """A model version loaded once per process: the Keras model, its preprocessor and compiled predict fns."""

    def __init__(self, ref: ModelRef):
        configure_tensorflow()
        import tensorflow as tf

        store = ModelStore(ref.root)
        loaded = store.load(ModelVersion(ref.name, ref.version, store.root / ref.name / str(ref.version)))
        self.ref = ref
        self.metadata = ModelMetadata.from_dict(loaded.metadata)
        self.model = loaded.model
        forecast = self.metadata.forecast  # a forecaster reads windows: it has no row preprocessing
        self.preprocessor = self.metadata.preprocessor() if forecast is None else None
        self.input_shape = tuple(int(d) for d in (forecast or self.preprocessor).input_shape)
        self._tf = tf
        self._fns: dict[str, object] = {}
        self._kernels: dict[tuple, object] = {}

    def attribution_kernel(self, steps: int, baseline: str):
        """The model's traced integrated-gradients kernel for (steps, baseline), built once per process."""
        key = (steps, baseline)
        kernel = self._kernels.get(key)
        if kernel is None:
            kernel = AttributionKernel(self.model, self.input_shape, baseline_row(self.preprocessor, baseline), steps)
            self._kernels[key] = kernel
        return kernel

    def predict_fn(self, kind: str):
        """A traced `model(x, training=False)` for `kind` ("embedding" on a non-embedding model uses the input of
        the output layer); one trace for any batch size."""
        key = "embedding" if (kind == "embedding" and self.metadata.model_name != EMBEDDING_MODEL) else "out"
        key = kind if kind in TOWER_OUTPUTS else key
        fn = self._fns.get(key)
        if fn is None:
            tf = self._tf
            model = self.model
            if key != "out":  # the penultimate layer, or one tower's embedding layer of a two-tower model
                keras = stack.keras_module(stack.flavour_of(self.model) or "tf_keras")
                layer = self.model.get_layer(key).output if key in TOWER_OUTPUTS else self._penultimate()
                model = keras.Model(self.model.inputs, layer, name=f"{self.model.name}_{key}")
            spec = tf.TensorSpec((None,) + self.input_shape, tf.float32)
            fn = tf.function(lambda x, m=model: m(x, training=False), input_signature=[spec])
            self._fns[key] = fn
        return fn

    def _penultimate(self):
        model = self.model
        try:
            layer = model.get_layer("output")
        except ValueError:
            layer = model.layers[-1]
        return layer.input


def get_model(ref: ModelRef) -> LoadedScoringModel:
    """The process-wide loaded model for `ref` (loaded from the store on first use)."""
    with _LOCK:
        model = _MODELS.get(ref.key)
        if model is None:
            model = LoadedScoringModel(ref)
            _MODELS[ref.key] = model
            _LOADS.append(ref.key)
            log.info("loaded model %s from %s in process %d (load #%d)", ref, ref.root, os.getpid(), len(_LOADS))
        return model


class Scorer:
    """Scores Arrow batches with one model and one output plan: prepare (the training code) → predict → Arrow."""

    def __init__(self, ref: ModelRef, plan: OutputPlan, batch_size: int | None = None):
        self.ref = ref
        self.plan = plan
        self.batch_size = batch_size
        self.loaded = get_model(ref)
        self.fn = self.loaded.predict_fn(plan.kind)
        self.kernel = (self.loaded.attribution_kernel(plan.attribution.steps, plan.attribution.baseline)
                       if plan.attribution is not None else None)

    @property
    def feature_names(self) -> list[str]:
        return self.loaded.preprocessor.spec.feature_names

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Raw model outputs (n, k) float32 for prepared features, in chunks of `batch_size` rows."""
        n = features.shape[0]
        step = self.batch_size or n
        outs = []
        for start in range(0, n, step):
            out = self.fn(features[start:start + step])
            outs.append(np.asarray(out).reshape(min(step, n - start), -1))
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def score(self, batch: pa.RecordBatch | pa.Table) -> tuple[pa.Array, np.ndarray, list]:
        """(output column, valid mask, reasons) for one batch holding the model's feature columns."""
        prepared = self.loaded.preprocessor.prepare_batch(batch, with_label=False, features=self.plan.inputs or None)
        valid = prepared.valid
        if valid.all():
            raw = self.predict(prepared.features) if len(valid) else np.zeros((0, 1), np.float32)
        elif valid.any():
            good = self.predict(prepared.features[valid])
            raw = np.zeros((len(valid), good.shape[1]), dtype=np.float32)
            raw[valid] = good
        else:
            raw = None
        if self.plan.task == ANOMALY and raw is not None:
            raw, explained = self.reconstruction_errors(prepared.features, raw)
        else:
            explained = self.explain(prepared.features, raw, valid) if self.kernel is not None and raw is not None \
                else None
        return self.plan.to_arrow(raw, valid, explained), valid, prepared.reasons

    def reconstruction_errors(self, features: np.ndarray, reconstruction: np.ndarray
                              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """A detector's anomaly score per row, the mean squared error of its reconstruction over the prepared
        input, and each feature's share of it {feature: (n,) float64} (its slots' squared errors / the width: the
        shares sum to the score). Rows that were not prepared hold zeros and are masked by the caller."""
        n = features.shape[0]
        squared = np.square(reconstruction.reshape(n, -1).astype(np.float64) - features.reshape(n, -1))
        width = squared.shape[1]
        shares = {slot.name: squared[:, slot.start:slot.start + slot.width].sum(axis=1) / width
                  for slot in self.loaded.preprocessor.slots}
        return squared.mean(axis=1), shares

    def explain(self, features: np.ndarray, raw: np.ndarray, valid: np.ndarray) -> Explained:
        """Integrated gradients of the valid rows (zeros elsewhere), per feature, with the completeness gap."""
        n = len(valid)
        raw = raw.reshape(n, -1)
        index = explained_index(raw, self.plan.task, self.plan.attribution.target)
        attributions = np.zeros(features.shape, dtype=np.float32)
        attributions[valid] = self.kernel.attribute(features[valid], index[valid])
        output = raw[np.arange(n), index].astype(np.float64)
        baseline_output = self.kernel.baseline_output[index]
        total = attributions.reshape(n, -1).sum(axis=1, dtype=np.float64)
        return Explained(index, output, baseline_output, total - (output - baseline_output),
                         feature_attributions(self.loaded.preprocessor, attributions))


_SCORERS: dict[tuple, Scorer] = {}


def get_scorer(ref: ModelRef, plan: OutputPlan, batch_size: int | None = None) -> Scorer:
    """The process-wide `Scorer` for (ref, output plan, batch size); the model itself is shared across plans."""
    key = (ref.key, plan, batch_size)
    with _LOCK:
        scorer = _SCORERS.get(key)
        if scorer is None:
            scorer = Scorer(ref, plan, batch_size)
            _SCORERS[key] = scorer
        return scorer


def iter_chunks(batch: pa.RecordBatch, size: int | None) -> Iterator[pa.RecordBatch]:
    """`batch` in slices of at most `size` rows (the whole batch when size is None)."""
    if not size or batch.num_rows <= size:
        yield batch
        return
    for start in range(0, batch.num_rows, size):
        yield batch.slice(start, size)


def scored_chunks(batches, ref: ModelRef, plan: OutputPlan, batch_size: int | None = None,
                  inputs: list[tuple[str, str]] | None = None):
    """The one scoring loop of the Arrow paths (`score_dataframe`, `score_table`, `score_stream`).

    Each batch is cut into chunks of at most `CHUNK_ROWS` rows and scored by this process's `Scorer` (made on the
    first chunk, so a task without rows loads no model). `inputs` pairs each model feature name with the chunk
    column holding it (default: the columns named as the features).

    Yields:
        (chunk, output column, valid mask, reasons) per chunk.
    """
    scorer = None
    for big in batches:
        for chunk in iter_chunks(big, CHUNK_ROWS):
            if scorer is None:
                scorer = get_scorer(ref, plan, batch_size)
            features = chunk if inputs is None else pa.RecordBatch.from_arrays(
                [chunk.column(column) for _, column in inputs], names=[name for name, _ in inputs])
            out, valid, reasons = scorer.score(features)
            yield chunk, out, valid, reasons


def raise_if_invalid(where: str, valid: np.ndarray, reasons: list) -> None:
    """`on_invalid="error"`: fail the task when a row of the batch cannot be prepared, with the first reasons."""
    if not valid.all():
        first = [r for r in reasons if r is not None][:3]
        raise ValidationError(f"{where}: {int((~valid).sum())} row(s) of a batch cannot be scored, e.g. {first}")
