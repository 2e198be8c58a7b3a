"""Check a DataFrame against a `FeatureSpec` before any expensive work.

Schema problems (missing columns, wrong types) come from the DataFrame's schema, with no Spark job. Value problems
(nulls, NaN, infinities, wrong array lengths, labels out of range) are counted in ONE Spark aggregation over the
data: every check of every column is one `count_if` plus a few sample aggregates (`first`/`last`/`min`/`max` of a
short description of the offending row, so memory stays constant however many rows are bad). All problems are
raised together in one `ValidationError`, whose `.problems` is a list of `sparkdl.errors.Problem` records
(column, problem, expected, found, count, samples).

Image features are decoded (`sparkdl.data.images`, in a pandas UDF inside the same aggregation): an image that
cannot be read, decoded or (with ``resize: false``) is the wrong size is a problem with the row's id columns as
sample.

Rules (they mirror what `PreprocessorModel.prepare_batch` can and cannot prepare):
* a feature with an ``impute`` strategy may hold nulls and NaN (they are imputed); infinities are always an error;
* vector/sequence columns are ``array<numeric>`` or Spark ML vectors (converted with ``vector_to_array``) of
  exactly ``prod(shape)`` values;
* labels: no nulls/NaN/inf; ``binary`` numeric labels are 0/1; ``multiclass`` numeric labels are whole numbers,
  in ``[0, num_classes)`` when ``num_classes`` is set; string class labels have at most ``num_classes`` values.
"""
from __future__ import annotations

from dataclasses import dataclass

from sparkdl.data.images import decode_one
from sparkdl.data.kinds import feature_kind, is_vector_udt, spark_integral, spark_numeric, spark_string
from sparkdl.data.spec import Feature, FeatureSpec, Label
from sparkdl.errors import Problem, ValidationError
from sparkdl.log import get_logger

log = get_logger("data.validation")

_SAMPLE_AGGS = ("first", "last", "min", "max")


def _floating(data_type) -> bool:
    from pyspark.sql.types import DecimalType, DoubleType, FloatType

    return isinstance(data_type, (DoubleType, FloatType, DecimalType))


def expected_type(item: Feature | Label) -> str:
    """The column type a feature or label accepts, in words."""
    if isinstance(item, Label):
        return {"regression": "a numeric column", "binary": "a numeric, boolean or string column",
                "multiclass": "an integer or string column (or whole-number floats)"}[item.task]
    words = feature_kind(item.kind).expects
    if item.kind == "vector":
        return f"{words} of {item.size} values or a Spark ML vector"
    if item.kind == "sequence":
        return f"{words} of {item.size} values (shape {list(item.shape)})"
    return words


def type_ok(item: Feature | Label, data_type) -> bool:
    """Whether a column of `data_type` can hold `item` (a Feature or the Label)."""
    if isinstance(item, Label):
        if item.task == "regression":
            return spark_numeric(data_type)
        return spark_numeric(data_type) or spark_string(data_type)
    return feature_kind(item.kind).spark_ok(data_type)


def schema_problems(spec: FeatureSpec, schema, require_label: bool = True) -> list[Problem]:
    """Missing columns and wrong types of the spec's features (and label), from the schema only (no Spark job)."""
    fields = {f.name: f.dataType for f in schema.fields}
    items = list(spec.features) + ([spec.label] if spec.label is not None and require_label else [])
    problems = []
    for item in items:
        kind = "label" if isinstance(item, Label) else f"{item.kind} feature"
        if item.name not in fields:
            problems.append(Problem(item.name, "missing column", f"{kind} ({expected_type(item)})",
                                    f"columns {sorted(fields)}"))
        elif not type_ok(item, fields[item.name]):
            problems.append(Problem(item.name, "wrong type", expected_type(item), fields[item.name].simpleString()))
    return problems


def check_schema(spec: FeatureSpec, schema, what: str, require_label: bool = True,
                 also_present: list[str] = ()) -> None:
    """Missing columns and wrong types, from the schema only (no Spark job); `also_present` are further columns
    that must exist (e.g. the columns a scoring job keeps).

    Raises:
        ValidationError: "<what>: <column>: missing column (expected ..., found columns [...])", one entry per problem.
    """
    problems = schema_problems(spec, schema, require_label)
    names = set(schema.fieldNames())
    problems += [Problem(c, "missing column", "a column to keep", f"columns {sorted(names)}")
                 for c in also_present if c not in names]
    if problems:
        raise ValidationError(f"{what}: " + "; ".join(str(p) for p in problems), problems)


def array_column(df, name: str):
    """The column `name` as an array: Spark ML vectors go through `vector_to_array` (float32)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    if is_vector_udt(df.schema[name].dataType):
        return vector_to_array(F.col(name), "float32")
    return F.col(name)


def _image_problem_udf(f: Feature):
    """A pandas UDF: why each image of feature `f` cannot be decoded (None when it can), decoded by
    `sparkdl.data.images` as training and scoring decode it."""
    from pyspark.sql.functions import pandas_udf

    shape, resize = tuple(f.shape), f.resize

    @pandas_udf("string")
    def image_problem(values):
        import pandas as pd

        return pd.Series([None if v is None else decode_one(v, shape, resize, isinstance(v, str))[1]
                          for v in values], dtype=object)

    return image_problem


def _value_checks(df, columns_ok: list) -> list[tuple]:
    """(column, problem, expected, condition Column, sample Column) for every value check on well-typed columns."""
    from pyspark.sql import functions as F

    checks = []
    for item in columns_ok:
        name = item.name
        dtype = df.schema[name].dataType
        col = F.col(name)
        if isinstance(item, Feature) and item.kind in ("vector", "sequence"):
            arr = array_column(df, name)
            n = item.size
            missing_ok = item.impute is not None
            if not missing_ok:
                checks.append((item, "null", "no nulls (or set impute)", arr.isNull(), F.lit("null")))
            checks.append((item, "wrong length", f"{n} values", arr.isNotNull() & (F.size(arr) != n),
                           F.concat(F.lit("length "), F.size(arr).cast("string"))))
            if not missing_ok:
                bad = F.exists(arr, lambda x: x.isNull() | F.isnan(x))
                checks.append((item, "null or NaN element", "finite values (or set impute)",
                               F.coalesce(bad, F.lit(False)), F.lit("array with null/NaN")))
            if not spark_integral(dtype.elementType if hasattr(dtype, "elementType") else dtype):
                inf = F.exists(arr, lambda x: F.abs(x) == float("inf"))
                checks.append((item, "infinite element", "finite values", F.coalesce(inf, F.lit(False)),
                               F.lit("array with inf")))
            continue
        if isinstance(item, Feature) and item.kind == "text":
            checks.append((item, "null", "text in every row", col.isNull(), F.lit("null")))
            checks.append((item, "empty text", "at least one word or number",
                           col.isNotNull() & ~col.rlike(r"[\p{L}\p{N}]"), F.substring(col, 1, 40)))
            continue
        if isinstance(item, Feature) and item.kind == "image":
            why = _image_problem_udf(item)(col)
            checks.append((item, "null", "an image in every row", col.isNull(), F.lit("null")))
            size = "" if item.resize else f" of {item.shape[0]}x{item.shape[1]} pixels"
            checks.append((item, "undecodable image", f"an image Pillow can decode (PNG, JPEG, ...){size}",
                           col.isNotNull() & why.isNotNull(), why))
            continue
        is_label = isinstance(item, Label)
        missing_ok = (not is_label) and item.impute is not None
        if not missing_ok:
            checks.append((item, "null", "no nulls" + ("" if is_label else " (or set impute)"), col.isNull(),
                           F.lit("null")))
        if _floating(dtype):
            if not missing_ok:
                checks.append((item, "NaN", "no NaN" + ("" if is_label else " (or set impute)"), F.isnan(col),
                               F.lit("NaN")))
            checks.append((item, "infinite", "finite values", F.abs(col) == float("inf"), col.cast("string")))
        if is_label and spark_numeric(dtype) and item.task in ("binary", "multiclass"):
            finite = col.isNotNull() & ~F.isnan(col.cast("double")) & (F.abs(col.cast("double")) != float("inf"))
            d = col.cast("double")
            if item.task == "binary":
                checks.append((item, "not 0/1", "0 or 1", finite & ~d.isin(0.0, 1.0), col.cast("string")))
            else:
                if _floating(dtype):
                    checks.append((item, "not a whole number", "class indices 0..n-1", finite & (d != F.floor(d)),
                                   col.cast("string")))
                upper = f" and < {item.num_classes}" if item.num_classes else ""
                bad = (d < 0) if not item.num_classes else ((d < 0) | (d >= item.num_classes))
                checks.append((item, "out of range", f">= 0{upper}", finite & bad, col.cast("string")))
    return checks


@dataclass(frozen=True)
class ValidationPlan:
    """The checks of `validate` as aggregate columns, so they can share one Spark aggregation with other work
    (`Preprocessor.fit(validate=True)`): run `aggs` in one `df.agg(...)` beside yours, then `check(row)`."""

    aggs: tuple
    schema_problems: tuple      # found from the schema alone (no Spark job)
    checks: tuple               # (item, problem, expected) per value check, in the order of the c<i> aggregates
    string_classes: Label | None
    max_examples: int

    def check(self, row) -> int:
        """Raise one ValidationError listing every problem found in `row` (the aggregation's result) and the
        schema; return the number of rows validated.

        Raises:
            ValidationError: any problem.
        """
        problems = list(self.schema_problems)
        rows = row["v_rows"]
        if rows == 0:
            problems.append(Problem("*", "no rows", "at least one row", "an empty DataFrame"))
        for i, (item, problem, expected) in enumerate(self.checks):
            count = row[f"v_c{i}"]
            if count:
                samples = []
                for agg in _SAMPLE_AGGS[:self.max_examples]:
                    value = row[f"v_s{i}_{agg}"]
                    if value is not None and value not in samples:
                        samples.append(value)
                problems.append(Problem(item.name, problem, expected, f"{count} of {rows} rows", count,
                                         samples[:self.max_examples]))
        label = self.string_classes
        if label is not None and row["v_classes"] > label.num_classes:
            problems.append(Problem(label.name, "too many classes", f"at most num_classes={label.num_classes}",
                                     f"{row['v_classes']} distinct values"))
        if problems:
            lines = [f"  - {p['column']}: {p['problem']}: expected {p['expected']}, found {p['found']}"
                     + (f"; e.g. {list(p.samples)}" if p.samples else "") for p in problems]
            raise ValidationError(f"the data does not match the feature spec ({len(problems)} problem(s)):\n"
                                  + "\n".join(lines), problems)
        return rows


def validation_plan(spec: FeatureSpec, df, require_label: bool = True, max_examples: int = 3) -> ValidationPlan:
    """The aggregate columns and the interpretation of `validate` (see `ValidationPlan`); no Spark job."""
    from pyspark.sql import functions as F

    fields = {f.name: f.dataType for f in df.schema.fields}
    problems = schema_problems(spec, df.schema, require_label)
    wrong = {p.column for p in problems}
    ok = [item for item in list(spec.features) + ([spec.label] if require_label and spec.label is not None else [])
          if item.name not in wrong]
    for name in spec.id_columns:
        if name not in fields:
            problems.append(Problem(name, "missing column", "id column", f"columns {sorted(fields)}"))

    checks = _value_checks(df, ok)
    ids = [c for c in spec.id_columns if c in fields]
    examples = max(1, min(max_examples, len(_SAMPLE_AGGS)))
    aggs = [F.count(F.lit(1)).alias("v_rows")]
    label = spec.label if (require_label and spec.label in ok) else None
    string_classes = bool(label is not None and label.num_classes and spark_string(fields[label.name]))
    if string_classes:
        aggs.append(F.count_distinct(F.col(label.name)).alias("v_classes"))
    for i, (_, _, _, cond, sample) in enumerate(checks):
        aggs.append(F.count_if(cond).alias(f"v_c{i}"))
        if ids:
            sample = F.concat_ws(", ", *[F.concat(F.lit(f"{c}="), F.col(c).cast("string")) for c in ids],
                                 F.concat(F.lit("value="), F.coalesce(sample, F.lit("null"))))
        described = F.when(cond, F.coalesce(sample, F.lit("null")))
        for agg in _SAMPLE_AGGS[:examples]:
            fn = {"first": lambda c: F.first(c, ignorenulls=True), "last": lambda c: F.last(c, ignorenulls=True),
                  "min": F.min, "max": F.max}[agg]
            aggs.append(fn(described).alias(f"v_s{i}_{agg}"))
    return ValidationPlan(tuple(aggs), tuple(problems), tuple((c[0], c[1], c[2]) for c in checks),
                          label if string_classes else None, examples)


def validate(spec: FeatureSpec, df, require_label: bool = True, max_examples: int = 3) -> None:
    """Check `df` against `spec`; raise one `ValidationError` listing every problem.

    Args:
        spec: the feature spec.
        df: a Spark DataFrame.
        require_label: whether the label column must be present (False for scoring).
        max_examples: sample values per problem (at most 4: first/last/min/max of the offending rows).

    Raises:
        ValidationError: missing columns, wrong types, nulls/NaN/inf, wrong array lengths, bad labels, or no rows.
    """
    plan = validation_plan(spec, df, require_label, max_examples)
    rows = plan.check(df.agg(*plan.aggs).first())  # the one pass over the data
    log.debug("validated %d rows against %s", rows, spec.feature_names)


__all__ = ["validate", "validation_plan", "ValidationPlan", "type_ok", "expected_type", "is_vector_udt", "array_column"]
