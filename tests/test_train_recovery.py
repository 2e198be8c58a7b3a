"""A fit that loses a rank recovers inside the same `fit()` call (issue 39): real Horovod ranks on local[2], killed
(SIGKILL) or stopped (SIGSTOP) for real, relaunched from the last complete checkpoint.

The faults are injected by a callback of the rank that is to die, at an exact point of the schedule (Horovod's
elastic tests do the same with their `exit_schedule`): the process ends as the OOM killer or a lost node would end
it, with no traceback and no result. A marker file makes a fault happen on the first attempt only.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from sparkdl import stack
from sparkdl.data.spec import FeatureSpec
from sparkdl.errors import ConfigError, TrainingError
from sparkdl.train import KerasEstimator
from sparkdl.train.checkpoints import RunFolder

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the fault callbacks travel to the workers

# The launcher's fault handling is the same code on both stacks: the slowest fault tests run on the pinned one only
# (the kill and step-checkpoint tests run on both, and the Keras 3 kill test in test_train_keras3).
launcher_only = pytest.mark.skipif(stack.keras_version("keras3") is not None,
                                   reason="launcher fault handling, identical on both stacks: run on the pinned one")

FEATURES = ["mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness", "worst_radius",
            "worst_texture", "worst_perimeter", "worst_area", "worst_smoothness"]
EPOCHS = 5
KILL_EPOCH = 2


def spec() -> FeatureSpec:
    return FeatureSpec.from_dict({
        "features": [{"name": n, "kind": "numeric", "scale": "standard"} for n in FEATURES],
        "label": {"name": "malignant", "task": "binary"}})


class Fault(stack.keras_module("tf_keras").callbacks.Callback):
    """On rank `rank`, after the first training call of epoch `epoch`: send `signal` to the rank's own process —
    once (the first attempt, while `marker` does not exist), or on every attempt when `marker` is None."""

    def __init__(self, epoch: int, signal: int, marker: str | None, rank: int = 1, batch: int = 0):
        super().__init__()
        self.epoch, self.signal, self.marker, self.rank, self.batch = epoch, signal, marker, rank, batch
        self._epoch = -1

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_begin(self, logs=None):
        self._epoch = -1

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch != self.epoch or batch < self.batch or os.environ.get("HOROVOD_RANK") != str(self.rank):
            return
        if self.marker is not None:
            if os.path.exists(self.marker):
                return
            Path(self.marker).touch()
        os.kill(os.getpid(), self.signal)


def params(store, name: str, **extra) -> dict:
    return {**dict(model="mlp", feature_spec=spec(), epochs=EPOCHS, batch_size=16, learning_rate=5e-3, num_proc=2,
                   model_store=store, model_name=name, run_name=name, seed=3, mlflow=False, steps_per_execution=1),
            **extra}


@pytest.fixture(scope="module")
def uninterrupted(demo_tables, training_store):
    """The reference: the same fit with no fault."""
    return KerasEstimator(**params(training_store, "recovery-reference")).fit(demo_tables["breast_cancer_train"])


def attempts_by_epoch(run_name: str) -> list[tuple[int, int]]:
    return [(e["epoch"], e["attempt"]) for e in RunFolder(None, run_name).epochs_log()]


@pytest.mark.slow
@pytest.mark.both_sessions
def test_a_killed_rank_is_relaunched_from_the_last_checkpoint_inside_the_same_fit(demo_tables, training_store,
                                                                                   uninterrupted, tmp_path):
    import signal

    name = "recovery-kill"
    fault = Fault(KILL_EPOCH, signal.SIGKILL, str(tmp_path / "killed-once"))
    fitted = KerasEstimator(**params(training_store, name, callbacks=[fault])).fit(
        demo_tables["breast_cancer_train"])

    assert (tmp_path / "killed-once").exists()  # the fault did happen
    # the epochs before the kill were not trained again; the lost epoch and the rest ran in attempt 2
    log = attempts_by_epoch(name)
    assert [e for e, a in log if a == 1] == list(range(KILL_EPOCH))
    assert [e for e, a in log if a == 2] == list(range(KILL_EPOCH, EPOCHS))
    recoveries = fitted.getMetadata()["training"]["recoveries"]
    assert len(recoveries) == 1
    recovery = recoveries[0]
    assert recovery["epoch"] == KILL_EPOCH and recovery["attempt"] == 1 and recovery["num_proc"] == 2
    assert "rank 1" in recovery["cause"] and "RankProcessExit" in recovery["cause"]
    assert recovery["step"] > 0 and 0 < recovery["seconds_lost"] < 120
    # the same training as without the fault: each epoch's data order depends on the seed and the epoch only
    history, reference = fitted.getHistory(), uninterrupted.getHistory()
    assert history["epoch"] == reference["epoch"] == list(range(EPOCHS))
    assert history["val_loss"][-1] == pytest.approx(reference["val_loss"][-1], rel=0.005)
    assert uninterrupted.getMetadata()["training"]["recoveries"] == []


@pytest.mark.slow
def test_with_step_checkpoints_a_recovery_loses_at_most_those_steps_and_resumes_at_the_exact_data_position(
        demo_tables, training_store, uninterrupted, tmp_path):
    import signal

    name = "recovery-steps"
    # rank 1 dies after 7 steps of epoch 2; rank 0 wrote the checkpoint after step 4 (it cannot reach step 8)
    fault = Fault(KILL_EPOCH, signal.SIGKILL, str(tmp_path / "killed-mid-epoch"), batch=6)
    fitted = KerasEstimator(**params(training_store, name, callbacks=[fault], checkpoint_every_steps=4)).fit(
        demo_tables["breast_cancer_train"])
    (recovery,) = fitted.getMetadata()["training"]["recoveries"]
    assert fitted.getMetadata()["training"]["checkpoint_every_steps"] == 4
    per_epoch = 12  # ceil(355 training rows // 2 ranks / batch 16)
    assert recovery["epoch"] == KILL_EPOCH and recovery["step"] == KILL_EPOCH * per_epoch + 4
    log = attempts_by_epoch(name)
    assert [e for e, a in log if a == 1] == list(range(KILL_EPOCH))
    assert [e for e, a in log if a == 2] == list(range(KILL_EPOCH, EPOCHS))
    # the same data in the same order as without the fault, from the step the checkpoint recorded
    history, reference = fitted.getHistory(), uninterrupted.getHistory()
    assert history["val_loss"][-1] == pytest.approx(reference["val_loss"][-1], rel=0.005)


@launcher_only
@pytest.mark.slow
def test_a_stopped_rank_is_caught_by_its_heartbeat_and_the_fit_recovers(demo_tables, training_store, tmp_path):
    import signal

    name = "recovery-stop"
    fault = Fault(KILL_EPOCH, signal.SIGSTOP, str(tmp_path / "stopped-once"))
    started = time.time()
    fitted = KerasEstimator(**params(training_store, name, callbacks=[fault], rank_timeout_s=8.0)).fit(
        demo_tables["breast_cancer_train"])
    assert time.time() - started < 240  # no hang: the stopped rank was noticed and killed
    (recovery,) = fitted.getMetadata()["training"]["recoveries"]
    assert "RankTimeout" in recovery["cause"] and "rank_timeout=8s" in recovery["cause"]
    assert recovery["epoch"] == KILL_EPOCH and recovery["seconds_lost"] > 5  # ~rank_timeout_s since its last beat
    assert [e for e, a in attempts_by_epoch(name) if a == 2] == list(range(KILL_EPOCH, EPOCHS))


@launcher_only
@pytest.mark.slow
def test_a_rank_killed_in_every_attempt_fails_the_fit_after_max_failures_and_registers_nothing(
        demo_tables, training_store):
    import signal

    name = "recovery-always-killed"
    fault = Fault(0, signal.SIGKILL, None)  # no marker: every attempt loses rank 1 in its first epoch
    started = time.time()
    with pytest.raises(TrainingError) as info:
        KerasEstimator(**params(training_store, name, callbacks=[fault], max_failures=2)).fit(
            demo_tables["breast_cancer_train"])
    assert time.time() - started < 300
    error = info.value
    assert "max_failures=2" in str(error) and len(error.failures) == 3
    assert all("RankProcessExit" in cause for cause in error.failures)
    assert error.rank == 1 and error.error_type == "RankProcessExit"
    assert name not in training_store.list_models()  # nothing registered
    assert RunFolder(None, name).settings()["attempts"] == 3  # the run folder stays, for a rerun to resume


def raise_in_the_loss(y_true, y_pred):
    raise ValueError("a bug in the training code")


@pytest.mark.slow
def test_an_error_of_the_training_code_is_not_retried(demo_tables, training_store):
    name = "recovery-not-for-bugs"
    with pytest.raises(TrainingError, match="a bug in the training code") as info:
        KerasEstimator(**params(training_store, name, loss=raise_in_the_loss, epochs=1)).fit(
            demo_tables["breast_cancer_train"])
    assert not info.value.recoverable and info.value.failures == ()
    assert RunFolder(None, name).settings()["attempts"] == 1


def test_recovery_params_are_checked_before_any_spark_job(training_store):
    for bad in ({"max_failures": -1}, {"rank_timeout_s": 0}, {"min_proc": 3}, {"min_proc": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            KerasEstimator(**params(training_store, "recovery-bad", **bad))._checked()
    estimator = KerasEstimator(**params(training_store, "recovery-defaults"))
    assert estimator.getMaxFailures() == 3 and estimator.getRankTimeoutS() == 300.0 and estimator.getMinProc() is None


# A fit on a standalone cluster, in a process of its own (the test run's session is local[2]): the epoch listener
# kills one Worker JVM (and with it its executor, its Python workers and the rank they ran) once epoch 0 is reported.
CLUSTER_FIT = """
import json, os, signal, sys
from sparkdl.data.spec import FeatureSpec
from sparkdl.session import get_spark
from sparkdl.train import KerasEstimator

master, table, store, worker_pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
spark = get_spark(master=master, conf={"spark.ui.enabled": "false", "spark.driver.memory": "1g"})
spec = FeatureSpec.from_dict({"features": [{"name": n, "kind": "numeric", "scale": "standard"}
                                           for n in sys.argv[5].split(",")],
                              "label": {"name": "malignant", "task": "binary"}})
estimator = KerasEstimator(model="mlp", feature_spec=spec, epochs=3, batch_size=16, num_proc=2, min_proc=1,
                           max_failures=2, start_timeout=20, model_store=store, model_name="cluster-loss",
                           run_name="cluster-loss", mlflow=False)
killed = []
def kill_a_worker(epoch, logs):
    if epoch == 0 and not killed:
        os.kill(worker_pid, signal.SIGKILL)
        killed.append(epoch)
    return False
estimator.epoch_listener = kill_a_worker
fitted = estimator.fit(table)
print("RESULT " + json.dumps({"killed": killed, "history": fitted.getHistory(),
                              "recoveries": fitted.getMetadata()["training"]["recoveries"]}))
"""


@launcher_only
@pytest.mark.slow
def test_a_lost_worker_on_a_standalone_cluster_is_recovered_on_the_slots_that_are_left(
        demo_tables, standalone_cluster, tmp_path):
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARKDL_WORK_DIR=str(tmp_path / "work"), TF_CPP_MIN_LOG_LEVEL="2", SPARK_LOCAL_IP="127.0.0.1")
    victim = standalone_cluster.workers[0]
    proc = subprocess.run(
        [sys.executable, "-c", CLUSTER_FIT, standalone_cluster, demo_tables["breast_cancer_train"],
         str(tmp_path / "models"), str(victim.pid), ",".join(FEATURES)],
        env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["killed"] == [0] and victim.poll() is not None  # the Worker JVM is really gone
    (recovery,) = result["recoveries"]
    assert recovery["num_proc"] == 1  # one worker left: min_proc=1 goes on with one rank
    assert recovery["epoch"] in (0, 1)  # epoch 0's checkpoint may or may not have been written before the kill
    assert result["history"]["epoch"] == [0, 1, 2]
