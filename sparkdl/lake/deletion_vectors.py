"""Deletion vectors on the delta-rs read path: rows a DELETE/UPDATE/MERGE marked deleted never reach Spark.

A deletion vector marks rows of one data file as deleted without rewriting the file. delta-rs decodes the
vectors of the loaded version (`DeltaTable.deletion_vectors()`: per file, a selection vector whose `False`
entries are deleted rows; rows past its end are kept). Spark reads the files as usual and drops the deleted rows
with a broadcast anti-join on (file name, `_metadata.row_index`), the row's position in its file — one scan for
all files of a partition, not one per file; tables without vectors are read exactly as before.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass

import numpy as np
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkdl.uri import normalized

_FILE = "__sparkdl_dv_file"
_ROW = "__sparkdl_dv_row"


@dataclass(frozen=True)
class DeletedRows:
    """Deleted row positions per data file (keyed by the file's location as `DeltaTable.deletion_vectors` gives it,
    made comparable with `sparkdl.uri.normalized`)."""

    rows: dict[str, np.ndarray]

    @property
    def count(self) -> int:
        return int(sum(len(r) for r in self.rows.values()))

    def of(self, location: str) -> np.ndarray | None:
        return self.rows.get(normalized(location))


def deleted_rows(dt) -> DeletedRows:
    """The deleted rows of the version `dt` (a `deltalake.DeltaTable`) is loaded at; empty without vectors."""
    import pyarrow as pa

    table = pa.table(dt.deletion_vectors())
    rows: dict[str, np.ndarray] = {}
    if table.num_rows:
        for path, selection in zip(table.column("filepath").to_pylist(), table.column("selection_vector").to_pylist()):
            deleted = np.flatnonzero(~np.asarray(selection, dtype=bool)).astype(np.int64)
            if len(deleted):
                rows[normalized(path)] = deleted
    return DeletedRows(rows)


def drop_deleted(spark, frame, locations: list[str], deleted: DeletedRows):
    """`frame` (a Parquet scan of `locations`) without the rows deleted by vectors.

    The files of one scan are told apart by file name; files of the same name (in different folders) are
    returned as separate scans by `split_by_name` before this is called.
    """
    pairs = [(posixpath.basename(loc), deleted.of(loc)) for loc in locations]
    pairs = [(name, rows) for name, rows in pairs if rows is not None]
    if not pairs:
        return frame
    import pandas as pd

    table = pd.DataFrame({_FILE: np.concatenate([np.repeat(name, len(rows)) for name, rows in pairs]),
                          _ROW: np.concatenate([rows for _, rows in pairs])})
    schema = T.StructType([T.StructField(_FILE, T.StringType(), False), T.StructField(_ROW, T.LongType(), False)])
    gone = spark.createDataFrame(table, schema)
    columns = frame.columns
    marked = frame.select("*", F.col("_metadata.file_name").alias(_FILE), F.col("_metadata.row_index").alias(_ROW))
    return marked.join(F.broadcast(gone), on=[_FILE, _ROW], how="left_anti").select(*[F.col(f"`{c}`")
                                                                                     for c in columns])


def split_by_name(locations: list[str]) -> list[list[str]]:
    """`locations` in groups within which no two files share a file name (usually one group)."""
    groups: list[list[str]] = []
    seen: list[set[str]] = []
    for loc in locations:
        name = posixpath.basename(loc)
        for group, names in zip(groups, seen):
            if name not in names:
                group.append(loc)
                names.add(name)
                break
        else:
            groups.append([loc])
            seen.append({name})
    return groups
