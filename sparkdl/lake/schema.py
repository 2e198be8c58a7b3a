"""Schemas: Spark <-> Delta conversion, supported types, DDL strings, and the write plan (append/merge/overwrite).

Policy (both backends):
* Names match case-insensitively (as in Delta and Spark); the table's spelling is kept.
* Appends may widen types losslessly: byte→short→int→long, float→double, byte/short/int→double,
  decimal(p,s)→decimal(p',s') with s'≥s and p'-s'≥p-s, and the same inside arrays. Anything else is a
  `SchemaMismatchError` naming the column and both types.
* Nullability is not enforced: tables created by sparkdl have nullable columns (as Spark's file writers do).
* A table column missing from the data is written as null; a data column missing from the table is an error
  unless `schema_mode="merge"` (it is then added as a nullable column).
* Decimals are kept exactly as `decimal(p,s)` (p ≤ 38) in files, log and read-back; never cast to double.
* Not storable: `void` (NullType), intervals, variant, user-defined types (e.g. Spark ML vectors: convert them
  with `pyspark.ml.functions.vector_to_array` first), and strings with a non-default collation.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from pyspark.sql import types as T

from sparkdl.errors import SchemaMismatchError, TableError

PARTITION_TYPES = (T.StringType, T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.BooleanType, T.DateType,
                   T.TimestampType, T.TimestampNTZType, T.DecimalType, T.FloatType, T.DoubleType)
_SIMPLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INTEGRAL_RANK = {T.ByteType: 1, T.ShortType: 2, T.IntegerType: 3, T.LongType: 4}


# -- conversion ----------------------------------------------------------------------------------------------

def spark_schema_from_delta_json(schema_json: str) -> T.StructType:
    """The Spark schema of a Delta schema string (the log's `schemaString` format is Spark's JSON)."""
    return T.StructType.fromJson(json.loads(schema_json))


def delta_schema_json(schema: T.StructType) -> str:
    """The Delta schema string of a Spark schema, every field nullable (as Spark's file writers store them)."""
    return json.dumps(_nullable(schema).jsonValue())


def _nullable(dtype: T.DataType) -> T.DataType:
    if isinstance(dtype, T.StructType):
        return T.StructType([T.StructField(f.name, _nullable(f.dataType), True, f.metadata) for f in dtype.fields])
    if isinstance(dtype, T.ArrayType):
        return T.ArrayType(_nullable(dtype.elementType), True)
    if isinstance(dtype, T.MapType):
        return T.MapType(_nullable(dtype.keyType), _nullable(dtype.valueType), True)
    return dtype


def quote_name(name: str) -> str:
    return name if _SIMPLE_NAME.match(name) else "`" + name.replace("`", "``") + "`"


def type_ddl(dtype: T.DataType) -> str:
    """Spark SQL DDL of a data type: `ARRAY<FLOAT>`, `STRUCT<a: INT>`, `DECIMAL(10,2)`."""
    if isinstance(dtype, T.ArrayType):
        return f"ARRAY<{type_ddl(dtype.elementType)}>"
    if isinstance(dtype, T.MapType):
        return f"MAP<{type_ddl(dtype.keyType)}, {type_ddl(dtype.valueType)}>"
    if isinstance(dtype, T.StructType):
        return "STRUCT<" + ", ".join(f"{quote_name(f.name)}: {type_ddl(f.dataType)}" for f in dtype.fields) + ">"
    return dtype.simpleString().upper()


def schema_ddl(schema: T.StructType) -> str:
    """Spark DDL of a schema: `a INT, b ARRAY<FLOAT>` (non-nullable columns get NOT NULL)."""
    return ", ".join(f"{quote_name(f.name)} {type_ddl(f.dataType)}{'' if f.nullable else ' NOT NULL'}"
                     for f in schema.fields)


# -- checks --------------------------------------------------------------------------------------------------

def unsupported_types(schema: T.StructType) -> list[str]:
    """`column: type (why)` for every column whose type cannot be stored in a Delta table."""
    problems: list[str] = []

    def visit(dtype: T.DataType, path: str) -> None:
        if isinstance(dtype, T.StructType):
            for f in dtype.fields:
                visit(f.dataType, f"{path}.{f.name}" if path else f.name)
        elif isinstance(dtype, T.ArrayType):
            visit(dtype.elementType, f"{path}[]")
        elif isinstance(dtype, T.MapType):
            visit(dtype.keyType, f"{path}{{key}}")
            visit(dtype.valueType, f"{path}{{value}}")
        elif isinstance(dtype, T.UserDefinedType):
            problems.append(f"{path}: {dtype.simpleString()} (user-defined type; convert Spark ML vectors with "
                            f"pyspark.ml.functions.vector_to_array)")
        elif isinstance(dtype, T.NullType):
            problems.append(f"{path}: void (cast the column to a concrete type)")
        elif isinstance(dtype, (T.DayTimeIntervalType, T.YearMonthIntervalType, T.CalendarIntervalType)):
            problems.append(f"{path}: {dtype.simpleString()} (interval types cannot be stored in Delta)")
        elif type(dtype).__name__ == "VariantType":
            problems.append(f"{path}: variant (not supported by sparkdl.lake)")
        elif (isinstance(dtype, T.StringType)
              and getattr(dtype, "collation", "UTF8_BINARY") not in (None, "UTF8_BINARY")):
            problems.append(f"{path}: {dtype.simpleString()} (collated strings are not supported)")

    visit(schema, "")
    return problems


def check_storable(schema: T.StructType, table: str) -> None:
    """Raise `SchemaMismatchError` when a column type cannot be written to a Delta table."""
    problems = unsupported_types(schema)
    names = [f.name.lower() for f in schema.fields]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"duplicate column names (case-insensitive): {', '.join(dupes)}")
    if problems:
        raise SchemaMismatchError(f"cannot write to {table}: unsupported columns: " + "; ".join(problems))


def check_partition_columns(schema: T.StructType, partition_by: list[str], table: str) -> list[str]:
    """Validate partition columns against `schema`; returns them with the schema's spelling."""
    by_lower = {f.name.lower(): f for f in schema.fields}
    resolved = []
    for name in partition_by:
        if not isinstance(name, str) or name.lower() not in by_lower:
            raise SchemaMismatchError(f"partition column {name!r} is not a column of the data written to {table} "
                                      f"(columns: {', '.join(f.name for f in schema.fields)})")
        fld = by_lower[name.lower()]
        if not isinstance(fld.dataType, PARTITION_TYPES):
            raise SchemaMismatchError(f"cannot partition {table} by {fld.name}: type {fld.dataType.simpleString()} "
                                      f"is not a supported partition type (strings, integers, booleans, dates, "
                                      f"timestamps, decimals, floats)")
        resolved.append(fld.name)
    if len(set(n.lower() for n in resolved)) != len(resolved):
        raise SchemaMismatchError(f"partition_by for {table} names a column twice: {partition_by}")
    if resolved and len(resolved) == len(schema.fields):
        raise SchemaMismatchError(f"cannot partition {table} by every column ({resolved}): at least one column "
                                  f"must be stored in the data files")
    return resolved


def same_type(a: T.DataType, b: T.DataType) -> bool:
    """Equal up to nullability and field metadata."""
    return _strip_meta(_nullable(a)) == _strip_meta(_nullable(b))


def _strip_meta(dtype: T.DataType) -> T.DataType:
    if isinstance(dtype, T.StructType):
        return T.StructType([T.StructField(f.name, _strip_meta(f.dataType), f.nullable) for f in dtype.fields])
    if isinstance(dtype, T.ArrayType):
        return T.ArrayType(_strip_meta(dtype.elementType), dtype.containsNull)
    if isinstance(dtype, T.MapType):
        return T.MapType(_strip_meta(dtype.keyType), _strip_meta(dtype.valueType), dtype.valueContainsNull)
    return dtype


def can_widen(source: T.DataType, target: T.DataType) -> bool:
    """True when values of `source` convert to `target` without loss (see the module policy)."""
    if same_type(source, target):
        return True
    if type(source) in _INTEGRAL_RANK and type(target) in _INTEGRAL_RANK:
        return _INTEGRAL_RANK[type(source)] <= _INTEGRAL_RANK[type(target)]
    if isinstance(target, T.DoubleType):
        return isinstance(source, (T.FloatType, T.ByteType, T.ShortType, T.IntegerType))
    if isinstance(target, T.FloatType):
        return isinstance(source, (T.ByteType, T.ShortType))
    if isinstance(source, T.DecimalType) and isinstance(target, T.DecimalType):
        return target.scale >= source.scale and target.precision - target.scale >= source.precision - source.scale
    if isinstance(source, T.ArrayType) and isinstance(target, T.ArrayType):
        return can_widen(source.elementType, target.elementType)
    return False


# -- write plan ----------------------------------------------------------------------------------------------

@dataclass
class WritePlan:
    """How the data maps onto the table.

    Attributes:
        schema: the table schema after the write.
        partition_columns: the table's partition columns after the write.
        select: `(table column name, data column name or None, target type)` in table order; None = write nulls.
        new_fields: columns added by `schema_mode="merge"`.
        replace_schema: the write replaces schema and partitioning (`schema_mode="overwrite"`).
        create: the table does not exist yet.
    """

    schema: T.StructType
    partition_columns: list[str]
    select: list[tuple[str, str | None, T.DataType]]
    new_fields: list[T.StructField] = field(default_factory=list)
    replace_schema: bool = False
    create: bool = False

    def casts(self, data: T.StructType):
        """Like `columns`, casting widened columns to the table type."""
        from pyspark.sql import functions as F

        types = {f.name: f.dataType for f in data.fields}
        cols = []
        for name, source, dtype in self.select:
            if source is None:
                cols.append(F.lit(None).cast(dtype).alias(name))
            elif same_type(types[source], dtype):
                cols.append(F.col(quote_name(source)).alias(name))
            else:
                cols.append(F.col(quote_name(source)).cast(dtype).alias(name))
        return cols


def plan_new_table(data: T.StructType, partition_by: list[str] | None, table: str) -> WritePlan:
    """The plan for creating `table` from data of schema `data`."""
    check_storable(data, table)
    parts = check_partition_columns(data, list(partition_by or []), table)
    schema = _nullable(data)
    return WritePlan(schema=schema, partition_columns=parts,
                     select=[(f.name, f.name, f.dataType) for f in data.fields], create=True)


def plan_existing_table(data: T.StructType, table_schema: T.StructType, table_partitions: list[str], mode: str,
                        partition_by: list[str] | None, schema_mode: str | None, table: str) -> WritePlan:
    """The plan for an append or overwrite of an existing table.

    Raises:
        SchemaMismatchError: columns or types do not fit (message lists both sides), or partitioning changes
            without `schema_mode="overwrite"`.
    """
    check_storable(data, table)
    if mode == "overwrite" and schema_mode == "overwrite":
        parts = table_partitions if partition_by is None else list(partition_by)
        missing = [p for p in parts if p.lower() not in {f.name.lower() for f in data.fields}]
        if missing and partition_by is None:
            raise SchemaMismatchError(
                f"overwriting the schema of {table}: the new data lacks the table's partition column(s) "
                f"{missing}; pass partition_by=[...] (or [] for none)")
        plan = plan_new_table(data, parts, table)
        plan.create, plan.replace_schema = False, True
        return plan

    if partition_by is not None:
        wanted = [p.lower() for p in partition_by]
        if wanted != [p.lower() for p in table_partitions]:
            raise SchemaMismatchError(
                f"{table} is partitioned by {table_partitions or 'nothing'}, not {list(partition_by) or 'nothing'}; "
                f"changing the partitioning needs mode='overwrite' with schema_mode='overwrite'")

    data_by_lower = {f.name.lower(): f for f in data.fields}
    table_lower = {f.name.lower() for f in table_schema.fields}
    mismatched, select = [], []
    for tf in table_schema.fields:
        df_field = data_by_lower.get(tf.name.lower())
        if df_field is None:
            if tf.name in table_partitions:
                mismatched.append(f"{tf.name}: table {tf.dataType.simpleString()} (partition column), "
                                  f"data: missing")
            select.append((tf.name, None, tf.dataType))
        elif not can_widen(df_field.dataType, tf.dataType):
            mismatched.append(f"{tf.name}: table {tf.dataType.simpleString()}, data {df_field.dataType.simpleString()}")
        else:
            select.append((tf.name, df_field.name, tf.dataType))
    extra = [f for f in data.fields if f.name.lower() not in table_lower]
    if extra and schema_mode != "merge":
        mismatched.append("columns not in the table: " + ", ".join(f"{f.name} {f.dataType.simpleString()}"
                                                                   for f in extra)
                          + " (pass schema_mode='merge' to add them)")
    if mismatched:
        raise SchemaMismatchError(
            f"data does not match the schema of {table}: " + "; ".join(mismatched)
            + f". Table schema: {schema_ddl(table_schema)}. Data schema: {schema_ddl(data)}")
    new_fields = [T.StructField(f.name, _nullable(f.dataType), True, f.metadata) for f in extra]
    select += [(f.name, f.name, f.dataType) for f in new_fields]
    schema = T.StructType(list(table_schema.fields) + new_fields)
    return WritePlan(schema=schema, partition_columns=list(table_partitions), select=select, new_fields=new_fields)


def validate_mode(mode: str, schema_mode: str | None) -> None:
    """Raise `TableError` for unknown write modes or schema modes."""
    if mode not in ("append", "overwrite", "error", "ignore"):
        raise TableError(f"mode must be 'append', 'overwrite', 'error' or 'ignore', got {mode!r}")
    if schema_mode not in (None, "merge", "overwrite"):
        raise TableError(f"schema_mode must be None, 'merge' or 'overwrite', got {schema_mode!r}")
    if schema_mode == "overwrite" and mode != "overwrite":
        raise TableError(f"schema_mode='overwrite' needs mode='overwrite' (got mode={mode!r})")
