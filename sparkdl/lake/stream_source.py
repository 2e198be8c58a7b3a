"""A Structured Streaming source over a Delta table's commits through delta-rs (no Delta jars needed).

Without delta-spark there is no `readStream.format("delta")`. Streaming the table folder as plain Parquet
(`readStream.parquet(dir)`) would be wrong: it also picks up files of failed or not-yet-committed writes and files
that later commits removed. This source follows the Delta log instead, with PySpark's Python data source API:

* an offset is `{"version": v}`: every commit up to `v` has been read;
* the first batch reads the snapshot at the latest version (or the commits from `startingVersion`), later batches
  the files *added* by the commits after the previous offset — one input partition per file, read by pyarrow on
  the executors; each row carries `_source_version`, the commit that added its file;
* a commit that removes data files (overwrite, delete, compaction) stops the stream with a TableError: the source
  is append-only, like Delta's own streaming source without `ignoreChanges`.

Spark's checkpoint stores the offsets, so a restarted query resumes after the last committed batch.

    >>> spark.dataSource.register(DeltaLogSource)
    >>> spark.readStream.format("sparkdl_delta").option("path", "/lake/events").load()
"""
from __future__ import annotations

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition

from sparkdl import stack
from sparkdl.errors import TableError
from sparkdl.lake.delta_rs import _location, latest_version, plain_files
from sparkdl.lake.schema import spark_schema_from_delta_json
from sparkdl.parquet_reader import read_batches
from sparkdl.uri import normalize_table_uri

FORMAT = "sparkdl_delta"
SOURCE_VERSION_COL = "_source_version"


class DeltaFilesPartition(InputPartition):
    """Data files of one Delta commit: (file URI, {partition column: typed value from the log}) pairs and the
    version."""

    def __init__(self, files: list[tuple[str, dict]], version: int):
        super().__init__(version)
        self.files = files
        self.version = version


def _files(table: str, version: int) -> dict[str, dict]:
    """{file: partition values from the log} of `version` (never from a file's folder: sparkdl's own writes put
    their files in a staging folder)."""
    return plain_files(table, version)[1]


class DeltaLogStreamReader(DataSourceStreamReader):
    """Offsets are Delta versions; see the module docstring."""

    def __init__(self, table: str, schema, starting_version: int | None):
        self.table = table
        self.schema = schema
        self.starting_version = starting_version

    def initialOffset(self) -> dict:
        return {"version": -1 if self.starting_version is None else int(self.starting_version) - 1}

    def latestOffset(self) -> dict:
        return {"version": int(latest_version(None, self.table))}

    def partitions(self, start: dict, end: dict):
        first, last = int(start["version"]), int(end["version"])
        if last <= first:
            return []
        parts = []
        if first < 0 and self.starting_version is None:  # initial snapshot, as of `last`
            return [DeltaFilesPartition([(f, v)], last) for f, v in sorted(_files(self.table, last).items())]
        previous = _files(self.table, first) if first >= 0 else {}
        for version in range(max(first + 1, 0), last + 1):
            current = _files(self.table, version)
            removed = previous.keys() - current.keys()
            if removed:
                raise TableError(f"streaming source {self.table}: version {version} removed {len(removed)} data "
                                 f"file(s) (overwrite, delete or compaction); the sparkdl Delta stream source "
                                 f"reads appends only. Restart the stream with a new checkpoint (and "
                                 f"startingVersion) to read the table as it is now")
            parts += [DeltaFilesPartition([(f, current[f])], version) for f in sorted(current.keys() - previous.keys())]
            previous = current
        return parts

    def read(self, partition: DeltaFilesPartition):
        import pyarrow as pa

        target = stack.arrow_schema(self.schema)
        data = pa.schema([f for f in target if f.name != SOURCE_VERSION_COL])
        for uri, values in partition.files:  # partition values from the log; columns added later read as nulls
            for batch in read_batches(uri, data, partition_values=values, batch_rows=10_000):
                version = pa.array([partition.version] * batch.num_rows, pa.int64())
                yield pa.RecordBatch.from_arrays([*batch.columns, version], schema=target)


def source_schema(table: str):
    """The stream's Spark schema: the table's columns (from the Delta log, no JVM) + `_source_version`."""
    from deltalake import DeltaTable
    from pyspark.sql.types import LongType, StructField

    struct = spark_schema_from_delta_json(DeltaTable(_location(table)).schema().to_json())
    if SOURCE_VERSION_COL in struct.names:
        raise TableError(f"{table} already has a column {SOURCE_VERSION_COL!r}, which the stream source adds")
    return struct.add(StructField(SOURCE_VERSION_COL, LongType(), False))


class DeltaLogSource(DataSource):
    """`spark.readStream.format("sparkdl_delta").option("path", table)`; option `startingVersion` (default: the
    latest snapshot first, then every later commit)."""

    @classmethod
    def name(cls) -> str:
        return FORMAT

    def _table(self) -> str:
        path = self.options.get("path")
        if not path:
            raise TableError(f"the {FORMAT} stream source needs option('path', <Delta table>)")
        return normalize_table_uri(path)

    def schema(self):
        return source_schema(self._table())

    def streamReader(self, schema) -> DeltaLogStreamReader:
        start = self.options.get("startingVersion")
        return DeltaLogStreamReader(self._table(), schema, None if start in (None, "", "latest") else int(start))
