"""The one Parquet reader: a file's Arrow batches conformed to the schema a reader wants.

Every path that reads Parquet itself instead of through Spark — the direct scan of scoring (`score.scan`), the
Delta stream source (`lake.stream_source`), the training reader (`data.dataset`) and the series and window readers
of forecasting (`data.series`, `data.windows`) — reads with `read_batches`, under one rule:

* columns are matched by name, case-insensitively unless `case_sensitive` (as Spark does);
* each is cast to the wanted type when the file stores another one (e.g. a column widened by a later commit);
* a column absent from the file is a partition column (its value for the whole file, from the Delta log) when
  `partition_values` has it, else null (a column added to the table after the file was written);
* `row_groups` picks row groups (None: all), batches hold at most `batch_rows` rows.

    >>> for batch in read_batches("file:///lake/t/part-0.parquet", wanted, partition_values={"day": "2024-01-01"}):
    ...     ...
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

from sparkdl.uri import filesystem

BATCH_ROWS = 65_536


def open_parquet(uri: str):
    """A `pyarrow.parquet.ParquetFile` over `uri` (any filesystem `sparkdl.uri.filesystem` knows)."""
    import pyarrow.parquet as pq

    fs, path = filesystem(uri)
    return pq.ParquetFile(fs.open_input_file(path))


def read_batches(source, schema, *, row_groups=None, partition_values: Mapping | None = None,
                 case_sensitive: bool = True, batch_rows: int = BATCH_ROWS,
                 use_threads: bool = False) -> Iterator:
    """Yield the batches of one Parquet file (`source`: a URI or an open `ParquetFile`) with exactly the fields of
    `schema` (a `pyarrow.Schema`), by the rule of the module docstring."""
    import pyarrow as pa

    parquet = open_parquet(source) if isinstance(source, str) else source
    try:
        present = parquet.schema_arrow.names
        lookup: dict[str, str] = {}
        for name in present:
            lookup.setdefault(name if case_sensitive else name.lower(), name)
        stored = [lookup.get(f.name if case_sensitive else f.name.lower()) for f in schema]
        constants = dict(partition_values or {})
        wanted = list(dict.fromkeys(s for s in stored if s is not None))
        if not wanted:  # no wanted column in the file: its rows, of constants and nulls
            meta = parquet.metadata
            total = meta.num_rows if row_groups is None else sum(meta.row_group(g).num_rows for g in row_groups)
            batches = [pa.RecordBatch.from_arrays([pa.nulls(min(batch_rows, total - s), pa.null())], ["_"])
                       for s in range(0, total, batch_rows)]
        else:
            batches = parquet.iter_batches(batch_size=batch_rows, row_groups=row_groups, columns=wanted,
                                           use_threads=use_threads)
        for batch in batches:
            n = batch.num_rows
            arrays = []
            for name, field in zip(stored, schema):
                if name is not None:
                    column = batch.column(name)
                    arrays.append(column if column.type == field.type else column.cast(field.type))
                elif field.name in constants and constants[field.name] is not None:
                    arrays.append(pa.array([constants[field.name]] * n).cast(field.type))
                else:
                    arrays.append(pa.nulls(n, field.type))
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)
    finally:
        if isinstance(source, str):
            parquet.close()


def read_columns(uris, columns: list[str]):
    """The named columns of several Parquet files, as one `pyarrow.Table` in file order (their stored types)."""
    import pyarrow as pa

    tables = []
    for uri in uris:
        parquet = open_parquet(uri)
        try:
            schema = pa.schema([parquet.schema_arrow.field(c) for c in columns])
            tables.append(pa.Table.from_batches(list(read_batches(parquet, schema)), schema))
        finally:
            parquet.close()
    return pa.concat_tables(tables) if tables else None


__all__ = ["BATCH_ROWS", "open_parquet", "read_batches", "read_columns"]
