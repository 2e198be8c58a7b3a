"""data.validation.validate: every bad-input kind, reported together in one ValidationError from one Spark pass."""
from __future__ import annotations

import uuid

import pytest

from sparkdl.data.spec import Feature, FeatureSpec, Label
from sparkdl.data.validation import validate
from sparkdl.errors import ValidationError

SCHEMA = "id int, x double, n int, cat string, v array<float>, y int"


def _rows(n=20):
    return [(i, float(i), i % 3, "abc"[i % 3], [float(i), 1.0, 2.0], i % 4) for i in range(n)]


def _spec(**label):
    return FeatureSpec(
        (Feature("x"), Feature("n"), Feature("cat", "categorical"), Feature("v", "vector", (3,))),
        Label("y", **(label or {"task": "multiclass", "num_classes": 4})),
        id_columns=("id",),
    )


def _jobs(spark, fn):
    """Number of Spark jobs `fn` runs (through a job group)."""
    sc = spark.sparkContext
    group = f"count-{uuid.uuid4().hex}"
    sc.setJobGroup(group, "count jobs")
    try:
        fn()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    return len(sc.statusTracker().getJobIdsForGroup(group))


def _by_problem(err):
    return {(p["column"], p["problem"]): p for p in err.problems}


def test_good_data_passes_and_the_same_data_with_one_bad_value_does_not(spark):
    rows = _rows()
    validate(_spec(), spark.createDataFrame(rows, SCHEMA))  # raises nothing
    rows[-1] = (19, 19.0, 1, "b", [19.0, 1.0, 2.0], 4)  # label 4 of a 4-class label (0..3)
    with pytest.raises(ValidationError) as info:
        validate(_spec(), spark.createDataFrame(rows, SCHEMA))
    assert [p["column"] for p in info.value.problems] == ["y"]


def test_every_problem_in_one_error(spark):
    rows = _rows(20)
    rows[1] = (1, None, 1, "b", [1.0, 1.0, 2.0], 1)             # null numeric
    rows[2] = (2, float("nan"), 2, "c", [2.0, 1.0, 2.0], 2)     # NaN
    rows[3] = (3, float("inf"), 0, "a", [3.0, 1.0, 2.0], 3)     # inf
    rows[4] = (4, 4.0, 1, "b", [4.0, 1.0], 0)                   # wrong length
    rows[5] = (5, 5.0, 2, "c", [5.0, float("nan"), 2.0], 1)     # NaN element
    rows[6] = (6, 6.0, 0, None, [6.0, 1.0, 2.0], 2)             # null categorical
    rows[7] = (7, 7.0, 1, "b", [7.0, 1.0, 2.0], 9)              # label out of range
    rows[8] = (8, 8.0, 2, "c", [8.0, 1.0, 2.0], None)           # null label
    rows[9] = (9, 9.0, 0, "a", [9.0, 1.0, 2.0, 4.0, 5.0], -1)   # wrong length again + negative label
    df = spark.createDataFrame(rows, SCHEMA)
    with pytest.raises(ValidationError) as info:
        validate(_spec(), df)
    err = info.value
    got = _by_problem(err)
    assert got[("x", "null")]["count"] == 1
    assert got[("x", "NaN")]["count"] == 1
    assert got[("x", "infinite")]["count"] == 1
    assert got[("v", "wrong length")]["count"] == 2
    assert set(got[("v", "wrong length")]["samples"]) == {"id=4, value=length 2", "id=9, value=length 5"}
    assert got[("v", "null or NaN element")]["count"] == 1
    assert got[("cat", "null")]["count"] == 1
    assert got[("y", "out of range")]["count"] == 2
    assert got[("y", "null")]["count"] == 1
    assert got[("y", "out of range")]["expected"] == ">= 0 and < 4"
    assert len(err.problems) == 8
    # the message names every column and the counts
    for col in ("x", "v", "cat", "y"):
        assert f"- {col}:" in str(err)
    assert "2 of 20 rows" in str(err)


def test_schema_problems_and_value_problems_together(spark):
    df = spark.createDataFrame([(1, "a", [1.0, 2.0], 0), (2, "b", [1.0, 2.0, 3.0], 5)],
                               "id int, x string, v array<float>, y int")
    spec = FeatureSpec((Feature("x"), Feature("missing_col"), Feature("v", "vector", (3,))),
                       Label("y", "binary"))
    with pytest.raises(ValidationError) as info:
        validate(spec, df)
    got = _by_problem(info.value)
    assert got[("x", "wrong type")]["found"] == "string"
    assert "numeric" in got[("x", "wrong type")]["expected"]
    assert ("missing_col", "missing column") in got
    assert got[("v", "wrong length")]["count"] == 1
    assert got[("y", "not 0/1")]["count"] == 1
    assert got[("y", "not 0/1")].samples == ("5",)


def test_imputed_features_may_hold_nulls_but_not_inf(spark):
    rows = [(i, None if i % 2 else float(i), i % 2, "a", None if i == 3 else [1.0, 2.0, 3.0], 1) for i in range(6)]
    df = spark.createDataFrame(rows, SCHEMA)
    spec = FeatureSpec((Feature("x", impute="mean"), Feature("v", "vector", (3,), impute="constant", impute_value=0)),
                       Label("y", "binary"))
    validate(spec, df)
    bad = spark.createDataFrame([(0, float("inf"), 0, "a", [1.0, 2.0, 3.0], 1)], SCHEMA)
    with pytest.raises(ValidationError, match="infinite"):
        validate(spec, bad)


def test_label_rules(spark):
    df = spark.createDataFrame([(0, 1.0, 0.5), (1, 2.0, 1.0), (2, 3.0, float("nan"))], "id int, x double, y double")
    with pytest.raises(ValidationError) as info:
        validate(FeatureSpec((Feature("x"),), Label("y", "multiclass")), df)
    got = _by_problem(info.value)
    assert got[("y", "not a whole number")]["count"] == 1
    assert got[("y", "NaN")]["count"] == 1
    # regression: any finite float is fine, NaN is not
    with pytest.raises(ValidationError, match="NaN"):
        validate(FeatureSpec((Feature("x"),), Label("y", "regression")), df)
    # no label needed for scoring
    validate(FeatureSpec((Feature("x"),), Label("y", "multiclass")), df.drop("y"), require_label=False)
    # string classes beyond num_classes
    s = spark.createDataFrame([(1.0, "a"), (2.0, "b"), (3.0, "c")], "x double, y string")
    with pytest.raises(ValidationError, match="too many classes"):
        validate(FeatureSpec((Feature("x"),), Label("y", "multiclass", num_classes=2)), s)


def test_vector_udt_is_accepted(spark):
    from pyspark.ml.linalg import Vectors

    df = spark.createDataFrame([(Vectors.dense([1.0, 2.0]), 0), (Vectors.dense([1.0, 2.0, 3.0]), 1)], ["v", "y"])
    spec = FeatureSpec((Feature("v", "vector", (2,)),), Label("y", "binary"))
    with pytest.raises(ValidationError) as info:
        validate(spec, df)
    assert [(p["column"], p["problem"], p["count"]) for p in info.value.problems] == [("v", "wrong length", 1)]
    validate(spec, df.limit(1))


def test_empty_dataframe(spark):
    df = spark.createDataFrame([], SCHEMA)
    with pytest.raises(ValidationError, match="no rows"):
        validate(_spec(), df)


def test_one_pass_whatever_the_number_of_columns(spark):
    df = spark.createDataFrame(_rows(50), SCHEMA).repartition(2)
    small = FeatureSpec((Feature("x"),), Label("y", "multiclass", num_classes=4))
    jobs_small = _jobs(spark, lambda: validate(small, df))
    jobs_all = _jobs(spark, lambda: validate(_spec(), df))
    assert jobs_small >= 1
    assert jobs_all == jobs_small, "validation must not run one job per column"


def test_each_kind_says_once_what_it_takes_in_spark_arrow_and_json():
    """The feature-kind seam: one record per kind holds its Spark, Arrow and JSON rules and the words of the
    errors; schema validation, the scoring UDF's batch check and HTTP requests all read it; a kind registered by a
    user is known to the spec, and a taken name is refused."""
    import dataclasses

    import pyarrow as pa
    from pyspark.sql import types as T

    from sparkdl.data.kinds import FeatureKind, feature_kind, register_kind
    from sparkdl.data.validation import expected_type, type_ok
    from sparkdl.errors import ConfigError, RequestError
    from sparkdl.score.udf import _arrow_type_ok
    from sparkdl.serving.requests import _typed

    cases = {  # kind: (Spark types it takes, one it refuses, Arrow type it takes, one it refuses)
        "numeric": (T.BooleanType(), T.StringType(), pa.int8(), pa.string()),
        "categorical": (T.LongType(), T.DoubleType(), pa.large_string(), pa.float32()),
        "text": (T.StringType(), T.LongType(), pa.string(), pa.binary()),
        "image": (T.BinaryType(), T.LongType(), pa.binary(), pa.int64()),
        "vector": (T.ArrayType(T.FloatType()), T.ArrayType(T.StringType()), pa.list_(pa.float64()),
                   pa.list_(pa.string())),
    }
    for kind, (takes, refuses, arrow_takes, arrow_refuses) in cases.items():
        feature = Feature("x", kind=kind, shape={"vector": (3,), "image": (8, 8, 1)}.get(kind, ()))
        assert type_ok(feature, takes) and not type_ok(feature, refuses), kind
        assert _arrow_type_ok(kind, arrow_takes) and not _arrow_type_ok(kind, arrow_refuses), kind
        assert _arrow_type_ok(kind, pa.null())  # an all-null batch is reported row by row, not as a type
        assert expected_type(feature).startswith(feature_kind(kind).expects)
    assert _typed(Feature("v", kind="vector", shape=(2,)), [[1, 2], None]).type == pa.list_(pa.float32())
    with pytest.raises(RequestError, match=r"column 'n', row 1: expected a number, got True"):
        _typed(Feature("n"), [1.5, True])

    # a user's kind: the spec knows it, the type systems ask it
    dates = FeatureKind("date", "a date column", lambda t: isinstance(t, T.DateType),
                        pa.types.is_date32, lambda column, values: pa.array(values, pa.string()))
    register_kind(dates)
    try:
        feature = Feature("day", kind="date")
        assert type_ok(feature, T.DateType()) and not type_ok(feature, T.StringType())
        assert expected_type(feature) == "a date column" and _arrow_type_ok("date", pa.date32())
        register_kind(dates)  # the same record again is fine
        with pytest.raises(ConfigError, match="feature kind 'date' exists"):
            register_kind(dataclasses.replace(dates, expects="another"))
    finally:
        from sparkdl.data import kinds

        kinds._KINDS.pop("date")
    with pytest.raises(ConfigError, match=r"kind must be one of .*'image'.*got 'date'"):
        Feature("day", kind="date")
