"""Partition values: Delta's string form on write, typed Spark literals on read.

Delta keeps partition values in the log as strings (`2024-01-31`, `2024-01-31 10:00:00.000000` in UTC, `true`),
not in the data files. On write, sparkdl replaces each partition column by its Delta string form *before*
Spark's `partitionBy`, so a directory name `p=<escaped value>` unescapes to exactly the log's value. Spark writes
nulls — and empty strings, as Hive does — as `__HIVE_DEFAULT_PARTITION__`, which becomes a null partition value.
"""
from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def delta_string(col: Column, dtype: T.DataType, session_tz: str) -> Column:
    """A Spark expression giving Delta's partition-value string of `col` (type `dtype`)."""
    if isinstance(dtype, T.StringType):
        return col
    if isinstance(dtype, T.TimestampType):
        utc_wall = F.convert_timezone(F.lit(session_tz), F.lit("UTC"), col.cast("timestamp_ntz"))
        return F.date_format(utc_wall, "yyyy-MM-dd HH:mm:ss.SSSSSS")
    if isinstance(dtype, T.TimestampNTZType):
        return F.date_format(col, "yyyy-MM-dd HH:mm:ss.SSSSSS")
    return col.cast("string")


def unescape_path_name(name: str) -> str:
    """Undo Spark's `ExternalCatalogUtils.escapePathName` (`%XX` escapes)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), name)


def values_from_path(relative_dir: str, partition_columns: list[str]) -> dict[str, str | None]:
    """Partition values (Delta strings) from a Spark output sub-path like `p=a%3Ab/q=1`.

    Raises:
        ValueError: the path does not hold exactly the expected partition columns, in order.
    """
    parts = [p for p in relative_dir.split("/") if p]
    if len(parts) != len(partition_columns):
        raise ValueError(f"{relative_dir!r} does not match partition columns {partition_columns}")
    values: dict[str, str | None] = {}
    for segment, column in zip(parts, partition_columns):
        name, sep, raw = segment.partition("=")
        if not sep or unescape_path_name(name) != column:
            raise ValueError(f"{relative_dir!r}: expected a {column}=... directory, found {segment!r}")
        value = unescape_path_name(raw)
        values[column] = None if value == HIVE_NULL else value
    return values


def literal(value, dtype: T.DataType) -> Column:
    """An exact Spark literal of type `dtype` for a typed partition value read from the Delta log.

    Timestamps go through epoch microseconds and the other types through exact strings, so the session time
    zone never shifts a value.
    """
    if value is None:
        return F.lit(None).cast(dtype)
    if isinstance(dtype, T.TimestampType):
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        micros = (value - _EPOCH) // dt.timedelta(microseconds=1)
        return F.timestamp_micros(F.lit(micros))
    if isinstance(dtype, T.TimestampNTZType):
        text = value if isinstance(value, str) else value.replace(tzinfo=None).isoformat(sep=" ")
        return F.lit(text).cast(dtype)
    if isinstance(dtype, T.DateType):
        return F.lit(value if isinstance(value, str) else value.isoformat()).cast(dtype)
    if isinstance(dtype, T.DecimalType):
        return F.lit(format(Decimal(str(value)), "f")).cast(dtype)
    return F.lit(value).cast(dtype)
