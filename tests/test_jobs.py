"""The jobs as users run them: spark-submit on local[2] and on a real standalone cluster on loopback, and the CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparkdl import stack

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SPARK_SUBMIT = BIN / "spark-submit"


def _env(work: Path) -> dict:
    env = dict(os.environ)
    env.update(SPARKDL_WORK_DIR=str(work), SPARKDL_LAKE_DIR=str(work / "lake"),
               SPARKDL_MODEL_STORE=str(work / "models"), PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("SPARKDL_MASTER", None)
    return env


def _job_config(work: Path, epochs: int = 4) -> Path:
    text = (ROOT / "conf" / "digits.yaml").read_text()
    path = work / "digits.yaml"
    path.write_text(text.replace("epochs: 12", f"epochs: {epochs}"))
    return path


def _run(cmd: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc


def _submit(job: str, master: str, config: Path, env: dict, *extra: str) -> dict:
    proc = _run([SPARK_SUBMIT, "--master", master, "--conf", f"spark.pyspark.python={sys.executable}",
                 "--conf", "spark.ui.enabled=false", "--driver-memory", "2g",
                 ROOT / "jobs" / f"{job}.py", "--config", config, *extra], env)
    assert proc.returncode == 0, f"{job} failed:\n{proc.stderr[-4000:]}"
    out = proc.stdout
    return json.loads(out[out.index("{"):])


def _check_pipeline(work: Path, master: str, env: dict) -> None:
    config = _job_config(work)
    trained = _submit("train", master, config, env)
    assert trained["model"].startswith("digits_cnn@")
    assert trained["source"]["table"].endswith("digits_train") and trained["source"]["version"] == 0
    assert (work / "models" / "digits_cnn").is_dir()

    scored = _submit("score", master, config, env, "--model", trained["model"])
    assert scored["input_rows"] == 359 and scored["scored_rows"] + scored["quarantined_rows"] == 359

    from deltalake import DeltaTable

    table = DeltaTable(str(work / "lake" / "digits_scored")).to_pyarrow_table().to_pandas()
    assert len(table) == scored["scored_rows"]
    assert set(table["_model"]) == {"digits_cnn"}
    accuracy = float((table["prediction"] == table["digit"]).mean())
    assert accuracy > 0.8, accuracy

    evaluated = _submit("evaluate", master, config, env, "--model", trained["model"])
    assert abs(evaluated["accuracy"] - accuracy) < 1e-9
    assert evaluated["data"]["table"].endswith("digits_test")
    for plot in evaluated["plots"]:
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    explained = _submit("explain", master, config, env, "--model", trained["model"], "--set",
                        "explain.sample_rows=120", "--set", "explain.repeats=1")
    assert explained["rows"] == 120 and explained["table"].endswith("digits_test")
    assert explained["top_attribution"][0][0] == "pixels" and explained["metric"] == "accuracy"
    assert {Path(p).name for p in explained["plots"]} == {"feature_importance.png", "saliency.png"}


@pytest.mark.slow
@pytest.mark.skipif(stack.keras_version("keras3") is not None,
                    reason="spark-submit on a cluster is the same on both stacks: run on the pinned one (the demo "
                           "trains through the jobs on both)")
def test_spark_submit_on_standalone_cluster_then_the_cli(demo_tables, standalone_cluster, tmp_path):
    """train, score, evaluate through spark-submit on a real standalone cluster (local[N] is a special case of
    it: the same jobs, one JVM), then the store and the Petastorm caches the jobs left, through the CLI."""
    work = tmp_path / "cluster-work"
    shutil.copytree(Path(demo_tables["digits_train"]).parent, work / "lake")
    env = _env(work)
    _check_pipeline(work, standalone_cluster, env)

    listed = json.loads(_run([BIN / "sparkdl", "models", "list"], env).stdout)
    assert listed == {"digits_cnn": [1]}
    shown = json.loads(_run([BIN / "sparkdl", "models", "show", "digits_cnn@latest"], env).stdout)
    assert shown["source"]["version"] == 0 and shown["preprocessing"]["spec"]["label"]["name"] == "digit"
    assert "feature_spec" not in shown  # stored once, inside "preprocessing"
    caches = json.loads(_run([BIN / "sparkdl", "cache", "list"], env).stdout)
    assert caches and all(c["key"]["table"].endswith("digits_train") for c in caches)
    deleted = json.loads(_run([BIN / "sparkdl", "cache", "cleanup"], env).stdout)["deleted"]
    assert sorted(deleted) == sorted(c["url"] for c in caches)
    assert json.loads(_run([BIN / "sparkdl", "cache", "list"], env).stdout) == []


def test_cli_help_explains_every_verb():
    proc = _run([sys.executable, "-m", "sparkdl.cli", "--help"], dict(os.environ))
    assert proc.returncode == 0
    for verb in ("train", "score", "evaluate", "explain", "tune", "monitor", "serve", "export", "demo", "models",
                 "cache", "lake"):
        assert verb in proc.stdout
    proc = _run([sys.executable, "-m", "sparkdl.cli", "train", "--help"], dict(os.environ))
    assert "--config" in proc.stdout and "--set" in proc.stdout


@pytest.mark.parametrize("override, reason", [
    ("train.epoch=3", "unknown key 'train.epoch'"),
    ("model.name=resnet", "unknown model 'resnet'"),
    ("data.table=/nonexistent/table", "/nonexistent/table"),
])
def test_bad_config_fails_fast_with_one_line(tmp_path, override, reason):
    env = _env(tmp_path)
    started = time.time()
    proc = _run([sys.executable, str(ROOT / "jobs" / "train.py"), "--config", str(ROOT / "conf" / "digits.yaml"),
                 "--set", override], env, timeout=120)
    assert proc.returncode != 0
    last = [line for line in proc.stderr.strip().splitlines() if line.startswith("sparkdl train:")]
    assert len(last) == 1 and reason in last[0], proc.stderr[-2000:]
    assert time.time() - started < 90  # no Spark/JVM start: the config and the table are checked first


def test_a_bad_search_space_fails_fast_with_one_line(tmp_path, demo_tables):
    env = _env(tmp_path)
    table = demo_tables["breast_cancer_train"]
    proc = _run([sys.executable, str(ROOT / "jobs" / "tune.py"), "--config", str(ROOT / "conf" /
                 "breast_cancer_tune.yaml"), "--set", f"data.table={table}", "--set",
                 "tune.space={learning_rat: {type: uniform, low: 0.1, high: 1.0}}"], env, timeout=120)
    last = [line for line in proc.stderr.strip().splitlines() if line.startswith("sparkdl tune:")]
    assert proc.returncode != 0 and len(last) == 1 and "space['learning_rat']: not a tunable" in last[0], \
        proc.stderr[-2000:]


def test_a_worker_side_failure_gives_the_workers_own_reason(spark):
    """What the CLI prints for a job that dies in a Spark Python worker: the worker's last exception line."""
    from pyspark.sql.functions import udf

    from sparkdl.errors import one_line_reason

    parse = udf(float, "double")
    with pytest.raises(Exception) as info:
        spark.createDataFrame([("abc",)], "v string").select(parse("v")).collect()
    assert one_line_reason(info.value) == "ValueError: could not convert string to float: 'abc'"
    assert one_line_reason(ValueError("bad\nmore")) == "ValueError: bad"
    assert one_line_reason(RuntimeError()) == "RuntimeError (no message)"
