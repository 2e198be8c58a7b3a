"""The delta-spark backend: used when the session has Delta Lake's Spark extension (clusters, Databricks).

Reads use `spark.read.format("delta")` with `versionAsOf` / `timestampAsOf` (or `VERSION AS OF` /
`TIMESTAMP AS OF` for catalog tables); writes use `df.write.format("delta")` with `userMetadata` carrying the
commit metadata and the write id. Version checks, schema checks and the returned Snapshot follow the same rules
as the delta-rs backend; the version a write produced is found in `DESCRIBE HISTORY` by its write id.
"""
from __future__ import annotations

import uuid

from sparkdl.errors import AlreadyCommitted, SparkDLError, TableError
from sparkdl.lake.schema import plan_existing_table, plan_new_table, quote_name, schema_ddl
from sparkdl.lake.snapshot import Snapshot
from sparkdl.lake.versions import Txn, history_entry, parse_timestamp, user_metadata
from sparkdl.log import get_logger
from sparkdl.uri import local_path

log = get_logger("lake.delta_spark")

BACKEND = "delta-spark"


def _is_name(table: str) -> bool:
    return "://" not in table and not table.startswith(("file:", "/"))


def _path(table: str) -> str:
    """Spark's form of a path table: `file://` + the literal local path, or the URI."""
    path = local_path(table)
    return "file://" + path if path is not None else table


def _sql_ref(table: str) -> str:
    return table if _is_name(table) else f"delta.`{_path(table)}`"


def exists(spark, table: str) -> bool:
    """True when `table` (a path/URI or a catalog name) is a Delta table, False when there is none there.

    Raises:
        TableError: whether a table is there cannot be told (no permission, storage unreachable, ...): treating
            that as "no table" would turn mode "error"/"ignore" into a write onto an existing table.
    """
    try:
        if _is_name(table):
            if not spark.catalog.tableExists(table):
                return False
            provider = spark.sql(f"DESCRIBE DETAIL {table}").select("format").first()
            return bool(provider) and str(provider[0]).lower() == "delta"
        from delta.tables import DeltaTable

        return bool(DeltaTable.isDeltaTable(spark, _path(table)))
    except Exception as exc:  # noqa: BLE001 - anything but a plain "no table" answer
        raise TableError(f"cannot tell whether {table} is a Delta table: {type(exc).__name__}: {exc}") from exc


def _require(spark, table: str) -> None:
    if not exists(spark, table):
        raise TableError(f"no Delta table {table}")


def history(spark, table: str, limit: int | None = None) -> list[dict]:
    """Commits of `table`, newest first (same entries as the delta-rs backend)."""
    _require(spark, table)
    query = f"DESCRIBE HISTORY {_sql_ref(table)}" + (f" LIMIT {int(limit)}" if limit else "")
    rows = spark.sql(query).orderBy("version", ascending=False).collect()
    entries = []
    for row in rows:
        info = row.asDict(recursive=True)
        entries.append(history_entry(info["version"], info))
    return entries


def _version_of_write(spark, table: str, write_id: str, required: bool = True) -> int | None:
    """The version this process's write committed, found by its write id: among the newest commits first, then in
    the whole history (never "the latest", which may be another writer's under concurrency). None, when not
    `required`, for a write Delta skipped (its transaction identifier was committed)."""
    for limit in (64, None):
        entries = history(spark, table, limit)
        version = next((e["version"] for e in entries if e["write_id"] == write_id), None)
        if version is not None:
            return version
        if limit is not None and len(entries) < limit:
            break
    if not required:
        return None
    raise TableError(f"{table}: the write {write_id} reported success but no commit carries its id; read the "
                     f"table's history to see what was committed")


def latest_version(spark, table: str) -> int:
    _require(spark, table)
    row = spark.sql(f"DESCRIBE HISTORY {_sql_ref(table)} LIMIT 1").select("version").first()
    return int(row[0])


def _resolve(spark, table: str, version, timestamp) -> tuple[int, str | None]:
    """(version, commit timestamp ISO) of the requested version; same errors as the delta-rs backend."""
    entries = history(spark, table)
    if not entries:
        raise TableError(f"{table}: empty history")
    latest = entries[0]["version"]
    if timestamp is not None:
        wanted = parse_timestamp(timestamp, table)
        stamped = [(e["version"], parse_timestamp(e["timestamp"], table)) for e in entries if e["timestamp"]]
        first_version, first_ts = min(stamped)
        if wanted < first_ts:
            raise TableError(f"{table}: timestamp {wanted.isoformat()} is before the first available commit "
                             f"(version {first_version} at {first_ts.isoformat()})")
        version = max(v for v, ts in stamped if ts <= wanted)
    elif version is None:
        version = latest
    elif version > latest:
        raise TableError(f"{table}: version {version} does not exist; the latest version is {latest}")
    stamp = next((e["timestamp"] for e in entries if e["version"] == version), None)
    return int(version), stamp


def _load(spark, table: str, version: int):
    if _is_name(table):
        return spark.sql(f"SELECT * FROM {table} VERSION AS OF {int(version)}")
    return spark.read.format("delta").option("versionAsOf", int(version)).load(_path(table))


def _partition_columns(spark, table: str) -> tuple[str, ...]:
    row = spark.sql(f"DESCRIBE DETAIL {_sql_ref(table)}").select("partitionColumns").first()
    return tuple(row[0] or ()) if row else ()


def snapshot(spark, table: str, version=None, timestamp=None) -> Snapshot:
    df, snap = read(spark, table, version, timestamp)
    return snap


def read(spark, table: str, version=None, timestamp=None, columns=None):
    """(DataFrame, Snapshot) of one version; timestamps resolve to the version current at that time."""
    resolved, stamp = _resolve(spark, table, version, timestamp)
    try:
        df = _load(spark, table, resolved)
    except Exception as exc:  # noqa: BLE001 - AnalysisException: unreadable version, missing files
        raise TableError(f"cannot read {table} at version {resolved}: {exc}") from exc
    files = tuple(df.inputFiles())
    snap = Snapshot(table=table, version=resolved, timestamp=stamp, schema=schema_ddl(df.schema),
                    partition_columns=_partition_columns(spark, table), files=files, num_files=len(files),
                    num_rows=None, backend=BACKEND)
    if columns is not None:
        by_lower = {f.name.lower(): f.name for f in df.schema.fields}
        missing = [c for c in columns if c.lower() not in by_lower]
        if missing:
            raise TableError(f"{table} has no column(s) {missing}; columns: {', '.join(by_lower.values())}")
        df = df.select(*[quote_name(by_lower[c.lower()]) for c in columns])
    return df, snap


def write(spark, df, table: str, mode: str = "append", partition_by=None, schema_mode=None,
          commit_metadata=None, txn: Txn | None = None) -> Snapshot:
    """`df.write.format("delta")` with sparkdl's checks; returns the Snapshot of the new version. A `txn` goes to
    Delta's own `txnAppId`/`txnVersion` options (Delta skips a write whose transaction the table has committed,
    checked in the commit); a write Delta skipped raises AlreadyCommitted."""
    commit_metadata = commit_metadata or {}
    existed = exists(spark, table)
    if existed:
        if mode == "error":
            raise TableError(f"a Delta table already exists at {table} (mode='error')")
        if mode == "ignore":
            return snapshot(spark, table)
        current = _load(spark, table, latest_version(spark, table))
        plan = plan_existing_table(df.schema, current.schema, list(_partition_columns(spark, table)), mode,
                                   partition_by, schema_mode, table)
    else:
        plan = plan_new_table(df.schema, partition_by, table)
    write_id = uuid.uuid4().hex
    out = df.select(*plan.casts(df.schema))
    writer = (out.write.format("delta").mode("overwrite" if mode == "overwrite" else "append")
              .option("userMetadata", user_metadata(commit_metadata, write_id)))
    if plan.partition_columns:
        writer = writer.partitionBy(*plan.partition_columns)
    if plan.new_fields:
        writer = writer.option("mergeSchema", "true")
    if plan.replace_schema:
        writer = writer.option("overwriteSchema", "true")
    if txn is not None:
        writer = writer.option("txnAppId", txn.app_id).option("txnVersion", str(txn.version))
    try:
        if _is_name(table):
            writer.saveAsTable(table)
        else:
            writer.save(_path(table))
    except SparkDLError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed job commits nothing (Delta's optimistic commit)
        raise TableError(f"writing to {table} failed; nothing was committed: {exc}") from exc
    version = _version_of_write(spark, table, write_id, required=txn is None)
    if version is None and txn is not None:
        raise AlreadyCommitted(f"{table} has already committed transaction {txn.version} of {txn.app_id}; nothing "
                               f"written (delta-spark skipped the write)", latest_version(spark, table))
    log.info("wrote %s as version %s (delta-spark)", table, version)
    return snapshot(spark, table, version=version)
