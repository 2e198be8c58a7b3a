"""The embedded Spark session: local default, executors on this interpreter, session reuse, Delta jar checks."""
import sys

import pytest

from sparkdl.errors import SessionError
from sparkdl.session import PETASTORM_CACHE_KEY, delta_backend, get_spark


def test_embedded_default_runs_executors_on_this_python(spark):
    assert spark.sparkContext.master == "local[2]"
    assert spark.conf.get("spark.pyspark.python") == sys.executable
    assert spark.conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    executables = spark.sparkContext.parallelize(range(4), 2).map(lambda _: __import__("sys").executable).collect()
    assert set(executables) == {sys.executable}


def test_python_udf_sees_this_interpreter(spark):
    from pyspark.sql.functions import udf

    exe = udf(lambda _: __import__("sys").executable, "string")
    rows = spark.range(3).select(exe("id").alias("exe")).distinct().collect()
    assert [r.exe for r in rows] == [sys.executable]


def test_active_session_is_reused(spark, work_dir):
    again = get_spark(conf={"spark.sql.shuffle.partitions": "3"})
    assert again is spark
    assert spark.conf.get("spark.sql.shuffle.partitions") == "3"
    spark.conf.set("spark.sql.shuffle.partitions", "4")
    assert spark.conf.get(PETASTORM_CACHE_KEY).startswith("file://")
    assert str(work_dir) in spark.conf.get(PETASTORM_CACHE_KEY)


def test_delta_backend_without_jars_is_delta_rs(spark):
    assert delta_backend(spark) == "delta-rs"


def test_missing_delta_jar_file_is_a_clear_error(spark):
    with pytest.raises(SessionError, match=r"spark.jars: file not found: /nonexistent/delta-spark_2.13-4.0.0.jar"):
        get_spark(conf={"spark.jars": "/nonexistent/delta-spark_2.13-4.0.0.jar"})


def test_unreachable_delta_package_is_a_clear_error_not_a_jvm_crash(spark, tmp_path):
    conf = {
        "spark.jars.packages": "io.delta:delta-spark_2.13:4.0.0",
        "spark.jars.ivy": str(tmp_path / "empty-ivy"),
        "spark.jars.repositories": "file:///nonexistent-maven-mirror",
    }
    import socket

    try:  # only meaningful offline, as on this project's machines and CI
        socket.create_connection(("repo1.maven.org", 443), timeout=3).close()
        pytest.skip("Maven Central is reachable from here")
    except OSError:
        pass
    with pytest.raises(SessionError, match=r"io.delta:delta-spark_2.13:4.0.0.*not in the local Ivy cache"):
        get_spark(conf=conf)
    # the running session survived
    assert spark.range(3).count() == 3
