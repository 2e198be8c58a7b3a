"""`score_dataframe`: a DataFrame scored by a model from the store, Arrow batches in and out (no pandas).

    >>> scored = score_dataframe(df, "digits@1", keep_columns=["id"])      # id, prediction
    >>> scored.write.format("delta").save(...)

One `mapInArrow` (`sparkdl.score.scan.map_batches`): each Arrow batch is prepared by the model's own
`PreprocessorModel.prepare_batch` (array columns: `flatten()` + `reshape`, no per-row objects), run through the
model in one traced `model(x, training=False)` call per chunk, and returned with the kept columns. When `df` is a
plain scan of Parquet files, the tasks read the files with pyarrow themselves and skip Spark's row-by-row Arrow
conversion (see `sparkdl.score.scan`). The model is loaded once per Python worker (`sparkdl.score.runtime`); the
closure carries only the `ModelRef` and the output plan.

Rows that cannot be prepared score to null (or fail the job with `on_invalid="error"`); `score_table` quarantines
them instead. Spark's Arrow batch size (`spark.sql.execution.arrow.maxRecordsPerBatch`) is read when the job runs,
not when the DataFrame is defined, so it is left to the session; the direct route reads 65,536-row batches.
"""
from __future__ import annotations

from sparkdl import stack
from sparkdl.data.validation import array_column, is_vector_udt
from sparkdl.errors import ConfigError
from sparkdl.log import get_logger
from sparkdl.score.core import check_columns
from sparkdl.score.model_ref import ModelRef, resolve_model
from sparkdl.score.outputs import ON_INVALID, OutputPlan, plan_output, scoring_spec
from sparkdl.score.runtime import raise_if_invalid, scored_chunks
from sparkdl.score.scan import map_batches
from sparkdl.score.thresholds import borrowed_segments, check_segment_columns, required_thresholds, with_flags

log = get_logger("score.frame")

_HIDDEN = "__sparkdl_feature_"


def scoring_function(ref: ModelRef, plan: OutputPlan, inputs: list[tuple[str, str]], keep_columns: list[str],
                     arrow_schema, batch_size: int | None, on_invalid: str, where: str):
    """The `mapInArrow` body: batches with the kept and feature columns in, batches of `arrow_schema` out.

    `inputs` pairs each model feature name with the batch column holding it."""

    def score_batches(batches):
        import pyarrow as pa

        for chunk, out, valid, reasons in scored_chunks(batches, ref, plan, batch_size, inputs):
            if on_invalid == "error":
                raise_if_invalid(where, valid, reasons)
            yield pa.RecordBatch.from_arrays([chunk.column(c) for c in keep_columns] + [out], schema=arrow_schema)

    return score_batches


def score_dataframe(df, model_ref, output: str = "prediction", output_col: str | None = None,
                    keep_columns: list[str] | None = None, store=None, batch_size: int | None = None,
                    on_invalid: str = "null", direct: bool = True, attribution=None):
    """`df`'s kept columns plus one scored column, computed in Arrow batches by `mapInArrow`.

    Args:
        df: a DataFrame holding the model's feature columns (Spark ML vectors are converted to arrays).
        model_ref: store name (latest version), `"name@version"`, a `ModelVersion` or a `SparkDLModel`.
        output: "prediction", "probabilities", "embedding", "struct" or "attributions"; an anomaly detector's
            "prediction" (its score) or "anomaly" (struct<score, is_anomaly, threshold, contributions>, at the
            thresholds stored with the model, `sparkdl.score.thresholds`). See `sparkdl.score.outputs`.
        output_col: name of the scored column (default: the output kind).
        keep_columns: columns of `df` to keep, in this order (default: all of them except `output_col`).
        store: a `ModelStore` or its root (default: the reference's own store, else the default store).
        batch_size: rows per model call (None: up to 100,000, the whole Arrow batch).
        on_invalid: "null" (rows that cannot be prepared score to null) or "error" (the job fails).
        direct: read a plain Parquet scan's files in the tasks (see `sparkdl.score.scan`); False: Spark's scan.
        attribution: for output "attributions", a `sparkdl.explain.Attribution` (steps, baseline, target class);
            default `Attribution()`.

    Returns:
        a lazy DataFrame: `keep_columns` then `output_col`.

    Raises:
        ConfigError / ModelStoreError: bad reference, output or options; `output_col` among `keep_columns`.
        ValidationError: missing or mistyped feature columns, missing keep columns (from the schema, before any
            Spark job).
    """
    from pyspark.sql.types import StructField, StructType

    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                   or batch_size <= 0):
        raise ConfigError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if on_invalid not in ON_INVALID:
        raise ConfigError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
    ref, metadata = resolve_model(model_ref, store)
    plan = plan_output(output, metadata, attribution)
    thresholds = required_thresholds(ref, f"score_dataframe({ref})") if plan.kind == "anomaly" else None
    output_col = output_col or output
    spec = scoring_spec(metadata, plan)
    feature_names = spec.feature_names
    keep = list(keep_columns) if keep_columns is not None else [c for c in df.columns if c != output_col]
    if output_col in keep:
        raise ConfigError(f"output_col {output_col!r} is also in keep_columns; drop it from keep_columns or choose "
                          f"another output_col")
    if len(set(keep)) != len(keep):
        raise ConfigError(f"keep_columns has duplicates: {keep}")
    where = f"score_dataframe({ref})"
    check_columns(df, spec, keep, where)
    segments = borrowed_segments(thresholds, keep)
    if thresholds is not None:
        check_segment_columns(df, thresholds.options, where)
    keep_out, keep = keep, keep + segments  # segment columns ride along until the flags are set

    # the batch columns: kept columns as they are, then each feature not kept (vectors as arrays)
    selected, inputs, chosen = [df[c] for c in keep], [], set(keep)
    for name in feature_names:
        column = _HIDDEN + name if is_vector_udt(df.schema[name].dataType) else name
        if column not in chosen:
            selected.append(df[name] if column == name else array_column(df, name).alias(column))
            chosen.add(column)
        inputs.append((name, column))
    source = df.select(*selected)
    schema = StructType([df.schema[c] for c in keep] + [StructField(output_col, plan.spark_type(), True)])
    fn = scoring_function(ref, plan, inputs, keep, stack.arrow_schema(schema), batch_size, on_invalid, where)
    scored = map_batches(source, fn, schema, direct=direct)
    if thresholds is None:
        return scored
    return with_flags(scored, output_col, thresholds).select(*keep_out, output_col)
