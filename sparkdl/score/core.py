"""The scoring core that `score_table` and `score_stream` share: the schema checks, the scored frame (one
`mapInArrow` over the source's Parquet files, `sparkdl.score.scan`), the outcome counts and split, the lineage
columns, the report record, and `committed_write` (the rule by which a re-run finds its own earlier commit)."""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

from sparkdl import stack
from sparkdl.data.forecast_fit import ForecastPreparation
from sparkdl.data.series import check_forecast_schema
from sparkdl.data.validation import array_column, check_schema, is_vector_udt
from sparkdl.errors import ConfigError
from sparkdl.lake import exists, history
from sparkdl.score.forecast import STEP_COL, forecast_frame
from sparkdl.score.model_ref import ModelRef
from sparkdl.score.outputs import REASON_COL, OutputPlan, plan_output, scoring_spec
from sparkdl.score.runtime import scored_chunks
from sparkdl.score.scan import map_batches
from sparkdl.score.thresholds import (
    Thresholds,
    borrowed_segments,
    check_segment_columns,
    required_thresholds,
    with_flags,
)

# How far back in a table's history a re-run looks for its own earlier commit (stream batches and batch re-runs).
HISTORY_SCAN = 1000
LINEAGE_COLUMNS = ("_model", "_model_version", "_source_version", "_scored_at")
QUARANTINE_SUFFIX = "_quarantine"


@dataclass(frozen=True)
class ScoreReport:
    """What a scoring job (or one stream micro-batch) did. `input_rows == scored_rows + quarantined_rows`."""

    model: str
    model_version: int
    source: str
    source_version: int | None
    target: str
    target_version: int | None
    quarantine: str | None
    quarantine_version: int | None
    input_rows: int
    scored_rows: int
    quarantined_rows: int
    reasons: dict = field(default_factory=dict)
    scored_at: str = ""
    seconds: float = 0.0
    committed: dict = field(default_factory=dict)  # {"target"/"quarantine": "written" | "already" | "nothing"}
    adjusted: dict = field(default_factory=dict)  # a forecaster's {"duplicate_rows", "off_grid_rows"}

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ the scoring core
def check_columns(df, spec, keep_columns: list[str], where: str) -> None:
    """Schema-only checks (no Spark job): features present with usable types, keep columns present.

    Raises:
        ValidationError: every problem at once, naming the column, what was expected and what was found.
    """
    check_schema(spec, df.schema, where, require_label=False, also_present=keep_columns)


def scored_frame(df, ref: ModelRef, plan: OutputPlan, feature_names: list[str], keep_columns: list[str],
                 output_col: str, batch_size: int | None = None):
    """`df` mapped through the model in one `mapInArrow`: keep columns, the raw feature columns (null where the
    row scored, so only quarantined rows carry them), `output_col` (null where it did not), `_reason`. When the
    selected source is a plain Parquet scan (an unpartitioned delta-rs snapshot), the tasks read its files with
    pyarrow (`sparkdl.score.scan.map_batches`)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    features_out = [c for c in feature_names if c not in keep_columns]
    source = df.select(*[array_column(df, c).alias(c) if is_vector_udt(df.schema[c].dataType) else F.col(c)
                         for c in dict.fromkeys(keep_columns + features_out)])
    fields = [source.schema[c] for c in keep_columns]
    fields += [StructField(c, source.schema[c].dataType, True) for c in features_out]
    fields += [StructField(output_col, plan.spark_type(), True), StructField(REASON_COL, StringType(), True)]
    schema = StructType(fields)

    arrow_schema = stack.arrow_schema(schema)

    def score_batches(batches):
        for chunk, out, valid, reasons in scored_chunks(batches, ref, plan, batch_size):
            arrays = [chunk.column(c) for c in keep_columns]
            if features_out:
                scored_mask = pa.array(valid)
                for c in features_out:
                    col = chunk.column(c)
                    arrays.append(pc.if_else(scored_mask, pa.nulls(len(col), col.type), col) if valid.any() else col)
            arrays.append(out)
            arrays.append(pa.array(reasons, type=pa.string()) if not valid.all()
                          else pa.nulls(len(valid), pa.string()))
            yield pa.RecordBatch.from_arrays(arrays, schema=arrow_schema)

    return map_batches(source, score_batches, schema)


def count_outcomes(scored) -> tuple[int, int, dict]:
    """(scored rows, quarantined rows, {reason: count}) of a `scored_frame`, in one small aggregation."""
    rows = scored.groupBy(REASON_COL).count().collect()
    reasons = {r[REASON_COL]: int(r["count"]) for r in rows if r[REASON_COL] is not None}
    ok = sum(int(r["count"]) for r in rows if r[REASON_COL] is None)
    return ok, sum(reasons.values()), reasons


def lineage_columns(ref: ModelRef, source_version, scored_at: dt.datetime) -> list:
    """The lineage columns every scored row carries (`LINEAGE_COLUMNS`), for `score_table` and `score_stream`:
    `source_version` is the snapshot's version, or a Column holding each row's (a stream's `_source_version`)."""
    from pyspark.sql import Column
    from pyspark.sql import functions as F

    version = source_version if isinstance(source_version, Column) else F.lit(source_version)
    return [F.lit(ref.name).alias("_model"), F.lit(int(ref.version)).cast("int").alias("_model_version"),
            version.cast("long").alias("_source_version"),
            F.lit(scored_at).cast("timestamp").alias("_scored_at")]  # an aware datetime: Spark stores it as UTC


def split_outcomes(scored, keep_columns: list[str], feature_names: list[str], output_col: str, lineage: list):
    """(scored rows for the target, quarantined rows) of a `scored_frame`, with the lineage columns."""
    from pyspark.sql import functions as F

    good = scored.where(F.col(REASON_COL).isNull()).select(*keep_columns, output_col, *lineage)
    raw = list(dict.fromkeys(keep_columns + feature_names))
    bad = scored.where(F.col(REASON_COL).isNotNull()).select(*raw, F.col(REASON_COL), *lineage)
    return good, bad


def committed_write(table: str, match: dict, spark=None) -> dict | None:
    """The newest commit of `table` whose metadata has every key/value of `match` (its history entry), or None
    (no such commit in the last `HISTORY_SCAN`, or no table): the one rule by which scoring re-runs find their
    own earlier writes."""
    if not exists(table, spark=spark):
        return None
    for entry in history(table, limit=HISTORY_SCAN, spark=spark):
        meta = entry.get("metadata") or {}
        if all(k in meta and str(meta[k]) == str(v) for k, v in match.items()):  # a backend may keep only text
            return entry
    return None


def default_keep_columns(df, spec) -> list[str]:
    """The spec's id columns when it declares some, else every column that is not a feature."""
    if spec.id_columns:
        return list(spec.id_columns)
    return [c for c in df.columns if c not in spec.feature_names]


def _check_options(mode: str, output_col: str, keep_columns: list[str]) -> None:
    if mode not in ("append", "overwrite"):
        raise ConfigError(f"mode must be 'append' or 'overwrite', got {mode!r}")
    clash = sorted(set(keep_columns) & {output_col, REASON_COL, *LINEAGE_COLUMNS})
    if clash:
        raise ConfigError(f"keep_columns {clash} collide with the columns scoring adds "
                          f"({[output_col, REASON_COL, *LINEAGE_COLUMNS]}); rename them or pass output_col")


@dataclass(frozen=True)
class ScoringColumns:
    """What a scoring job reads and writes, decided on the driver from the schema (`scoring_columns`): the output
    plan (None for a forecaster), the output column, the feature columns, the kept columns and, for a forecaster,
    its preparation."""

    plan: OutputPlan | None
    output_col: str
    feature_names: list
    keep: list
    forecaster: ForecastPreparation | None = None
    thresholds: Thresholds | None = None  # an anomaly detector's, for output "anomaly"

    def scored(self, df, ref: ModelRef, batch_size: int | None = None, extra_keep: tuple = ()):
        """`df` through the model: `scored_frame` (a detector's output "anomaly" flagged at its segment's threshold,
        `sparkdl.score.thresholds`), or a forecaster's `forecast_frame` (horizon rows per entity)."""
        if self.forecaster is not None:
            return forecast_frame(df, ref, self.forecaster, self.output_col, data_counts=True)
        kept = list(dict.fromkeys(self.keep + list(extra_keep)))
        segments = borrowed_segments(self.thresholds, kept)
        scored = scored_frame(df, ref, self.plan, self.feature_names, kept + segments, self.output_col, batch_size)
        return scored if self.thresholds is None else with_flags(scored, self.output_col, self.thresholds)

    def series_counts(self, ok: int, bad: int) -> tuple[int, int]:
        """(scored, input) counts in the job's unit: rows, or a forecaster's series (horizon rows each)."""
        if self.forecaster is None:
            return ok, ok + bad
        return ok // self.forecaster.spec.horizon, ok // self.forecaster.spec.horizon + bad


def scoring_columns(df, ref: ModelRef, metadata, mode: str, output: str, keep_columns: list[str] | None,
                    output_col: str | None, where: str, attribution=None) -> ScoringColumns:
    """Check a scoring job's options and `df`'s schema against the model (no Spark job) and return its columns.

    Raises:
        ConfigError: bad options (a forecaster takes no output kind and no keep columns: it writes its entity,
            time and step columns). ValidationError: missing or mistyped columns.
    """
    forecaster = metadata.forecast
    if forecaster is not None:
        if output != "prediction" or keep_columns is not None:
            raise ConfigError(f"{where}: a forecaster writes its forecasts (output 'prediction') with the entity, "
                              f"time and step columns; output={output!r} and keep_columns do not apply")
        columns = ScoringColumns(None, output_col or "forecast", [],
                                 [*forecaster.spec.entity, forecaster.spec.time, STEP_COL], forecaster)
        _check_options(mode, columns.output_col, columns.keep)
        check_forecast_schema(forecaster.spec, df.schema, where)
        return columns
    plan = plan_output(output, metadata, attribution)
    keep = list(keep_columns) if keep_columns is not None else default_keep_columns(df, metadata.spec)
    thresholds = required_thresholds(ref, where) if plan.kind == "anomaly" else None
    spec = scoring_spec(metadata, plan)
    columns = ScoringColumns(plan, output_col or output, spec.feature_names, keep, thresholds=thresholds)
    _check_options(mode, columns.output_col, keep)
    check_columns(df, spec, keep, where)
    if thresholds is not None:
        check_segment_columns(df, thresholds.options, where)
    return columns
