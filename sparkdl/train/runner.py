"""`HorovodRunner`: run a function on `num_proc` Horovod processes inside Spark tasks (Gloo, no MPI).

The Databricks-style API, on one Spark barrier stage (`sparkdl.train.launch`), from a classic or a Spark Connect
session alike::

    runner = HorovodRunner(num_proc=2)
    result = runner.run(train, epochs=3)      # rank 0's return value

Each process first pins its threads (`cores_per_task` threads, so `num_proc` processes do not oversubscribe
the cores) and devices (the task's GPU when Spark tasks have GPUs, else all GPUs hidden), then calls the
function. An exception in any rank is caught there and returned as data (and sent over the progress channel at
once, in case the other ranks hang in a collective); the driver raises `TrainingError` with that rank's traceback.

Results come back through the stage's output, and `run` returns as soon as every rank has written its result: the
Horovod processes' exit (seconds) runs on in the background of the tasks' Python workers, and the next job's task
in a worker waits for it before it starts a rank. Progress (epochs, events, errors) comes over the progress
channel when the executors can reach this process; when they cannot (a Spark Connect client outside the cluster),
it shows in the executor logs, and training goes on.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sparkdl.errors import ConfigError, TrainingError
from sparkdl.log import get_logger
from sparkdl.session import get_spark
from sparkdl.session_kind import add_tag, cancel_tag, conf_get, master, remove_tag
from sparkdl.tf_runtime import thread_env
from sparkdl.train import resources
from sparkdl.train.launch import RESULT_SCHEMA, RankLaunch, records_from_rows
from sparkdl.train.progress import Handler, ProgressServer

log = get_logger("train")

DEFAULT_START_TIMEOUT = 120
# Spark conf key: "false" starts every rank as a fresh process instead of a standby (`sparkdl.train.launch`).
STANDBY_CONF = "spark.sparkdl.train.standbyRanks"
# After a rank reported an error, how long the driver waits for the job to end on its own before cancelling it
# (the other ranks may be blocked in a collective that will never complete).
ABORT_GRACE_S = 20.0
# Error types of a rank lost to its surroundings rather than to its function: its process died without a result
# (killed, out of memory, its executor gone) or stopped making progress (`sparkdl.train.launch`).
LOST_RANK_ERRORS = frozenset({"RankProcessExit", "RankTimeout"})
# What the surviving ranks raise when a peer is gone in the middle of a collective.
COLLECTIVE_ERRORS = frozenset({"HorovodInternalError", "HostsUpdatedInterrupt"})
_COLLECTIVE_WORDS = ("horovod", "gloo", "connection closed by peer", "connection reset")


@dataclass
class RunStats:
    """Timings of the last `HorovodRunner.run` call (driver clock, seconds since the call)."""

    num_proc: int = 0
    threads_per_proc: int = 0
    use_gpu: bool = False
    total_s: float | None = None
    events: dict[str, float] = field(default_factory=dict)  # first time each named event was reported
    standby_ranks: int = 0  # ranks that ran in a standby process (TensorFlow imported before the job)
    started_at: float | None = None  # the call's wall-clock time (time.time()), the origin of `events`

    @property
    def launch_s(self) -> float | None:
        """From the call to the first training step (event `first_step`), or to the function start."""
        return self.events.get("first_step", self.events.get("fn_start"))

    def record(self, server: ProgressServer, started: float, starts: "_Starts") -> None:
        """Take the call's duration so far, the events the progress channel timed (driver clock) and how many
        ranks started in a standby process."""
        self.total_s = time.time() - started
        self.started_at = started
        self.events = {k: v - started for k, v in server.events.items()}
        self.standby_ranks = starts.standby_count()

    # The launch's moments in order, and the phase each one ends (`launch_breakdown`).
    LAUNCH_PHASES = (("task_start", "spark_job_and_barrier_scheduling"), ("rendezvous", "host_exchange"),
                     ("fn_start", "rank_process_handoff"), ("tensorflow_imported", "tensorflow_setup"),
                     ("horovod_initialized", "horovod_init"), ("model_ready", "model_build"),
                     ("data_ready", "input_pipeline"), ("first_step", "first_step"))

    def launch_breakdown(self) -> dict[str, float]:
        """Seconds of each phase from the call to the first training step, as far as the moments were reported
        (the driver must be reachable from the executors): the Spark job and its barrier scheduling, the host
        exchange, the hand-off to the rank process, TensorFlow's set-up, Horovod's init, the model build, the
        input pipeline, the first step (its trace)."""
        out, last = {}, 0.0
        for event, phase in self.LAUNCH_PHASES:
            if event in self.events:
                out[phase] = round(self.events[event] - last, 3)
                last = self.events[event]
        return out

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


class HorovodRunner:
    """Run a function on `num_proc` Horovod (Gloo) processes, one per Spark task.

    Args:
        num_proc: number of processes; must not exceed the Spark task slots.
        spark: the SparkSession (default: the active one, or `sparkdl.session.get_spark()`).
        use_gpu: None = use GPUs when Spark tasks are given GPUs (`spark.task.resource.gpu.amount` > 0);
            True/False to force. On CPU all GPUs are hidden (`CUDA_VISIBLE_DEVICES=""`).
        env: extra environment variables for the worker processes.
        start_timeout: seconds for every rank's function to start before the launch fails.
        threads_per_proc: threads per process (default: `resources.cores_per_task`).
        message_handlers: handlers for custom progress-channel message types (see `sparkdl.train.progress`).
        total_epochs: number of epochs, for the driver's progress bar.
        verbose: verbosity of Horovod's rendezvous server (0-2).
        standby: run the ranks in the standby processes the last job's tasks left in their Spark Python workers
            (TensorFlow already imported; about two seconds less launch), and leave new ones for the next job.
            None = the Spark conf `spark.sparkdl.train.standbyRanks` (default true).
        rank_timeout: seconds a started rank may go without a heartbeat (`sparkdl.train.heartbeat`) before it is
            killed and reported as `RankTimeout`; None (default) = no limit. Only for functions that beat (the
            Keras loops of `KerasEstimator` do).
        abort_grace_s: after a rank reported an error, seconds the job may take to end by itself before it is
            cancelled.

    Raises:
        ConfigError: num_proc < 1 or larger than the available task slots (raised by `run`, before launching).
    """

    def __init__(self, num_proc: int, spark=None, use_gpu: bool | None = None,
                 env: Mapping[str, str] | None = None, start_timeout: int = DEFAULT_START_TIMEOUT,
                 threads_per_proc: int | None = None, message_handlers: Mapping[str, Handler] | None = None,
                 total_epochs: int | None = None, verbose: int = 0, standby: bool | None = None,
                 rank_timeout: float | None = None, abort_grace_s: float = ABORT_GRACE_S):
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
        self.standby = standby
        self.rank_timeout = rank_timeout
        self.abort_grace_s = float(abort_grace_s)
        self._cancelled = False
        self.last_run: RunStats | None = None
        self._active = None  # (job tag, SparkSession) of the job in progress

    @property
    def spark(self):
        if self._spark is None:
            self._spark = get_spark()
        return self._spark

    def check_slots(self) -> int | None:
        """The available task slots (None when the session does not tell them); raises ConfigError when the
        cluster cannot run `num_proc` barrier tasks at once (`resources.check_cluster`)."""
        return resources.check_cluster(self.spark, self.num_proc)

    def run(self, fn: Callable[..., Any], **kwargs) -> Any:
        """Run `fn(**kwargs)` on every rank and return rank 0's result.

        `fn` and `kwargs` are pickled with cloudpickle and sent to the workers; inside `fn`, call
        `horovod.tensorflow.keras.init()` (or `horovod.tensorflow.init()`) as usual.

        Raises:
            ConfigError: num_proc larger than the task slots, or dynamic allocation on (before anything is launched).
            TrainingError: a rank raised (the message carries that rank's traceback), not every rank started
                within `start_timeout`, or the Spark job failed. Its `recoverable` attribute is True when the
                failure was a rank lost to its surroundings (`LOST_RANK_ERRORS`, its peers' collective errors, a
                failed Spark job: task or executor lost) rather than an error of the function, and `cause` says
                what happened in one line.
        """
        import cloudpickle

        spark = self.spark
        self.check_slots()
        use_gpu = resources.wants_gpu(spark) if self.use_gpu is None else bool(self.use_gpu)
        threads = self.threads_per_proc or resources.cores_per_task(spark, self.num_proc)
        setup = resources.WorkerSetup(threads=threads, use_gpu=use_gpu)
        payload = cloudpickle.dumps((fn, kwargs))  # the package's cloudpickle: it honours register_pickle_by_value
        stats = RunStats(num_proc=self.num_proc, threads_per_proc=threads, use_gpu=use_gpu)
        self.last_run = stats

        server = ProgressServer.for_spark(spark, handlers=self.message_handlers, total_epochs=self.total_epochs)
        env = {**thread_env(threads), **self.env}
        if not use_gpu:
            env["CUDA_VISIBLE_DEVICES"] = ""
        log.info("launching %d Horovod process(es) (Gloo) with %d thread(s) each on %s, %s",
                 self.num_proc, threads, master(spark), "GPU" if use_gpu else "CPU")
        started = time.time()
        tag = f"sparkdl-horovod-{uuid.uuid4().hex[:12]}"
        done = threading.Event()
        self._cancelled = False
        watchdog = _Watchdog(spark, tag, done, self.abort_grace_s)
        server.error_listeners.append(watchdog.on_error)
        starts = _Starts(self.num_proc, server.handlers.get("event"))
        server.handlers["event"] = starts.on_event
        server.start()
        env.update(server.env())
        standby = self.standby
        if standby is None:
            standby = (conf_get(spark, STANDBY_CONF, "true") or "true").strip().lower() != "false"
        launch = RankLaunch(payload=payload, setup=setup, env=env, standby=bool(standby), verbose=self.verbose,
                            start_timeout=self.start_timeout, rank_timeout=self.rank_timeout)
        outcome: dict[str, Any] = {}
        self._active = (tag, spark)

        def job() -> None:
            add_tag(spark, tag)  # tags are per thread: this one runs the job
            try:
                ranks = spark.range(0, self.num_proc, 1, self.num_proc).mapInArrow(launch, RESULT_SCHEMA,
                                                                                   barrier=True)
                outcome["records"] = records_from_rows(ranks.collect())
            except BaseException as exc:  # noqa: BLE001 - raised by run() below
                outcome["error"] = exc
            finally:
                remove_tag(spark, tag)
                done.set()

        thread = threading.Thread(target=job, name="sparkdl-horovod-job", daemon=True)
        thread.start()
        try:
            done.wait()
        except KeyboardInterrupt:
            self.cancel()
            thread.join(ABORT_GRACE_S)
            raise
        finally:
            thread.join(ABORT_GRACE_S)
            server.close(drain_timeout=5.0)  # the ranks closed their connections before writing their results
            stats.record(server, started, starts)
        return self._rank0_result(outcome, server.errors)

    def _rank0_result(self, outcome: dict, errors: list) -> Any:
        """Rank 0's result of a finished job, or the TrainingError that says which rank failed and why (`errors`:
        the failures the ranks reported through the progress channel)."""
        if "error" in outcome:
            exc = outcome["error"]
            if errors:
                raise _training_error(errors, cancelled=self._cancelled) from exc
            error = TrainingError(f"the Horovod job on {self.num_proc} process(es) failed: {exc}")
            error.errors = []
            error.recoverable = not self._cancelled
            error.cause = "the Spark job failed: " + (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise error from exc
        records = outcome["records"]
        late = [r for r in records if r.get("error_type") == "StartTimeout"]
        if late:
            raise TrainingError(
                f"only {self.num_proc - len(late)} of {self.num_proc} Horovod process(es) started within "
                f"start_timeout={self.start_timeout}s: the ranks' Python is slow to start or to unpickle the "
                f"function (see the executor logs)")
        failed = [r for r in records if not r.get("ok")]
        if failed:
            raise _training_error(failed + errors, cancelled=self._cancelled)
        return next(r["result"] for r in records if r.get("rank") == 0)

    def cancel(self) -> None:
        """Stop the job `run` is running (from another thread, or on KeyboardInterrupt): its Spark jobs are
        cancelled by tag, which ends the tasks and with them the rank processes; `run` then raises TrainingError."""
        active = getattr(self, "_active", None)
        if active is not None:
            self._cancelled = True
            tag, spark = active
            cancel_tag(spark, tag)


class _Starts:
    """Which ranks reported `fn_start` (their function is about to run); chains the event handler it replaces."""

    def __init__(self, num_proc: int, previous: Handler | None):
        self.num_proc, self.previous = num_proc, previous
        self._ranks: set[int] = set()
        self._standby: set[int] = set()

    def on_event(self, message: dict) -> None:
        if message.get("name") == "fn_start":
            self._ranks.add(int(message.get("rank", 0)))
            if message.get("standby"):
                self._standby.add(int(message.get("rank", 0)))
        if self.previous is not None:
            self.previous(message)

    def count(self) -> int:
        return len(self._ranks)

    def standby_count(self) -> int:
        return len(self._standby)

    def all_started(self) -> bool:
        return len(self._ranks) >= self.num_proc


def is_collective_error(error: dict) -> bool:
    """Whether a rank's error is what a collective raises when a peer is gone (not an error of the function)."""
    if error.get("error_type") in COLLECTIVE_ERRORS:
        return True
    message = str(error.get("message", "")).lower()
    return str(error.get("error_type", "")).endswith("Error") and any(w in message for w in _COLLECTIVE_WORDS)


def _training_error(errors: list[dict], cancelled: bool = False) -> TrainingError:
    """The error of the rank that failed first (others usually fail as a consequence); a lost rank is named first
    even when its peers' collective errors came earlier."""
    lost = [e for e in errors if e.get("error_type") in LOST_RANK_ERRORS]
    own = [e for e in errors if e.get("error_type") not in LOST_RANK_ERRORS and not is_collective_error(e)]
    first = min(own or lost or errors, key=lambda e: e.get("time", float("inf")))
    others = sorted({e.get("rank") for e in errors} - {first.get("rank")})
    text = (f"training failed on rank {first.get('rank')}: {first.get('error_type')}: {first.get('message')}"
            + (f" (rank(s) {others} failed too)" if others else "")
            + f"\n\nTraceback of rank {first.get('rank')}:\n{first.get('traceback', '').rstrip()}")
    error = TrainingError(text)
    error.rank = first.get("rank")
    error.worker_traceback = first.get("traceback")
    error.error_type = first.get("error_type")
    error.errors = list(errors)
    error.recoverable = not cancelled and not own
    error.cause = f"rank {first.get('rank')}: {first.get('error_type')}: {first.get('message')}".splitlines()[0]
    return error


class _Watchdog:
    """Cancels the Horovod Spark job when a rank reported an error and the job did not end within ABORT_GRACE_S."""

    def __init__(self, spark, tag: str, done: threading.Event, grace_s: float = ABORT_GRACE_S):
        self.spark, self.tag, self.done, self.grace_s = spark, tag, done, grace_s
        self._armed = False

    def on_error(self, _message: dict) -> None:
        if self._armed:
            return
        self._armed = True
        threading.Thread(target=self._cancel_later, name="sparkdl-abort", daemon=True).start()

    def _cancel_later(self) -> None:
        if self.done.wait(self.grace_s):
            return
        log.warning("a rank failed and the others did not stop within %.0fs: cancelling the Spark jobs tagged %s",
                    self.grace_s, self.tag)
        try:
            cancel_tag(self.spark, self.tag)
        except Exception:  # noqa: BLE001
            log.exception("could not cancel the Horovod job")
