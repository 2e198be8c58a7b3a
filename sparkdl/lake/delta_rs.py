"""The delta-rs backend: the Delta log through `deltalake`, the data through Spark's Parquet reader and writer.

Read: delta-rs resolves the snapshot; Spark reads exactly that snapshot's files (never a directory listing) with
the schema from the log, and partition values from the log are added as typed literal columns per file group.

Write: executors write Parquet files with `df.write.parquet` into a fresh sub-folder of the table
(`sparkdl-write-<time>-<id>/`, which stays the files' home); the driver reads the footers for per-file stats and
commits all files in ONE transaction (`create_table_with_add_actions` for a new table or a schema replacement,
`DeltaTable.create_write_transaction` otherwise; an overwrite removes every old file in the same commit).
A failed Spark job or commit commits nothing and the sub-folder is deleted (best-effort). Conflicting appends
are retried. `schema_mode="merge"` first commits the added nullable columns (a metadata-only commit), then the
data. Timestamps are written as Parquet TIMESTAMP_MICROS: the session's `spark.sql.parquet.outputTimestampType`
is set to it when a written column holds timestamps.
"""
from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from sparkdl.errors import SparkDLError, TableError
from sparkdl.lake import features, partitions
from sparkdl.lake.schema import (
    WritePlan,
    delta_schema_json,
    plan_existing_table,
    plan_new_table,
    quote_name,
    schema_ddl,
    spark_schema_from_delta_json,
)
from sparkdl.lake.snapshot import Snapshot
from sparkdl.lake.stats import file_stats
from sparkdl.lake.uri import filesystem, join_table_path, local_path
from sparkdl.lake.versions import (
    WRITE_ID_KEY,
    history_entry,
    iso_ms,
    parse_timestamp,
    to_millis,
    user_metadata,
)
from sparkdl.log import get_logger

log = get_logger("lake.delta_rs")

BACKEND = "delta-rs"
STAGING_PREFIX = "sparkdl-write-"
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

def exists(uri: str) -> bool:
    """True when a Delta table (a `_delta_log` with commits) is at `uri`."""
    from deltalake import DeltaTable

    try:
        return DeltaTable.is_deltatable(_location(uri))
    except Exception:  # noqa: BLE001 - unreachable storage reads as "no table"
        return False


def _open(uri: str):
    from deltalake import DeltaTable

    if not exists(uri):
        raise TableError(f"no Delta table at {uri} (no _delta_log with commits)")
    try:
        return DeltaTable(_location(uri))
    except Exception as exc:  # noqa: BLE001
        raise TableError(f"cannot open the Delta table at {uri}: {exc}") from exc


def latest_version(uri: str) -> int:
    """The latest committed version of the table at `uri`.

    Raises:
        TableError: no table there.
    """
    return _open(uri).version()


def history(uri: str, limit: int | None = None) -> list[dict]:
    """Commits of the table at `uri`, newest first (see `sparkdl.lake.versions.history_entry`)."""
    dt = _open(uri)
    return [history_entry(h["version"], h) for h in dt.history(limit)]


def _commit_millis(uri: str, version: int, latest: int) -> int | None:
    dt = _open(uri)
    for entry in dt.history(max(1, latest - version + 1)):
        if entry.get("version") == version:
            return entry.get("timestamp")
    return None


def _resolve(uri: str, version: int | None, timestamp):
    """Load the table at the requested version; returns (DeltaTable, commit millis).

    Raises:
        TableError: unknown table, version past the latest, timestamp before the first commit.
    """
    dt = _open(uri)
    latest = dt.version()
    if timestamp is not None:
        wanted = parse_timestamp(timestamp, uri)
        commits = [(h["version"], h.get("timestamp")) for h in dt.history() if h.get("timestamp") is not None]
        if not commits:
            raise TableError(f"{uri}: no commit timestamps in the log")
        first_version, first_ms = min(commits)
        if to_millis(wanted) < first_ms:
            raise TableError(f"{uri}: timestamp {wanted.isoformat()} is before the first available commit "
                             f"(version {first_version} at {iso_ms(first_ms)})")
        version, millis = max((v, ms) for v, ms in commits if ms <= to_millis(wanted))
    elif version is not None:
        if version > latest:
            raise TableError(f"{uri}: version {version} does not exist; the latest version is {latest}")
        millis = None
    else:
        version, millis = latest, None
    if version != latest:
        try:
            dt.load_as_version(int(version))
        except Exception as exc:  # noqa: BLE001 - log files removed by log cleanup, corrupt log
            raise TableError(f"{uri}: cannot load version {version}: {exc}") from exc
    if millis is None:
        millis = _commit_millis(uri, version, latest)
    return dt, millis


def _snapshot(dt, uri: str, millis: int | None) -> tuple[Snapshot, list[tuple[str, dict]]]:
    """The Snapshot of a loaded DeltaTable and its files as (location, typed partition values)."""
    import pyarrow as pa

    meta = dt.metadata()
    parts = list(meta.partition_columns)
    actions = pa.table(dt.get_add_actions(flatten=False))
    paths = actions.column("path").to_pylist()
    if parts and "partition" in actions.column_names:
        values = actions.column("partition").to_pylist()
    else:
        values = [{} for _ in paths]
    files = [(join_table_path(uri, p), v or {}) for p, v in zip(paths, values)]
    counts = actions.column("num_records").to_pylist() if "num_records" in actions.column_names else [None]
    num_rows = sum(counts) if paths and all(c is not None for c in counts) else (0 if not paths else None)
    schema = spark_schema_from_delta_json(dt.schema().to_json())
    snap = Snapshot(table=uri, version=dt.version(), timestamp=iso_ms(millis), schema=schema_ddl(schema),
                    partition_columns=tuple(parts), files=tuple(f for f, _ in files), num_files=len(files),
                    num_rows=num_rows, backend=BACKEND)
    return snap, files


def snapshot(uri: str, version: int | None = None, timestamp=None) -> Snapshot:
    """The Snapshot of the table at `uri` (latest, a version, or the version current at `timestamp`).

    Raises:
        TableError: see `_resolve`.
        UnsupportedTableFeature: the version uses a feature the delta-rs path cannot read.
    """
    dt, millis = _resolve(uri, version, timestamp)
    features.check_readable(dt, uri)
    return _snapshot(dt, uri, millis)[0]


# -- read ------------------------------------------------------------------------------------------------------

def read(spark, uri: str, version: int | None = None, timestamp=None, columns: list[str] | None = None):
    """Read one version of the table as a Spark DataFrame: (DataFrame, Snapshot). See `sparkdl.lake.read_table`."""
    from pyspark.sql import types as T

    dt, millis = _resolve(uri, version, timestamp)
    features.check_readable(dt, uri)
    snap, files = _snapshot(dt, uri, millis)
    schema = spark_schema_from_delta_json(dt.schema().to_json())
    selected = _resolve_columns(columns, schema, uri)
    parts = list(snap.partition_columns)
    data_schema = T.StructType([f for f in schema.fields if f.name not in parts])

    with _driver_side_listing(spark, uri, len(files)):
        df = _dataframe(spark, schema, data_schema, parts, files)
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


def _dataframe(spark, schema, data_schema, parts: list[str], files: list[tuple[str, dict]]):
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    part_types = {f.name: f.dataType for f in schema.fields if f.name in parts}
    order = [quote_name(f.name) for f in schema.fields]
    if not files:
        df = spark.createDataFrame([], schema)
    elif not parts:
        df = spark.read.schema(data_schema).parquet(*[f for f, _ in files])
    else:
        groups: dict[tuple, list[str]] = defaultdict(list)
        for location, values in files:
            groups[tuple(values.get(p) for p in parts)].append(location)
        # A column absent from every file reads as null; `when(absent IS NULL, value)` is the partition value,
        # nullable as in the table schema (a bare literal would make the column non-nullable).
        absent = f"__sparkdl_absent_{uuid.uuid4().hex}"
        read_schema = T.StructType(list(data_schema.fields) + [T.StructField(absent, T.BooleanType(), True)])
        frames = []
        for key, locations in groups.items():
            frame = spark.read.schema(read_schema).parquet(*locations)
            values = [F.when(F.col(absent).isNull(), partitions.literal(value, part_types[p])).alias(p)
                      for p, value in zip(parts, key)]
            frames.append(frame.select(*[quote_name(f.name) for f in data_schema.fields], *values))
        df = frames[0]
        for frame in frames[1:]:
            df = df.unionByName(frame)
        df = df.select(*order)
    return df


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
          schema_mode: str | None = None, commit_metadata: dict | None = None) -> Snapshot:
    """Write `df` to the table at `uri` in one commit; returns the Snapshot of the new version.

    See `sparkdl.lake.write_table` for the semantics and errors.
    """
    from pyspark.sql import functions as F

    commit_metadata = commit_metadata or {}
    if exists(uri):
        dt = _open(uri)
        features.check_writable(dt, uri)
        if mode == "error":
            raise TableError(f"a Delta table already exists at {uri} (mode='error')")
        if mode == "ignore":
            log.info("%s exists; mode='ignore' writes nothing", uri)
            return _snapshot(dt, uri, _commit_millis(uri, dt.version(), dt.version()))[0]
        table_schema = spark_schema_from_delta_json(dt.schema().to_json())
        plan = plan_existing_table(df.schema, table_schema, list(dt.metadata().partition_columns), mode,
                                   partition_by, schema_mode, uri)
        read_version = dt.version()
    else:
        plan = plan_new_table(df.schema, partition_by, uri)
        read_version = None

    write_id = uuid.uuid4().hex
    staging = f"{STAGING_PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{write_id[:12]}"
    out = df.select(*plan.casts(df.schema))
    tz = spark.conf.get("spark.sql.session.timeZone")
    types = {f.name: f.dataType for f in plan.schema.fields}
    for p in plan.partition_columns:
        out = out.withColumn(p, partitions.delta_string(F.col(quote_name(p)), types[p], tz))
    fs, root = filesystem(uri)
    state = "unchanged" if read_version is not None else "not created"
    try:
        _spark_write(spark, out, _spark_location(uri) + "/" + staging, plan)
        adds = _add_actions(fs, root, staging, plan)
    except BaseException as exc:
        _cleanup(fs, root, staging)
        if isinstance(exc, SparkDLError):
            raise
        raise TableError(f"writing to {uri} failed before the commit; the table is {state}"
                         f"{'' if read_version is None else f' (version {read_version})'}: {_brief(exc)}") from exc
    try:
        version = _commit(uri, plan, adds, mode, commit_metadata, write_id)
    except BaseException as exc:
        version = _find_write(uri, write_id)
        if version is None:
            _cleanup(fs, root, staging)
            if isinstance(exc, SparkDLError):
                raise
            raise TableError(f"committing the write to {uri} failed; nothing was committed: {_brief(exc)}") from exc
        log.warning("the commit of %s to %s landed as version %s but reported: %s", write_id, uri, version, exc)
    log.info("wrote %d file(s) to %s as version %s", len(adds), uri, version)
    return snapshot(uri, version=version)


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
    writer = out.write.mode("errorifexists").option("compression", "snappy")
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


def _commit(uri: str, plan: WritePlan, adds: list, mode: str, commit_metadata: dict, write_id: str) -> int:
    """Commit `adds` in one transaction, retrying conflicts of appends; returns the new version."""
    from deltalake import DeltaTable
    from deltalake.exceptions import CommitFailedError
    from deltalake.schema import Field, Schema
    from deltalake.transaction import CommitProperties, create_table_with_add_actions

    schema = Schema.from_json(delta_schema_json(plan.schema))
    custom = {**commit_metadata, WRITE_ID_KEY: write_id, "userMetadata": user_metadata(commit_metadata, write_id)}
    props = CommitProperties(custom_metadata=custom, max_commit_retries=COMMIT_ATTEMPTS * 4)
    location = _location(uri)
    if plan.create:
        try:
            create_table_with_add_actions(location, schema, adds, mode="error", partition_by=plan.partition_columns,
                                          commit_properties=props)
            return _find_write(uri, write_id, default_latest=True)
        except Exception as exc:  # noqa: BLE001 - lost a creation race?
            if not exists(uri) or mode not in ("append", "overwrite"):
                raise
            log.info("%s was created concurrently (%s); committing as %s", uri, exc, mode)
            _check_same_layout(uri, plan)
    if plan.replace_schema:
        create_table_with_add_actions(location, schema, adds, mode="overwrite", partition_by=plan.partition_columns,
                                      commit_properties=props)
        return _find_write(uri, write_id, default_latest=True)
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        dt = DeltaTable(location)
        try:
            if plan.new_fields:
                have = {f.name.lower() for f in spark_schema_from_delta_json(dt.schema().to_json()).fields}
                missing = [f for f in plan.new_fields if f.name.lower() not in have]
                if missing:
                    merge_meta = {"userMetadata": json.dumps({"sparkdl.operation": "schema merge",
                                                              WRITE_ID_KEY + ".merge": write_id})}
                    dt.alter.add_columns([Field.from_json(json.dumps(f.jsonValue())) for f in missing],
                                         commit_properties=CommitProperties(custom_metadata=merge_meta))
                    dt = DeltaTable(location)
            dt.create_write_transaction(adds, "overwrite" if mode == "overwrite" else "append", schema,
                                        partition_by=plan.partition_columns, commit_properties=props)
            return _find_write(uri, write_id, default_latest=True)
        except CommitFailedError as exc:
            if mode == "overwrite" or attempt == COMMIT_ATTEMPTS:
                raise
            log.info("commit conflict on %s (attempt %d): %s; retrying", uri, attempt, exc)
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def _check_same_layout(uri: str, plan: WritePlan) -> None:
    from sparkdl.errors import SchemaMismatchError
    from sparkdl.lake.schema import same_type

    dt = _open(uri)
    table_schema = spark_schema_from_delta_json(dt.schema().to_json())
    ours = {f.name.lower(): f.dataType for f in plan.schema.fields}
    theirs = {f.name.lower(): f.dataType for f in table_schema.fields}
    same = ours.keys() == theirs.keys() and all(same_type(ours[k], theirs[k]) for k in ours)
    if not same or [p.lower() for p in dt.metadata().partition_columns] != [p.lower() for p in plan.partition_columns]:
        raise SchemaMismatchError(f"{uri} was created concurrently with schema {schema_ddl(table_schema)} "
                                  f"partitioned by {list(dt.metadata().partition_columns)}; this write has "
                                  f"{schema_ddl(plan.schema)} partitioned by {plan.partition_columns}")
    plan.create = False


def _find_write(uri: str, write_id: str, default_latest: bool = False) -> int | None:
    """The version whose commit carries `write_id`, searching the newest commits first."""
    if not exists(uri):
        return None
    dt = _open(uri)
    for limit in (16, 256, None):
        for entry in dt.history(limit):
            if entry.get(WRITE_ID_KEY) == write_id:
                return int(entry["version"])
    if default_latest:
        return dt.version()
    return None


def _cleanup(fs, root: str, staging: str) -> None:
    try:
        fs.delete_dir(root.rstrip("/") + "/" + staging)
    except Exception as exc:  # noqa: BLE001 - best-effort: unreferenced files are harmless (vacuum removes them)
        log.debug("could not remove %s/%s: %s", root, staging, exc)


def _brief(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if "Exception:" in line or "Error:" in line:
            return line[:500]
    return (text.splitlines()[0] if text else type(exc).__name__)[:500]
