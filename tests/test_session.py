"""The embedded Spark session: local default, executors on this interpreter, session reuse, Delta jar checks."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparkdl.errors import SessionError
from sparkdl.session import PETASTORM_CACHE_KEY, delta_backend, get_spark


def test_embedded_default_runs_executors_on_this_python(spark):
    assert spark.sparkContext.master == "local[2]"
    assert spark.conf.get("spark.pyspark.python") == sys.executable
    assert spark.conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    executables = spark.sparkContext.parallelize(range(4), 2).map(lambda _: __import__("sys").executable).collect()
    assert set(executables) == {sys.executable}


@pytest.mark.both_sessions
def test_python_udf_sees_this_interpreter(spark):
    from pyspark.sql.functions import udf

    exe = udf(lambda _: __import__("sys").executable, "string")
    rows = spark.range(3).select(exe("id").alias("exe")).distinct().collect()
    assert [r.exe for r in rows] == [sys.executable]


@pytest.mark.both_sessions
def test_active_session_is_reused(spark, work_dir):
    again = get_spark(conf={"spark.sql.shuffle.partitions": "3"})
    assert again is spark
    assert spark.conf.get("spark.sql.shuffle.partitions") == "3"
    spark.conf.set("spark.sql.shuffle.partitions", "4")
    assert spark.conf.get(PETASTORM_CACHE_KEY).startswith("file://")
    assert str(work_dir) in spark.conf.get(PETASTORM_CACHE_KEY)


@pytest.mark.both_sessions
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


@pytest.mark.both_sessions
def test_the_session_kind_tells_the_cluster_without_a_spark_context(spark):
    from sparkdl.session_kind import default_parallelism, is_connect, master
    from sparkdl.train.resources import task_slots

    assert is_connect(spark) == (os.environ.get("SPARKDL_TEST_SESSION") == "connect")
    assert master(spark) == "local[2]" and default_parallelism(spark) == 2 and task_slots(spark) == 2


def test_a_spark_connect_session_where_its_client_cannot_run_is_a_clear_error():
    """On the pinned stack (TensorFlow 2.15 pins protobuf < 5) the Connect client cannot load: one clear error
    naming both versions, before any server starts; on the current stack the client loads."""
    from sparkdl.session_kind import connect_client_problem

    problem = connect_client_problem()
    import google.protobuf

    if google.protobuf.__version__.split(".")[0] >= "5":
        assert problem is None
        return
    assert "protobuf >= 5" in problem and f"protobuf {google.protobuf.__version__}" in problem
    code = ("import sys\nfrom sparkdl.session import get_spark\ntry:\n    get_spark(remote='local[2]')\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n    sys.exit(3)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYSPARK_GATEWAY_PORT"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stdout.startswith("SessionError") and "protobuf >= 5" in done.stdout and "pyspark 4.0" in done.stdout


def test_a_remote_that_is_not_a_connect_address_is_refused():
    from sparkdl.session import _start_remote

    with pytest.raises(SessionError, match=r"'spark://h:7077' is not a Spark Connect address"):
        _start_remote("spark://h:7077", {}, Path("."), "x", False)
