"""Per-file Delta statistics (`numRecords`, `nullCount`, `minValues`, `maxValues`) from Parquet footers.

Only footers are read, never data. Min/max are recorded where they are exact and cheap: integers, dates,
strings of at most 32 characters, and timestamps (widened to milliseconds, as Delta stores them). Floats are
skipped (Parquet statistics leave out NaN, so a max could under-state the data and wrongly skip files), as are
decimals, booleans, binary and nested columns.
"""
from __future__ import annotations

import datetime as dt
import json

from pyspark.sql import types as T

_MAX_STRING = 32
_MINMAX_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.DateType, T.StringType, T.TimestampType)


def file_stats(metadata, data_schema: T.StructType) -> str:
    """The Delta `stats` JSON of one Parquet file.

    Args:
        metadata: the file's `pyarrow.parquet.FileMetaData`.
        data_schema: the Spark schema of the columns stored in the file (partition columns excluded).
    """
    stats: dict = {"numRecords": int(metadata.num_rows)}
    top = {f.name: f.dataType for f in data_schema.fields}
    mins: dict = {}
    maxs: dict = {}
    nulls: dict = {}
    if metadata.num_row_groups:
        first = metadata.row_group(0)
        for j in range(first.num_columns):
            name = first.column(j).path_in_schema
            dtype = top.get(name)
            if dtype is None or isinstance(dtype, (T.ArrayType, T.MapType, T.StructType)):
                continue  # nested column: no stats
            col_stats = [metadata.row_group(i).column(j).statistics for i in range(metadata.num_row_groups)]
            if all(s is not None and s.has_null_count for s in col_stats):
                nulls[name] = int(sum(s.null_count for s in col_stats))
            if not isinstance(dtype, _MINMAX_TYPES):
                continue
            present = [s for s in col_stats if s is not None and s.has_min_max]
            all_null_groups = sum(1 for i, s in enumerate(col_stats) if s is not None and not s.has_min_max
                                  and s.has_null_count and s.null_count == metadata.row_group(i).num_rows)
            if not present or len(present) + all_null_groups != len(col_stats):
                continue  # a row group without statistics: no min/max for this column
            try:
                low, high = _convert(min(s.min for s in present), dtype, up=False), \
                    _convert(max(s.max for s in present), dtype, up=True)
            except (TypeError, ValueError, OverflowError):
                continue
            if low is not None and high is not None:
                mins[name], maxs[name] = low, high
    if mins:
        stats["minValues"] = mins
        stats["maxValues"] = maxs
    if nulls:
        stats["nullCount"] = nulls
    return json.dumps(stats)


def _convert(value, dtype: T.DataType, up: bool):
    if isinstance(dtype, T.StringType):
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        return value if len(value) <= _MAX_STRING else None
    if isinstance(dtype, T.DateType):
        return value.isoformat()
    if isinstance(dtype, T.TimestampType):
        if not isinstance(value, dt.datetime):
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        value = value.astimezone(dt.timezone.utc)
        extra = value.microsecond % 1000
        value = value - dt.timedelta(microseconds=extra)
        if up and extra:
            value += dt.timedelta(milliseconds=1)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return int(value)
