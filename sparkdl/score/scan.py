"""Arrow batches of a DataFrame into a Python function, by the fastest route Spark leaves open.

`map_batches(df, fn, schema)` is `df.mapInArrow(fn, schema)`, except when `df` is nothing but a scan of Parquet
files (`spark.read.parquet(...)`, an unpartitioned delta-rs `read_table`, optionally a `select` of plain columns):
then the tasks read the files themselves with pyarrow and hand `fn` the same RecordBatches (same column names,
same Arrow types as Spark would produce), one task per file or row group. That skips the JVM's row-by-row
conversion of every `array<float>` element into Arrow — the floor of any Spark Python path (~1.5M rows/s on two
cores for 32 floats a row) — and is what makes scoring run near the speed of the model.

The direct route is taken only when it gives the same rows as Spark's reader (see `parquet_scan`): a bare
`LogicalRelation` over `ParquetFileFormat` with no partition columns, under nothing but a projection of plain
columns; column types that pyarrow and Spark read alike (numbers, booleans, strings, binary, arrays of numbers);
no `ignoreCorruptFiles`/`ignoreMissingFiles`/field-id reading; files pyarrow can open. Columns are matched by name
as Spark does (case-insensitively unless `spark.sql.caseSensitive`); a column absent from a file reads as nulls.
The check looks at the optimized plan through the JVM gateway; where there is none (Spark Connect) it declines.
Anything else goes through `mapInArrow`.
"""
from __future__ import annotations

from dataclasses import dataclass

from sparkdl import stack
from sparkdl.log import get_logger
from sparkdl.parquet_reader import open_parquet, read_batches
from sparkdl.session_kind import connect_parquet_read, default_parallelism, optimized_plan, scan_partitions
from sparkdl.uri import filesystem

log = get_logger("score.scan")

READ_BATCH_ROWS = 65_536
_FLAGS_OFF = ("spark.sql.files.ignoreCorruptFiles", "spark.sql.files.ignoreMissingFiles",
              "spark.sql.parquet.fieldId.read.enabled")


@dataclass(frozen=True)
class ParquetScan:
    """What the tasks of a direct scan read: (file URI, row groups or None = all) units, the DataFrame's columns
    in order, Spark's name matching, and the units of each task (as many tasks as Spark's own scan would have:
    a Python task costs a fixed round trip, so fewer, larger tasks are faster)."""

    units: tuple[tuple[str, tuple[int, ...] | None], ...]
    columns: tuple[str, ...]
    case_sensitive: bool
    tasks: tuple[tuple[int, ...], ...] = ()


def _direct_type(dtype) -> bool:
    from pyspark.sql import types as T

    plain = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.BooleanType)
    if isinstance(dtype, plain + (T.StringType, T.BinaryType)):
        return True
    return isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, plain)


def _children(node) -> list:
    kids = node.children()
    return [kids.apply(i) for i in range(kids.size())]


def _file_columns(uri: str) -> list[str]:
    """The column names one Parquet file holds (its footer)."""
    with open_parquet(uri) as parquet:
        return parquet.schema_arrow.names


def parquet_scan(df, tasks: int | None = None) -> ParquetScan | None:
    """A `ParquetScan` when `df` is a plain scan of Parquet files that pyarrow reads exactly as Spark, else None.

    Args:
        df: the DataFrame.
        tasks: how many tasks to read with (default: as many as Spark's scan of `df` has, at least the default
            parallelism); with fewer files than tasks, the units are row groups (footers read on the driver).
    """
    spark = df.sparkSession
    try:
        if not all(_direct_type(f.dataType) for f in df.schema.fields):
            return None
        if len(set(c.lower() for c in df.columns)) != len(df.columns):
            return None
        node = optimized_plan(df)
        if node is None:  # Spark Connect: the client's plan (`session_kind.connect_parquet_read`)
            read = connect_parquet_read(df)
            if read is None:
                return None
            options, files = read, list(df.inputFiles())
            data_names = set(_file_columns(files[0])) if files else set()
        else:
            while node.getClass().getSimpleName() == "Project":
                items = node.projectList()
                if any(items.apply(i).getClass().getSimpleName() != "AttributeReference"
                       for i in range(items.size())):
                    return None
                (node,) = _children(node)
            if node.getClass().getSimpleName() != "LogicalRelation":
                return None
            relation = node.relation()
            if (relation.getClass().getSimpleName() != "HadoopFsRelation"
                    or relation.fileFormat().getClass().getSimpleName() != "ParquetFileFormat"
                    or relation.partitionSchema().length() != 0):
                return None
            options = str(relation.options().toString()).lower().replace(" ", "")
            data_names = set(relation.dataSchema().fieldNames())
            files = list(df.inputFiles())
        if "ignorecorruptfiles->true" in options or "ignoremissingfiles->true" in options:
            return None
        if not set(df.columns) <= data_names:
            return None  # e.g. hidden file-metadata columns, or (Spark Connect) partition columns
        # one round trip for all the flags (on Spark Connect each conf.get is one): what was set; all default false
        settings = {k: str(v).lower() for k, v in spark.conf.getAll.items()}
        if any(settings.get(k) == "true" for k in _FLAGS_OFF):
            return None
        case_sensitive = settings.get("spark.sql.caseSensitive") == "true"
    except Exception as exc:  # noqa: BLE001 - a plan shape this check does not know: take Spark's route
        log.debug("direct Parquet scan not applicable: %s", exc)
        return None
    if not files:
        return None

    try:
        filesystem(files[0])
    except Exception:  # noqa: BLE001 - a scheme pyarrow cannot open from Python
        return None
    if tasks is None:
        tasks = max(default_parallelism(spark) or 1, scan_partitions(df) or 0)
    units: list[tuple[str, tuple[int, ...] | None]] = []
    if len(files) < tasks:
        for uri in files:
            with open_parquet(uri) as parquet:
                groups = parquet.metadata.num_row_groups
            units += [(uri, (g,)) for g in range(groups)] or [(uri, None)]
    else:
        units = [(uri, None) for uri in files]
    count = max(1, min(tasks, len(units)))
    bounds = [round(i * len(units) / count) for i in range(count + 1)]
    groups = tuple(tuple(range(bounds[i], bounds[i + 1])) for i in range(count))
    return ParquetScan(tuple(units), tuple(df.columns), case_sensitive, groups)


def read_scan_batches(scan: ParquetScan, arrow_schema, unit_ids, batch_rows: int = READ_BATCH_ROWS):
    """RecordBatches of the units `unit_ids`, conformed to `arrow_schema` (Spark's Arrow types for the columns) by
    the one Parquet reader's rule (`sparkdl.parquet_reader`: Spark's name matching, casts, absent columns null)."""
    for unit in unit_ids:
        uri, groups = scan.units[unit]
        yield from read_batches(uri, arrow_schema, row_groups=list(groups) if groups is not None else None,
                                case_sensitive=scan.case_sensitive, batch_rows=batch_rows)


def map_batches(df, fn, schema, direct: bool = True):
    """`df.mapInArrow(fn, schema)`, reading `df`'s Parquet files in the tasks when `parquet_scan(df)` allows.

    Args:
        df: the input DataFrame; `fn` receives RecordBatches of exactly its columns.
        fn: an iterator-of-RecordBatch function (picklable; as for `mapInArrow`).
        schema: the output schema (a StructType or DDL string).
        direct: False forces Spark's own scan and conversion.
    """
    scan = parquet_scan(df) if direct else None
    if scan is None:
        return df.mapInArrow(fn, schema)

    input_schema = stack.arrow_schema(df.schema)
    batch_rows = READ_BATCH_ROWS
    log.debug("direct Parquet scan: %d unit(s) in %d task(s), columns %s", len(scan.units), len(scan.tasks),
              list(scan.columns))

    def read_and_apply(id_batches):
        def batches():
            for ids in id_batches:
                for task in ids.column(0).to_pylist():
                    yield from read_scan_batches(scan, input_schema, scan.tasks[task], batch_rows)

        yield from fn(batches())

    spark = df.sparkSession
    tasks = spark.range(0, len(scan.tasks), 1, len(scan.tasks))
    return tasks.mapInArrow(read_and_apply, schema)
