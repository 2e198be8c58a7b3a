"""Shared fixtures: one local[2] SparkSession for the whole run, on this interpreter, with a temp work folder.

With SPARKDL_TEST_SESSION=connect the session is a Spark Connect one (a local server, `remote("local[2]")`) and
only the tests marked `both_sessions` run: the end-to-end paths that must give the same results on both kinds.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Quiet TensorFlow's C++ logging before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Every run gets a fresh work folder, whatever the user's environment says (a user's SPARKDL_* settings must not
# leak old checkpoints, models or tables into the tests).
_WORK = tempfile.mkdtemp(prefix="sparkdl-tests-")
os.environ["SPARKDL_WORK_DIR"] = _WORK
SESSION_KIND = os.environ.get("SPARKDL_TEST_SESSION", "classic")
for _key in ("SPARKDL_LAKE_DIR", "SPARKDL_MODEL_STORE", "SPARKDL_MASTER", "SPARKDL_REMOTE"):
    os.environ.pop(_key, None)

# sparkdl first, as users are told to: it sets TF_USE_LEGACY_KERAS before any test module imports TensorFlow, so
# `tf.keras` is Keras 2 on the current stack whichever test file is collected first.
import sparkdl  # noqa: E402, F401


@pytest.fixture(scope="session")
def work_dir():
    """The sparkdl work folder of this test run (Petastorm cache, model store, warehouse)."""
    from sparkdl.session import work_dir as _work_dir

    return _work_dir()


def pytest_collection_modifyitems(config, items):
    if SESSION_KIND != "connect":
        return
    kept = [item for item in items if item.get_closest_marker("both_sessions")]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


@pytest.fixture(scope="session")
def spark(work_dir):
    """The one SparkSession of the test run: the embedded default on local[2], or a Spark Connect session on a
    local[2] server (SPARKDL_TEST_SESSION=connect)."""
    from sparkdl.session import get_spark

    conf = {"spark.sql.shuffle.partitions": "4"}
    if SESSION_KIND == "connect":
        session = get_spark(remote="local[2]", app_name="sparkdl-tests", conf=conf)
    else:
        session = get_spark(master="local[2]", app_name="sparkdl-tests", conf=conf)
    yield session
    session.stop()
    shutil.rmtree(_WORK, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_tables(spark, tmp_path_factory):
    """The demo's Delta tables (breast_cancer and digits, train/test), written once per run; read, never change."""
    from sparkdl.datasets import create_demo_tables

    return create_demo_tables(spark, tmp_path_factory.mktemp("demo-lake"))


@pytest.fixture(scope="session")
def training_store(tmp_path_factory):
    """A model store shared by the training tests (each test uses its own model name)."""
    from sparkdl.registry import ModelStore

    return ModelStore(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def score_store(tmp_path_factory):
    """The model store of the scoring tests; the models below are trained in-process (Keras fit) and saved once."""
    from sparkdl.registry import ModelStore

    return ModelStore(tmp_path_factory.mktemp("score-models"))


@pytest.fixture(scope="session")
def digits_df(spark):
    """scikit-learn's digits as a cached DataFrame (id, pixels array<float>, digit)."""
    from test_score_udf import digits_rows

    return spark.createDataFrame(digits_rows(), "id long, pixels array<float>, digit int").cache()


@pytest.fixture(scope="session")
def digits_mlp(score_store, digits_df):
    """(ModelVersion, PreprocessorModel, model) of an MLP on the digits; the same for the next two."""
    from test_score_udf import DIGITS_SPEC, train_and_save

    return train_and_save(score_store, "digits_mlp", DIGITS_SPEC, digits_df, "mlp", {"hidden": (32,)})


@pytest.fixture(scope="session")
def digits_cnn(score_store, digits_df):
    from test_score_udf import DIGITS_IMAGE_SPEC, train_and_save

    return train_and_save(score_store, "digits_cnn", DIGITS_IMAGE_SPEC, digits_df, "cnn",
                          {"filters": (8,), "dense": 16}, epochs=2)


@pytest.fixture(scope="session")
def digits_embedding(score_store, digits_df):
    from test_score_udf import DIGITS_SPEC, train_and_save

    return train_and_save(score_store, "digits_emb", DIGITS_SPEC, digits_df, "embedding",
                          {"embedding_dim": 8, "hidden": (32,)}, epochs=1)


@pytest.fixture(scope="session")
def cancer(spark, score_store):
    """(DataFrame, feature names, ModelVersion, PreprocessorModel, model) of an MLP on 4 breast_cancer columns."""
    from test_score_udf import cancer_rows, train_and_save

    names, rows = cancer_rows()
    ddl = "id long, " + ", ".join(f"{n} double" for n in names) + ", diagnosis string"
    df = spark.createDataFrame(rows, ddl).cache()
    spec = {"features": [{"name": n, "scale": "standard"} for n in names],
            "label": {"name": "diagnosis", "task": "binary"}}
    version, prep, model = train_and_save(score_store, "cancer", spec, df, "mlp", {"hidden": (8,)}, epochs=30)
    return df, names, version, prep, model


@pytest.fixture
def lake(tmp_path):
    """A fresh lakehouse folder for one test."""
    path = tmp_path / "lake"
    path.mkdir()
    return path


@pytest.fixture
def no_coalesce(spark):
    """Keep every shuffle partition, so ordered scans (AUC, KS) really stitch several partitions together."""
    key = "spark.sql.adaptive.coalescePartitions.enabled"
    before = spark.conf.get(key)
    spark.conf.set(key, "false")
    yield
    spark.conf.set(key, before)


@pytest.fixture
def failing_job_with_a_busy_sibling(spark, tmp_path):
    """A DataFrame of 4 partitions (ids 0..99, column `v`) whose job fails while a sibling task is busy: on
    local[2] partitions 2 and 3 run together; partition 2 is busy on id 50 for 1 s and then leaves the returned
    marker file, partition 3 raises "boom on row 77" once partition 2 is busy. Spark stops the sibling no sooner
    than `spark.python.task.killTimeout` (2 s) after the failure, so the marker tells whether a caller waited for
    the failed job's tasks to end."""
    import time

    from pyspark.sql import functions as F

    busy, done = str(tmp_path / "sibling-busy"), tmp_path / "sibling-done"
    done_path = str(done)

    @F.udf("long")
    def busy_or_failing(value):
        import os

        if value == 50:
            open(busy, "w").close()
            time.sleep(1.0)
            open(done_path, "w").close()
        if value == 77:
            deadline = time.monotonic() + 30
            while not os.path.exists(busy) and time.monotonic() < deadline:
                time.sleep(0.01)
            raise ValueError("boom on row 77")
        return value

    return spark.range(0, 100, numPartitions=4).select(busy_or_failing("id").alias("v")), done


@pytest.fixture
def sparkdl_log():
    """The messages the `sparkdl` logger emits during the test (it does not propagate to pytest's caplog)."""
    import logging

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger = logging.getLogger("sparkdl")
    handler = Collect(level=logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A real MLflow file tracking store made for the test, set as the tracking URI (skipped without MLflow)."""
    mlflow = pytest.importorskip("mlflow", reason="MLflow (mlflow-skinny) is not installed")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's file store: kept for local use, opt-in
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri("")


class ClusterURL(str):
    """A master URL that also holds the worker processes of the cluster it names."""

    def __new__(cls, url: str, workers: list):
        obj = super().__new__(cls, url)
        obj.workers = workers
        return obj


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def standalone_cluster(tmp_path):
    """A Spark standalone master and two 1-core workers on loopback, stopped afterwards. Yields the master URL; the
    `Popen` of each worker JVM is in `standalone_cluster.workers` (as an attribute of the URL string)."""
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    env = dict(os.environ, SPARK_HOME=str(spark_home), PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1",
               SPARK_LOG_DIR=str(tmp_path / "logs"), SPARK_WORKER_DIR=str(tmp_path / "work"))
    spark_class = spark_home / "bin" / "spark-class"
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    procs = [subprocess.Popen([str(spark_class), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(port), "--webui-port", str(_free_port())], env=env,
                              stdout=open(tmp_path / "master.log", "w"), stderr=subprocess.STDOUT)]
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(1)
    for i in range(2):
        procs.append(subprocess.Popen(
            [str(spark_class), "org.apache.spark.deploy.worker.Worker", "--cores", "1", "--memory", "3g",
             "--host", "127.0.0.1", "--webui-port", str(_free_port()), url], env=env,
            stdout=open(tmp_path / f"worker{i}.log", "w"), stderr=subprocess.STDOUT))
    def registered() -> int:
        return sum("Successfully registered with master" in (tmp_path / f"worker{i}.log").read_text()
                   for i in range(2))

    deadline = time.time() + 120
    while time.time() < deadline and registered() < 2:
        time.sleep(1)
    try:
        assert registered() == 2, "standalone workers did not register:\n" + "\n".join(
            (tmp_path / f"{name}.log").read_text()[-1500:] for name in ("master", "worker0", "worker1"))
        yield ClusterURL(url, procs[1:])
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="session")
def digits_items(spark, digits_df):
    """43,128 item rows: each digit image 24 times, shifted by a small per-copy offset (ids id*100 + copy)."""
    from pyspark.sql import functions as F

    copies = spark.range(24).withColumnRenamed("id", "copy")
    return (digits_df.crossJoin(copies)
            .select((F.col("id") * 100 + F.col("copy")).alias("id"),
                    F.expr("transform(pixels, x -> x + CAST(copy AS FLOAT) * 0.05)").alias("pixels"),
                    "digit"))


@pytest.fixture(scope="session")
def digits_index(digits_mlp, digits_items, score_store):
    """(ModelVersion, IndexInfo): an approximate index of `digits_items` in two parts, stored with digits_mlp."""
    from sparkdl.score import build_index

    version = digits_mlp[0]
    return version, build_index(version, digits_items, keep_columns=["id", "digit"], partitions=2,
                                store=score_store, overwrite=True)
