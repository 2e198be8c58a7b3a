"""The public Delta API: one behaviour over two backends (delta-spark when the session has the Delta extension,
else delta-rs). See the package docstring of `sparkdl.lake`."""
from __future__ import annotations

import datetime as dt
import os
from typing import TYPE_CHECKING

from sparkdl.errors import TableError
from sparkdl.lake import delta_rs, delta_spark
from sparkdl.lake.schema import validate_mode
from sparkdl.lake.snapshot import Snapshot
from sparkdl.lake.versions import Txn, check_commit_metadata, check_version_args
from sparkdl.log import get_logger
from sparkdl.session import delta_backend, get_spark
from sparkdl.uri import filesystem, is_catalog_name, normalize_table_uri, normalized

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

log = get_logger("lake")

def _session(spark):
    if spark is not None:
        return spark
    active = _active_session()
    if active is not None:
        return active

    return get_spark()


def _active_session():
    try:
        from pyspark.sql import SparkSession

        return SparkSession.getActiveSession()
    except Exception:  # noqa: BLE001
        return None


def _backend(spark):
    """The backend module for a session, chosen once per call: `delta_spark` when the session has the Delta
    extension, else `delta_rs`. Both offer read, write, snapshot, history, latest_version and exists, each taking
    the session first."""
    if spark is None:
        return delta_rs

    return delta_spark if delta_backend(spark) == "delta-spark" else delta_rs


def _target(table, backend) -> str:
    """Catalog names stay as they are with delta-spark; everything else becomes a normalized URI."""
    if backend is delta_spark and isinstance(table, str) and is_catalog_name(table):
        return table
    return normalize_table_uri(table)


def read_table(table: str | os.PathLike, version: int | None = None, timestamp=None,
               columns: list[str] | None = None, spark: "SparkSession | None" = None) -> tuple["DataFrame", Snapshot]:
    """Read one version of a Delta table as a Spark DataFrame.

    Args:
        table: a local path, `file://` URI, any URI the backend supports (`s3://`, `abfss://`, ...), or, with
            delta-spark, a catalog table name.
        version: the version to read (default: the latest).
        timestamp: read the version current at this time (datetime, date or ISO-8601 string; naive = UTC).
        columns: the columns to return (default: all, in table order).
        spark: the session (default: `sparkdl.session.get_spark()`).

    Returns:
        (DataFrame, Snapshot) — the Snapshot records table URI, version, commit time, schema, partition columns,
        files and row count.

    Raises:
        TableError: no table there, version past the latest, timestamp before the first commit, unknown columns,
            both version and timestamp given.
        UnsupportedTableFeature: the delta-rs backend cannot read this version exactly (deletion vectors, column
            mapping, unknown reader features); use delta-spark.
    """
    spark = _session(spark)
    backend = _backend(spark)
    target = _target(table, backend)
    check_version_args(version, timestamp, target)
    return backend.read(spark, target, version, timestamp, columns)


def write_table(df: "DataFrame", table: str | os.PathLike, mode: str = "append", partition_by: list[str] | None = None,
                schema_mode: str | None = None, commit_metadata: dict | None = None,
                spark: "SparkSession | None" = None, txn: Txn | None = None) -> Snapshot:
    """Write a DataFrame to a Delta table in one atomic commit.

    Args:
        df: the data.
        table: as for `read_table`; created when missing (except with mode='ignore' when it exists).
        mode: "append", "overwrite" (replaces all rows atomically), "error" (fail if the table exists) or
            "ignore" (do nothing if it exists).
        partition_by: partition columns for a new table (or with schema_mode='overwrite'); for an existing
            table it must match the table's.
        schema_mode: None (the data must fit the table; lossless widening allowed), "merge" (new columns are
            added as nullable columns) or "overwrite" (with mode='overwrite': replace schema and partitioning).
        commit_metadata: dict of str -> str/JSON-able values stored in the commit info (see `history`).
        spark: the session (default: `sparkdl.session.get_spark()`).
        txn: a Delta transaction identifier (`Txn(app_id, version)`): the write commits only if the table has not
            committed that version (or a later one) for that app id, checked before the Spark job and again as
            part of the commit (a concurrent identical write makes this one's commit fail, then it finds the txn).

    Returns:
        The Snapshot of the version this write committed.

    Raises:
        TableError: bad mode/schema_mode/commit_metadata, the table exists with mode='error', the Spark job or
            the commit failed (nothing committed; the table keeps its previous version).
        SchemaMismatchError: columns/types do not fit the table (both sides named), unsupported column types,
            bad partition columns — raised before anything is written.
        UnsupportedTableFeature: the table needs delta-spark to be written correctly.
        AlreadyCommitted: with `txn`, the table has already committed it (nothing was written; `.version`).
    """
    from pyspark.sql import DataFrame

    if not isinstance(df, DataFrame):
        raise TableError(f"write_table needs a Spark DataFrame, got {type(df).__name__}")
    validate_mode(mode, schema_mode)
    if partition_by is not None:
        if isinstance(partition_by, str):
            partition_by = [partition_by]
        partition_by = list(partition_by)
    spark = spark or df.sparkSession
    backend = _backend(spark)
    target = _target(table, backend)
    metadata = check_commit_metadata(commit_metadata, target)
    return backend.write(spark, df, target, mode, partition_by, schema_mode, metadata, txn=txn)


def snapshot(table: str | os.PathLike, version: int | None = None, timestamp=None,
             spark: "SparkSession | None" = None) -> Snapshot:
    """The Snapshot of a table version without building a DataFrame (same arguments and errors as `read_table`)."""
    spark, backend, target = _locate(table, spark)
    check_version_args(version, timestamp, target)
    return backend.snapshot(spark, target, version, timestamp)


def history(table: str | os.PathLike, limit: int | None = None, spark: "SparkSession | None" = None) -> list[dict]:
    """The table's commits, newest first.

    Each entry: `version`, `timestamp` (ISO-8601 UTC), `operation`, `metadata` (the `commit_metadata` dict of
    that write, {} for others), `write_id`, and `commit_info` (the raw commit info).

    Raises:
        TableError: no table there.
    """
    spark, backend, target = _locate(table, spark)
    return backend.history(spark, target, limit)


def latest_version(table: str | os.PathLike, spark: "SparkSession | None" = None) -> int:
    """The latest committed version. Raises TableError when there is no table."""
    spark, backend, target = _locate(table, spark)
    return backend.latest_version(spark, target)


def exists(table: str | os.PathLike, spark: "SparkSession | None" = None) -> bool:
    """True when a Delta table is at `table` (path/URI, or catalog name with delta-spark)."""
    spark, backend, target = _locate(table, spark)
    return backend.exists(spark, target)


def _locate(table, spark):
    """(session, backend module, backend-specific table target) for a table path/URI or catalog name."""
    spark = spark or _active_session()
    backend = _backend(spark)
    return spark, backend, _target(table, backend)


def clean_staging(table: str | os.PathLike, older_than_hours: float = 1.0, dry_run: bool = False) -> list[str]:
    """Remove the `sparkdl-write-*` folders that killed delta-rs writes left inside a table (files no version
    references; readers never see them). Successful writes do this too; see `sparkdl.lake.staging` for exactly
    which folders count as left behind.

    Args:
        table: a path or URI (not a catalog name).
        older_than_hours: only folders older than this (a younger one may belong to a write still running).
        dry_run: list them without removing.

    Returns:
        The names of the folders removed (or found, with `dry_run`).

    Raises:
        TableError: no table there, or a negative age.
    """
    target = normalize_table_uri(table)
    if isinstance(older_than_hours, bool) or not isinstance(older_than_hours, (int, float)) or older_than_hours < 0:
        raise TableError(f"older_than_hours must be a number >= 0, got {older_than_hours!r}")
    return delta_rs.clean_staging(target, dt.timedelta(hours=older_than_hours), dry_run)


def source_of(df: "DataFrame", max_versions: int = 100) -> Snapshot | None:
    """The Delta snapshot a DataFrame reads, when the files it reads are exactly those of one version of one table
    (the newest such version among the last `max_versions`); else None (several tables, a subset or superset of a
    version's files, or a source with no files). Reads the log only (no Spark job)."""
    try:
        files = sorted({normalized(f) for f in df.inputFiles()})
    except Exception:  # noqa: BLE001 - sources without input files
        return None
    root = _table_root(files[0]) if files else None
    if root is None:
        return None
    try:
        latest = latest_version(root)
        for version in range(latest, max(-1, latest - max_versions), -1):
            snap = snapshot(root, version=version)
            if set(files) == {normalized(f) for f in snap.files}:
                return snap
    except TableError:
        return None
    return None


def _table_root(file_uri: str) -> str | None:
    """The nearest folder above `file_uri` that holds a `_delta_log` (the table), or None."""
    import pyarrow.fs as pafs

    fs, path = filesystem(file_uri)
    folder = path.rsplit("/", 1)[0]
    prefix = file_uri[: len(file_uri) - len(path)] if file_uri.endswith(path) else ""
    while folder and folder not in ("/", "."):
        if fs.get_file_info(folder + "/_delta_log").type == pafs.FileType.Directory:
            return prefix + folder
        folder = folder.rsplit("/", 1)[0] if "/" in folder else ""
    return None
