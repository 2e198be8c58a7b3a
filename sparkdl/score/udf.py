"""`model_udf`: a model from the store as a Spark column function; `register_sql_function` for Spark SQL.

    >>> predict = model_udf("digits@1")                    # prediction: label class or class index
    >>> df.select("id", predict("pixels").alias("digit"))   # or predict() for the model's own feature columns
    >>> register_sql_function(spark, "digits", "digits@1")
    >>> spark.sql("SELECT id, digits(pixels) FROM images")

The column function is a scalar pandas UDF whose body works in Arrow: the array columns Spark hands over are
re-assembled into one contiguous block without touching rows (see `sparkdl.score.pandas_arrow`), prepared by the
model's own `PreprocessorModel.prepare_batch` (the training code), run through the model in one traced call per
batch, and returned as an Arrow-backed Series. The closure carries the `ModelRef` and the output plan only; the
model is loaded once per Python worker (`sparkdl.score.runtime`).

Rows that cannot be prepared (null or NaN without imputation, wrong array length, infinities) score to null, or
raise with `on_invalid="error"`. `score_table` quarantines them with the reason instead.
"""
from __future__ import annotations

import re
import warnings

from sparkdl import stack
from sparkdl.data.kinds import feature_kind
from sparkdl.data.validation import array_column
from sparkdl.errors import ConfigError, Problem, ValidationError
from sparkdl.log import get_logger
from sparkdl.score.frame import score_dataframe
from sparkdl.score.model_ref import ModelRef, resolve_model
from sparkdl.score.outputs import ON_INVALID, OutputPlan, plan_output, refuse_row_level_flags
from sparkdl.score.pandas_arrow import arrow_to_series, series_to_batch
from sparkdl.score.runtime import get_scorer, raise_if_invalid

log = get_logger("score.udf")

_SQL_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _arrow_type_ok(kind: str, arrow_type) -> bool:
    import pyarrow as pa

    # an all-null batch: the preprocessor reports the nulls row by row
    return pa.types.is_null(arrow_type) or feature_kind(kind).arrow_ok(arrow_type)


def signature_text(features: list[tuple[str, str, tuple]]) -> str:
    """`name(pixels array<numeric>[64], age numeric)` style description of the expected arguments."""
    parts = []
    for name, kind, shape in features:
        size = f"[{'x'.join(str(d) for d in shape)}]" if shape and kind not in ("text", "image") else ""
        parts.append(f"{name} {feature_kind(kind).expects}{size}")
    return ", ".join(parts)


def make_udf_function(fn_name: str, ref: ModelRef, plan: OutputPlan, features: list[tuple[str, str, tuple]],
                      batch_size: int | None, on_invalid: str):
    """The body of the pandas UDF: a picklable closure over small values only."""
    names = [f[0] for f in features]
    expected = signature_text(features)

    def score(*series):
        if len(series) != len(names):
            raise ValidationError(f"{fn_name}: expects {len(names)} argument(s) ({expected}), got {len(series)}")
        batch = series_to_batch(list(series), names)
        bad = [(i, f, batch.column(i).type) for i, f in enumerate(features)
               if not _arrow_type_ok(f[1], batch.column(i).type)]
        if bad:
            problems = [Problem(f[0], "wrong type", expected=feature_kind(f[1]).expects, found=str(t))
                        for _, f, t in bad]
            found = "; ".join(f"argument {i + 1} ({f[0]}): expected {feature_kind(f[1]).expects}, got Arrow type {t}"
                              for i, f, t in bad)
            raise ValidationError(f"{fn_name}: wrong argument type(s): {found}. Expected arguments: {expected}",
                                  problems)
        out, valid, reasons = get_scorer(ref, plan, batch_size).score(batch)
        if on_invalid == "error":
            raise_if_invalid(fn_name, valid, reasons)
        return arrow_to_series(out)

    score.__name__ = fn_name
    return score


class ModelUDF:
    """A model as a Spark column function. Call it with the feature columns (names or Columns), in the order of
    the model's feature spec; with no argument it uses the spec's column names.

    Attributes:
        ref: the resolved model version (store root, name, version).
        output: the output kind; `return_type` its Spark type.
        feature_names: the expected input columns, in order.
        udf: the underlying pandas UDF (what `register_sql_function` registers).
    """

    def __init__(self, model_ref, output: str = "prediction", batch_size: int | None = None, store=None,
                 on_invalid: str = "null", name: str | None = None):
        if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                       or batch_size <= 0):
            raise ConfigError(f"batch_size must be a positive int or None, got {batch_size!r}")
        if on_invalid not in ON_INVALID:
            raise ConfigError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
        self.ref, self.metadata = resolve_model(model_ref, store)
        self.plan = plan_output(output, self.metadata)
        refuse_row_level_flags(self.plan, f"model_udf({self.ref})")
        self.output = output
        self.batch_size = batch_size
        self.on_invalid = on_invalid
        self.features = [(f.name, f.kind, tuple(f.shape)) for f in self.metadata.spec.features]
        self.feature_names = [f[0] for f in self.features]
        self.name = name or f"{self.ref.name}_{output}".replace(".", "_").replace("-", "_")
        self.return_type = self.plan.spark_type()
        self.udf = self._build()

    def _build(self):
        from pyspark.sql.functions import pandas_udf
        from pyspark.util import PythonEvalType

        fn = make_udf_function(self.name, self.ref, self.plan, self.features, self.batch_size, self.on_invalid)
        with warnings.catch_warnings():  # the explicit eval type is deliberate: the function takes *args
            warnings.simplefilter("ignore", UserWarning)
            return pandas_udf(fn, self.return_type, PythonEvalType.SQL_SCALAR_PANDAS_UDF)

    def __call__(self, *cols):
        from pyspark.sql import Column
        from pyspark.sql import functions as F

        if len(cols) == 1 and isinstance(cols[0], (list, tuple)):
            cols = tuple(cols[0])
        if not cols:
            cols = tuple(self.feature_names)
        if len(cols) != len(self.feature_names):
            raise ConfigError(f"{self.name}: model {self.ref} takes {len(self.feature_names)} feature column(s) "
                              f"({signature_text(self.features)}), got {len(cols)}")
        for c in cols:
            if not isinstance(c, (str, Column)):
                raise ConfigError(f"{self.name}: arguments must be column names or Columns, got {type(c).__name__}")
        return self.udf(*[F.col(c) if isinstance(c, str) else c for c in cols]).alias(self.output)

    def __repr__(self) -> str:
        return f"ModelUDF({self.ref}, output={self.output!r}, features={self.feature_names})"


def model_udf(model_ref, output: str = "prediction", batch_size: int | None = None, store=None,
              on_invalid: str = "null") -> ModelUDF:
    """A Spark column function scoring the model's feature columns (preprocessing applied as at training).

    Args:
        model_ref: store name (latest version), `"name@version"`, a `ModelVersion` or a `SparkDLModel`.
        output: "prediction", "probabilities", "embedding" or "struct" (see `sparkdl.score.outputs`).
        batch_size: rows per model call within an Arrow batch (None: the whole batch; Spark's batch size is
            `spark.sql.execution.arrow.maxRecordsPerBatch`).
        store: a `ModelStore` or its root (default: the reference's own store, else the default store).
        on_invalid: "null" (rows that cannot be prepared score to null) or "error".

    Returns:
        a `ModelUDF`: call it with the feature columns, e.g. `df.select(model_udf("digits@1")("pixels"))`.

    Raises:
        ConfigError / ModelStoreError: bad reference, unknown output or one the model does not have, bad options.
    """
    return ModelUDF(model_ref, output=output, batch_size=batch_size, store=store, on_invalid=on_invalid)


def register_sql_function(spark, name: str, model_ref, output: str = "prediction", batch_size: int | None = None,
                          store=None, on_invalid: str = "null") -> ModelUDF:
    """Register `name` as a Spark SQL function scoring `model_ref`: `SELECT name(col_a, col_b) FROM t`.

    The arguments are the model's feature columns in spec order; a wrong count or type fails the query with a
    message naming the function, the expected columns and their types.

    Raises:
        ConfigError: `name` is not a SQL identifier ([A-Za-z_][A-Za-z0-9_]*); and as `model_udf`.
    """
    if not isinstance(name, str) or not _SQL_IDENTIFIER.match(name):
        raise ConfigError(f"register_sql_function: name must be a SQL identifier ([A-Za-z_][A-Za-z0-9_]*), "
                          f"got {name!r}")
    fn = ModelUDF(model_ref, output=output, batch_size=batch_size, store=store, on_invalid=on_invalid, name=name)
    spark.udf.register(name, fn.udf)
    log.info("registered SQL function %s(%s) -> %s for model %s", name, ", ".join(fn.feature_names),
             fn.return_type.simpleString(), fn.ref)
    return fn


def transform_with_model(model, df, output: str | None = None, output_col: str | None = None, store=None):
    """`df` plus one scored column (as `df.withColumn`), for `SparkDLModel.transform`: `score_dataframe` under
    the hood (Arrow batches through `mapInArrow`; a plain Parquet scan is read by the tasks directly), or the
    column UDF of `model_udf` when `df` has a column type Arrow cannot carry.

    Args:
        model: a `SparkDLModel` (its model version, and `getOutputCol()`/`getOutput()` when it has them) or any
            reference `model_udf` accepts.
        df: a DataFrame with the model's feature columns.
        output: output kind (default: the model's `getOutput()`, else "prediction").
        output_col: name of the new column (default: the model's `getOutputCol()`, else the output kind); an
            existing column of that name is replaced in place.

    Raises:
        ValidationError: `df` lacks feature columns (lists them and the columns it has).
    """
    output = output or _param(model, ("getOutput", "getOutputType")) or "prediction"
    output_col = output_col or _param(model, ("getOutputCol", "getPredictionCol")) or output
    ref, metadata = resolve_model(model, store)
    feature_names = metadata.spec.feature_names
    missing = [c for c in feature_names if c not in df.columns]
    if missing:
        raise ValidationError(f"model {ref}: DataFrame is missing feature column(s) {missing}; it has "
                              f"{df.columns}", [Problem(c, "missing column", "present", f"columns {df.columns}")
                                                 for c in missing])
    try:

        stack.arrow_schema(df.schema)
    except Exception:  # noqa: BLE001 - a column Arrow cannot carry (e.g. an interval): the column UDF

        fn = ModelUDF(ref, output=output)
        return df.withColumn(output_col, fn(*[array_column(df, c) for c in fn.feature_names]))
    keep = [c for c in df.columns if c != output_col]
    scored = score_dataframe(df, ref, output=output, output_col=output_col, keep_columns=keep)
    if output_col in df.columns:  # withColumn keeps a replaced column where it was
        scored = scored.select(*[scored[c] for c in df.columns])
    return scored


CLASSIFICATION_TASKS = ("binary", "multiclass")
# Spark ML's classifier columns beside `prediction`
PROBABILITY_COL, RAW_PREDICTION_COL = "probability", "rawPrediction"


def spark_ml_columns(model, df, store=None):
    """`df` plus Spark ML's classifier columns (`SparkDLModel.transform` by default): the output column as a
    double (the predicted label's value; a string label stays a string, as no stock evaluator takes one),
    `probability` and `rawPrediction` as vectors of the class probabilities (binary: [P(0), P(1)]; the model has no
    logits, and the probabilities rank rows as they would). One scoring pass: the `struct` output, then a
    projection. Existing columns of those names are replaced."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType

    output_col = _param(model, ("getOutputCol", "getPredictionCol")) or "prediction"
    scored_col = "__sparkdl_scored"
    scored = transform_with_model(model, df, output="struct", output_col=scored_col, store=store)
    label = F.col(scored_col)["label"]
    numeric = isinstance(scored.schema[scored_col].dataType["label"].dataType, NumericType)
    probability = array_to_vector(F.col(scored_col)["probability"])
    replaced = {output_col, PROBABILITY_COL, RAW_PREDICTION_COL, scored_col}
    return scored.select(*[F.col(c) for c in df.columns if c not in replaced],
                         (label.cast("double") if numeric else label).alias(output_col),
                         probability.alias(PROBABILITY_COL), probability.alias(RAW_PREDICTION_COL))


def _param(model, getters) -> str | None:
    for getter in getters:
        fn = getattr(model, getter, None)
        if callable(fn):
            try:
                value = fn()
            except Exception:  # noqa: BLE001 - an unset Spark ML param
                continue
            if value:
                return value
    return None
