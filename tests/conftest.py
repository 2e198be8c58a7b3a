"""Shared fixtures: one local[2] SparkSession for the whole run, on this interpreter, with a temp work folder."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# Quiet TensorFlow's C++ logging before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Every run gets a fresh work folder, whatever the user's environment says (a user's SPARKDL_* settings must not
# leak old checkpoints, models or tables into the tests).
_WORK = tempfile.mkdtemp(prefix="sparkdl-tests-")
os.environ["SPARKDL_WORK_DIR"] = _WORK
for _key in ("SPARKDL_LAKE_DIR", "SPARKDL_MODEL_STORE", "SPARKDL_MASTER"):
    os.environ.pop(_key, None)


@pytest.fixture(scope="session")
def work_dir():
    """The sparkdl work folder of this test run (Petastorm cache, model store, warehouse)."""
    from sparkdl.session import work_dir as _work_dir

    return _work_dir()


@pytest.fixture(scope="session")
def spark(work_dir):
    """The one SparkSession of the test run: the embedded default on local[2]."""
    from sparkdl.session import get_spark

    session = get_spark(master="local[2]", app_name="sparkdl-tests", conf={"spark.sql.shuffle.partitions": "4"})
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
