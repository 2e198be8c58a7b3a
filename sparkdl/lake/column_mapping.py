"""Delta column mapping on the delta-rs read path: Parquet columns by their physical names, returned by logical name.

With `delta.columnMapping.mode` = `name` or `id`, every field of the schema (nested ones too) carries
`delta.columnMapping.physicalName`, the column's name inside the data files, which stays the same when the column
is renamed; a dropped column simply leaves the schema. Spark reads the files with the physical schema and every
top-level column is cast (structs by position) to its logical type and aliased to its logical name. Delta writers
put the physical names into the files in both modes, so `id` mode is read by the same names.
"""
from __future__ import annotations

from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkdl.lake.schema import quote_name

PHYSICAL_NAME = "delta.columnMapping.physicalName"
MODE_KEY = "delta.columnMapping.mode"
_MAPPING_KEYS = (PHYSICAL_NAME, "delta.columnMapping.id", "parquet.field.id")


def mode(configuration: dict) -> str:
    """`none`, `name` or `id`."""
    return str((configuration or {}).get(MODE_KEY, "none") or "none").lower()


def physical_name(field) -> str:
    return (field.metadata or {}).get(PHYSICAL_NAME, field.name)


def physical_type(dtype):
    """`dtype` with every struct field renamed to its physical name (inside arrays and maps too)."""
    return _map_fields(dtype, lambda f, t: T.StructField(physical_name(f), t, f.nullable))


def logical_type(dtype):
    """`dtype` without the column-mapping metadata (what the DataFrame a user gets carries)."""
    return _map_fields(dtype, lambda f, t: T.StructField(
        f.name, t, f.nullable, {k: v for k, v in (f.metadata or {}).items() if k not in _MAPPING_KEYS}))


def _map_fields(dtype, field_fn):
    """`dtype` rebuilt bottom-up, every struct field replaced by `field_fn(field, its rebuilt type)`."""
    if isinstance(dtype, T.StructType):
        return T.StructType([field_fn(f, _map_fields(f.dataType, field_fn)) for f in dtype.fields])
    if isinstance(dtype, T.ArrayType):
        return T.ArrayType(_map_fields(dtype.elementType, field_fn), dtype.containsNull)
    if isinstance(dtype, T.MapType):
        return T.MapType(_map_fields(dtype.keyType, field_fn), _map_fields(dtype.valueType, field_fn),
                         dtype.valueContainsNull)
    return dtype


def to_logical(field):
    """The column that turns the physical column of `field` (a top-level logical field) into the logical one."""
    column = F.col(quote_name(physical_name(field)))
    wanted = logical_type(field.dataType)
    if isinstance(field.dataType, (T.StructType, T.ArrayType, T.MapType)):
        column = column.cast(wanted)
    return column.alias(field.name)
