"""The delta-rs backend: the Delta log through `deltalake`, the data through Spark's Parquet reader and writer.

Read: delta-rs resolves the snapshot; Spark reads exactly that snapshot's files (never a directory listing) with
the schema from the log, and partition values from the log are added as typed literal columns per file group.
Rows deleted by deletion vectors are dropped (`sparkdl.lake.deletion_vectors`), and with column mapping the
physical columns are returned under their logical names (`sparkdl.lake.column_mapping`). Commit times are the
ones Delta defines (`sparkdl.lake.commit_clock`). Each call opens the table once and reads its history at most once.

Write: executors write Parquet files with `df.write.parquet` into a fresh sub-folder of the table
(`sparkdl-write-<time>-<id>/`, which stays the files' home); the driver reads the footers for per-file stats and
commits all files in ONE transaction (`create_table_with_add_actions` for a new table or a schema replacement,
`DeltaTable.create_write_transaction` otherwise; an overwrite removes every old file in the same commit).
A failed Spark job or commit commits nothing and the sub-folder is deleted (best-effort, once every task of the
failed job has stopped: `sparkdl.spark_jobs`); folders left by killed writes are removed later
(`sparkdl.lake.staging`). Conflicting appends are retried. `schema_mode="merge"` first
commits the added nullable columns (a metadata-only commit), then the data. Timestamps are written as Parquet
TIMESTAMP_MICROS: the session's `spark.sql.parquet.outputTimestampType` is set to it when a written column holds
timestamps.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from sparkdl.errors import AlreadyCommitted, SchemaMismatchError, SparkDLError, TableError, one_line_reason
from sparkdl.lake import column_mapping, features, partitions, staging
from sparkdl.lake.commit_clock import commit_times, log_file_times, version_at
from sparkdl.lake.deletion_vectors import DeletedRows, deleted_rows, drop_deleted, split_by_name
from sparkdl.lake.schema import (
    WritePlan,
    delta_schema_json,
    plan_existing_table,
    plan_new_table,
    quote_name,
    same_type,
    schema_ddl,
    spark_schema_from_delta_json,
)
from sparkdl.lake.snapshot import Snapshot
from sparkdl.lake.stats import file_stats
from sparkdl.lake.versions import (
    WRITE_ID_KEY,
    Txn,
    history_entry,
    iso_ms,
    parse_timestamp,
    to_millis,
    user_metadata,
)
from sparkdl.log import get_logger
from sparkdl.spark_jobs import stopped_on_error
from sparkdl.uri import filesystem, join_table_path, local_path

log = get_logger("lake.delta_rs")

BACKEND = "delta-rs"
COMMIT_ATTEMPTS = 8
_TIMESTAMP_CONF = "spark.sql.parquet.outputTimestampType"
_conf_lock = threading.Lock()


def _location(uri: str) -> str:
    """What delta-rs is given: the local path for `file:` URIs, else the URI."""
    return local_path(uri) or uri


def _spark_location(uri: str) -> str:
    """What Spark is given: `file://` + the literal local path (Hadoop does not decode `%XX`), else the URI."""
    path = local_path(uri)
    return "file://" + path if path is not None else uri


# -- metadata --------------------------------------------------------------------------------------------------

class _Table:
    """One open of a table for one call: the `DeltaTable`, its commit times and its history each read at most once.

    Raises (from `open`):
        TableError: no table at `uri`, or it cannot be opened.
    """

    def __init__(self, uri: str, dt):
        self.uri = uri
        self.dt = dt
        self._history: list[dict] | None = None
        self._times: dict[int, int] | None = None

    @classmethod
    def open(cls, uri: str) -> "_Table":
        table = cls.open_if_exists(uri)
        if table is None:
            raise TableError(f"no Delta table at {uri} (no _delta_log with commits)")
        return table

    @classmethod
    def open_if_exists(cls, uri: str) -> "_Table | None":
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return cls(uri, DeltaTable(_location(uri)))
        except TableNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - unreadable log, storage errors
            raise TableError(f"cannot open the Delta table at {uri}: {one_line_reason(exc)}") from exc

    def history(self) -> list[dict]:
        """Every commit's info, newest first."""
        if self._history is None:
            self._history = list(self.dt.history())
        return self._history

    def times(self) -> dict[int, int]:
        """Version -> commit time (epoch ms), see `sparkdl.lake.commit_clock`."""
        if self._times is None:
            fs, root = filesystem(self.uri)
            config = self.dt.metadata().configuration or {}
            self._times = commit_times(log_file_times(fs, root), config, lambda: {
                int(h["version"]): h.get("inCommitTimestamp") for h in self.history() if "version" in h})
        return self._times

    def load(self, version: int) -> None:
        if version == self.dt.version():
            return
        try:
            self.dt.load_as_version(int(version))
        except Exception as exc:  # noqa: BLE001 - log files removed by log cleanup, corrupt log
            raise TableError(f"{self.uri}: cannot load version {version}: {one_line_reason(exc)}") from exc


def exists(spark, uri: str) -> bool:
    """True when a Delta table (a `_delta_log` with commits) is at `uri`, False when there is none. (`spark` is
    unused here: every backend takes the session first.)

    Raises:
        TableError: the storage could not be read (a missing table is False; an unreachable store is an error,
            never "no table", which would let a write create a second table over it).
    """
    from deltalake import DeltaTable

    try:
        return DeltaTable.is_deltatable(_location(uri))
    except Exception as exc:  # noqa: BLE001 - storage that cannot be read is not "no table": say so
        raise TableError(f"cannot tell whether {uri} holds a Delta table: the storage could not be read "
                         f"({one_line_reason(exc)[:300]})") from exc


def latest_version(spark, uri: str) -> int:
    """The latest committed version of the table at `uri`.

    Raises:
        TableError: no table there.
    """
    return _Table.open(uri).dt.version()


def history(spark, uri: str, limit: int | None = None) -> list[dict]:
    """Commits of the table at `uri`, newest first (see `sparkdl.lake.versions.history_entry`); each entry's
    timestamp is the commit time Delta defines (`sparkdl.lake.commit_clock`)."""
    table = _Table.open(uri)
    times = table.times()
    return [history_entry(h["version"], h, times.get(int(h["version"]))) for h in table.dt.history(limit)]


def _resolve(uri: str, version: int | None, timestamp) -> tuple[_Table, int | None]:
    """The table loaded at the requested version, and that version's commit time (epoch ms).

    Raises:
        TableError: unknown table, version past the latest, timestamp before the first commit.
    """
    table = _Table.open(uri)
    latest = table.dt.version()
    if timestamp is not None:
        version = version_at(table.times(), to_millis(parse_timestamp(timestamp, uri)), uri)
    elif version is not None:
        if version > latest:
            raise TableError(f"{uri}: version {version} does not exist; the latest version is {latest}")
    else:
        version = latest
    millis = table.times().get(int(version))
    table.load(int(version))
    return table, millis


def _snapshot(table: _Table, millis: int | None) -> tuple[Snapshot, list[tuple[str, dict]], DeletedRows]:
    """The Snapshot of a loaded table, its files as (location, typed partition values) and its deleted rows."""
    import pyarrow as pa

    dt, uri = table.dt, table.uri
    meta = dt.metadata()
    parts = list(meta.partition_columns)
    actions = pa.table(dt.get_add_actions(flatten=False))
    paths = actions.column("path").to_pylist()
    if parts and "partition" in actions.column_names:
        values = actions.column("partition").to_pylist()
    else:
        values = [{} for _ in paths]
    files = [(join_table_path(uri, p), v or {}) for p, v in zip(paths, values)]
    deleted = deleted_rows(dt) if "deletionVectors" in (dt.protocol().reader_features or []) else DeletedRows({})
    counts = actions.column("num_records").to_pylist() if "num_records" in actions.column_names else [None]
    num_rows = sum(counts) - deleted.count if paths and all(c is not None for c in counts) else (
        0 if not paths else None)
    schema = spark_schema_from_delta_json(dt.schema().to_json())
    snap = Snapshot(table=uri, version=dt.version(), timestamp=iso_ms(millis),
                    schema=schema_ddl(column_mapping.logical_type(schema)), partition_columns=tuple(parts),
                    files=tuple(f for f, _ in files), num_files=len(files), num_rows=num_rows, backend=BACKEND)
    return snap, files, deleted


def snapshot(spark, uri: str, version: int | None = None, timestamp=None) -> Snapshot:
    """The Snapshot of the table at `uri` (latest, a version, or the version current at `timestamp`).

    Raises:
        TableError: see `_resolve`.
        UnsupportedTableFeature: the version uses a feature the delta-rs path cannot read.
    """
    table, millis = _resolve(uri, version, timestamp)
    features.check_readable(table.dt, uri)
    return _snapshot(table, millis)[0]


def plain_files(uri: str, version: int) -> tuple[Snapshot, dict[str, dict]]:
    """The Snapshot of `version` for readers of raw data files (the stream source), and each file's typed
    partition values as the log records them: a version whose files do not hold its rows as they are — column
    mapping, deletion vectors — raises `UnsupportedTableFeature`."""
    table, millis = _resolve(uri, version, None)
    features.check_readable(table.dt, uri)
    snap, files, deleted = _snapshot(table, millis)
    features.check_plain_files(table.dt, uri, deleted.count)
    return snap, dict(files)


# -- read ------------------------------------------------------------------------------------------------------

def read(spark, uri: str, version: int | None = None, timestamp=None, columns: list[str] | None = None):
    """Read one version of the table as a Spark DataFrame: (DataFrame, Snapshot). See `sparkdl.lake.read_table`."""
    table, millis = _resolve(uri, version, timestamp)
    features.check_readable(table.dt, uri)
    snap, files, deleted = _snapshot(table, millis)
    schema = spark_schema_from_delta_json(table.dt.schema().to_json())
    mapped = column_mapping.mode(table.dt.metadata().configuration) != "none"
    selected = _resolve_columns(columns, schema, uri)
    with _driver_side_listing(spark, uri, len(files)):
        df = _dataframe(spark, schema, list(snap.partition_columns), files, deleted, mapped)
    if selected is not None:
        df = df.select(*[quote_name(c) for c in selected])
    return df, snap


@contextlib.contextmanager
def _driver_side_listing(spark, uri: str, num_files: int):
    """For local tables, stat the snapshot's files on the driver: above
    `spark.sql.sources.parallelPartitionDiscovery.threshold` paths Spark would start a listing job, which costs
    more than the scan of a small table (the files are known already; nothing is discovered)."""
    key = "spark.sql.sources.parallelPartitionDiscovery.threshold"
    if local_path(uri) is None or num_files <= 32:
        yield
        return
    with _conf_lock:
        previous = spark.conf.get(key, None)
        spark.conf.set(key, str(max(num_files + 1, 32)))
        try:
            yield
        finally:
            if previous is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, previous)


def _dataframe(spark, schema, parts: list[str], files: list[tuple[str, dict]], deleted: DeletedRows,
               mapped: bool):
    """The rows of `files`: partition values from the log as typed columns, rows deleted by vectors dropped, and
    with column mapping the physical columns renamed to the logical schema."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    logical = column_mapping.logical_type(schema) if mapped else schema
    if not files:
        return spark.createDataFrame([], logical)
    fields = {f.name: f for f in schema.fields}
    data_fields = [f for f in schema.fields if f.name not in parts]
    if mapped:
        read_fields = [T.StructField(column_mapping.physical_name(f), column_mapping.physical_type(f.dataType),
                                     f.nullable) for f in data_fields]
        data_columns = [column_mapping.to_logical(f) for f in data_fields]
    else:
        read_fields = list(data_fields)
        data_columns = [F.col(quote_name(f.name)) for f in data_fields]
    groups: dict[tuple, list[str]] = defaultdict(list)
    for location, values in files:
        groups[tuple(_partition_value(values, fields[p]) for p in parts)].append(location)
    # A column absent from every file reads as null; `when(absent IS NULL, value)` is the partition value,
    # nullable as in the table schema (a bare literal would make the column non-nullable).
    absent = f"__sparkdl_absent_{uuid.uuid4().hex}"
    read_schema = T.StructType(read_fields + ([T.StructField(absent, T.BooleanType(), True)] if parts else []))
    frames = []
    for key, locations in groups.items():
        values = [F.when(F.col(absent).isNull(), partitions.literal(value, fields[p].dataType)).alias(p)
                  for p, value in zip(parts, key)]
        for batch in (split_by_name(locations) if deleted.count else [locations]):
            frame = spark.read.schema(read_schema).parquet(*batch)
            if deleted.count:
                frame = drop_deleted(spark, frame, batch, deleted)
            frames.append(frame.select(*data_columns, *values))
    df = frames[0]
    for frame in frames[1:]:
        df = df.unionByName(frame)
    return df.select(*[quote_name(f.name) for f in schema.fields])


def _partition_value(values: dict, field):
    """A file's value of partition column `field` (the log keys it by logical or, with column mapping, physical
    name)."""
    if field.name in values:
        return values[field.name]
    return values.get(column_mapping.physical_name(field))


def _resolve_columns(columns, schema, uri: str) -> list[str] | None:
    if columns is None:
        return None
    if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
        raise TableError(f"columns must be a list of column names, got {columns!r}")
    by_lower = {f.name.lower(): f.name for f in schema.fields}
    missing = [c for c in columns if c.lower() not in by_lower]
    if missing:
        raise TableError(f"{uri} has no column(s) {missing}; columns: {', '.join(f.name for f in schema.fields)}")
    return [by_lower[c.lower()] for c in columns]


# -- write -----------------------------------------------------------------------------------------------------

def write(spark, df, uri: str, mode: str = "append", partition_by: list[str] | None = None,
          schema_mode: str | None = None, commit_metadata: dict | None = None, txn: Txn | None = None) -> Snapshot:
    """Write `df` to the table at `uri` in one commit; returns the Snapshot of the new version.

    An existing table is opened once (refreshed incrementally after the commit; a new table is opened once it is
    created), and its history is read once, limited to the commits since this write's read version. After the
    commit, `sparkdl-write-*` folders left by killed writes are removed (see `sparkdl.lake.staging`). See
    `sparkdl.lake.write_table` for the semantics and errors.
    """
    from pyspark.sql import functions as F

    commit_metadata = commit_metadata or {}
    table = _Table.open_if_exists(uri)
    if table is not None:
        features.check_writable(table.dt, uri)
        if mode == "error":
            raise TableError(f"a Delta table already exists at {uri} (mode='error')")
        if mode == "ignore":
            log.info("%s exists; mode='ignore' writes nothing", uri)
            return _snapshot(table, table.times().get(table.dt.version()))[0]
        _check_txn(table, txn, uri)  # before any Spark job
        table_schema = spark_schema_from_delta_json(table.dt.schema().to_json())
        plan = plan_existing_table(df.schema, table_schema, list(table.dt.metadata().partition_columns), mode,
                                   partition_by, schema_mode, uri)
        read_version = table.dt.version()
    else:
        plan = plan_new_table(df.schema, partition_by, uri)
        read_version = None

    write_id = uuid.uuid4().hex
    staging_dir = staging.folder_name(write_id)
    out = df.select(*plan.casts(df.schema))
    tz = spark.conf.get("spark.sql.session.timeZone")
    types = {f.name: f.dataType for f in plan.schema.fields}
    for p in plan.partition_columns:
        out = out.withColumn(p, partitions.delta_string(F.col(quote_name(p)), types[p], tz))
    fs, root = filesystem(uri)
    state = "unchanged" if read_version is not None else "not created"
    lease = staging.Lease(fs, root, staging_dir).start()  # the folder is alive while this write runs
    try:
        try:
            with stopped_on_error(spark, staging_dir):
                _spark_write(spark, out, _spark_location(uri) + "/" + staging_dir, plan)
            adds = _add_actions(fs, root, staging_dir, plan)
        except BaseException as exc:
            staging.remove(fs, root, staging_dir)
            if isinstance(exc, SparkDLError):
                raise
            raise TableError(f"writing to {uri} failed before the commit; the table is {state}"
                             f"{'' if read_version is None else f' (version {read_version})'}: "
                             f"{one_line_reason(exc)[:500]}") from exc
        try:
            lease.fence([a.path for a in adds])  # still ours, every staged file still there
            table = _commit(uri, table, plan, adds, mode, commit_metadata, write_id, txn)
            version = _find_write(table, write_id, read_version)
            if version is None:
                raise TableError(f"the commit of write {write_id} to {uri} reported success but is not in the log")
        except BaseException as exc:
            version = _find_write(_Table.open_if_exists(uri), write_id, read_version)
            if version is None:
                staging.remove(fs, root, staging_dir)
                if isinstance(exc, AlreadyCommitted):
                    raise
                if isinstance(exc, SparkDLError):
                    raise
                raise TableError(f"committing the write to {uri} failed; nothing was committed: "
                                 f"{one_line_reason(exc)[:500]}") from exc
            log.warning("the commit of %s to %s landed as version %s but reported: %s", write_id, uri, version, exc)
            table = _Table.open(uri)
    finally:
        lease.stop()
    log.info("wrote %d file(s) to %s as version %s", len(adds), uri, version)
    table.load(version)
    snap = _snapshot(table, table.times().get(version))[0]
    try:
        staging.remove_debris(fs, root, table, active_files=snap.files)
    except Exception as exc:  # noqa: BLE001 - the write is committed; debris only costs space
        log.warning("could not clean uncommitted write folders in %s: %s", uri, one_line_reason(exc))
    return snap


def append_arrow(uri: str, data, commit_metadata: dict | None = None) -> int:
    """Append an Arrow table to the Delta table at `uri` (created when missing) in one commit, from this process
    with delta-rs alone (no Spark: e.g. a serving process's inference log); returns the version written.

    Raises:
        TableError: the rows do not fit the table's schema, or the commit fails (nothing was committed).
    """
    from deltalake import write_deltalake
    from deltalake.transaction import CommitProperties

    write_id = uuid.uuid4().hex
    metadata = dict(commit_metadata or {})
    custom = {**metadata, WRITE_ID_KEY: write_id, "userMetadata": user_metadata(metadata, write_id)}
    try:
        write_deltalake(_location(uri), data, mode="append",
                        commit_properties=CommitProperties(custom_metadata=custom))
    except Exception as exc:  # noqa: BLE001 - delta-rs raises several kinds
        raise TableError(f"appending {data.num_rows} row(s) to {uri} failed; nothing was committed: "
                         f"{one_line_reason(exc)[:500]}") from exc
    table = _Table.open(uri)
    version = _find_write(table, write_id, None)
    return int(version if version is not None else table.dt.version())


def clean_staging(uri: str, min_age: dt.timedelta = staging.DEFAULT_MIN_AGE, dry_run: bool = False) -> list[str]:
    """Remove the `sparkdl-write-*` folders killed writes left in the table at `uri` (see `sparkdl.lake.staging`);
    returns their names.

    Raises:
        TableError: no table there.
    """
    table = _Table.open(uri)
    fs, root = filesystem(uri)
    import pyarrow as pa

    paths = pa.table(table.dt.get_add_actions(flatten=False)).column("path").to_pylist()
    files = [join_table_path(uri, p) for p in paths]
    return staging.remove_debris(fs, root, table, files, min_age, dry_run)


def _spark_write(spark, out, target: str, plan: WritePlan) -> None:
    from pyspark.sql import types as T

    def has_timestamp(dtype) -> bool:
        if isinstance(dtype, T.TimestampType):
            return True
        if isinstance(dtype, T.ArrayType):
            return has_timestamp(dtype.elementType)
        if isinstance(dtype, T.MapType):
            return has_timestamp(dtype.keyType) or has_timestamp(dtype.valueType)
        if isinstance(dtype, T.StructType):
            return any(has_timestamp(f.dataType) for f in dtype.fields)
        return False

    if has_timestamp(plan.schema):
        with _conf_lock:
            if (spark.conf.get(_TIMESTAMP_CONF, None) or "").upper() != "TIMESTAMP_MICROS":
                log.info("setting %s=TIMESTAMP_MICROS (Delta readers expect it; INT96 is deprecated)", _TIMESTAMP_CONF)
                spark.conf.set(_TIMESTAMP_CONF, "TIMESTAMP_MICROS")
    writer = out.write.mode("error").option("compression", "snappy")
    if plan.partition_columns:
        writer = writer.partitionBy(*plan.partition_columns)
    writer.parquet(target)


def _add_actions(fs, root: str, staging: str, plan: WritePlan) -> list:
    """One AddAction per data file Spark wrote under `root/staging`, with stats from the footers."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    from deltalake.transaction import AddAction
    from pyspark.sql import types as T

    base = root.rstrip("/") + "/" + staging
    infos = [i for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
             if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
             and not i.base_name.startswith((".", "_"))]
    data_schema = T.StructType([f for f in plan.schema.fields if f.name not in plan.partition_columns])
    now_ms = int(time.time() * 1000)

    def action(info):
        relative = info.path[len(base) + 1:]
        folder = relative.rsplit("/", 1)[0] if "/" in relative else ""
        values = partitions.values_from_path(folder, plan.partition_columns) if plan.partition_columns else {}
        with fs.open_input_file(info.path) as handle:
            stats = file_stats(pq.read_metadata(handle), data_schema)
        mtime = int(info.mtime.timestamp() * 1000) if info.mtime is not None else now_ms
        return AddAction(f"{staging}/{relative}", int(info.size), values, mtime, True, stats)

    with ThreadPoolExecutor(max_workers=8) as pool:
        actions = list(pool.map(action, infos))
    # Spark writes a file even for an empty task; a Delta table needs no file for its schema.
    kept = [a for a in actions if json.loads(a.stats)["numRecords"] > 0]
    for empty in (a for a in actions if json.loads(a.stats)["numRecords"] == 0):
        try:
            fs.delete_file(root.rstrip("/") + "/" + empty.path)
        except Exception:  # noqa: BLE001 - an unreferenced empty file is harmless
            pass
    return kept


def _check_txn(table: "_Table | None", txn: Txn | None, uri: str) -> None:
    """Raise AlreadyCommitted when `table` (as loaded) has committed `txn` or a later version of its app."""
    if txn is None or table is None:
        return
    done = table.dt.transaction_version(txn.app_id)
    if done is not None and int(done) >= txn.version:
        raise AlreadyCommitted(f"{uri} has already committed transaction {txn.version} of {txn.app_id} (its latest "
                               f"is {done}); nothing written", table.dt.version())


def _commit(uri: str, table: "_Table | None", plan: WritePlan, adds: list, mode: str, commit_metadata: dict,
            write_id: str, txn: Txn | None = None) -> _Table:
    """Commit `adds` in one transaction, retrying conflicts of appends; returns the table, opened (or refreshed) after
    the commit. With `txn`, the commit carries it: a concurrent commit of the same app id makes this one conflict,
    and the retry finds it committed (AlreadyCommitted)."""
    from deltalake.exceptions import CommitFailedError
    from deltalake.schema import Field, Schema
    from deltalake.transaction import CommitProperties, Transaction, create_table_with_add_actions

    schema = Schema.from_json(delta_schema_json(plan.schema))
    custom = {**commit_metadata, WRITE_ID_KEY: write_id, "userMetadata": user_metadata(commit_metadata, write_id)}
    app_transactions = [Transaction(txn.app_id, txn.version)] if txn is not None else None
    props = CommitProperties(custom_metadata=custom, max_commit_retries=COMMIT_ATTEMPTS * 4,
                             app_transactions=app_transactions)
    location = _location(uri)
    if plan.create:
        # no retries: delta-rs retries a lost creation race as a second creating commit (two writers' rows, the
        # txn not checked); the loser instead takes the append path below, which checks it
        create_props = CommitProperties(custom_metadata=custom, max_commit_retries=0,
                                        app_transactions=app_transactions)
        try:
            create_table_with_add_actions(location, schema, adds, mode="error", partition_by=plan.partition_columns,
                                          commit_properties=create_props)
            return _Table.open(uri)
        except Exception as exc:  # noqa: BLE001 - lost a creation race?
            table = _Table.open_if_exists(uri)
            if table is None or mode not in ("append", "overwrite"):
                raise
            log.info("%s was created concurrently (%s); committing as %s", uri, exc, mode)
            _check_same_layout(table, plan)
    if plan.replace_schema:
        create_table_with_add_actions(location, schema, adds, mode="overwrite", partition_by=plan.partition_columns,
                                      commit_properties=props)
        table.dt.update_incremental()
        return table
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        dt = table.dt
        _check_txn(table, txn, uri)
        try:
            if plan.new_fields:
                have = {f.name.lower() for f in spark_schema_from_delta_json(dt.schema().to_json()).fields}
                missing = [f for f in plan.new_fields if f.name.lower() not in have]
                if missing:
                    merge_meta = {"userMetadata": json.dumps({"sparkdl.operation": "schema merge",
                                                              WRITE_ID_KEY + ".merge": write_id})}
                    dt.alter.add_columns([Field.from_json(json.dumps(f.jsonValue())) for f in missing],
                                         commit_properties=CommitProperties(custom_metadata=merge_meta))
                    dt.update_incremental()
            dt.create_write_transaction(adds, "overwrite" if mode == "overwrite" else "append", schema,
                                        partition_by=plan.partition_columns, commit_properties=props)
            dt.update_incremental()
            return table
        except CommitFailedError as exc:
            dt.update_incremental()
            _check_txn(table, txn, uri)  # the winner was an identical write: nothing to commit
            if mode == "overwrite" or attempt == COMMIT_ATTEMPTS:
                raise
            log.info("commit conflict on %s (attempt %d): %s; retrying", uri, attempt, exc)
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def _check_same_layout(table: _Table, plan: WritePlan) -> None:
    dt, uri = table.dt, table.uri
    table_schema = spark_schema_from_delta_json(dt.schema().to_json())
    ours = {f.name.lower(): f.dataType for f in plan.schema.fields}
    theirs = {f.name.lower(): f.dataType for f in table_schema.fields}
    same = ours.keys() == theirs.keys() and all(same_type(ours[k], theirs[k]) for k in ours)
    if not same or [p.lower() for p in dt.metadata().partition_columns] != [p.lower() for p in plan.partition_columns]:
        raise SchemaMismatchError(f"{uri} was created concurrently with schema {schema_ddl(table_schema)} "
                                  f"partitioned by {list(dt.metadata().partition_columns)}; this write has "
                                  f"{schema_ddl(plan.schema)} partitioned by {plan.partition_columns}")
    plan.create = False


def _find_write(table: "_Table | None", write_id: str, read_version: int | None) -> int | None:
    """The version whose commit carries `write_id`: one history read of the commits after `read_version` (the
    version the write was planned against; None for a new table)."""
    if table is None:
        return None
    latest = table.dt.version()
    limit = latest - (read_version if read_version is not None else -1)
    for entry in table.dt.history(max(limit, 1)):
        if entry.get(WRITE_ID_KEY) == write_id:
            return int(entry["version"])
    return None
