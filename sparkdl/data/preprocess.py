"""Preprocessing fitted in Spark, applied by ONE numpy/pyarrow function at training and at scoring time.

`Preprocessor(spec).fit(df)` computes every statistic in one Spark aggregation (counts, means, population
standard deviations, min/max, `percentile_approx` medians, per-element statistics of vector features through
`pyspark.ml.stat.Summarizer`, the sorted classes of string labels, the largest integer label). Categorical
vocabularies (the `max_categories` most frequent values per column, ties broken by value) need a second, small
job: one `groupBy(feature, value).count()` over all categorical columns together, ranked by a window.

Text features are tokenized by `sparkdl.data.text` (its vocabulary job runs in the same fit) into
`max_length` token ids. Image features are decoded by `sparkdl.data.images` (`image_input`); their per-channel
statistics (``scale: standard``) come from one `mapInArrow` pass that decodes every image. For training,
`transform_encoded` keeps the encoded bytes (the cache stays the size of the images, and the training reader
decodes them with the same `ImageInput`).

`PreprocessorModel.prepare_batch` is the math, written once in numpy/pyarrow; `transform` runs exactly that code
inside Spark with `mapInArrow`, and a scoring UDF calls it on its Arrow batches: no train/serve skew. Order of
operations per feature: imputation (nulls and NaN; mean/median/constant) → scaling (standard: (x-mean)/std with
population std, min-max: (x-min)/(max-min); a zero spread divides by 1) → categorical index (position in the
vocabulary; values outside it go to one extra out-of-vocabulary bucket, the last one) → one-hot → concatenation
in spec order.

A row that cannot be prepared is never silently dropped: `prepare_batch` marks it invalid with a reason
(null without imputation, NaN, infinity, wrong array length, unknown label class, label out of range) and
`transform_with_report` returns those rows with a `reason` column.

Statistics of vector features are per element and come from complete rows only (rows with a missing element do
not contribute). Vector features accept ``impute`` = ``constant`` or ``mean`` (per element), not ``median``.
"""
from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sparkdl.data.arrow_utils import (
    as_array,
    list_to_matrix,
    matrix_to_list_array,
    numeric_to_numpy,
    to_table,
)
from sparkdl.data.hashing import hash_buckets
from sparkdl.data.images import ImageInput, channel_moments, encoded_bytes
from sparkdl.data.spec import ANOMALY, Feature, FeatureSpec, Label, ModelSignature
from sparkdl.data.text import TOKEN_ID_OFFSET, fit_vocabularies, hashed_token_ids, token_ids, tokenize
from sparkdl.data.validation import array_column, check_schema, is_vector_udt, validation_plan
from sparkdl.errors import ConfigError, Problem, ValidationError
from sparkdl.log import get_logger
from sparkdl.session_kind import accumulator

log = get_logger("data.preprocess")

FORMAT_VERSION = 1
VALID_COLUMN = "_sparkdl_valid"
REASON_COLUMN = "_sparkdl_reason"


@dataclass(frozen=True)
class FeatureSlots:
    """Where one feature lives in the flat prepared row: `width` values from `start` (a categorical's one-hot
    slots, out-of-vocabulary last; a vector's or sequence's values in row-major order of `shape`)."""

    name: str
    kind: str
    start: int
    width: int
    shape: tuple[int, ...]


@dataclass
class PreparedBatch:
    """The output of `PreprocessorModel.prepare_batch`.

    Attributes:
        features: float32 (n, *input_shape), C-contiguous; invalid rows are zeros.
        labels: int64 class indices, float32 regression targets, or None (`with_label=False`).
        valid: bool mask (n,).
        reasons: why each invalid row could not be prepared (None for valid rows).
    """

    features: np.ndarray
    labels: np.ndarray | None
    valid: np.ndarray
    reasons: list

    @property
    def num_invalid(self) -> int:
        return int((~self.valid).sum())


class Preprocessor:
    """Fits a `PreprocessorModel` for a `FeatureSpec` on a Spark DataFrame.

    Args:
        spec: the feature spec (imputation and scaling come from its features).
        max_categories: vocabulary cap per categorical feature (most frequent values); others go to the
            out-of-vocabulary bucket.

    Raises:
        ConfigError: a setting the preprocessor cannot honour (median imputation of a vector feature).
    """

    def __init__(self, spec: FeatureSpec, max_categories: int = 1000):
        if max_categories < 1:
            raise ConfigError(f"max_categories must be >= 1, got {max_categories}")
        for f in spec.features:
            if f.kind in ("vector", "sequence") and f.impute == "median":
                raise ConfigError(f"feature {f.name!r}: median imputation is supported for numeric features only; "
                                  f"use impute='mean' or 'constant' for a {f.kind} feature")
        self.spec = spec
        self.max_categories = int(max_categories)

    def fit(self, df, validate: bool = False, rows=None) -> "PreprocessorModel":
        """Compute the statistics in Spark: one aggregation (+ one vocabulary job when there are categoricals or
        text, + one channel-statistics job for standardized images).

        Args:
            df: the training DataFrame (or all the data, with `rows` saying which rows are for training).
            validate: also check every row of `df` (`sparkdl.data.validation.validate`), in the same aggregation.
            rows: a boolean Column: the statistics come from the rows where it is true (e.g. not validation rows,
                `sparkdl.data.dataset.validation_rows`); None = every row.

        Raises:
            ValidationError: missing columns or wrong types (always checked, from the schema), bad data when
                `validate`, or a label with more string classes than `num_classes`.
        """
        spec = self.spec
        plan = validation_plan(spec, df) if validate else None
        if plan is not None and plan.schema_problems:
            plan.check(df.agg(*plan.aggs).first())  # raises, with the value problems of the other columns too
        check_schema(spec, df.schema, "cannot fit the preprocessor")
        train = df.where(rows) if rows is not None else df
        flags, aggs = _statistics_aggs(spec, df, rows)
        source = df.select("*", *flags) if flags else df  # per-row flags computed once, not once per aggregate
        row = source.agg(*(plan.aggs if plan is not None else ()), *aggs).first()
        if plan is not None:  # validation and statistics: one pass
            plan.check(row)
        stats: dict = {"num_rows": int(row["_rows"]), "features": _feature_stats(spec, row)}
        if stats["num_rows"] == 0:
            raise ValidationError("cannot fit the preprocessor on an empty DataFrame",
                                  [Problem("*", "no rows", expected="at least one row", found="0 rows", count=0)])
        stats["features"].update(self._vocabulary_stats(train))
        image = spec.image_feature
        if image is not None and image.scale == "standard":
            stats["features"][image.name] = _channel_stats(train, image)
        stats["label"] = _label_stats(spec.label, row) if spec.label is not None else None
        model = PreprocessorModel(spec, stats)
        log.info("fitted preprocessing on %d rows: input_shape=%s, fingerprint %s", stats["num_rows"],
                 model.signature.input_shape if spec.label else model.input_shape, model.fingerprint)
        return model

    def _vocabulary_stats(self, train) -> dict:
        """The vocabularies of the categorical features (one job) and of the text features (one job)."""
        out = {}
        cats = [f for f in self.spec.features if f.kind == "categorical" and not f.pii]
        out.update({f.name: {"hash_buckets": f.hash_buckets, "salt": secrets.token_hex(16)}  # no raw value kept
                    for f in self.spec.features if f.kind in ("categorical", "text") and f.pii})
        if cats:
            vocab = _vocabularies(train, cats, self.max_categories)
            out.update({f.name: {"vocabulary": vocab.get(f.name, [])} for f in cats})
        texts = [f for f in self.spec.features if f.kind == "text" and not f.pii]
        if texts:
            for name, tokens in fit_vocabularies(train, texts).items():
                if not tokens:
                    raise ValidationError(f"feature {name!r}: no tokens in any row to fit a vocabulary from",
                                          [Problem(name, "no tokens", "text with words or numbers",
                                                   "only empty or punctuation-only texts", count=0)])
                out[name] = {"vocabulary": tokens}
        return out


# Vectors (and one-hot encodings) up to this length are handled element by element in Spark SQL: one plain aggregate
# per element in `Preprocessor.fit`'s pass (instead of `Summarizer`'s vector UDT per row), one expression per element
# when the cache is prepared (instead of a lambda, which Spark interprets per element: 1.75x a plain copy against
# 1.2x, 2M rows x 32 floats). Longer ones (images, embeddings) keep the Summarizer and the lambda.
ELEMENTWISE_MAX = 128


def _statistics_aggs(spec: FeatureSpec, df, rows) -> tuple[list, list]:
    """(flags, aggregates) of `Preprocessor.fit`'s one pass over the rows where `rows` holds (all when None): the
    per-row columns the aggregates read (a vector's "complete row" flag), and the aggregate columns: `_rows`, per
    numeric feature count/mean/std/min/max (+ median), per scaled or mean-imputed vector the same per element (a
    `Summarizer` beyond `ELEMENTWISE_MAX` values), and the label's classes (strings) or largest index."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.ml.stat import Summarizer
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    def kept(condition):
        return condition & rows if rows is not None else condition

    flags = []
    aggs = [(F.count_if(rows) if rows is not None else F.count(F.lit(1))).alias("_rows")]
    for i, f in enumerate(spec.features):
        if f.kind == "numeric":
            x = F.col(f.name).cast("double")
            finite = F.when(kept(~F.isnan(x) & (F.abs(x) != float("inf"))), x)
            aggs += [F.count(finite).alias(f"n{i}"), F.avg(finite).alias(f"mean{i}"),
                     F.stddev_pop(finite).alias(f"std{i}"), F.min(finite).alias(f"min{i}"),
                     F.max(finite).alias(f"max{i}")]
            if f.impute == "median":
                aggs.append(F.percentile_approx(finite, 0.5, 10000).alias(f"median{i}"))
        elif f.kind in ("vector", "sequence") and (f.scale or f.impute == "mean"):
            arr = array_column(df, f.name)
            good = kept(F.coalesce((F.size(arr) == f.size) & F.forall(
                arr, lambda e: e.isNotNull() & ~F.isnan(e) & (F.abs(e) != float("inf"))), F.lit(False)))
            if f.size <= ELEMENTWISE_MAX:  # plain aggregates per element: no vector UDT per row
                flags.append(good.alias(f"_sparkdl_complete{i}"))
                good = F.col(f"_sparkdl_complete{i}")
                xs = [F.when(good, arr[j].cast("double")) for j in range(f.size)]
                aggs += [F.count_if(good).alias(f"vn{i}")] + [
                    F.array(*[agg(x) for x in xs]).alias(f"v{name}{i}")
                    for name, agg in (("mean", F.avg), ("std", F.stddev_pop), ("min", F.min), ("max", F.max))]
                continue
            vec = array_to_vector(F.when(good, arr.cast("array<double>"))
                                  .otherwise(F.array_repeat(F.lit(0.0), f.size)))
            aggs.append(Summarizer.metrics("mean", "variance", "min", "max", "count")
                        .summary(vec, F.when(good, 1.0).otherwise(0.0)).alias(f"vec{i}"))
    label = spec.label
    if label is not None and label.task != "regression":
        y = F.when(rows, F.col(label.name)) if rows is not None else F.col(label.name)
        if isinstance(df.schema[label.name].dataType, StringType):
            aggs.append(F.array_sort(F.collect_set(y)).alias("_classes"))
        else:
            aggs.append(F.max(y.cast("double")).alias("_label_max"))
    return flags, aggs


def _feature_stats(spec: FeatureSpec, row) -> dict:
    """Per numeric or vector feature, its statistics from the aggregated `row` of `_statistics_aggs`.

    Raises ValidationError: a scaled or imputed feature with no finite value (no complete row for a vector)."""
    out = {}
    for i, f in enumerate(spec.features):
        s: dict = {}
        if f.kind == "numeric":
            n = int(row[f"n{i}"])
            s = {"count": n, "mean": _num(row[f"mean{i}"]), "std": _num(row[f"std{i}"]),
                 "min": _num(row[f"min{i}"]), "max": _num(row[f"max{i}"])}
            if f.impute == "median":
                s["median"] = _num(row[f"median{i}"])
            if n == 0 and (f.scale or f.impute in ("mean", "median")):
                raise ValidationError(f"feature {f.name!r}: no finite values to compute statistics from",
                                      [Problem(f.name, "no finite values", "at least one finite value", "none",
                                               count=0)])
        elif f"vn{i}" in row.asDict():
            n = int(row[f"vn{i}"] or 0)
            if n == 0:
                raise ValidationError(f"feature {f.name!r}: no complete rows to compute statistics from",
                                      [Problem(f.name, "no complete rows", f"rows of {f.size} finite values",
                                               "none", count=0)])
            s = {"count": n, **{k: [float(v) for v in row[f"v{k}{i}"]] for k in ("mean", "std", "min", "max")}}
        elif f"vec{i}" in row.asDict():
            v = row[f"vec{i}"]
            n = int(v["count"]) if v is not None else 0
            if n == 0:
                raise ValidationError(f"feature {f.name!r}: no complete rows to compute statistics from",
                                      [Problem(f.name, "no complete rows", f"rows of {f.size} finite values",
                                               "none", count=0)])
            var = np.asarray(v["variance"].toArray()) * ((n - 1) / n if n > 1 else 0.0)
            s = {"count": n, "mean": v["mean"].toArray().tolist(), "std": np.sqrt(var).tolist(),
                 "min": v["min"].toArray().tolist(), "max": v["max"].toArray().tolist()}
        out[f.name] = s
    return out


def _label_stats(label: Label, row) -> dict:
    """The label's classes (strings, sorted) and class count, from the aggregated `row`.

    Raises ValidationError: more string classes than `num_classes`."""
    classes = num_classes = None
    if label.task != "regression":
        if "_classes" in row.asDict():
            classes = [str(c) for c in (row["_classes"] or [])]
            if label.num_classes and len(classes) > label.num_classes:
                raise ValidationError(
                    f"label {label.name!r}: {len(classes)} distinct classes but num_classes={label.num_classes}",
                    [Problem(label.name, "too many classes", f"at most {label.num_classes}",
                             f"{len(classes)}: {classes[:10]}", len(classes), classes[:3])])
            num_classes = label.num_classes or max(len(classes), 2)
        else:
            top = row["_label_max"]
            num_classes = label.num_classes or max(2, int(top) + 1 if top is not None and math.isfinite(top) else 2)
    return {"classes": classes, "num_classes": num_classes}


def _vocabularies(df, cats: list[Feature], cap: int) -> dict[str, list[str]]:
    """The `cap` most frequent values of each categorical column, in one small Spark job."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    pairs = F.explode(F.array(*[F.struct(F.lit(f.name).alias("f"), F.col(f.name).cast("string").alias("v"))
                                for f in cats])).alias("p")
    counts = (df.select(pairs).select("p.f", "p.v").where(F.col("v").isNotNull())
              .groupBy("f", "v").count())
    ranked = counts.withColumn("r", F.row_number().over(
        Window.partitionBy("f").orderBy(F.col("count").desc(), F.col("v").asc()))).where(F.col("r") <= cap)
    out: dict[str, list[tuple[int, str]]] = {}
    for r in ranked.collect():
        out.setdefault(r["f"], []).append((r["r"], r["v"]))
    return {name: [v for _, v in sorted(items)] for name, items in out.items()}


def _channel_stats(df, f: Feature) -> dict:
    """Per-channel mean and population std of the decoded pixels (0..255) of image feature `f`, in one pass."""
    from pyspark.sql.types import ArrayType, DoubleType, LongType, StructField, StructType

    shape, resize, name = tuple(f.shape), f.resize, f.name
    schema = StructType([StructField("n", LongType()), StructField("s", ArrayType(DoubleType())),
                         StructField("q", ArrayType(DoubleType()))])

    def moments(batches):
        for b in batches:
            n, s, q = channel_moments(b.column(0), shape, resize)
            yield pa.RecordBatch.from_arrays([pa.array([n], pa.int64()), pa.array([s.tolist()]),
                                              pa.array([q.tolist()])], names=["n", "s", "q"])

    parts = df.select(name).mapInArrow(moments, schema).collect()
    n = sum(r["n"] for r in parts)
    if n == 0:
        raise ValidationError(f"feature {name!r}: no decodable image to compute channel statistics from",
                              [Problem(name, "no decodable images", "PNG/JPEG/... images", "none", count=0)])
    total = np.sum([r["s"] for r in parts if r["n"]], axis=0) / (n * shape[0] * shape[1])
    square = np.sum([r["q"] for r in parts if r["n"]], axis=0) / (n * shape[0] * shape[1])
    std = np.sqrt(np.maximum(square - np.square(total), 0.0))
    return {"count": n, "channel_mean": total.tolist(), "channel_std": std.tolist()}


def _num(value) -> float | None:
    return None if value is None else float(value)


def _float_literal(value):
    """A literal float Spark column of a float32 value (exactly that float)."""
    from pyspark.sql import functions as F

    return F.lit(float(np.float32(value))).cast("float")


def _float_array(values):
    """A literal array<float> Spark column of float32 values (exactly those floats)."""
    from pyspark.sql import functions as F

    return F.array(*[_float_literal(v) for v in np.asarray(values, dtype=np.float32)])


def _category_key(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class PreprocessorModel:
    """Fitted preprocessing: statistics, label classes and the one `prepare_batch` function.

    Attributes:
        spec: the feature spec.
        stats: the fitted statistics (JSON-serializable dict).
        label_classes: sorted string classes of the label, or None (integer labels are kept as they are).
        signature: `ModelSignature(input_shape, task, num_classes)` for the model builder.
    """

    def __init__(self, spec: FeatureSpec, stats: dict):
        self.spec = spec
        self.stats = stats
        label_stats = stats.get("label") or {}
        self.label_classes: list[str] | None = label_stats.get("classes")
        self.num_classes: int | None = label_stats.get("num_classes")
        self._layout = self._build_layout()
        self._value_sets: dict[str, pa.Array] = {}

    # ----- shapes -----
    def _build_layout(self) -> list[tuple[Feature, int, int]]:
        layout, start = [], 0
        for f in self.spec.features:
            width = f.size if f.kind != "categorical" else self._categories(f.name) + 1
            layout.append((f, start, width))
            start += width
        self._width = start
        return layout

    def _vocab(self, name: str) -> list[str]:
        return self.stats["features"].get(name, {}).get("vocabulary", [])

    def _categories(self, name: str) -> int:
        """A categorical's slots before the out-of-vocabulary one (a text's token ids from TOKEN_ID_OFFSET on): its
        vocabulary, or a pii feature's buckets."""
        hashed = self.stats["features"].get(name, {}).get("hash_buckets")
        return int(hashed) if hashed is not None else len(self._vocab(name))

    def _hashed(self, name: str) -> tuple[int, str] | None:
        """(buckets, salt) of a pii categorical or text feature, None for a vocabulary one."""
        entry = self.stats["features"].get(name, {})
        return (int(entry["hash_buckets"]), str(entry["salt"])) if entry.get("hash_buckets") is not None else None

    def _value_set(self, name: str) -> pa.Array:
        """A feature's vocabulary as a pyarrow array, built once per model (not once per batch)."""
        if name not in self._value_sets:
            self._value_sets[name] = pa.array(self._vocab(name), type=pa.string())
        return self._value_sets[name]

    @property
    def image_input(self) -> ImageInput | None:
        """How the image feature is decoded and scaled (None without one); the training reader uses it too."""
        f = self.spec.image_feature
        if f is None:
            return None
        s = self.stats["features"].get(f.name, {})
        mean, std = s.get("channel_mean"), s.get("channel_std")
        return ImageInput(f.name, tuple(f.shape), f.resize, f.scale, tuple(mean) if mean else None,
                          tuple(std) if std else None)

    @property
    def slots(self) -> list[FeatureSlots]:
        """Each feature's place in the flat prepared row, in spec order."""
        return [FeatureSlots(f.name, f.kind, start, width, tuple(f.shape)) for f, start, width in self._layout]

    def prepared_means(self) -> np.ndarray:
        """The training means as a prepared row (float32, `input_shape`): each numeric feature's and each fitted
        vector/sequence element's mean, imputed and scaled as `prepare_batch` would; zeros where no mean was
        fitted (categoricals — no one-hot slot set — and vectors without scaling or mean imputation)."""
        row = np.zeros(self._width, dtype=np.float32)
        for f, start, width in self._layout:
            s = self.stats["features"].get(f.name, {})
            if f.kind in ("categorical", "image") or s.get("mean") is None:
                continue  # an image's reference is the zero (black, or mean with `standard`) image
            mean = np.asarray(s["mean"], dtype=np.float64).reshape(-1)
            if f.scale == "standard":
                mean = np.zeros_like(mean)  # (mean - mean) / std
            elif f.scale == "minmax":
                lo = np.asarray(s["min"], dtype=np.float64).reshape(-1)
                spread = np.asarray(s["max"], dtype=np.float64).reshape(-1) - lo
                mean = (mean - lo) / np.where(spread > 0, spread, 1.0)
            row[start:start + width] = mean
        return row.reshape(self.input_shape)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One vector/sequence feature alone keeps its shape; anything else is concatenated to (D,)."""
        feats = self.spec.features
        if len(feats) == 1 and feats[0].kind in ("vector", "sequence", "image"):
            return tuple(feats[0].shape)
        return (self._width,)

    @property
    def signature(self) -> ModelSignature:
        """What the model builder gets. A spec without a label is an unsupervised detector's: task "anomaly"."""
        texts = [self._categories(f.name) + TOKEN_ID_OFFSET for f in self.spec.features if f.kind == "text"]
        task = self.spec.label.task if self.spec.label is not None else ANOMALY
        return ModelSignature(self.input_shape, task, self.num_classes if task != ANOMALY else None,
                              max(texts) if texts else None,
                              layout=tuple((s.name, s.start, s.width) for s in self.slots))

    @property
    def feature_width(self) -> int:
        """prod(input_shape): the length of the flat `features` array."""
        return self._width

    # ----- serialization -----
    def to_dict(self) -> dict:
        return {"format": FORMAT_VERSION, "spec": self.spec.to_dict(), "stats": self.stats}

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessorModel":
        """Rebuild from `to_dict()`. Raises ConfigError for an unknown format."""
        if not isinstance(data, dict) or "spec" not in data or "stats" not in data:
            raise ConfigError("preprocessor model: expected a dict with 'spec' and 'stats'")
        if data.get("format", 1) > FORMAT_VERSION:
            raise ConfigError(f"preprocessor model: format {data['format']} is newer than this sparkdl "
                              f"({FORMAT_VERSION})")
        return cls(FeatureSpec.from_dict(data["spec"]), data["stats"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PreprocessorModel":
        return cls.from_dict(json.loads(text))

    @property
    def fingerprint(self) -> str:
        """A short hash of the spec and statistics: what the prepared data depends on."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"PreprocessorModel(features={self.spec.feature_names}, input_shape={self.input_shape})"

    # ----- the math, once -----
    def prepare_batch(self, batch, with_label: bool = True, features: Collection[str] | None = None
                      ) -> PreparedBatch:
        """Prepare one batch of rows with numpy/pyarrow (no per-row Python objects).

        Args:
            batch: a pyarrow RecordBatch or Table, or a pandas DataFrame, holding the spec's columns.
            with_label: also prepare the label column.
            features: prepare only these features; the others' slots are zeros (for a part of a model that does
                not read them, such as one tower of a two-tower model). Default: all.

        Raises:
            ValidationError: a needed column is missing from the batch.
        """
        table = to_table(batch)
        names = set(table.schema.names)
        wanted = self.spec.feature_names if features is None else [n for n in self.spec.feature_names
                                                                     if n in set(features)]
        needed = wanted + ([self.spec.label.name] if with_label and self.spec.label else [])
        if with_label and self.spec.label is None:
            raise ConfigError("with_label=True but the feature spec has no label")
        missing = [c for c in needed if c not in names]
        if missing:
            raise ValidationError(f"batch is missing column(s) {missing}; it has {sorted(names)}",
                                  [Problem(c, "missing column", expected="present", found=f"columns {sorted(names)}")
                                   for c in missing])
        n = table.num_rows
        out = np.empty((n, self._width), dtype=np.float32) if features is None else \
            np.zeros((n, self._width), dtype=np.float32)
        reasons = np.full(n, None, dtype=object)
        for f, start, width in self._layout:
            if features is not None and f.name not in wanted:
                continue
            column = as_array(table.column(f.name))
            if f.kind == "numeric":
                out[:, start] = self._numeric(f, column, reasons)
            elif f.kind == "categorical":
                self._categorical(f, column, out[:, start:start + width], reasons)
            elif f.kind == "text":
                out[:, start:start + width] = self._text(f, column, reasons)
            elif f.kind == "image":
                pixels, why = self.image_input.prepare(column)
                out[:, start:start + width] = pixels.reshape(n, width)
                first = np.equal(reasons, None) & ~np.equal(why, None)
                reasons[first] = why[first]
            else:
                out[:, start:start + width] = self._vector(f, column, reasons)
        labels = self._labels(as_array(table.column(self.spec.label.name)), reasons) if with_label else None
        valid = np.equal(reasons, None)
        if not valid.all():
            out[~valid] = 0.0
            if labels is not None:
                labels[~valid] = 0
        features = out.reshape((n,) + self.input_shape)
        return PreparedBatch(features, labels, valid, reasons.tolist())

    @staticmethod
    def _flag(reasons: np.ndarray, mask: np.ndarray, text: str) -> None:
        mask = mask & np.equal(reasons, None)
        if mask.any():
            reasons[mask] = text

    def _numeric(self, f: Feature, column: pa.Array, reasons: np.ndarray) -> np.ndarray:
        s = self.stats["features"].get(f.name, {})
        x, null = numeric_to_numpy(column)
        nan = np.isnan(x) & ~null
        if f.impute:
            fill = {"mean": s.get("mean"), "median": s.get("median"), "constant": f.impute_value}[f.impute]
            x = np.where(null | nan, float(fill), x)
        else:
            self._flag(reasons, null, f"feature {f.name!r}: null (no imputation)")
            self._flag(reasons, nan, f"feature {f.name!r}: NaN")
        self._flag(reasons, np.isinf(x), f"feature {f.name!r}: infinite value")
        if f.scale == "standard":
            x = (x - s["mean"]) / (s["std"] or 1.0)
        elif f.scale == "minmax":
            spread = (s["max"] - s["min"]) or 1.0
            x = (x - s["min"]) / spread
        return x

    def _vector(self, f: Feature, column: pa.Array, reasons: np.ndarray) -> np.ndarray:
        s = self.stats["features"].get(f.name, {})
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
                or pa.types.is_fixed_size_list(column.type)):
            raise ValidationError(f"feature {f.name!r}: expected a list column, got Arrow type {column.type}",
                                  [Problem(f.name, "wrong type", expected="list<float>", found=str(column.type))])
        m = list_to_matrix(column, f.size)
        x = m.values
        self._flag(reasons, m.wrong_length, f"feature {f.name!r}: wrong length (expected {f.size} values)")
        missing = np.isnan(x)
        if f.impute:
            fill = (np.full(f.size, f.impute_value, dtype=np.float32) if f.impute == "constant"
                    else np.asarray(s["mean"], dtype=np.float32))
            if m.null.any():
                x[m.null] = fill
            if missing.any():
                x = np.where(missing, fill[None, :], x)
        else:
            self._flag(reasons, m.null, f"feature {f.name!r}: null (no imputation)")
            self._flag(reasons, missing.any(axis=1), f"feature {f.name!r}: null or NaN element")
        self._flag(reasons, np.isinf(x).any(axis=1), f"feature {f.name!r}: infinite element")
        if f.scale == "standard":
            std = np.asarray(s["std"], dtype=np.float32)
            x = (x - np.asarray(s["mean"], dtype=np.float32)) / np.where(std > 0, std, 1.0).astype(np.float32)
        elif f.scale == "minmax":
            lo = np.asarray(s["min"], dtype=np.float32)
            spread = np.asarray(s["max"], dtype=np.float32) - lo
            x = (x - lo) / np.where(spread > 0, spread, 1.0).astype(np.float32)
        return x

    def _text(self, f: Feature, column: pa.Array, reasons: np.ndarray) -> np.ndarray:
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise ValidationError(f"feature {f.name!r}: expected a string column, got Arrow type {column.type}",
                                  [Problem(f.name, "wrong type", expected="string", found=str(column.type))])
        hashed = self._hashed(f.name)
        ids, lengths = (hashed_token_ids(tokenize(column), *hashed, f.max_length) if hashed is not None
                        else token_ids(tokenize(column), self._value_set(f.name), f.max_length))
        null = np.asarray(column.is_null(), dtype=bool)
        self._flag(reasons, null, f"feature {f.name!r}: null (no imputation)")
        self._flag(reasons, lengths == 0, f"feature {f.name!r}: no tokens (empty or punctuation-only text)")
        return ids

    def _categorical(self, f: Feature, column: pa.Array, out: np.ndarray, reasons: np.ndarray) -> None:
        vocab = self._vocab(f.name)
        strings = column.cast(pa.string()) if not pa.types.is_string(column.type) else column
        null = np.asarray(strings.is_null(), dtype=bool) if strings.null_count else np.zeros(len(strings), bool)
        if f.impute == "constant" and null.any():
            strings = pc.fill_null(strings, _category_key(f.impute_value))
            null = np.zeros(len(strings), bool)
        else:
            self._flag(reasons, null, f"feature {f.name!r}: null (no imputation)")
        hashed = self._hashed(f.name)
        if hashed is not None:
            idx = hash_buckets(strings.to_pylist(), *hashed)
        else:
            index = pc.index_in(strings, value_set=self._value_set(f.name))
            idx = index.fill_null(len(vocab)).to_numpy(zero_copy_only=False).astype(np.int64)
        out[:] = 0.0
        out[np.arange(len(idx)), idx] = 1.0
        if null.any():
            out[null] = 0.0

    def _labels(self, column: pa.Array, reasons: np.ndarray) -> np.ndarray:
        label = self.spec.label
        name = label.name
        if label.task == "regression":
            y, null = numeric_to_numpy(column)
            self._flag(reasons, null, f"label {name!r}: null")
            self._flag(reasons, np.isnan(y) & ~null, f"label {name!r}: NaN")
            self._flag(reasons, np.isinf(y), f"label {name!r}: infinite")
            return np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
        if self.label_classes is not None:
            strings = column.cast(pa.string()) if not pa.types.is_string(column.type) else column
            null = np.asarray(strings.is_null(), dtype=bool) if strings.null_count else np.zeros(len(strings), bool)
            index = pc.index_in(strings, value_set=pa.array(self.label_classes, type=pa.string()))
            unknown = np.asarray(index.is_null(), dtype=bool) & ~null
            self._flag(reasons, null, f"label {name!r}: null")
            self._flag(reasons, unknown, f"label {name!r}: unknown class (known: {self.label_classes[:10]})")
            return index.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        y, null = numeric_to_numpy(column)
        self._flag(reasons, null, f"label {name!r}: null")
        finite = np.isfinite(y)
        self._flag(reasons, ~finite & ~null, f"label {name!r}: NaN or infinite")
        y = np.where(finite, y, 0.0)
        self._flag(reasons, y != np.floor(y), f"label {name!r}: not a whole number")
        k = self.num_classes
        self._flag(reasons, (y < 0) | (y >= k), f"label {name!r}: out of range [0, {k})")
        return y.astype(np.int64)

    # ----- Spark -----
    def output_schema(self, df, keep_columns=(), with_label: bool = True, raw: bool = False,
                      encoded: bool = False):
        """The Spark schema of the mapInArrow output (keep columns, features, label, validity, reason);
        `encoded`: `features` holds the encoded image bytes."""
        from pyspark.sql.types import (
            ArrayType,
            BinaryType,
            BooleanType,
            FloatType,
            LongType,
            StringType,
            StructField,
            StructType,
        )

        fields = [df.schema[c] for c in keep_columns]
        if raw:
            fields += [df.schema[c] for c in self._input_columns(with_label) if c not in keep_columns]
        fields.append(StructField("features", BinaryType() if encoded else ArrayType(FloatType(), False), False))
        if with_label:
            fields.append(StructField("label", FloatType() if self.spec.label.task == "regression" else LongType(),
                                      False))
        fields += [StructField(VALID_COLUMN, BooleanType(), False), StructField(REASON_COLUMN, StringType(), True)]
        return StructType(fields)

    def _input_columns(self, with_label: bool) -> list[str]:
        return self.spec.feature_names + ([self.spec.label.name] if with_label else [])

    def _mapped(self, df, keep_columns, with_label: bool, raw: bool, counter=None, encoded: bool = False):
        from pyspark.sql import functions as F

        keep_columns = list(keep_columns)
        if with_label and self.spec.label is None:
            raise ConfigError("with_label=True but the feature spec has no label")
        inputs = self._input_columns(with_label)
        missing = [c for c in inputs + keep_columns if c not in df.columns]
        if missing:
            raise ValidationError(f"transform: DataFrame is missing column(s) {missing}; it has {df.columns}",
                                  [Problem(c, "missing column", expected="present", found=f"columns {df.columns}")
                                   for c in missing])
        cols = []
        for c in dict.fromkeys(keep_columns + inputs):
            cols.append(array_column(df, c).alias(c) if is_vector_udt(df.schema[c].dataType) else F.col(c))
        source = df.select(*cols)
        schema = self.output_schema(source, keep_columns, with_label, raw, encoded)
        image = self.spec.image_feature.name if encoded else None
        passthrough = keep_columns + ([c for c in inputs if c not in keep_columns] if raw else [])
        payload = self.to_json()
        names = schema.names

        def prepare(batches):
            model = PreprocessorModel.from_json(payload)
            for b in batches:
                p = model.prepare_batch(b, with_label=with_label)
                if counter is not None and not p.valid.all():
                    counter.add(_count_reasons(p.reasons))
                arrays = [b.column(c) for c in passthrough]
                arrays.append(encoded_bytes(b.column(image), p.valid) if encoded
                              else matrix_to_list_array(p.features))
                if with_label:
                    arrays.append(pa.array(p.labels))
                arrays += [pa.array(p.valid), pa.array(p.reasons, type=pa.string())]
                yield pa.RecordBatch.from_arrays(arrays, names=names)

        return source.mapInArrow(prepare, schema)

    def transform(self, df, keep_columns=(), with_label: bool = True, counter=None):
        """Prepare `df` in Spark: `keep_columns` + `features` (flat array<float>) + `label`, valid rows only.

        Invalid rows are left out here: pass `counter` (from `invalid_row_counter(spark)`) to count them by reason
        as the data is computed, or use `transform_with_report` to get them. Raises ValidationError for missing
        columns.
        """
        from pyspark.sql import functions as F

        out = self._mapped(df, keep_columns, with_label, raw=False, counter=counter)
        cols = list(keep_columns) + ["features"] + (["label"] if with_label else [])
        return out.where(F.col(VALID_COLUMN)).select(*cols)

    def transform_validated_sql(self, df, keep_columns=(), with_label: bool = True):
        """`transform`'s output computed by Spark SQL alone, for specs of numeric, vector/sequence and categorical
        features (text and images need Python): imputation, scaling and one-hot encoding as `prepare_batch` does
        them — numbers in double then rounded to float, vectors in float, categories by their string form — the
        features concatenated in the spec's order, the label cast as `_labels` does (regression: float; numeric
        classes: long; string classes: their index). Rows stay in the JVM (no Python round trip); the values equal
        `transform`'s (tests/test_data_preprocess.py).

        `df` must have passed validation (`sparkdl.data.validation`: no nulls, NaN, infinities, wrong lengths or
        labels out of range where there is no imputation), so no row is invalid; `sparkdl.train.prepared.
        prepare_data` validates first. Returns None for any other spec.
        """
        from pyspark.sql import functions as F

        parts = [self._sql_feature(df, f) for f in self.spec.features]
        if any(part is None for part in parts):
            return None
        cols = [F.col(c) for c in keep_columns]
        cols.append((parts[0] if len(parts) == 1 else F.concat(*parts)).alias("features"))
        if with_label:
            label = self.spec.label
            y = F.col(label.name)
            if label.task == "regression":
                y = y.cast("float")
            elif self.label_classes is not None:
                classes = F.array(*[F.lit(c) for c in self.label_classes])
                y = (F.array_position(classes, y.cast("string")) - 1).cast("long")
            else:
                y = y.cast("long")
            cols.append(y.alias("label"))
        return df.select(*cols)

    def _sql_feature(self, df, f: Feature):
        """One feature's prepared values as an array<float> Spark column (`prepare_batch`'s math), or None when
        Spark SQL cannot compute exactly what Python does (text, images, categories of floating-point columns)."""
        from pyspark.sql import functions as F

        s = self.stats["features"].get(f.name, {})
        if f.kind == "numeric":
            x = F.col(f.name).cast("double")
            if f.impute:
                fill = {"mean": s.get("mean"), "median": s.get("median"), "constant": f.impute_value}[f.impute]
                x = F.when(x.isNull() | F.isnan(x), F.lit(float(fill))).otherwise(x)
            if f.scale == "standard":
                x = (x - F.lit(float(s["mean"]))) / F.lit(float(s["std"] or 1.0))
            elif f.scale == "minmax":
                x = (x - F.lit(float(s["min"]))) / F.lit(float((s["max"] - s["min"]) or 1.0))
            return F.array(x.cast("float"))
        if f.kind in ("vector", "sequence"):
            arr = array_column(df, f.name).cast("array<float>")
            fill = shift = spread = None
            if f.impute:
                fill = (np.full(f.size, f.impute_value, dtype=np.float32) if f.impute == "constant"
                        else np.asarray(s["mean"], dtype=np.float32))
            if f.scale == "standard":
                std = np.asarray(s["std"], dtype=np.float32)
                shift, spread = np.asarray(s["mean"], dtype=np.float32), np.where(std > 0, std, 1.0)
            elif f.scale == "minmax":
                shift = np.asarray(s["min"], dtype=np.float32)
                width = np.asarray(s["max"], dtype=np.float32) - shift
                spread = np.where(width > 0, width, 1.0)
            if fill is None and shift is None:
                return arr

            def element(e, j):  # e: the float element, j: its index (an int, or a Column inside a lambda)
                def at(values):
                    return _float_literal(values[j]) if isinstance(j, int) else _float_array(values)[j]

                if fill is not None:  # null or NaN elements, and every element of a null array
                    e = F.when(e.isNull() | F.isnan(e), at(fill)).otherwise(e)
                if shift is not None:
                    e = ((e - at(shift)) / at(spread.astype(np.float32))).cast("float")
                return e

            if f.size <= ELEMENTWISE_MAX:
                return F.array(*[element(arr[j], j) for j in range(f.size)])
            if fill is not None:  # a null array: every element missing
                arr = F.when(arr.isNull(), _float_array(fill)).otherwise(arr)
            return F.transform(arr, element)
        if f.kind == "categorical" and df.schema[f.name].dataType.typeName() in (
                "string", "byte", "short", "integer", "long", "boolean"):
            vocab, slots = self._vocab(f.name), self._categories(f.name)
            v = F.col(f.name).cast("string")
            if f.impute == "constant":
                v = F.coalesce(v, F.lit(_category_key(f.impute_value)))
            hashed = self._hashed(f.name)
            if hashed is not None:  # hash_buckets' rule in SQL: the first 60 bits of sha256(salt + value) mod B
                digest = F.conv(F.substring(F.sha2(F.concat(F.lit(hashed[1]), v), 256), 1, 15), 16, 10)
                index = F.when(v.isNull(), F.lit(slots)).otherwise(F.pmod(digest.cast("long"), F.lit(hashed[0])))
            else:
                position = F.array_position(F.array(*[F.lit(c) for c in vocab]), v) if vocab else F.lit(0)
                index = F.when(position > 0, position - 1).otherwise(F.lit(len(vocab)))
            if slots + 1 <= ELEMENTWISE_MAX:
                return F.array(*[(index == j).cast("float") for j in range(slots + 1)])
            return F.transform(F.sequence(F.lit(0), F.lit(slots)), lambda j: (j == index).cast("float"))
        return None

    def transform_encoded(self, df, keep_columns=(), with_label: bool = True, counter=None):
        """Like `transform` for a model of one image feature, but `features` holds each decodable image's
        encoded bytes (read from its path for a path column) instead of its pixels: what the training cache keeps.
        `image_input.prepare` turns them into the same pixels as `transform`.

        Raises:
            ConfigError: the spec has no image feature.
        """
        from pyspark.sql import functions as F

        if self.spec.image_feature is None:
            raise ConfigError("transform_encoded needs a feature spec with an image feature")
        out = self._mapped(df, keep_columns, with_label, raw=False, counter=counter, encoded=True)
        cols = list(keep_columns) + ["features"] + (["label"] if with_label else [])
        return out.where(F.col(VALID_COLUMN)).select(*cols)

    def transform_with_report(self, df, keep_columns=(), with_label: bool = True):
        """(valid_df, invalid_df): `invalid_df` has the keep columns, the raw input columns and `reason`.

        Both come from one mapped DataFrame: cache it (or `df`) when you use both.
        """
        from pyspark.sql import functions as F

        out = self._mapped(df, keep_columns, with_label, raw=True)
        cols = list(keep_columns) + ["features"] + (["label"] if with_label else [])
        raw = list(dict.fromkeys(list(keep_columns) + self._input_columns(with_label)))
        valid = out.where(F.col(VALID_COLUMN)).select(*cols)
        invalid = out.where(~F.col(VALID_COLUMN)).select(*raw, F.col(REASON_COLUMN).alias("reason"))
        return valid, invalid

    def passthrough_columns(self, schema) -> tuple[str, str | None] | None:
        """(feature column, label column) when the prepared data would equal the raw columns of `schema`.

        That is: exactly one vector/sequence feature stored as array<float>, with no imputation or scaling, and an
        integer class label without string classes, or a float/double regression label. Used for the zero-copy
        path (the table's Parquet files are read directly). None otherwise.
        """
        from pyspark.sql.types import ArrayType, DoubleType, FloatType, IntegralType

        feats = self.spec.features
        if len(feats) != 1 or feats[0].kind not in ("vector", "sequence") or feats[0].impute or feats[0].scale:
            return None
        f = feats[0]
        if f.name not in schema.names:
            return None
        dt = schema[f.name].dataType
        if not (isinstance(dt, ArrayType) and isinstance(dt.elementType, FloatType)):
            return None
        label = self.spec.label
        if label is None:
            return f.name, None
        if label.name not in schema.names:
            return None
        lt = schema[label.name].dataType
        if label.task == "regression":
            ok = isinstance(lt, (FloatType, DoubleType))
        else:
            ok = self.label_classes is None and isinstance(lt, IntegralType)
        return (f.name, label.name) if ok else None


def _count_reasons(reasons: list) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in reasons:
        if r is not None:
            counts[r] = counts.get(r, 0) + 1
    return counts


def invalid_row_counter(spark):
    """A Spark accumulator of {reason: rows} for `PreprocessorModel.transform(..., counter=...)`; None on a Spark
    Connect session, which has no accumulators (the rows are then not counted; validation before training has
    already refused invalid data).

    Read `.value` on the driver after an action on the transformed DataFrame (task retries may count twice).
    """
    return accumulator(spark, {}, ReasonCounts())


class ReasonCounts:
    """AccumulatorParam merging {reason: rows} dicts."""

    def zero(self, value) -> dict:
        return {}

    def addInPlace(self, a: dict, b: dict) -> dict:  # noqa: N802 - Spark's name
        for k, v in b.items():
            a[k] = a.get(k, 0) + v
        return a
