"""How a Horovod rank starts inside a Spark barrier task, and what runs in its process.

`HorovodRunner` (driver) runs one barrier stage of `num_proc` tasks (`mapInArrow(..., barrier=True)`, the same on a
classic and a Spark Connect session), each calling a `RankLaunch`. The task of partition 0 starts the job's Gloo
rendezvous server; the tasks exchange their host names and its port (`BarrierTaskContext.allGather`), so each
finds its own slot of the host assignment Horovod's launcher would make
(`horovod.runner.common.util.hosts.get_host_assignments`: ranks packed host by host, the task of partition 0 is
rank 0), then run the rank in a Python process of its own (`rank_main`) with the environment `horovodrun`'s Gloo
launcher gives its ranks: the slot (`HOROVOD_RANK`, `HOROVOD_LOCAL_RANK`, ...) and the rendezvous server. The rank
process runs `worker_main`: the thread and device set-up, then the user function; its return value or its
traceback comes back as data through the stage's output, never as a Spark task failure (a failed barrier task
would make Spark run the whole stage again). A task yields its record as soon as the rank has written it; the
rank process's exit runs on in the background of the task's Python worker.

A fresh Python process spends about two seconds importing TensorFlow before the function can start. So a rank
process imports TensorFlow, Horovod and the Keras workers first and then waits for its job on stdin: the task
starts it before the host exchange and hands it the job once its slot is known. And when a rank ends, its task
starts a *standby* process for the next job: a child of the same Spark Python worker (Spark reuses its workers)
that does those imports and waits. The next job's task in that worker hands its job to the standby instead of
starting a process, when the standby was started with the same environment except the variables each job sets and
nothing reads before the function starts (`HOROVOD_*`, NCCL's interface, the progress channel's). A process runs
one job (no job gets a process that has run Horovod), dies with its worker (Spark stops idle workers after a
minute), and a standby exits by itself after `STANDBY_IDLE_S`.

This replaces `horovod.spark.run`, whose driver service, per-task services, their registration and the
task-to-task interface probing cost seconds per job before any rank starts, and which needs a `SparkContext`;
what it guarantees — one rank per concurrently running task, all of them or none (barrier scheduling), Gloo over
the interface that reaches rank 0's host, ranks that die with their task — holds here too.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace

from sparkdl.log import configure_logging
from sparkdl.tf_runtime import task_gpus
from sparkdl.train import heartbeat
from sparkdl.train.progress import ADDR_ENV, TOKEN_ENV, ProgressClient, close_client, report
from sparkdl.train.resources import WorkerSetup, interface_towards

# The exit status of a rank process whose function raised (its traceback is in the result file).
_FAILED = 3
# How long a standby rank process waits for a job before it exits; a task does not hand a job to one this close
# to the end of its wait (the two could cross).
STANDBY_IDLE_S = 600.0
_STANDBY_MARGIN_S = 30.0
# True in a rank process started before its job, by the last job's task (reported with `fn_start`).
_in_standby = False
# How a task starts a rank process: `-c`, not `-m sparkdl.train.launch`, so the process holds one copy of this
# module (runpy would run a second one as `__main__` beside the one the package imports).
_RANK_COMMAND = "import sys; from sparkdl.train.launch import rank_main; sys.exit(rank_main(sys.argv[1:]))"
# The nice value a standby imports at where it may restore its priority: it takes no CPU from the next job's work.
_STANDBY_IMPORT_NICE = 19
_standby_import_nice: int | None = None  # the nice value a standby imported at (None: the normal one)
# Set by a job in its ranks' environment, and read only once the function runs: a standby started without them
# serves the job (see the module docstring).
_PER_JOB_PREFIX = "HOROVOD_"
_PER_JOB_KEYS = frozenset({ADDR_ENV, TOKEN_ENV, "NCCL_SOCKET_IFNAME"})  # the last one from `rendezvous_env`


@dataclass(frozen=True)
class RankJob:
    """What a rank process reads from its job file."""

    payload: bytes          # cloudpickle (the package, which honours register_pickle_by_value) of (fn, kwargs)
    setup: WorkerSetup


# The barrier stage's output: every task's result record (cloudpickle), in chunks small enough for any Arrow batch
# of Spark Connect's result stream.
RESULT_SCHEMA = "partition int, seq int, chunk binary"
RESULT_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class RankLaunch:
    """The function of the barrier stage's tasks (`DataFrame.mapInArrow(..., barrier=True)`, pickled by Spark to
    the executors; the same on a classic and a Spark Connect session).

    The task of partition 0 hosts the job's Gloo rendezvous server (so nothing depends on executors reaching the
    driver or the client); the tasks share its port and their hosts with `BarrierTaskContext.allGather`, and each
    yields its rank's result record in `RESULT_SCHEMA` chunks once the rank has written it.

    Attributes:
        payload: the user function and its keyword arguments, pickled once on the driver.
        setup: threads and devices of every rank (the task's GPUs are added in the task).
        env: environment of the rank processes on top of the executor's (threads, progress channel, Horovod
            settings of the job).
        standby: hand the rank to a standby process of the task's Python worker when it has one, and start one
            for the next job when the rank ends (see the module docstring).
        verbose: verbosity of Horovod's rendezvous server (0-2).
        start_timeout: seconds for the rank's function to start (its process imports, unpickles it) before the
            task stops the rank and reports `StartTimeout`.
        rank_timeout: seconds a started rank may go without a heartbeat (`sparkdl.train.heartbeat`: a training
            step, an epoch's end) before the task stops it and reports `RankTimeout` (None: no limit).
    """

    payload: bytes
    setup: WorkerSetup
    env: Mapping[str, str]
    standby: bool = True
    verbose: int = 0
    start_timeout: float | None = None
    rank_timeout: float | None = None

    def __call__(self, batches: Iterable) -> Iterator:
        from pyspark import BarrierTaskContext

        for _ in batches:  # one row per task: its input carries nothing
            pass
        ctx = BarrierTaskContext.get()
        partition = ctx.partitionId()
        _task_event(self.env, "task_start", partition)  # the barrier stage was scheduled: every task has a slot
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        process = rank_process(env, self.standby)  # imports TensorFlow while the tasks exchange their hosts
        rendezvous = None
        try:
            if partition == 0:
                rendezvous = _start_rendezvous(self.verbose)
            mine = {"host": host_hash(), "port": rendezvous[1] if rendezvous else None}
            gathered = [json.loads(m) for m in ctx.allGather(json.dumps(mine))]
            _task_event(self.env, "rendezvous", partition)  # hosts and the Gloo server's port are known
            slot = slot_for([g["host"] for g in gathered], partition)
            rendezvous_host = task_host(ctx, 0)
            # a HOROVOD_GLOO_IFACE of the executor's or the job's environment wins
            iface = env.get("HOROVOD_GLOO_IFACE") or interface_towards(rendezvous_host)
            env.update({**slot_env(slot), **rendezvous_env(rendezvous_host, gathered[0]["port"], iface)})
            setup = self.setup
            if setup.use_gpu:
                setup = replace(setup, gpus=tuple(task_gpus()))
        except BaseException:
            _stop(process.process)
            if rendezvous:
                rendezvous[0].stop()
            raise
        after_exit = rendezvous[0].stop if rendezvous else None
        record = run_rank(RankJob(self.payload, setup), env, slot.rank, process, standby=self.standby,
                          after_exit=after_exit, start_timeout=self.start_timeout,
                          rank_timeout=self.rank_timeout)
        yield from result_batches(partition, record)


def _task_event(env: Mapping[str, str], name: str, partition: int) -> None:
    """Partition 0's task: a named moment of the launch to the driver (`RunStats.events`), best effort."""
    if partition != 0 or not env.get(ADDR_ENV):
        return
    try:
        client = ProgressClient(env[ADDR_ENV], env.get(TOKEN_ENV, ""), timeout=2.0)
        client.send({"type": "event", "name": name, "rank": 0})
        client.close()
    except Exception:  # noqa: BLE001 - a timing only
        pass


def result_batches(partition: int, record: dict) -> Iterator:
    """A task's result record as Arrow batches of `RESULT_SCHEMA` (one chunk per row)."""
    import cloudpickle
    import pyarrow as pa

    data = cloudpickle.dumps(record)
    chunks = [data[i:i + RESULT_CHUNK_BYTES] for i in range(0, len(data), RESULT_CHUNK_BYTES)] or [b""]
    for seq, chunk in enumerate(chunks):
        yield pa.RecordBatch.from_arrays(
            [pa.array([partition], pa.int32()), pa.array([seq], pa.int32()), pa.array([chunk], pa.binary())],
            names=["partition", "seq", "chunk"])


def records_from_rows(rows) -> list[dict]:
    """The tasks' result records from the collected rows of `RESULT_SCHEMA`, in partition order."""
    import cloudpickle

    parts: dict[int, list[tuple[int, bytes]]] = {}
    for row in rows:
        parts.setdefault(int(row["partition"]), []).append((int(row["seq"]), bytes(row["chunk"])))
    return [cloudpickle.loads(b"".join(chunk for _, chunk in sorted(parts[p]))) for p in sorted(parts)]


def task_host(ctx, partition: int) -> str:
    """The host (name or address) of the executor that runs the barrier task of `partition`, as Spark knows it."""
    address = ctx.getTaskInfos()[partition].address
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host.strip("[]")


def _start_rendezvous(verbose: int):
    """Horovod's Gloo rendezvous (HTTP key-value) server in this task's process: (server, port)."""
    from horovod.runner.http.http_server import RendezvousServer

    server = RendezvousServer(verbose)
    return server, server.start()


def host_hash() -> str:
    """This host's name as Horovod's launcher names it (distinguishes containers on one machine)."""
    from horovod.runner.common.util import host_hash as horovod_host_hash

    return horovod_host_hash.host_hash()


def slot_for(hosts: list[str], partition: int):
    """The Horovod slot (`SlotInfo`) of the task of `partition`, given every task's host in partition order.

    Hosts are taken in order of first appearance, each with as many slots as it has tasks, so the tasks of one
    host get consecutive ranks and the task of partition 0 is rank 0.
    """
    from horovod.runner.common.util.hosts import HostInfo, get_host_assignments

    counts: dict[str, int] = {}
    for host in hosts:
        counts[host] = counts.get(host, 0) + 1
    plan = get_host_assignments([HostInfo(h, n) for h, n in counts.items()], len(hosts))
    host = hosts[partition]
    local_rank = hosts[:partition].count(host)
    return next(s for s in plan if s.hostname == host and s.local_rank == local_rank)


def slot_env(slot) -> dict[str, str]:
    """Horovod's per-rank variables for a `SlotInfo` (what `horovodrun` sets)."""
    from horovod.runner.gloo_run import create_slot_env_vars

    return {k: str(v) for k, v in create_slot_env_vars(slot).items()}


def rendezvous_env(host: str, port: int, iface: str) -> dict[str, str]:
    """Horovod's Gloo variables: the rendezvous server and the interface the rank's Gloo device binds to."""
    from horovod.runner.gloo_run import create_run_env_vars

    return {k: str(v) for k, v in create_run_env_vars(host, [iface], port).items()}


@dataclass(frozen=True)
class RankProcess:
    """A started rank process waiting for its job on stdin; `standby`: started before this job (by the last one)."""

    process: subprocess.Popen
    key: str
    started: float
    standby: bool = False


# This Python worker's standby rank process (at most one; Spark runs one task at a time in a worker).
_standby: list[RankProcess] = []


def standby_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment a rank process for ranks of environment `env` starts with: `env` without the variables of
    one job (`HOROVOD_*`, NCCL's interface, the progress channel's), which it takes from its job."""
    return {k: v for k, v in env.items() if not k.startswith(_PER_JOB_PREFIX) and k not in _PER_JOB_KEYS}


def standby_key(env: Mapping[str, str]) -> str:
    """Equal for two rank environments exactly when one standby can serve both."""
    return hashlib.sha256(repr(sorted(standby_env(env).items())).encode()).hexdigest()


def rank_process(env: Mapping[str, str], standby: bool = True) -> RankProcess:
    """A process for a rank of environment `env` (the slot variables may still be missing): this worker's standby
    when it has one for `env` and `standby` is on, else a new one. It dies with this worker (parent-death signal).

    Raises:
        OSError: the process could not be started.
    """
    _join_reaper()
    key = standby_key(env)
    if _standby:
        kept = _standby.pop()
        fresh = time.monotonic() - kept.started < STANDBY_IDLE_S - _STANDBY_MARGIN_S
        if standby and kept.key == key and fresh and kept.process.poll() is None:
            # one still importing at nice 19 (`rank_main`) finishes at this task's priority
            renice_threads(kept.process.pid, os.getpriority(os.PRIO_PROCESS, 0))
            return replace(kept, standby=True)
        _stop(kept.process)
    return _spawn(env, key)


def _spawn(env: Mapping[str, str], key: str, standby: bool = False) -> RankProcess:
    """Start a rank process that imports and then waits for its job on stdin (a standby imports at low priority)."""
    process = subprocess.Popen([sys.executable, "-c", _RANK_COMMAND] + (["standby"] if standby else []),
                               env=standby_env(env), stdin=subprocess.PIPE, preexec_fn=_die_with_parent)
    return RankProcess(process, key, time.monotonic())


def run_rank(job: RankJob, env: Mapping[str, str], rank: int, rank_proc: RankProcess,
             standby: bool = False, after_exit: Callable[[], None] | None = None,
             start_timeout: float | None = None, rank_timeout: float | None = None) -> dict:
    """Run one rank in `rank_proc` (from `rank_process`) and return its result record (`worker_main`'s) as soon as
    the rank has written it: the process's exit (Horovod's and TensorFlow's tear-down, seconds) then runs in the
    background, followed by `after_exit`, and the next rank of this worker waits for it (`rank_process`).

    The process dies with the task's thread (Linux parent-death signal), so a cancelled job leaves no rank behind.
    With `standby`, a standby for the next job is started once the rank has its result. A rank whose function has
    not started within `start_timeout` seconds is stopped, with a `StartTimeout` record; a started rank without a
    heartbeat for `rank_timeout` seconds (stopped, or blocked in a collective) is killed, with a `RankTimeout` record.
    """
    folder = tempfile.mkdtemp(prefix=f"sparkdl-rank{rank}-")
    job_path, result_path = os.path.join(folder, "job.pkl"), os.path.join(folder, "result.pkl")
    started_path = os.path.join(folder, "started")
    with open(job_path, "wb") as f:
        pickle.dump(job, f)
    started = time.time()
    message = {"env": dict(env), "job": job_path, "result": result_path, "started": started_path,
               "standby": rank_proc.standby}
    try:
        rank_proc.process.stdin.write(pickle.dumps(message))
        rank_proc.process.stdin.close()
    except OSError:  # it exited before its job came (its error is on the executor's stderr)
        pass
    late = stalled = False
    polls = 0
    while not os.path.exists(result_path) and rank_proc.process.poll() is None:
        polls += 1
        if start_timeout is not None and time.time() - started > start_timeout and not os.path.exists(started_path):
            late = True
            _stop(rank_proc.process)
            break
        if rank_timeout is not None and polls % _HEARTBEAT_POLLS == 0:
            silent = heartbeat.age(started_path)
            if silent is not None and silent > rank_timeout and not os.path.exists(result_path):
                stalled = True
                _stop(rank_proc.process)
                break
        time.sleep(_RESULT_POLL_S)
    record = None
    if os.path.exists(result_path):
        import cloudpickle

        with open(result_path, "rb") as f:
            record = cloudpickle.loads(f.read())
    if standby:
        _start_standby(env)  # from this (the task's) thread: a child dies with the thread that started it

    def reap() -> int:
        code = rank_proc.process.wait()
        if after_exit is not None:
            after_exit()
        shutil.rmtree(folder, ignore_errors=True)
        return code

    if record is not None:
        _reaper[:] = [threading.Thread(target=reap, name=f"sparkdl-rank{rank}-exit", daemon=True)]
        _reaper[0].start()
        return record
    code = reap()
    if late:
        message = f"the function of rank {rank} did not start within start_timeout={start_timeout:g}s"
        return {"ok": False, "rank": rank, "error_type": "StartTimeout", "message": message, "traceback": message,
                "time": time.time()}
    if stalled:
        error_type = "RankTimeout"
        message = (f"rank {rank} made no progress for more than rank_timeout={rank_timeout:g}s (stopped, or blocked "
                   f"in a collective whose peer is gone): its process was killed")
    else:
        error_type = "RankProcessExit"
        message = (f"the process of rank {rank} exited with status {code} after {time.time() - started:.1f}s "
                   f"without a result (killed, out of memory, or a crash in native code; see the executor's log)")
    error = {"ok": False, "rank": rank, "error_type": error_type, "message": message,
             "traceback": message, "time": time.time()}
    _report_error(env, error)
    return error


# The background wait for this worker's last rank process to exit (at most one: one task at a time per worker).
_reaper: list[threading.Thread] = []
_RESULT_POLL_S = 0.02
_HEARTBEAT_POLLS = 25  # the heartbeat's age is read every 25 polls (half a second)
_REAPER_WAIT_S = 60.0


def _join_reaper() -> None:
    """Wait (bounded) until this worker's last rank process has exited, so ranks never share a task's cores."""
    for thread in _reaper:
        thread.join(_REAPER_WAIT_S)


def _start_standby(env: Mapping[str, str]) -> None:
    """Start this worker's standby process for the next job of environment `env` (replacing an unused one)."""
    while _standby:
        _stop(_standby.pop().process)
    try:
        _standby.append(_spawn(env, standby_key(env), standby=True))
    except OSError:  # no standby: the next job starts its rank process then
        pass


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the rank outlives a killed task until Gloo times out
        pass


def _report_error(env: Mapping[str, str], error: dict) -> None:
    """Tell the driver of a rank that died (the other ranks may wait for it in a collective)."""
    if env.get(ADDR_ENV):
        try:
            ProgressClient(env[ADDR_ENV], env.get(TOKEN_ENV, "")).send(
                {"type": "error", **{k: v for k, v in error.items() if k != "ok"}})
        except Exception:  # noqa: BLE001 - the result of the task still carries it
            pass


def worker_main(job: RankJob, started_path: str | None = None) -> dict:
    """Runs in every rank process: set up threads and devices, call the function, return its result or its
    traceback (a record with `ok`, `rank` and `result` (rank 0's; None on the others) or
    `error_type`/`message`/`traceback`). The record goes back through the barrier stage's output.
    """
    import cloudpickle

    rank = int(os.environ.get("HOROVOD_RANK", "0"))
    try:
        fn, kwargs = cloudpickle.loads(job.payload)
        applied = job.setup.apply()
        if started_path:  # the task's start timeout ends here; from now on the file carries the heartbeat
            open(started_path, "w").close()
            heartbeat.start(started_path)
        report("event", name="fn_start", rank=rank, setup=applied, standby=_in_standby)
        result = fn(**kwargs)
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the driver as data
        return failure(rank, exc)
    return {"ok": True, "rank": rank, "result": result if rank == 0 else None}


def failure(rank: int, exc: BaseException) -> dict:
    """The record of a rank whose function raised `exc` (also sent over the progress channel at once)."""
    error = {"ok": False, "rank": rank, "error_type": type(exc).__name__, "message": str(exc),
             "traceback": traceback.format_exc(), "time": time.time()}
    try:
        report("error", **{k: v for k, v in error.items() if k != "ok"})
    except Exception:  # noqa: BLE001 - the channel is best-effort here; the record still carries it
        pass
    return error


def _main(job_path: str, result_path: str, started_path: str | None = None) -> int:
    import cloudpickle

    configure_logging()  # progress the driver cannot receive goes to the executor's log

    with open(job_path, "rb") as f:
        job = pickle.load(f)
    record = worker_main(job, started_path)
    close_client()  # before the result: the driver has every progress message once the stage has its output
    try:
        data = cloudpickle.dumps(record)
    except Exception as exc:  # noqa: BLE001 - an unpicklable result is the function's error
        data = cloudpickle.dumps(failure(record.get("rank", 0), exc))
    tmp = result_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, result_path)
    return 0 if record.get("ok") else _FAILED


def _import_rank_modules() -> None:
    try:
        import horovod.tensorflow  # noqa: F401

        import sparkdl.train.keras_worker  # noqa: F401 - TensorFlow and both Keras workers
    except Exception:  # noqa: BLE001 - nothing lost: the job imports what it needs itself and fails there
        pass


def _import_at_low_priority() -> None:
    """A standby's imports, at nice 19 where the process may restore its priority afterwards (CAP_SYS_NICE, or an
    RLIMIT_NICE that allows it), else at the normal priority. A standby starts as the last job ends, often while
    the next job's validation and cache run on the same cores; at nice 19 its imports take no CPU from them. The
    imports run on the main thread (libraries keep thread-local state from their import, e.g. Keras's saving
    format), and every thread is back at the normal priority before the job comes: threads inherit their creator's
    priority, and TensorFlow makes its compute threads on the first operation."""
    global _standby_import_nice
    normal = os.getpriority(os.PRIO_PROCESS, 0)
    if not _may_restore_priority(normal):
        _import_rank_modules()
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, _STANDBY_IMPORT_NICE)  # this thread (the main one)
        _standby_import_nice = os.getpriority(os.PRIO_PROCESS, 0)
        _import_rank_modules()
    finally:
        renice_threads("self", normal)  # this thread and any the imports started


def renice_threads(pid: int | str, nice: int) -> None:
    """Set every thread of process `pid` ("self": this one) to nice value `nice`, best effort (a thread may exit
    meanwhile; lowering a nice value needs the privilege a standby only imports at nice 19 with)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:  # not Linux, or the process has exited
        return
    for task in tasks:
        try:
            os.setpriority(os.PRIO_PROCESS, int(task), nice)
        except OSError:
            pass


def _may_restore_priority(normal: int) -> bool:
    """Whether this process may go back to nice `normal` after nice 19 (Linux: root, CAP_SYS_NICE, RLIMIT_NICE)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_NICE)[0]
        if limit == resource.RLIM_INFINITY or 20 - normal <= limit:
            return True
        with open("/proc/self/status") as f:
            effective = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
        return bool(effective >> 23 & 1)  # CAP_SYS_NICE
    except (OSError, ValueError, StopIteration, AttributeError):
        return False


def rank_main(argv: list[str] | None = None) -> int:
    """A rank process: import what every rank imports, wait for the job on stdin (a standby, `argv` ["standby"]:
    imports at low priority and waits up to `STANDBY_IDLE_S`), then run it: the function's result record goes to
    the job's result file."""
    if "standby" in (argv or []):
        _import_at_low_priority()
    else:
        _import_rank_modules()
    if not select.select([sys.stdin], [], [], STANDBY_IDLE_S)[0]:
        return 0
    data = sys.stdin.buffer.read()
    if not data:  # the worker let it go unused
        return 0
    global _in_standby
    message = pickle.loads(data)
    _in_standby = bool(message["standby"])
    os.environ.clear()
    os.environ.update(message["env"])
    return _main(message["job"], message["result"], message.get("started"))
