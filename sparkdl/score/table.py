"""`score_table`: score one snapshot of a Delta table into another Delta table, accounting for every row.

    >>> report = score_table("digits@1", "/lake/images", "/lake/digit_predictions")
    >>> report.input_rows == report.scored_rows + report.quarantined_rows
    True

One pass: a `mapInArrow` (whose tasks read the snapshot's Parquet files themselves, see `sparkdl.score.scan`) runs
the model's `PreprocessorModel.prepare_batch` (the training code) and the model on each Arrow batch and emits, per
row, the kept columns, the output, and a `_reason` (null when the row scored). The result is persisted to disk
once, counted (scored / quarantined / reasons), checked against the input row count, and only then written:
scored rows to `target`, rows that could not be prepared (with their raw feature values and the reason) to the
quarantine table. Each write is one atomic Delta commit (`sparkdl.lake.write_table`); a job
that fails while scoring writes nothing.

Lineage: every written row carries `_model`, `_model_version`, `_source_version` and `_scored_at`; each commit's
metadata records model, model version, source table and version, and the row counts.

Re-runs are idempotent (one rule with `score_stream`, `committed_write`): in append mode, a table whose history
already has this (model, model version, source table, source version) part is not written again, so a re-run after
a failure between the target's and the quarantine's commits writes only what is missing; the report's
`committed` says, per table, "written", "already" (an earlier run's commit) or "nothing".
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from dataclasses import asdict

from sparkdl.errors import AlreadyCommitted, ScoringError, one_line_reason
from sparkdl.lake import Txn, exists, latest_version, read_table, write_table
from sparkdl.lake.schema import plan_existing_table
from sparkdl.log import get_logger
from sparkdl.score.core import (
    QUARANTINE_SUFFIX,
    ScoreReport,
    committed_write,
    count_outcomes,
    lineage_columns,
    scoring_columns,
    split_outcomes,
)
from sparkdl.score.forecast import data_counts
from sparkdl.score.model_ref import resolve_model
from sparkdl.uri import normalize_table_uri

log = get_logger("score.table")


# ------------------------------------------------------------------------------------------------ score_table
def score_table(model_ref, source, target, mode: str = "append", keep_columns: list[str] | None = None,
                source_version: int | None = None, output: str = "prediction", quarantine: str | None = None,
                output_col: str | None = None, batch_size: int | None = None, store=None,
                spark=None, attribution=None) -> ScoreReport:
    """Score a Delta table snapshot into a Delta table; quarantine the rows that cannot be scored.

    When no row is scored (an empty source, or every row quarantined) the target gets no new version: the report's
    `target_version` is the version it already had (None when it does not exist) and `scored_rows` is 0; the
    quarantine is still written. An empty source is a no-op with a report of zeros, not an error.

    Args:
        model_ref: store name, `"name@version"`, `ModelVersion` or `SparkDLModel`.
        source: the source Delta table (path or URI).
        target: the target Delta table (created when missing).
        mode: "append" (the output must fit the target's schema) or "overwrite" (replaces the target's rows and
            schema); the quarantine table is always appended to (new columns merged).
        keep_columns: source columns copied to the output (default: the spec's id columns, else every column that
            is not a feature).
        source_version: the source version to score (default: the latest).
        output: "prediction", "probabilities", "embedding", "struct" or "attributions" (`explain_table`); an
            anomaly detector's "prediction" (its score) or "anomaly" (score, flag, the segment's threshold and
            per-feature contributions).
        quarantine: the quarantine table (default: `<target>_quarantine`).
        output_col: name of the output column (default: the output kind).
        batch_size: rows per model call.
        store: model store or its root.
        spark: the session (default: `sparkdl.session.get_spark()`).
        attribution: for output "attributions", a `sparkdl.explain.Attribution`.

    Returns:
        a `ScoreReport` (versions written, row counts, quarantine reasons).

    Raises:
        ConfigError / ModelStoreError: bad options or model reference (before any Spark job).
        ValidationError: missing or mistyped feature/keep columns (from the schema, before any Spark job).
        TableError: the source cannot be read, or a write fails (its table keeps its version).
        ScoringError: scoring failed, or the row counts do not add up; nothing was written.
    """
    from pyspark import StorageLevel

    started = time.perf_counter()
    ref, metadata = resolve_model(model_ref, store)
    df, snap = read_table(source, version=source_version, spark=spark)
    spark = df.sparkSession
    where = f"score_table({ref}, source={snap.table}@{snap.version})"
    columns = scoring_columns(df, ref, metadata, mode, output, keep_columns, output_col, where, attribution)
    target_uri = normalize_table_uri(target)
    quarantine_uri = normalize_table_uri(quarantine) if quarantine else target_uri + QUARANTINE_SUFFIX
    target_before = _version_or_none(target_uri, spark)
    scored_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)

    scored = columns.scored(df, ref, batch_size)
    lineage = lineage_columns(ref, snap.version, scored_at)  # aware datetime: Spark converts it as UTC
    if mode == "append" and target_before is not None:
        # the appended rows must fit the target: find out from the schemas, before scoring the whole source
        _check_appendable(split_outcomes(scored, columns.keep, columns.feature_names, columns.output_col,
                                         lineage)[0].schema, target_uri, spark)
    scored = scored.persist(StorageLevel.DISK_ONLY)
    try:
        try:
            ok, bad, reasons = count_outcomes(scored)
        except Exception as exc:  # noqa: BLE001 - Py4J/PythonException from the executors
            raise ScoringError(f"{where}: scoring failed; nothing was written to {target_uri} (still at version "
                               f"{target_before}): {one_line_reason(exc)[:800]}") from exc
        ok, input_rows = columns.series_counts(ok, bad)
        adjusted = data_counts(scored) if columns.forecaster is not None else {}
        if any(adjusted.values()):
            log.warning("%s: %d duplicate (entity, time) row(s) counted once with their mean, %d row(s) off their "
                        "entity's grid left out", where, adjusted["duplicate_rows"], adjusted["off_grid_rows"])
        if columns.forecaster is None:
            input_rows = snap.num_rows if snap.num_rows is not None else df.count()
        if ok + bad != input_rows:
            raise ScoringError(f"{where}: {input_rows} input rows but {ok} scored + {bad} quarantined = {ok + bad}; "
                               f"nothing was written")
        good_df, bad_df = split_outcomes(scored, columns.keep, columns.feature_names, columns.output_col, lineage)
        operation = "explain" if output == "attributions" else "score"
        commit = {"sparkdl.operation": operation, "model": ref.name, "model_version": ref.version,
                  "model_store": ref.root, "output": output, "source_table": snap.table,
                  "source_version": snap.version, "input_rows": input_rows, "scored_rows": ok,
                  "quarantined_rows": bad, "scored_at": scored_at.isoformat(), **adjusted}
        if columns.plan is not None and columns.plan.attribution is not None:
            commit["attribution"] = asdict(columns.plan.attribution)
        run_key = {"sparkdl.operation": operation, "model_store": str(ref.root), "model": ref.name,
                   "model_version": ref.version, "output": output, "source_table": snap.table,
                   "source_version": snap.version}
        written = _commit_outcomes(good_df if ok else None, bad_df if bad else None, target_uri, quarantine_uri,
                                   mode, commit, run_key, reasons, where, spark)
    finally:
        scored.unpersist()
    target_version = written["target_version"] if written["target_version"] is not None else target_before
    if not ok:
        log.warning("%s: no row was scored (%d input, %d quarantined): %s stays at version %s", where, input_rows,
                    bad, target_uri, target_before)
    report = ScoreReport(ref.name, ref.version, snap.table, snap.version, target_uri, target_version,
                         quarantine_uri if bad else None, written["quarantine_version"], input_rows, ok, bad, reasons,
                         scored_at.isoformat(), round(time.perf_counter() - started, 3), written["committed"], adjusted)
    log.info("%s: %d scored -> %s@%s, %d quarantined", where, ok, target_uri, target_version, bad)
    return report


def run_txn(run_key: dict, part: str) -> Txn:
    """The Delta transaction identifier of one part ("scored", "quarantine") of a scoring run: its app id is a hash
    of what the run reads and writes (`run_key`), so an identical re-run, even one running at the same time,
    commits nothing the first did (`write_table`'s `txn`, the mechanism `score_stream` uses per micro-batch)."""
    digest = hashlib.sha256(json.dumps({**run_key, "part": part}, sort_keys=True, default=str).encode())
    return Txn(f"sparkdl-run-{digest.hexdigest()[:40]}", 0)


def _commit_outcomes(good_df, bad_df, target_uri: str, quarantine_uri: str, mode: str, commit: dict, run_key: dict,
                     reasons: dict, where: str, spark) -> dict:
    """Write the scored rows to the target and the quarantined ones to the quarantine table (None: nothing to
    write), each one atomic commit carrying the run's transaction identifier (`run_txn`; the target's in append
    mode): a part an identical run committed, before or at the same time, is not written again. Returns
    {"target_version", "quarantine_version", "committed": {table: what happened}}."""
    out = {"target_version": None, "quarantine_version": None,
           "committed": {"target": "nothing", "quarantine": "nothing"}}
    if good_df is not None:
        try:
            if mode == "append":  # a run committed before transaction identifiers: found by its commit metadata
                _raise_if_committed(target_uri, {**run_key, "part": "scored"}, spark)
            out["target_version"] = write_table(good_df, target_uri, mode=mode,
                                                commit_metadata={**commit, "part": "scored"},
                                                schema_mode="overwrite" if mode == "overwrite" else None,
                                                spark=spark,
                                                txn=run_txn(run_key, "scored") if mode == "append" else None).version
            out["committed"]["target"] = "written"
        except AlreadyCommitted as done:
            earlier = committed_write(target_uri, {**run_key, "part": "scored"}, spark)
            out["committed"]["target"] = "already"
            out["target_version"] = earlier["version"] if earlier is not None else done.version
            log.warning("%s: %s already has these rows (version %s); not written again", where, target_uri,
                        out["target_version"])
    if bad_df is not None:
        try:
            _raise_if_committed(quarantine_uri, {**run_key, "part": "quarantine"}, spark)
            out["quarantine_version"] = write_table(bad_df, quarantine_uri, mode="append", schema_mode="merge",
                                                    commit_metadata={**commit, "part": "quarantine",
                                                                     "reasons": reasons}, spark=spark,
                                                    txn=run_txn(run_key, "quarantine")).version
            out["committed"]["quarantine"] = "written"
            log.warning("%s: %d row(s) quarantined to %s: %s", where, sum(reasons.values()), quarantine_uri,
                        reasons)
        except AlreadyCommitted as done:
            earlier = committed_write(quarantine_uri, {**run_key, "part": "quarantine"}, spark)
            out["committed"]["quarantine"] = "already"
            out["quarantine_version"] = earlier["version"] if earlier is not None else done.version
    return out


def _raise_if_committed(table: str, match: dict, spark) -> None:
    earlier = committed_write(table, match, spark)
    if earlier is not None:
        raise AlreadyCommitted(f"{table} has a commit of this run (version {earlier['version']})", earlier["version"])


def _check_appendable(schema, target_uri: str, spark) -> None:
    """Raise SchemaMismatchError (naming both sides) when rows of `schema` cannot be appended to the target."""
    table_df, table_snap = read_table(target_uri, spark=spark)
    plan_existing_table(schema, table_df.schema, list(table_snap.partition_columns), "append", None, None,
                        target_uri)


def _version_or_none(uri: str, spark) -> int | None:
    return latest_version(uri, spark=spark) if exists(uri, spark=spark) else None
