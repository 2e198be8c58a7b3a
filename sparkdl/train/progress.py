"""A progress channel from Horovod workers to the Spark driver that works on a real cluster.

The driver runs a small TCP server (`ProgressServer`, bound to 0.0.0.0, advertised under `spark.driver.host`);
workers find it through the environment (`SPARKDL_PROGRESS_ADDR`, `SPARKDL_PROGRESS_TOKEN`) and send JSON lines
with a `type`: ``epoch`` (one line per epoch from rank 0: logged on the `sparkdl.train` logger and drawn as a bar
over epochs), ``event`` (a named moment, e.g. the first training step, timed on the driver), ``error`` (a worker's
traceback, so the driver learns of a failure even when the other ranks hang), ``log``, and any type with a
registered handler (the estimator uses ``checkpoint``); a handler registered for a built-in type runs after
the built-in handling. A message sent with ``ack=True`` is answered once its
handler has run, so the sender knows it was handled (used for checkpoints).
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Mapping

from sparkdl.log import get_logger

log = get_logger("train")

ADDR_ENV = "SPARKDL_PROGRESS_ADDR"
TOKEN_ENV = "SPARKDL_PROGRESS_TOKEN"

Handler = Callable[[dict], None]


def format_logs(logs: Mapping[str, float]) -> str:
    """`loss=0.1234 accuracy=0.9500 ...` with the training metrics first, then validation ones."""
    keys = sorted(logs, key=lambda k: (k.startswith("val_"), k != "loss" and k != "val_loss", k))
    parts = []
    for key in keys:
        value = logs[key]
        parts.append(f"{key}={value:.4g}" if isinstance(value, (int, float)) else f"{key}={value}")
    return " ".join(parts)


def epoch_bar(done: int, total: int, width: int = 20) -> str:
    """A text bar `[#####---------------]`."""
    total = max(1, total)
    filled = int(round(width * min(done, total) / total))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        server: ProgressServer = self.server.owner  # type: ignore[attr-defined]
        server._connections.add(threading.current_thread())
        try:
            first = self.rfile.readline().decode("utf-8", "replace").strip()
            if not secrets.compare_digest(first, server.token):
                log.warning("progress channel: rejected a connection from %s (bad token)", self.client_address[0])
                return
            for raw in self.rfile:
                try:
                    message = json.loads(raw)
                except ValueError:
                    log.warning("progress channel: dropped a malformed line from %s", self.client_address[0])
                    continue
                ok = server.dispatch(message)
                if message.get("ack"):
                    self.wfile.write(b"ok\n" if ok else b"error\n")
                    self.wfile.flush()
        finally:
            server._connections.discard(threading.current_thread())


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class ProgressServer:
    """The driver end of the progress channel.

    Args:
        advertised_host: the host name or IP workers connect to (default: `spark.driver.host` via `for_spark`,
            else this host's name).
        handlers: extra message handlers by message type.
        total_epochs: the number of epochs, for the progress bar.
        bar: draw a tqdm bar over epochs on stderr (default: when stderr is a terminal).
    """

    def __init__(self, advertised_host: str | None = None, handlers: Mapping[str, Handler] | None = None,
                 total_epochs: int | None = None, bar: bool | None = None):
        self.advertised_host = advertised_host or socket.gethostname()
        self.token = secrets.token_hex(16)
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.total_epochs = total_epochs
        self.errors: list[dict] = []
        self.epochs: list[dict] = []
        self.events: dict[str, float] = {}
        self._bar_wanted = sys.stderr.isatty() if bar is None else bar
        self._bar = None
        self._lock = threading.Lock()
        self._connections: set[threading.Thread] = set()
        self._server: _TCPServer | None = None
        self._thread: threading.Thread | None = None
        self.error_listeners: list[Callable[[dict], None]] = []

    @classmethod
    def for_spark(cls, spark, **kwargs) -> "ProgressServer":
        """A server advertised under the session's `spark.driver.host`."""
        host = spark.sparkContext.getConf().get("spark.driver.host") or None
        return cls(advertised_host=host, **kwargs)

    @property
    def address(self) -> str:
        if self._server is None:
            raise RuntimeError("progress server not started")
        return f"{self.advertised_host}:{self._server.server_address[1]}"

    def env(self) -> dict[str, str]:
        """The environment variables that let workers connect."""
        return {ADDR_ENV: self.address, TOKEN_ENV: self.token}

    def start(self) -> "ProgressServer":
        self._server = _TCPServer(("0.0.0.0", 0), _Handler)
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="sparkdl-progress", daemon=True)
        self._thread.start()
        log.debug("progress channel listening on %s", self.address)
        return self

    def close(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting connections and wait (up to `drain_timeout`) for open ones to reach end of stream."""
        deadline = time.monotonic() + drain_timeout
        for thread in list(self._connections):
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ProgressServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- message handling --------------------------------------------------------------------------------------
    def dispatch(self, message: dict) -> bool:
        """Handle one message; returns False when its handler raised (logged, never propagated to the worker)."""
        kind = message.get("type")
        try:
            with self._lock:
                if kind == "epoch":
                    self._on_epoch(message)
                elif kind == "event":
                    self.events.setdefault(str(message.get("name")), time.time())
                elif kind == "error":
                    message.setdefault("driver_time", time.time())
                    self.errors.append(message)
                elif kind == "log":
                    log.info("rank %s: %s", message.get("rank"), message.get("message"))
                elif kind not in self.handlers:
                    log.debug("progress channel: ignored message of type %r", kind)
                if kind in self.handlers:
                    self.handlers[kind](message)
            if kind == "error":
                for listener in self.error_listeners:
                    listener(message)
            return True
        except Exception:  # noqa: BLE001 - a bad handler must not kill the channel
            log.exception("progress channel: handler for %r failed", kind)
            return False

    def _on_epoch(self, message: dict) -> None:
        self.epochs.append(message)
        epoch = int(message.get("epoch", len(self.epochs) - 1))
        total = int(message.get("epochs") or self.total_epochs or epoch + 1)
        rate = message.get("examples_per_s")
        logs = message.get("logs") or {}
        line = f"epoch {epoch + 1}/{total} {epoch_bar(epoch + 1, total)} {format_logs(logs)}"
        if rate:
            line += f" | {rate:,.0f} examples/s"
        if message.get("seconds") is not None:
            line += f" | {message['seconds']:.1f}s"
        log.info(line)
        if self._bar_wanted:
            self._update_bar(epoch, total, logs)

    def _update_bar(self, epoch: int, total: int, logs: Mapping) -> None:
        try:
            from tqdm import tqdm
        except ImportError:
            return
        if self._bar is None:
            self._bar = tqdm(total=total, initial=epoch, unit="epoch", desc="training", file=sys.stderr,
                             leave=True)
        self._bar.n = epoch + 1
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if isinstance(v, (int, float))}, refresh=True)


class ProgressClient:
    """The worker end: one connection per process, opened on first use. Thread-safe."""

    def __init__(self, address: str, token: str, timeout: float = 60.0):
        host, _, port = address.rpartition(":")
        self.host, self.port, self.token, self.timeout = host, int(port), token, timeout
        self._sock: socket.socket | None = None
        self._rfile = None
        self._lock = threading.Lock()
        self._broken = False

    @classmethod
    def from_env(cls) -> "ProgressClient | None":
        """The client for this process's job, or None outside a sparkdl Horovod job."""
        address, token = os.environ.get(ADDR_ENV), os.environ.get(TOKEN_ENV)
        if not address or not token:
            return None
        return cls(address, token)

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.sendall((self.token + "\n").encode())
        self._sock, self._rfile = sock, sock.makefile("rb")

    def send(self, message: dict, required: bool = False) -> None:
        """Send one message. With `required`, wait for the driver's acknowledgement and raise OSError on failure;
        otherwise failures are logged once and further messages dropped (progress is best-effort)."""
        payload = dict(message, ack=required, time=time.time())
        payload.setdefault("rank", int(os.environ.get("HOROVOD_RANK", "0")))
        data = (json.dumps(payload, default=_json_default) + "\n").encode()
        with self._lock:
            if self._broken and not required:
                return
            try:
                if self._sock is None:
                    self._connect()
                self._sock.sendall(data)
                if required:
                    answer = self._rfile.readline().strip()
                    if answer != b"ok":
                        raise OSError(f"the driver could not handle the {message.get('type')!r} message "
                                      f"(answer {answer!r}); see the driver log")
            except OSError as exc:
                self._close()
                if required:
                    raise
                self._broken = True
                log.warning("progress channel to %s:%s lost: %s", self.host, self.port, exc)

    def _close(self) -> None:
        try:
            if self._sock is not None:
                self._sock.close()
        finally:
            self._sock = self._rfile = None

    def close(self) -> None:
        with self._lock:
            self._close()


def _json_default(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:
        pass
    return str(value)


_CLIENT: ProgressClient | None = None
_CLIENT_LOCK = threading.Lock()


def client() -> ProgressClient | None:
    """This process's shared client (None outside a sparkdl job)."""
    global _CLIENT
    with _CLIENT_LOCK:
        if _CLIENT is None:
            _CLIENT = ProgressClient.from_env()
        return _CLIENT


def mark(name: str) -> None:
    """Rank 0: report a named moment (an ``event``), timed on the driver (`RunStats.events`)."""
    if os.environ.get("HOROVOD_RANK", "0") == "0":
        report("event", name=name)


def report(kind: str, required: bool = False, **fields) -> None:
    """Send a message of type `kind` to the driver, if this process runs in a sparkdl Horovod job."""
    c = client()
    if c is not None:
        c.send({"type": kind, **fields}, required=required)
