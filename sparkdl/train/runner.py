"""`HorovodRunner`: run a function on `num_proc` Horovod processes inside Spark tasks (Gloo, no MPI).

The Databricks-style API on top of `horovod.spark.run`::

    runner = HorovodRunner(num_proc=2)
    result = runner.run(train, epochs=3)      # rank 0's return value

Each process first pins its threads (`cores_per_task` threads, so `num_proc` processes do not oversubscribe
the cores) and devices (the task's GPU when Spark tasks have GPUs, else all GPUs hidden), then calls the
function. An exception in any rank is caught there and returned as data (and sent over the progress channel at
once, in case the other ranks hang in a collective); the driver raises `TrainingError` with that rank's traceback.

When every rank has finished its function, each says so over the progress channel (rank 0 with its result), and
`run` returns at once: the Horovod processes' exit, the Spark tasks' end and the job's clean-up (seconds, and
nothing the caller waits for) finish in the background. The next `run` on the same SparkContext waits for that
tear-down before it launches, so two jobs never compete for the task slots.
"""
from __future__ import annotations

import base64
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
from sparkdl.train.progress import Handler, ProgressServer, client, report

log = get_logger("train")

DEFAULT_START_TIMEOUT = 120
# After a rank reported an error, how long the driver waits for the job to end on its own before cancelling it
# (the other ranks may be blocked in a collective that will never complete).
ABORT_GRACE_S = 20.0

# The tear-down still running in the background, per SparkContext id (see the module docstring).
_TEARDOWNS: dict[int, threading.Thread] = {}
_TEARDOWNS_LOCK = threading.Lock()


_SHUTDOWN = threading.local()
_ORIGINAL_SHUTDOWN_EVENT: list[Callable[[], threading.Event]] = []


def _shutdown_event() -> threading.Event:
    """Stands in for `horovod.runner.gloo_run.register_shutdown_event`, which installs SIGINT/SIGTERM handlers —
    allowed in the main thread only, while sparkdl launches from a job thread. In that thread it returns the event
    (the one that makes Horovod terminate the rank processes) that `run` sets on KeyboardInterrupt; elsewhere (a
    direct `horovod.spark.run` call) Horovod's own function."""
    event = getattr(_SHUTDOWN, "event", None)
    return event if event is not None else _ORIGINAL_SHUTDOWN_EVENT[0]()


def _route_shutdown_to_run() -> None:
    from horovod.runner import gloo_run

    if gloo_run.register_shutdown_event is not _shutdown_event:
        _ORIGINAL_SHUTDOWN_EVENT[:] = [gloo_run.register_shutdown_event]
        gloo_run.register_shutdown_event = _shutdown_event


def wait_for_teardown(sc, timeout: float | None = None) -> bool:
    """Wait for the background tear-down of the last Horovod job on `sc`; True when none is left running."""
    with _TEARDOWNS_LOCK:
        thread = _TEARDOWNS.get(id(sc))
    if thread is None:
        return True
    thread.join(timeout)
    return not thread.is_alive()


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
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the driver as data
        return _failure(rank, exc)
    if client() is None:  # outside a sparkdl job: only Horovod's own return
        return {"ok": True, "rank": rank, "result": result if rank == 0 else None}
    try:  # the driver may return now; the result is carried here, so Horovod's own return is not needed
        import cloudpickle

        payload = base64.b64encode(cloudpickle.dumps(result)).decode("ascii") if rank == 0 else None
        report("done", required=True, rank=rank, result=payload)
        return {"ok": True, "rank": rank, "result": None}
    except Exception:  # noqa: BLE001 - no channel (or it failed): the result goes back through Horovod
        return {"ok": True, "rank": rank, "result": result if rank == 0 else None}


def _failure(rank: int, exc: BaseException) -> dict:
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
        self._active = None  # (shutdown event, watchdog, SparkContext) of the job in progress

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

        if not wait_for_teardown(sc, timeout=self.start_timeout):  # the last job's tasks must have left their slots
            raise TrainingError(f"the previous Horovod job on this SparkContext is still tearing down after "
                                f"{self.start_timeout}s (its processes did not exit); see the executor logs")
        started = time.time()
        done = threading.Event()
        watchdog = _Watchdog(sc, job_id, done)
        server.error_listeners.append(watchdog.on_error)
        finished = _Finished(self.num_proc)
        server.handlers["done"] = finished.on_done
        server.start()
        env.update(server.env())
        outcome: dict[str, Any] = {}
        shutdown = threading.Event()
        _route_shutdown_to_run()
        self._active = (shutdown, watchdog, sc)

        def job() -> None:
            _SHUTDOWN.event = shutdown
            try:
                outcome["results"] = hvd_run(_worker_main, args=(fn, kwargs, setup), num_proc=self.num_proc,
                                             start_timeout=self.start_timeout, use_gloo=True, use_mpi=False,
                                             env=env, executable=executable, verbose=self.verbose)
            except BaseException as exc:  # noqa: BLE001 - raised by run() below, or logged after an early return
                outcome["error"] = exc
            finally:
                done.set()
                finished.event.set()

        watchdog.expect_job()
        thread = threading.Thread(target=job, name="sparkdl-horovod-job", daemon=True)
        thread.start()
        try:
            finished.event.wait()
        except KeyboardInterrupt:  # what Horovod's own signal handler would do: stop the ranks, end the job
            self.cancel()
            thread.join(ABORT_GRACE_S)
            raise
        if finished.complete() and not done.is_set():  # every rank is done: the rest is tear-down
            stats.total_s = time.time() - started
            stats.events = {k: v - started for k, v in server.events.items()}
            self._teardown_in_background(sc, thread, server, outcome, started)
            return finished.result()
        thread.join()
        if "error" in outcome:
            exc = outcome["error"]
            server.close(drain_timeout=5.0)
            stats.total_s = time.time() - started
            stats.events = {k: v - started for k, v in server.events.items()}
            if server.errors:
                raise _training_error(server.errors) from exc
            raise TrainingError(f"the Horovod job on {self.num_proc} process(es) failed: {exc}") from exc
        server.close()
        stats.total_s = time.time() - started
        stats.events = {k: v - started for k, v in server.events.items()}

        results = outcome["results"]
        failed = [r for r in results if not r.get("ok")]
        if failed:
            raise _training_error(failed + server.errors)
        return finished.result() if finished.complete() else results[0]["result"]

    def cancel(self) -> None:
        """Stop the job `run` is running (from another thread, or on KeyboardInterrupt): Horovod terminates the
        rank processes and the Spark job group is cancelled; `run` then raises TrainingError."""
        active = getattr(self, "_active", None)
        if active is not None:
            shutdown, watchdog, sc = active
            shutdown.set()
            sc.cancelJobGroup(watchdog.group)

    @staticmethod
    def _teardown_in_background(sc, thread: threading.Thread, server: ProgressServer, outcome: dict,
                                started: float) -> None:
        def finish() -> None:
            thread.join()
            server.close(drain_timeout=5.0)
            if "error" in outcome:  # after every rank finished (e.g. the session stopped meanwhile): nothing lost
                log.debug("the Horovod job's tear-down ended with: %s", outcome["error"])
            log.debug("Horovod job torn down %.1fs after the call", time.time() - started)

        teardown = threading.Thread(target=finish, name="sparkdl-horovod-teardown", daemon=True)
        with _TEARDOWNS_LOCK:
            _TEARDOWNS[id(sc)] = teardown
        teardown.start()


class _Finished:
    """The ranks' `done` messages: complete once all `num_proc` ranks reported, with rank 0's result."""

    def __init__(self, num_proc: int):
        self.num_proc = num_proc
        self.event = threading.Event()
        self._ranks: dict[int, str | None] = {}

    def on_done(self, message: dict) -> None:
        self._ranks[int(message.get("rank", 0))] = message.get("result")
        if self.complete():
            self.event.set()

    def complete(self) -> bool:
        return len(self._ranks) >= self.num_proc and 0 in self._ranks

    def result(self) -> Any:
        import cloudpickle

        payload = self._ranks[0]
        return cloudpickle.loads(base64.b64decode(payload)) if payload is not None else None


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
