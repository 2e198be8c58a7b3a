"""`HorovodRunner`: run a function on `num_proc` Horovod processes inside Spark tasks (Gloo, no MPI).

The Databricks-style API on top of `horovod.spark.run`::

    runner = HorovodRunner(num_proc=2)
    result = runner.run(train, epochs=3)      # rank 0's return value

Each process first pins its threads (`cores_per_task` threads, so `num_proc` processes do not oversubscribe
the cores) and devices (the task's GPU when Spark tasks have GPUs, else all GPUs hidden), then calls the
function. An exception in any rank is caught there and returned as data (and sent over the progress channel at
once, in case the other ranks hang in a collective); the driver raises `TrainingError` with that rank's traceback.
"""
from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sparkdl.errors import ConfigError, TrainingError
from sparkdl.log import get_logger
from sparkdl.session import get_spark
from sparkdl.tf_runtime import thread_env
from sparkdl.train import resources
from sparkdl.train.progress import Handler, ProgressServer, report

log = get_logger("train")

DEFAULT_START_TIMEOUT = 120
# After a rank reported an error, how long the driver waits for the job to end on its own before cancelling it
# (the other ranks may be blocked in a collective that will never complete).
ABORT_GRACE_S = 20.0


@dataclass
class RunStats:
    """Timings of the last `HorovodRunner.run` call (driver clock, seconds since the call)."""

    num_proc: int = 0
    threads_per_proc: int = 0
    use_gpu: bool = False
    total_s: float | None = None
    events: dict[str, float] = field(default_factory=dict)  # first time each named event was reported

    @property
    def launch_s(self) -> float | None:
        """From the call to the first training step (event `first_step`), or to the function start."""
        return self.events.get("first_step", self.events.get("fn_start"))

    def phases(self) -> dict[str, float]:
        """Seconds of launch (call → first step), training (first step → rank 0's `train_end` event) and tear-down
        (→ the call's return), as far as the events were reported."""
        out: dict[str, float] = {}
        launch, end = self.launch_s, self.events.get("train_end")
        if launch is not None:
            out["launch"] = launch
        if launch is not None and end is not None:
            out["training"] = end - launch
        if end is not None and self.total_s is not None:
            out["teardown"] = self.total_s - end
        return out


def _worker_main(fn: Callable, kwargs: dict, setup: resources.WorkerSetup) -> dict:
    """Runs in every Horovod process: set up threads/devices, call `fn`, return its result or its traceback."""
    import os

    rank = int(os.environ.get("HOROVOD_RANK", "0"))
    try:
        applied = setup.apply()
        report("event", name="fn_start", rank=rank, setup=applied)
        result = fn(**kwargs)
        return {"ok": True, "rank": rank, "result": result if rank == 0 else None}
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the driver as data
        text = traceback.format_exc()
        error = {"ok": False, "rank": rank, "error_type": type(exc).__name__, "message": str(exc),
                 "traceback": text, "time": time.time()}
        try:
            report("error", **{k: v for k, v in error.items() if k != "ok"})
        except Exception:  # noqa: BLE001 - the channel is best-effort here; the result still carries it
            pass
        return error


class HorovodRunner:
    """Run a function on `num_proc` Horovod (Gloo) processes, one per Spark task.

    Args:
        num_proc: number of processes; must not exceed the Spark task slots.
        spark: the SparkSession (default: the active one, or `sparkdl.session.get_spark()`).
        use_gpu: None = use GPUs when Spark tasks are given GPUs (`spark.task.resource.gpu.amount` > 0);
            True/False to force. On CPU all GPUs are hidden (`CUDA_VISIBLE_DEVICES=""`).
        env: extra environment variables for the worker processes.
        start_timeout: seconds for the Spark tasks to start and register before the launch fails.
        threads_per_proc: threads per process (default: `resources.cores_per_task`).
        message_handlers: handlers for custom progress-channel message types (see `sparkdl.train.progress`).
        total_epochs: number of epochs, for the driver's progress bar.
        verbose: Horovod's own verbosity (0-2).

    Raises:
        ConfigError: num_proc < 1 or larger than the available task slots (raised by `run`, before launching).
    """

    def __init__(self, num_proc: int, spark=None, use_gpu: bool | None = None,
                 env: Mapping[str, str] | None = None, start_timeout: int = DEFAULT_START_TIMEOUT,
                 threads_per_proc: int | None = None, message_handlers: Mapping[str, Handler] | None = None,
                 total_epochs: int | None = None, verbose: int = 0):
        if not isinstance(num_proc, int) or isinstance(num_proc, bool) or num_proc < 1:
            raise ConfigError(f"HorovodRunner: num_proc must be a positive integer, got {num_proc!r}")
        self.num_proc = num_proc
        self._spark = spark
        self.use_gpu = use_gpu
        self.env = dict(env or {})
        self.start_timeout = int(start_timeout)
        self.threads_per_proc = threads_per_proc
        self.message_handlers = dict(message_handlers or {})
        self.total_epochs = total_epochs
        self.verbose = verbose
        self.last_run: RunStats | None = None

    @property
    def spark(self):
        if self._spark is None:
            self._spark = get_spark()
        return self._spark

    def check_slots(self) -> int:
        """The available task slots; raises ConfigError when `num_proc` exceeds them."""
        sc = self.spark.sparkContext
        slots = resources.task_slots(sc)
        if self.num_proc > slots:
            raise ConfigError(
                f"HorovodRunner: num_proc={self.num_proc} is more than the {slots} Spark task slot(s) available "
                f"(master {sc.master}, defaultParallelism {sc.defaultParallelism}); every Horovod process needs "
                f"its own concurrently running task. Lower num_proc or give Spark more cores.")
        return slots

    def run(self, fn: Callable[..., Any], **kwargs) -> Any:
        """Run `fn(**kwargs)` on every rank and return rank 0's result.

        `fn` and `kwargs` are pickled with cloudpickle and sent to the workers; inside `fn`, call
        `horovod.tensorflow.keras.init()` (or `horovod.tensorflow.init()`) as usual.

        Raises:
            ConfigError: num_proc larger than the task slots (before anything is launched).
            TrainingError: a rank raised (the message carries that rank's traceback), or the job failed to start.
        """
        sc = self.spark.sparkContext
        self.check_slots()
        use_gpu = resources.wants_gpu(sc) if self.use_gpu is None else bool(self.use_gpu)
        threads = self.threads_per_proc or resources.cores_per_task(sc, self.num_proc)
        setup = resources.WorkerSetup(threads=threads, use_gpu=use_gpu)
        stats = RunStats(num_proc=self.num_proc, threads_per_proc=threads, use_gpu=use_gpu)
        self.last_run = stats

        server = ProgressServer.for_spark(self.spark, handlers=self.message_handlers, total_epochs=self.total_epochs)
        env = {**thread_env(threads), **self.env}
        if not use_gpu:
            env["CUDA_VISIBLE_DEVICES"] = ""
        executable = resources.worker_python(sc)
        log.info("launching %d Horovod process(es) (Gloo) with %d thread(s) each on %s, %s",
                 self.num_proc, threads, sc.master, "GPU" if use_gpu else "CPU")

        from horovod.spark import run as hvd_run
        from horovod.spark.driver import job_id

        started = time.time()
        done = threading.Event()
        watchdog = _Watchdog(sc, job_id, done)
        server.error_listeners.append(watchdog.on_error)
        server.start()
        env.update(server.env())
        try:
            watchdog.expect_job()
            results = hvd_run(_worker_main, args=(fn, kwargs, setup), num_proc=self.num_proc,
                              start_timeout=self.start_timeout, use_gloo=True, use_mpi=False, env=env,
                              executable=executable, verbose=self.verbose)
        except Exception as exc:  # noqa: BLE001 - turned into a TrainingError below
            done.set()
            server.close(drain_timeout=5.0)
            stats.total_s = time.time() - started
            stats.events = {k: v - started for k, v in server.events.items()}
            if server.errors:
                raise _training_error(server.errors) from exc
            raise TrainingError(f"the Horovod job on {self.num_proc} process(es) failed: {exc}") from exc
        done.set()
        server.close()
        stats.total_s = time.time() - started
        stats.events = {k: v - started for k, v in server.events.items()}

        failed = [r for r in results if not r.get("ok")]
        if failed:
            raise _training_error(failed + server.errors)
        return results[0]["result"]


def _training_error(errors: list[dict]) -> TrainingError:
    """The error of the rank that failed first (others usually fail as a consequence)."""
    first = min(errors, key=lambda e: e.get("time", float("inf")))
    others = sorted({e.get("rank") for e in errors} - {first.get("rank")})
    text = (f"training failed on rank {first.get('rank')}: {first.get('error_type')}: {first.get('message')}"
            + (f" (rank(s) {others} failed too)" if others else "")
            + f"\n\nTraceback of rank {first.get('rank')}:\n{first.get('traceback', '').rstrip()}")
    error = TrainingError(text)
    error.rank = first.get("rank")
    error.worker_traceback = first.get("traceback")
    error.error_type = first.get("error_type")
    return error


class _Watchdog:
    """Cancels the Horovod Spark job when a rank reported an error and the job did not end within ABORT_GRACE_S."""

    def __init__(self, sc, job_id_module, done: threading.Event):
        self.sc, self.job_id, self.done = sc, job_id_module, done
        self.group: str | None = None
        self._armed = False

    def expect_job(self) -> None:
        # horovod.spark.run names its Spark job group after the next job id; read it just before the call.
        with self.job_id.LOCK:
            self.group = f"horovod.spark.run.{self.job_id.JOB_ID + 1}"

    def on_error(self, _message: dict) -> None:
        if self._armed:
            return
        self._armed = True
        threading.Thread(target=self._cancel_later, name="sparkdl-abort", daemon=True).start()

    def _cancel_later(self) -> None:
        if self.done.wait(ABORT_GRACE_S):
            return
        log.warning("a rank failed and the others did not stop within %.0fs: cancelling Spark job group %s",
                    ABORT_GRACE_S, self.group)
        try:
            self.sc.cancelJobGroup(self.group)
        except Exception:  # noqa: BLE001
            log.exception("could not cancel the Horovod job")
