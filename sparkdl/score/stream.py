"""`score_stream`: Structured Streaming from a Delta table to a Delta table, each input row written exactly once.

Source: `sparkdl.lake.stream_source` (the Delta log followed through delta-rs, appends only; Spark's checkpoint
holds the offsets = source versions). Sink: `foreachBatch`, where each micro-batch is scored by the same one-pass
`mapInArrow` as `score_table` (scored rows → target, rows that cannot be prepared → quarantine) and written with
`sparkdl.lake.write_table` — one atomic commit per table — whose commit metadata carries the stream's app id and
the batch id (the role of Delta's `txn` action). Before writing, a batch looks for that (app id, batch id) in the
table's recent history and skips a table that already has it: when a query dies between the commit and Spark's
checkpoint commit, the restarted query re-runs the batch with the same id and the same files, and nothing is
written twice. The app id is created once per checkpoint and kept in `<checkpoint>/sparkdl_stream.json`.
A forecaster forecasts again, in each batch, every entity that received new rows: from its history in the source
snapshot the batch ends at (`horizon` rows per entity, as `score_table`).
As in `score_table`, nothing is committed for nothing: an empty micro-batch writes nothing, and one whose rows are
all quarantined commits to the quarantine table only (its report has `target_version=None`).
"""
from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparkdl import jsonlines
from sparkdl.errors import AlreadyCommitted, ConfigError, TableError
from sparkdl.fileutil import write_atomic
from sparkdl.lake import Txn, exists, read_table, write_table
from sparkdl.lake.stream_source import FORMAT, SOURCE_VERSION_COL, DeltaLogSource, source_schema
from sparkdl.log import get_logger
from sparkdl.score.core import (
    QUARANTINE_SUFFIX,
    ScoreReport,
    ScoringColumns,
    committed_write,
    count_outcomes,
    lineage_columns,
    scoring_columns,
    split_outcomes,
)
from sparkdl.score.forecast import forecast_frame
from sparkdl.score.model_ref import resolve_model
from sparkdl.session import get_spark
from sparkdl.uri import local_path, normalize_table_uri

log = get_logger("score.stream")

APP_ID_KEY = "sparkdl.stream.app_id"
BATCH_ID_KEY = "sparkdl.stream.batch_id"
STATE_FILE = "sparkdl_stream.json"
REPORTS_FILE = "sparkdl_batches.jsonl"


def _trigger_kwargs(trigger) -> dict:
    if trigger is None:
        return {}
    if isinstance(trigger, dict):
        return dict(trigger)
    if trigger in ("availableNow", "available_now"):
        return {"availableNow": True}
    if trigger == "once":
        return {"once": True}
    if isinstance(trigger, str):
        return {"processingTime": trigger}
    raise ConfigError(f"trigger must be None, 'availableNow', 'once', a processing-time string like '10 seconds' or "
                      f"a dict of DataStreamWriter.trigger arguments, got {trigger!r}")


def _app_id(checkpoint: str, source: str, target: str) -> str:
    """The stream's app id, created once per checkpoint folder (local or mounted path)."""
    folder = Path(checkpoint.removeprefix("file://")) if "://" not in checkpoint or checkpoint.startswith("file:") \
        else None
    if folder is None:
        raise ConfigError(f"checkpoint {checkpoint!r}: sparkdl keeps the stream's app id next to Spark's checkpoint; "
                          f"use a local or mounted path")
    folder.mkdir(parents=True, exist_ok=True)
    state = folder / STATE_FILE
    if state.is_file():
        data = json.loads(state.read_text())
        if data.get("source") != source or data.get("target") != target:
            raise ConfigError(f"checkpoint {checkpoint} belongs to a stream from {data.get('source')} to "
                              f"{data.get('target')}, not {source} -> {target}; use a new checkpoint folder")
        return data["app_id"]
    data = {"app_id": f"sparkdl-score-{uuid.uuid4().hex}", "source": source, "target": target,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    write_atomic(state, json.dumps(data).encode())
    return data["app_id"]


def committed_batch(table: str, app_id: str, spark=None) -> int | None:
    """The highest batch id `app_id` committed to `table` (None when none, or no table): batch ids only grow, so
    the newest commit of the app (`committed_write`) has it."""
    entry = committed_write(table, {APP_ID_KEY: app_id}, spark)
    return None if entry is None else int(entry["metadata"][BATCH_ID_KEY])


def score_stream(model_ref, source, target, checkpoint: str, trigger=None, quarantine: str | None = None,
                 output: str = "prediction", keep_columns: list[str] | None = None, output_col: str | None = None,
                 batch_size: int | None = None, starting_version: int | None = None, store=None,
                 on_batch: Callable[[ScoreReport], None] | None = None, query_name: str | None = None, spark=None):
    """Start a streaming query scoring the rows appended to the Delta table `source` into `target`.

    Args:
        model_ref: store name, `"name@version"`, `ModelVersion` or `SparkDLModel`.
        source: the source Delta table (appends only; see `sparkdl.lake.stream_source`).
        target: the target Delta table (created by the first batch).
        checkpoint: Spark's checkpoint folder for this query (local or mounted path); reuse it to resume.
        trigger: None (back-to-back micro-batches), "availableNow" (what is there now, then stop), "once",
            a processing time ("10 seconds"), or a dict for `DataStreamWriter.trigger`.
        quarantine: the quarantine table (default `<target>_quarantine`).
        output, keep_columns, output_col, batch_size, store: as for `score_table`.
        starting_version: read the commits from this source version on (default: the snapshot at the start,
            then every later commit).
        on_batch: called with each batch's `ScoreReport` after its commits (in the process that runs
            `foreachBatch`: under Spark Connect, the server's; `stream_reports(checkpoint)` has them too).
        query_name: the streaming query's name.

    Returns:
        the started `pyspark.sql.streaming.StreamingQuery`.

    Raises:
        ConfigError / ModelStoreError / ValidationError / TableError: bad options, model, columns or source, before
            the query starts. Batch failures surface as the query's exception (`query.exception()`).
    """

    spark = spark or get_spark()
    ref, metadata = resolve_model(model_ref, store)
    source_uri, target_uri = normalize_table_uri(source), normalize_table_uri(target)
    quarantine_uri = normalize_table_uri(quarantine) if quarantine else target_uri + QUARANTINE_SUFFIX
    if not exists(source_uri, spark=spark):
        raise TableError(f"score_stream: no Delta table at {source_uri}")
    schema = source_schema(source_uri)
    empty = spark.createDataFrame([], schema).drop(SOURCE_VERSION_COL)
    where = f"score_stream({ref}, {source_uri} -> {target_uri})"
    columns = scoring_columns(empty, ref, metadata, "append", output, keep_columns, output_col, where)
    kwargs = _trigger_kwargs(trigger)
    app_id = _app_id(checkpoint, source_uri, target_uri)
    write_batch = StreamBatchWriter(ref, columns, source_uri, target_uri, quarantine_uri, app_id, checkpoint,
                                    where, batch_size, on_batch)

    spark.dataSource.register(DeltaLogSource)
    reader = spark.readStream.format(FORMAT).schema(schema).option("path", source_uri)
    if starting_version is not None:
        reader = reader.option("startingVersion", str(int(starting_version)))
    writer = reader.load().writeStream.foreachBatch(write_batch).option("checkpointLocation", checkpoint)
    if query_name:
        writer = writer.queryName(query_name)
    if kwargs:
        writer = writer.trigger(**kwargs)
    query = writer.start()
    log.info("%s: started (app id %s, checkpoint %s)", where, app_id, checkpoint)
    return query


@dataclass(frozen=True)
class StreamBatchWriter:
    """`score_stream`'s `foreachBatch` function: one micro-batch scored (a forecaster: the entities it touched) and
    committed to the target and the quarantine table, each commit carrying (app id, batch id); a batch whose
    commits are already there is skipped (a re-run after a crash between the commit and Spark's checkpoint)."""

    ref: Any
    columns: ScoringColumns
    source_uri: str
    target_uri: str
    quarantine_uri: str
    app_id: str
    checkpoint: str
    where: str
    batch_size: int | None = None
    on_batch: Callable[[ScoreReport], None] | None = None

    def __call__(self, batch_df, batch_id: int) -> None:
        from pyspark import StorageLevel

        spark = batch_df.sparkSession  # under Spark Connect this runs in the server's own Python process
        done_target = committed_batch(self.target_uri, self.app_id, spark)
        done_quarantine = committed_batch(self.quarantine_uri, self.app_id, spark)
        if done_target is not None and done_target >= batch_id and (
                done_quarantine is not None and done_quarantine >= batch_id or not _expects_quarantine(
                    self.target_uri, self.app_id, batch_id, spark)):
            log.info("%s: batch %d is already committed (app id %s); skipping", self.where, batch_id, self.app_id)
            return
        scored_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        frame = self._scored(batch_df)
        if frame is None:
            return
        scored = frame.persist(StorageLevel.DISK_ONLY)
        try:
            ok, bad, reasons = count_outcomes(scored)
            if ok + bad == 0:
                return
            ok, _ = self.columns.series_counts(ok, bad)  # a forecaster's in series, as score_table counts them
            report = self._commit(scored, batch_id, ok, bad, reasons, scored_at, done_target, done_quarantine, spark)
        finally:
            scored.unpersist()
        log.info("%s: batch %d: %d scored, %d quarantined", self.where, batch_id, ok, bad)
        _record_report(self.checkpoint, batch_id, report)
        if self.on_batch is not None:
            self.on_batch(report)

    def _scored(self, batch_df):
        if self.columns.forecaster is not None:  # the entities with new rows, from their history
            return _touched_forecasts(batch_df, self.source_uri, self.ref, self.columns.forecaster,
                                      self.columns.output_col)
        return self.columns.scored(batch_df, self.ref, self.batch_size, extra_keep=(SOURCE_VERSION_COL,))

    def _commit(self, scored, batch_id: int, ok: int, bad: int, reasons: dict, scored_at, done_target,
                done_quarantine, spark) -> ScoreReport:
        from pyspark.sql import functions as F

        c, ref = self.columns, self.ref
        lineage = lineage_columns(ref, F.col(SOURCE_VERSION_COL), scored_at)
        good_df, bad_df = split_outcomes(scored, c.keep, c.feature_names, c.output_col, lineage)
        commit = {"sparkdl.operation": "score_stream", "model": ref.name, "model_version": ref.version,
                  "source_table": self.source_uri, APP_ID_KEY: self.app_id, BATCH_ID_KEY: int(batch_id),
                  "scored_rows": ok, "quarantined_rows": bad, "scored_at": scored_at.isoformat()}
        target_version = quarantine_version = None
        # each commit carries the Delta transaction identifier (app id, batch id), as Spark's own Delta sink does:
        # a batch replayed while its first run is still committing is committed once
        if ok and (done_target is None or done_target < batch_id):  # no empty target commit for 0 scored rows
            try:
                target_version = write_table(good_df, self.target_uri, mode="append", spark=spark,
                                             commit_metadata={**commit, "part": "scored"},
                                             txn=Txn(f"{self.app_id}-scored", int(batch_id))).version
            except AlreadyCommitted as done:
                target_version = done.version
        if bad and (done_quarantine is None or done_quarantine < batch_id):
            try:
                quarantine_version = write_table(bad_df, self.quarantine_uri, mode="append", schema_mode="merge",
                                                 spark=spark, commit_metadata={**commit, "part": "quarantine",
                                                                               "reasons": reasons},
                                                 txn=Txn(f"{self.app_id}-quarantine", int(batch_id))).version
            except AlreadyCommitted as done:
                quarantine_version = done.version
        return ScoreReport(ref.name, ref.version, self.source_uri, None, self.target_uri, target_version,
                           self.quarantine_uri if bad else None, quarantine_version, ok + bad, ok, bad, reasons,
                           scored_at.isoformat())


def _touched_forecasts(batch_df, source_uri: str, ref, forecaster, output_col: str):
    """The forecasts of the entities with rows in `batch_df`, from their history in the source snapshot the batch
    ends at (None for an empty batch), with that version as `_source_version`."""
    from pyspark.sql import functions as F

    version = batch_df.agg(F.max(SOURCE_VERSION_COL)).first()[0]
    if version is None:
        return None
    history, _ = read_table(source_uri, version=int(version), spark=batch_df.sparkSession)
    keys = list(forecaster.spec.entity)
    if keys:
        history = history.join(batch_df.select(*keys).distinct(), on=keys, how="left_semi")
    return forecast_frame(history, ref, forecaster, output_col).withColumn(SOURCE_VERSION_COL,
                                                                            F.lit(int(version)).cast("long"))


def _record_report(checkpoint: str, batch_id: int, report: ScoreReport) -> None:
    """Append a batch's report to `<checkpoint>/sparkdl_batches.jsonl` (local checkpoints; see `stream_reports`)."""
    folder = local_path(checkpoint) if "://" in checkpoint else checkpoint
    if folder is not None:
        jsonlines.append(Path(folder) / REPORTS_FILE, {"batch_id": int(batch_id), **report.to_dict()})


def stream_reports(checkpoint: str) -> list[ScoreReport]:
    """The reports of the batches a `score_stream` query on `checkpoint` committed, oldest first. They are what
    `on_batch` received; under Spark Connect `on_batch` runs in the server's Python process, so a client reads them
    here instead (local checkpoint folders)."""
    folder = local_path(checkpoint) if "://" in checkpoint else checkpoint
    if folder is None:
        return []
    fields = set(ScoreReport.__dataclass_fields__)
    return [ScoreReport(**{k: v for k, v in r.items() if k in fields})
            for r in jsonlines.read(Path(folder) / REPORTS_FILE)]


def _expects_quarantine(target: str, app_id: str, batch_id: int, spark) -> bool:
    """Whether the committed target write of (app_id, batch_id) reported quarantined rows."""
    entry = committed_write(target, {APP_ID_KEY: app_id, BATCH_ID_KEY: int(batch_id)}, spark)
    return True if entry is None else int(entry["metadata"].get("quarantined_rows", 0)) > 0
