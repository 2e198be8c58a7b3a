"""sparkdl.score.score_dataframe and its direct Parquet route: real Spark (local[2]), Parquet files, real models."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_score_udf import as_matrix, expected_outputs


@pytest.fixture(scope="module")
def digits_parquet(digits_df, tmp_path_factory):
    """The digits as 3 Parquet files written by Spark, read back as a plain scan."""
    folder = tmp_path_factory.mktemp("digits-parquet") / "data"
    digits_df.repartition(3).write.parquet(str(folder))
    return str(folder)


def test_score_dataframe_matches_model_predict_on_both_routes(spark, digits_df, digits_parquet, digits_mlp):
    from sparkdl.score import score_dataframe
    from sparkdl.score.scan import parquet_scan

    version, prep, model = digits_mlp
    scan_df = spark.read.parquet(digits_parquet)
    scan = parquet_scan(scan_df.select("id", "pixels"))
    assert scan is not None and len(scan.units) >= 3 and len(scan.tasks) >= 1
    assert parquet_scan(digits_df) is None  # cached: Spark's route
    assert parquet_scan(scan_df.where("id > 5")) is None  # a filter: Spark's route
    assert parquet_scan(scan_df.selectExpr("id AS x", "pixels")) is None  # an expression: Spark's route

    raw = digits_df.orderBy("id").toPandas()
    want, valid = expected_outputs(prep, model, raw, ["pixels"])
    assert valid.all()
    for df in (scan_df, digits_df):  # direct Parquet route, then mapInArrow over a cached frame
        out = score_dataframe(df, version, output="probabilities", keep_columns=["id"])
        assert out.columns == ["id", "probabilities"]
        pdf = out.orderBy("id").toPandas()
        assert list(pdf["id"]) == list(raw["id"])
        np.testing.assert_allclose(as_matrix(pdf["probabilities"]), want, atol=1e-5)
    direct = score_dataframe(scan_df, version, output_col="digit_hat").orderBy("id").toPandas()
    spark_route = score_dataframe(scan_df, version, output_col="digit_hat", direct=False).orderBy("id").toPandas()
    assert list(direct.columns) == ["id", "pixels", "digit", "digit_hat"]
    np.testing.assert_array_equal(direct["digit_hat"].to_numpy(), want.argmax(axis=1))
    np.testing.assert_array_equal(direct["digit_hat"].to_numpy(), spark_route["digit_hat"].to_numpy())
    assert list(direct["digit"]) == list(raw["digit"])
    np.testing.assert_array_equal(as_matrix(direct["pixels"]), as_matrix(raw["pixels"]))


@pytest.mark.both_sessions
def test_the_direct_route_is_taken_for_plain_scans_on_both_session_kinds(spark, digits_df, digits_parquet,
                                                                        digits_mlp):
    from sparkdl.score import score_dataframe
    from sparkdl.score.scan import parquet_scan

    version, prep, model = digits_mlp
    scan_df = spark.read.parquet(digits_parquet)
    assert parquet_scan(scan_df.select("id", "pixels")) is not None
    assert parquet_scan(scan_df.where("id > 5")) is None and parquet_scan(scan_df.selectExpr("id AS x")) is None
    direct = score_dataframe(scan_df, version, output_col="digit_hat").orderBy("id").toPandas()
    spark_route = score_dataframe(scan_df, version, output_col="digit_hat", direct=False).orderBy("id").toPandas()
    np.testing.assert_array_equal(direct["digit_hat"].to_numpy(), spark_route["digit_hat"].to_numpy())
    assert list(direct["id"]) == sorted(digits_df.toPandas()["id"])


def test_direct_route_reads_like_spark(spark, tmp_path, digits_mlp):
    """Row groups as units, a column missing from one file (nulls), upper-case column names in a file, nulls and
    wrong lengths: the direct route returns what Spark's own scan returns."""
    from sparkdl.score import score_dataframe
    from sparkdl.score.scan import parquet_scan

    version, _, _ = digits_mlp
    rng = np.random.default_rng(0)
    folder = tmp_path / "mixed"
    folder.mkdir()
    x = rng.integers(0, 16, size=(500, 64)).astype(np.float32)
    pixels = pa.array([list(r) for r in x], pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": np.arange(500, dtype=np.int64), "pixels": pixels, "note": ["a"] * 500}),
                   folder / "part-0.parquet", row_group_size=100)
    odd = pa.array([list(x[0]), None, list(x[1][:10]), list(x[2])], pa.list_(pa.float32()))
    pq.write_table(pa.table({"ID": np.arange(500, 504, dtype=np.int64), "PIXELS": odd}), folder / "part-1.parquet")
    df = spark.read.schema("id long, pixels array<float>, note string").parquet(str(folder))
    assert len(parquet_scan(df).units) == 2  # as many files as tasks: whole files
    scan = parquet_scan(df, tasks=4)
    assert scan is not None and len(scan.units) == 6 and len(scan.tasks) == 4  # 5 row groups + 1 file
    from pyspark.sql.pandas.types import to_arrow_schema

    from sparkdl.score.scan import read_scan_batches

    read = pa.Table.from_batches([b for task in scan.tasks
                                  for b in read_scan_batches(scan, to_arrow_schema(df.schema), task)])
    assert sorted(read.column("id").to_pylist()) == list(range(504)) and read.column("note").null_count == 4
    direct = score_dataframe(df, version).orderBy("id").toPandas()
    spark_route = score_dataframe(df, version, direct=False).orderBy("id").toPandas()
    assert len(direct) == 504 and list(direct["id"]) == list(range(504))
    assert direct["note"].iloc[:500].eq("a").all() and direct["note"].iloc[500:].isna().all()
    got, ref = direct["prediction"], spark_route["prediction"]
    assert got.isna().tolist() == ref.isna().tolist() == [False] * 501 + [True, True, False]
    np.testing.assert_array_equal(got.dropna().to_numpy(), ref.dropna().to_numpy())


@pytest.mark.both_sessions
def test_score_dataframe_options_and_errors(spark, digits_df, digits_mlp):
    from pyspark.ml.functions import array_to_vector

    from sparkdl.errors import ConfigError, ValidationError
    from sparkdl.score import score_dataframe, transform_with_model

    version, _, _ = digits_mlp
    small = digits_df.where("id < 50")
    with pytest.raises(ConfigError, match="output_col 'id' is also in keep_columns"):
        score_dataframe(small, version, output_col="id", keep_columns=["id"])
    with pytest.raises(ValidationError, match="nope: missing column"):
        score_dataframe(small, version, keep_columns=["nope"])
    with pytest.raises(ValidationError, match="pixels: wrong type"):
        score_dataframe(small.selectExpr("id", "digit AS pixels"), version)
    with pytest.raises(ConfigError, match="batch_size"):
        score_dataframe(small, version, batch_size=0)

    bad = spark.createDataFrame([(1, None), (2, [1.0] * 64)], "id long, pixels array<float>")
    with pytest.raises(Exception, match="cannot be scored"):
        score_dataframe(bad, version, on_invalid="error").collect()

    # Spark ML vectors: scored as arrays, kept as vectors; transform_with_model replaces a column in place
    vectors = small.withColumn("pixels", array_to_vector("pixels"))
    arrays = score_dataframe(small, version, keep_columns=["id"]).orderBy("id").toPandas()
    out = transform_with_model(version, vectors, output_col="digit")
    assert out.columns == ["id", "pixels", "digit"]
    assert out.schema["pixels"].dataType == vectors.schema["pixels"].dataType
    np.testing.assert_array_equal(out.orderBy("id").toPandas()["digit"].to_numpy(), arrays["prediction"].to_numpy())

    # a column Arrow cannot carry (calendar interval): transform_with_model takes the column UDF
    with_interval = small.selectExpr("id", "pixels", "make_interval(0, 0, 0, 1, 0, 0, 0) AS wait")
    out = transform_with_model(version, with_interval, output_col="digit")
    assert out.columns == ["id", "pixels", "wait", "digit"]
    got = {r.id: r.digit for r in out.select("id", "digit").collect()}
    assert [got[i] for i in sorted(got)] == list(arrays["prediction"])
