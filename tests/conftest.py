"""Shared fixtures: one local[2] SparkSession for the whole run, on this interpreter, with a temp work folder."""
from __future__ import annotations

import os
import tempfile

import pytest

# Quiet TensorFlow's C++ logging before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_WORK = tempfile.mkdtemp(prefix="sparkdl-tests-")
os.environ.setdefault("SPARKDL_WORK_DIR", _WORK)


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


@pytest.fixture
def lake(tmp_path):
    """A fresh lakehouse folder for one test."""
    path = tmp_path / "lake"
    path.mkdir()
    return path
