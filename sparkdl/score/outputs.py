"""What a scoring function returns, decided on the driver from the model's metadata, built on executors in Arrow.

Outputs (`output=`):

* ``prediction``     – regression: the value (double). Classification: the label class when the model records
                       label classes (string, long, double or boolean column), else the class index (int).
                       Binary models predict class 1 when the sigmoid output is >= 0.5.
* ``probabilities``  – classification only: array<float> of class probabilities (binary: [P(0), P(1)]).
* ``embedding``      – array<float>: the output of an embedding model, or for any other model the input of its
                       output layer (the penultimate representation).
* ``query_embedding``, ``item_embedding`` – two-tower models only (the zoo's ``two_tower``): array<float>, one
                       tower's embedding. Each reads only its tower's features: an items table needs no query
                       columns (``build_index`` and ``similar`` pick the tower themselves).
* ``struct``         – struct<label, probability>: the prediction and (classification) the probabilities.
* ``anomaly``        – anomaly detectors only: struct<score, is_anomaly, threshold, contributions>: the
                       reconstruction error (mean squared error over the prepared input), whether it reaches the
                       row's segment's threshold, that threshold, and `contributions`, one double per feature, its
                       share of the error (they sum to the score). The scoring function returns score and
                       contributions; `score_dataframe`, `score_table` and `score_stream` add the rest in Spark
                       (`sparkdl.score.thresholds.with_flags`). Output ``prediction`` of a detector is the score.
* ``attributions``   – struct<prediction, explained_class, output, baseline_output, delta, features>: the
                       prediction, which class was explained (null for regression), f(x) and f(baseline) of the
                       explained output, the completeness gap `delta` = Σ attributions − (output − baseline_output),
                       and `features`, the attributions: a struct with one field per feature: a double for a numeric or
                       categorical feature, array<float> (row-major in its shape) for a vector or sequence.
                       Integrated gradients, see `sparkdl.explain.integrated_gradients`; options in `Attribution`.

Rows that could not be prepared (see `PreprocessorModel.prepare_batch`) get a null output.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from sparkdl.data.spec import ANOMALY
from sparkdl.errors import ConfigError
from sparkdl.explain.integrated_gradients import Attribution
from sparkdl.model_metadata import ModelMetadata

REASON_COL = "_reason"  # why a row (or a forecaster's series) could not be scored; null when it was

OUTPUTS = ("prediction", "probabilities", "embedding", "struct", "attributions", "anomaly", "query_embedding",
           "item_embedding")
TOWER_OUTPUTS = ("query_embedding", "item_embedding")  # what a two-tower model scores, one tower each
DETECTOR_OUTPUTS = ("prediction", "anomaly")  # what an anomaly detector (task "anomaly") scores
ON_INVALID = ("null", "error")  # what a scoring UDF does with a row it cannot prepare
EMBEDDING_MODEL = "embedding"
TWO_TOWER_MODEL = "two_tower"


@dataclass(frozen=True)
class OutputPlan:
    """How to turn raw model outputs into the requested column. Picklable; built by `plan_output`."""

    kind: str
    task: str
    num_classes: int | None
    label_classes: tuple | None
    label_arrow: str  # "int32" (class index), "string", "int64", "double", "bool"
    attribution: Attribution | None = None  # output "attributions" only
    features: tuple[tuple[str, bool], ...] = ()  # "attributions", "anomaly": (feature name, is an array) in order
    inputs: tuple[str, ...] = ()  # the features this output reads (a tower's); empty: all of the spec's

    # ------------------------------------------------------------------ types
    def label_arrow_type(self) -> pa.DataType:
        return {"int32": pa.int32(), "string": pa.string(), "int64": pa.int64(), "double": pa.float64(),
                "bool": pa.bool_()}[self.label_arrow]

    def arrow_type(self) -> pa.DataType:
        if self.kind == "prediction":
            return self.label_arrow_type()
        if self.kind in ("probabilities", "embedding", *TOWER_OUTPUTS):
            return pa.list_(pa.float32())
        if self.kind == "anomaly":
            return pa.struct([("score", pa.float64()), ("contributions", self.attributions_type())])
        if self.kind == "attributions":
            return pa.struct([("prediction", self.label_arrow_type()), ("explained_class", pa.int32()),
                              ("output", pa.float64()), ("baseline_output", pa.float64()), ("delta", pa.float64()),
                              ("features", self.attributions_type())])
        return pa.struct([("label", self.label_arrow_type()), ("probability", pa.list_(pa.float32()))])

    def attributions_type(self) -> pa.DataType:
        return pa.struct([(name, pa.list_(pa.float32()) if array else pa.float64()) for name, array in self.features])

    def spark_type(self):
        """The Spark SQL type of the output column."""
        from pyspark.sql.pandas.types import from_arrow_type

        return from_arrow_type(self.arrow_type())

    def spark_ddl(self) -> str:
        return self.spark_type().simpleString()

    # ------------------------------------------------------------------ values
    def to_arrow(self, raw: np.ndarray | None, valid: np.ndarray, explained: "Explained | None" = None) -> pa.Array:
        """The output column for one batch. `raw` is the model output (n, k) float32 (None when no row is
        valid), a detector's score (n, 1); rows where `valid` is False are null. Output "attributions" also takes
        `explained`, the attributions of every row (zeros where not valid); output "anomaly" a detector's
        per-feature contributions {feature: (n,) float64}."""
        n = len(valid)
        if raw is None:
            return pa.nulls(n, self.arrow_type())
        if self.kind == "attributions":
            return self._attributions(raw, valid, explained)
        if self.kind == "anomaly":
            mask = ~np.asarray(valid, dtype=bool)
            null = pa.array(mask) if mask.any() else None
            contributions = pa.StructArray.from_arrays(
                [pa.array(explained[name], mask=mask if null is not None else None) for name, _ in self.features],
                fields=list(self.attributions_type()), mask=null)
            score = pa.array(np.asarray(raw, dtype=np.float64).reshape(n), mask=mask if null is not None else None)
            return pa.StructArray.from_arrays([score, contributions], fields=list(self.arrow_type()), mask=null)
        raw = np.asarray(raw, dtype=np.float32).reshape(n, -1)
        mask = ~np.asarray(valid, dtype=bool)
        if self.kind in ("embedding", *TOWER_OUTPUTS):
            return _list_array(raw, mask)
        if self.kind == "probabilities":
            return _list_array(self._probabilities(raw), mask)
        label = self._labels(raw, mask)
        if self.kind == "prediction":
            return label
        probs = (_list_array(self._probabilities(raw), mask) if self.task != "regression"
                 else pa.nulls(n, pa.list_(pa.float32())))
        return pa.StructArray.from_arrays([label, probs], names=["label", "probability"],
                                          mask=pa.array(mask) if mask.any() else None)

    def _attributions(self, raw: np.ndarray, valid: np.ndarray, explained: "Explained") -> pa.Array:
        raw = np.asarray(raw, dtype=np.float32).reshape(len(valid), -1)
        mask = ~np.asarray(valid, dtype=bool)
        null = mask if mask.any() else None
        per_feature = []
        for name, array in self.features:
            values = explained.features[name]
            per_feature.append(_list_array(values, mask) if array else pa.array(values, mask=null))
        classes = None if self.task == "regression" else pa.array(explained.index + (self.task == "binary"),
                                                                    type=pa.int32(), mask=null)
        fields = [self._labels(raw, mask), classes if classes is not None else pa.nulls(len(valid), pa.int32()),
                  pa.array(explained.output, mask=null), pa.array(explained.baseline_output, mask=null),
                  pa.array(explained.delta, mask=null),
                  pa.StructArray.from_arrays(per_feature, fields=list(self.attributions_type()),
                                             mask=pa.array(mask) if null is not None else None)]
        return pa.StructArray.from_arrays(fields, fields=list(self.arrow_type()),
                                          mask=pa.array(mask) if null is not None else None)

    def _probabilities(self, raw: np.ndarray) -> np.ndarray:
        if self.task == "binary":
            p = raw[:, 0]
            return np.column_stack([1.0 - p, p]).astype(np.float32)
        return raw

    def _labels(self, raw: np.ndarray, mask: np.ndarray) -> pa.Array:
        any_null = bool(mask.any())
        if self.task in ("regression", ANOMALY):
            return pa.array(raw[:, 0].astype(np.float64), mask=mask if any_null else None)
        index = (raw[:, 0] >= 0.5).astype(np.int32) if self.task == "binary" else raw.argmax(axis=1).astype(np.int32)
        indices = pa.array(index, mask=mask if any_null else None)
        if self.label_classes is None:
            return indices
        classes = pa.array(list(self.label_classes), type=self.label_arrow_type())
        return classes.take(indices)


def retrieval_outputs(metadata: ModelMetadata) -> tuple[str, str]:
    """(the output embedding queries, the output embedding items) for nearest-neighbour search: a two-tower
    model's two towers, any other model's "embedding"."""
    if metadata.model_name == TWO_TOWER_MODEL:
        return TOWER_OUTPUTS
    return "embedding", "embedding"


def scoring_spec(metadata: ModelMetadata, plan: OutputPlan):
    """The feature spec a scoring input must hold for `plan`: the model's, or only a tower's features."""
    if not plan.inputs:
        return metadata.spec
    return replace(metadata.spec, features=tuple(f for f in metadata.spec.features if f.name in plan.inputs))


def refuse_row_level_flags(plan: OutputPlan, where: str) -> None:
    """A column function, SQL function or MLflow model scores feature columns only: a detector's flags need its
    segment columns and thresholds applied in Spark. Raises ConfigError for output "anomaly" there."""
    if plan.kind == "anomaly":
        raise ConfigError(f"{where}: output 'anomaly' (score, flag, threshold) is set in Spark from the segment "
                          f"columns; use score_dataframe, score_table or score_stream for it, or output "
                          f"'prediction' for the score")


@dataclass(frozen=True)
class Explained:
    """The attributions of one batch (see `sparkdl.score.runtime.Scorer.score`): per row the explained output
    column, f(x) and f(baseline) of it, the completeness gap, and each feature's attributions."""

    index: np.ndarray
    output: np.ndarray
    baseline_output: np.ndarray
    delta: np.ndarray
    features: dict


def _list_array(values: np.ndarray, mask: np.ndarray) -> pa.Array:
    n, width = values.shape
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat, mask=pa.array(mask) if mask.any() else None)


def _label_kind(classes) -> str:
    if all(isinstance(c, bool) for c in classes):
        return "bool"
    if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return "int64"
    if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in classes):
        return "double"
    return "string"


def plan_output(output: str, metadata: ModelMetadata, attribution: Attribution | None = None) -> OutputPlan:
    """Check `output` against the model and return the plan (driver side, no TensorFlow).

    Args:
        output: one of `OUTPUTS`.
        metadata: the model version's metadata (`resolve_model`'s second value).
        attribution: for output "attributions", how they are computed (default: `Attribution()`).

    Raises:
        ConfigError: unknown output; probabilities of a regression model; anything but an embedding of an
            embedding model; `attribution` with another output, or a target class the model does not have;
            attributions of a model with a text feature; a forecaster (it scores series, not rows).
    """
    if metadata.forecast is not None:
        raise ConfigError(f"{metadata.where} is a forecaster: it forecasts series from a long table, not rows of "
                          f"features; use score_table or score_stream (horizon rows per entity), or "
                          f"sparkdl.score.forecast.forecast_frame for a DataFrame")
    if output not in OUTPUTS:
        raise ConfigError(f"output must be one of {OUTPUTS}, got {output!r}")
    if attribution is not None and output != "attributions":
        raise ConfigError(f"attribution options apply to output='attributions' only, not output={output!r}")
    if attribution is not None and not isinstance(attribution, Attribution):
        raise ConfigError(f"attribution must be a sparkdl.explain.Attribution, got {type(attribution).__name__}")
    where = metadata.where
    if (metadata.model_name == TWO_TOWER_MODEL) != (output in TOWER_OUTPUTS):
        raise ConfigError(f"{where} is a two-tower model: it scores {list(TOWER_OUTPUTS)}, not {output!r}"
                          if metadata.model_name == TWO_TOWER_MODEL else
                          f"{where} is not a two-tower model: it has no output {output!r}")
    if output in TOWER_OUTPUTS:
        query = set((metadata.raw.get("hparams") or {}).get("query_features") or ())
        tower = [n for n in metadata.spec.feature_names if (n in query) == (output == "query_embedding")]
        return OutputPlan(output, metadata.task, None, None, "int32", inputs=tuple(tower))
    if metadata.model_name == EMBEDDING_MODEL and output != "embedding":
        raise ConfigError(f"{where} is an embedding model: it has no {output!r}; use output='embedding'")
    task, num_classes = metadata.task, metadata.num_classes
    if not task:
        raise ConfigError(f"{where}: its metadata has no signature task and no labelled feature spec; cannot tell "
                          f"what the model predicts")
    if task == ANOMALY and output not in DETECTOR_OUTPUTS:
        raise ConfigError(f"{where} is an anomaly detector: it scores {list(DETECTOR_OUTPUTS)}, not {output!r}")
    if task != ANOMALY and output == "anomaly":
        raise ConfigError(f"{where} is not an anomaly detector (task {task!r}): it has no output 'anomaly'")
    if task == ANOMALY:
        features = tuple((f.name, False) for f in metadata.spec.features)
        return OutputPlan(output, task, None, None, "double", None, features if output == "anomaly" else ())
    if output == "probabilities" and task == "regression":
        raise ConfigError(f"{where} is a regression model: it has no probabilities; use output='prediction'")
    classes = metadata.label_classes if task != "regression" else None
    if classes is not None and num_classes is not None and len(classes) != int(num_classes):
        raise ConfigError(f"{where}: metadata lists {len(classes)} label classes but num_classes={num_classes}")
    if task == "regression":
        label_arrow = "double"
    elif classes is None:
        label_arrow = "int32"
    else:
        label_arrow = _label_kind(classes)
    if output != "attributions":
        return OutputPlan(output, task, num_classes, classes, label_arrow)
    attribution = attribution or Attribution()
    texts = [f.name for f in metadata.spec.features if f.kind == "text"]
    if texts:
        raise ConfigError(f"{where}: integrated gradients need inputs the model is differentiable in; text "
                          f"feature(s) {texts} enter as token ids through an embedding lookup, which is not")
    if attribution.target is not None and task == "regression":
        raise ConfigError(f"{where} is a regression model: it has no class to explain; leave target unset")
    if attribution.target is not None and num_classes is not None and attribution.target >= int(num_classes):
        raise ConfigError(f"{where}: attribution target {attribution.target} out of range: the model has "
                          f"{num_classes} classes")
    if task == "binary" and attribution.target == 0:
        raise ConfigError(f"{where} is binary: its output is P(class 1), so target=0 cannot be explained "
                          f"separately; leave target unset (the attributions of class 0 are the negatives)")
    features = tuple((f.name, f.kind in ("vector", "sequence")) for f in metadata.spec.features)
    return OutputPlan(output, task, num_classes, classes, label_arrow, attribution, features)
