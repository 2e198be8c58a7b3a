"""`sparkdl serve --workers N`: N server processes behind one listening socket, like gunicorn's pre-fork model.

One Python process scores on one core at a time (the GIL between the HTTP threads, the batcher and the model
call), so a server on a machine with more cores runs several. The supervisor binds and listens on `host`:`port`
once, then starts N worker processes (`worker_main` in a fresh interpreter each: TensorFlow must not be forked)
that inherit the socket and accept on it; the kernel hands each connection to one of them. Each worker is a
complete `ModelServer` (its own model copy, micro-batcher, hot reload and inference log).

Metrics use prometheus_client's multi-process mode: every worker writes its counters and histograms to files in a
folder of the supervisor's (`PROMETHEUS_MULTIPROC_DIR`), and `GET /metrics`, whichever worker answers it, sums
them over all workers, the ones that died included. A worker that dies is started again (logged); one that dies
before it is ready fails the start with its exit code, its own log above.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass

from sparkdl.errors import ConfigError, SparkDLError
from sparkdl.log import get_logger
from sparkdl.serving.limits import ServingLimits
from sparkdl.serving.server import ModelServer

log = get_logger("serving")

READY_LINE = "sparkdl-serving-worker-ready"
RESTART_BACKOFF_MAX_S = 60.0
RESTART_BACKOFF_RESET_S = 60.0  # a worker that ran this long before exiting is started again after 1 s
_WORKER_COMMAND = ("import sys; from sparkdl.serving.workers import worker_main; "
                   "worker_main(int(sys.argv[1]), sys.argv[2])")


@dataclass(frozen=True)
class WorkerOptions:
    """What every worker's `ModelServer` is given (see its docstring)."""

    ref: str
    store: str | None = None
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    reload_s: float = 2.0
    log_table: str | None = None
    limits: dict | None = None      # ServingLimits' fields (None: its defaults)
    token: str | None = None        # bearer token of /invocations
    drift_window: int = 0           # live drift over the last N requested rows (0: off)
    drift_reference: str | None = None


class ServerPool:
    """`workers` ModelServer processes on one socket (see the module docstring).

    Args:
        options: what each worker serves and how.
        workers: how many processes (≥ 2; one process is `ModelServer` itself).
        host, port: where to listen (port 0: a free port, see `address`).
        ready_timeout_s: how long `start()` waits for every worker to load and warm up its model.

    Raises:
        ConfigError: `workers` below 2.
        SparkDLError: a worker that exits or does not get ready in time during `start()`.
    """

    def __init__(self, options: WorkerOptions, workers: int, host: str = "127.0.0.1", port: int = 8080,
                 ready_timeout_s: float = 180.0):
        if int(workers) < 2:
            raise ConfigError(f"--workers must be at least 2 for a pool of server processes, got {workers}")
        self.options, self.workers, self.ready_timeout_s = options, int(workers), ready_timeout_s
        self.socket = socket.create_server((host, port), backlog=128)
        self.metrics_dir = tempfile.mkdtemp(prefix="sparkdl-serving-metrics-")
        self.processes: list[subprocess.Popen] = []
        self.restarts = 0
        self._backoff = [0.0] * self.workers      # seconds before worker i is started again after its next exit
        self._due: list[float | None] = [None] * self.workers  # when a dead worker i is to be started again
        self._stop = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        return self.socket.getsockname()[:2]

    def _spawn(self) -> subprocess.Popen:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir}
        command = [sys.executable, "-c", _WORKER_COMMAND, str(self.socket.fileno()), json.dumps(asdict(self.options))]
        return subprocess.Popen(command, env=env, pass_fds=(self.socket.fileno(),), stdout=subprocess.PIPE,
                                text=True)

    def start(self) -> "ServerPool":
        """Start the workers and return once every one has its model loaded and warmed up."""
        self.processes = [self._spawn() for _ in range(self.workers)]
        deadline = time.monotonic() + self.ready_timeout_s
        for number, process in enumerate(self.processes):
            line = _read_line_until(process, deadline)
            if line != READY_LINE:
                self.stop()
                code = process.poll()
                raise SparkDLError(f"serving worker {number} (pid {process.pid}) "
                                   + (f"exited with code {code}" if code is not None
                                      else f"was not ready within {self.ready_timeout_s:.0f} s")
                                   + " before serving; its log is above")
        threading.Thread(target=self._watch, name="sparkdl-serving-supervisor", daemon=True).start()
        host, port = self.address
        log.info("listening on http://%s:%d with %d worker processes (model %s)", host, port, self.workers,
                 self.options.ref)
        return self

    def _watch(self) -> None:
        """Start a worker that exited again, after a back-off that doubles with each exit of that worker within
        `RESTART_BACKOFF_RESET_S` of its start (1 s, 2 s, ... up to `RESTART_BACKOFF_MAX_S`): a worker that
        crashes at once (a broken model, no memory) does not spin."""
        from prometheus_client import multiprocess

        started = [time.monotonic()] * self.workers
        while not self._stop.wait(0.2):
            for number, process in enumerate(self.processes):
                if self._stop.is_set():
                    return
                due = self._due[number]
                if due is None:
                    code = process.poll()
                    if code is None:
                        continue
                    multiprocess.mark_process_dead(process.pid, self.metrics_dir)
                    if process.stdout is not None:
                        process.stdout.close()
                    quick = time.monotonic() - started[number] < RESTART_BACKOFF_RESET_S
                    self._backoff[number] = (min(RESTART_BACKOFF_MAX_S, max(1.0, 2 * self._backoff[number]))
                                             if quick else 1.0)
                    self._due[number] = time.monotonic() + self._backoff[number]
                    log.warning("serving worker %d (pid %d) exited with code %s; starting it again in %.0f s",
                                number, process.pid, code, self._backoff[number])
                elif time.monotonic() >= due:
                    self._due[number] = None
                    self.processes[number] = self._spawn()
                    started[number] = time.monotonic()
                    self.restarts += 1

    def serve_forever(self) -> None:
        """Serve until Ctrl-C or SIGTERM, then stop the workers (each stops accepting, answers its requests in
        flight and flushes its inference log first)."""
        self.start()
        try:
            wait_for_interrupt()
        finally:
            self.stop()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop every worker (SIGTERM: each drains within its `drain_timeout_s`), killing those that take longer
        than `timeout_s` (default: the drain timeout plus 10 s)."""
        if timeout_s is None:
            timeout_s = ServingLimits(**(self.options.limits or {})).drain_timeout_s + 10.0
        self._stop.set()
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("serving worker pid %d did not stop in %.0f s; killing it", process.pid, timeout_s)
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self.socket.close()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


def _read_line_until(process: subprocess.Popen, deadline: float) -> str | None:
    """The worker's first stdout line, or None when it exits or the deadline passes first."""
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(process.stdout.readline().strip()), daemon=True)
    reader.start()
    reader.join(max(0.0, deadline - time.monotonic()))
    return found[0] if found else None


def worker_main(fd: int, options_json: str) -> None:
    """One worker: a ModelServer on the inherited socket; says it is ready on stdout, then serves."""
    options = WorkerOptions(**json.loads(options_json))
    listen_socket = socket.socket(fileno=fd)
    server = ModelServer(options.ref, store=options.store, max_batch_size=options.max_batch_size,
                         max_wait_ms=options.max_wait_ms, reload_s=options.reload_s, log_table=options.log_table,
                         listen_socket=listen_socket, limits=ServingLimits(**(options.limits or {})),
                         token=options.token, drift_window=options.drift_window,
                         drift_reference=options.drift_reference)

    def ready() -> None:
        print(READY_LINE, flush=True)
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nobody reads the pipe from now on

    server.serve_forever(on_ready=ready)


def wait_for_interrupt() -> None:
    """Block until Ctrl-C, or SIGTERM (a supervisor or a container stop) when called from the main thread."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
