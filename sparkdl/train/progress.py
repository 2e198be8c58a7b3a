"""A progress channel from Horovod workers to the Spark driver (or Spark Connect client) that works on a real cluster.

The driver runs a small TCP server (`ProgressServer`), advertised under `spark.driver.host` (a Spark Connect client:
its address towards the Connect server; `spark.sparkdl.train.progressHost` overrides both) and bound to that
address's interface; workers find it through the environment (`SPARKDL_PROGRESS_ADDR`, and the job's secret
`SPARKDL_PROGRESS_TOKEN`, which never travels on the channel) and send JSON lines, each signed with an HMAC-SHA256
of the secret, with a `type`: ``epoch`` (one line per epoch from rank 0: logged on the `sparkdl.train` logger and
drawn as a bar over epochs), ``event`` (a named moment, e.g. the first training step, timed on the driver),
``error`` (a worker's traceback, so the driver learns of a failure even when the other ranks hang), ``log``, and any
type with a registered handler; a handler registered for a built-in type runs after the built-in handling. A message
sent with ``ack=True`` is answered once its handler has run, so the sender knows it was handled. Nothing on the
channel is code: messages are JSON, and the job's results travel through the Spark stage's output.

The channel is best-effort: under Spark Connect the client may sit where executors cannot reach it. A worker that
cannot connect logs its progress on the executor instead (`log` below) and the job goes on.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Mapping

from sparkdl.jsonlines import json_value_or_text
from sparkdl.log import get_logger
from sparkdl.session_kind import client_host, conf_get, is_connect
from sparkdl.train import heartbeat

log = get_logger("train")

ADDR_ENV = "SPARKDL_PROGRESS_ADDR"
TOKEN_ENV = "SPARKDL_PROGRESS_TOKEN"
# Spark conf key: the host name or address executors reach this process under (default: see the module docstring).
HOST_CONF = "spark.sparkdl.train.progressHost"
CONNECT_TIMEOUT_S = 5.0
# The driver reads at most this much of one line before its signature is checked, and drops a silent peer after
# IDLE_TIMEOUT_S (an unauthenticated peer can hold neither memory nor a thread).
MAX_LINE_BYTES = 4 * 1024 * 1024
IDLE_TIMEOUT_S = 3600.0


def sign(secret: str, data: bytes) -> str:
    """The hex HMAC-SHA256 of `data` under the job's secret."""
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def signed_line(secret: str, message: dict) -> bytes:
    """One line of the channel: `<hmac> <json>`."""
    data = json.dumps(message, default=json_value_or_text).encode()
    return sign(secret, data).encode() + b" " + data + b"\n"


def verified(secret: str, line: bytes) -> dict | None:
    """The message of a signed line, or None when its signature or JSON is wrong."""
    mac, _, data = line.strip().partition(b" ")
    if not hmac.compare_digest(mac, sign(secret, data).encode()):
        return None
    try:
        message = json.loads(data)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None

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
    timeout = IDLE_TIMEOUT_S  # a peer silent this long is disconnected (the client reconnects when it speaks)

    def handle(self):
        server: ProgressServer = self.server.owner  # type: ignore[attr-defined]
        server._connections.add(threading.current_thread())
        try:
            while True:
                try:
                    raw = self.rfile.readline(MAX_LINE_BYTES + 1)  # capped before the signature is checked
                except OSError:  # idle past the timeout, or reset
                    return
                if not raw:
                    return
                if len(raw) > MAX_LINE_BYTES:
                    log.warning("progress channel: closed a connection from %s (a line over %d bytes)",
                                self.client_address[0], MAX_LINE_BYTES)
                    return
                message = verified(server.token, raw)
                if message is None:
                    log.warning("progress channel: closed a connection from %s (a line with a bad signature)",
                                self.client_address[0])
                    return
                if not server.fresh(message):
                    log.warning("progress channel: closed a connection from %s (a replayed line)",
                                self.client_address[0])
                    return
                server.connected = True
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
        self._seq_lock = threading.Lock()
        self._last_seq: dict[str, int] = {}  # per client: the number of the last message taken
        self._server: _TCPServer | None = None
        self._thread: threading.Thread | None = None
        self.error_listeners: list[Callable[[dict], None]] = []
        self.connected = False  # a worker reached the channel (with a valid signature)

    @classmethod
    def for_spark(cls, spark, **kwargs) -> "ProgressServer":
        """A server advertised where the session's executors reach this process (see the module docstring)."""
        host = conf_get(spark, HOST_CONF)
        if not host and is_connect(spark):
            host = _address_towards(client_host(spark) or "127.0.0.1")
        elif not host:
            host = conf_get(spark, "spark.driver.host")
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
        self._server = _TCPServer((_bind_address(self.advertised_host), 0), _Handler)
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
    def fresh(self, message: dict) -> bool:
        """Whether a signed message is new: each client numbers its messages (`conn`, `seq`), and a line whose
        number is not above the last one seen from that client is a replay."""
        conn, seq = message.get("conn"), message.get("seq")
        if not isinstance(conn, str) or not isinstance(seq, int) or isinstance(seq, bool):
            return False
        with self._seq_lock:
            if seq <= self._last_seq.get(conn, -1):
                return False
            self._last_seq[conn] = seq
            return True

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
        self._conn, self._seq = secrets.token_hex(8), 0  # this client's messages are numbered (replays refused)

    @classmethod
    def from_env(cls) -> "ProgressClient | None":
        """The client for this process's job, or None outside a sparkdl Horovod job."""
        address, token = os.environ.get(ADDR_ENV), os.environ.get(TOKEN_ENV)
        if not address or not token:
            return None
        return cls(address, token)

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=min(self.timeout, CONNECT_TIMEOUT_S))
        sock.settimeout(self.timeout)
        self._sock, self._rfile = sock, sock.makefile("rb")

    @property
    def reachable(self) -> bool:
        """False once the driver could not be reached (then messages go to this process's log instead)."""
        return not self._broken

    def send(self, message: dict, required: bool = False) -> None:
        """Send one message. With `required`, wait for the driver's acknowledgement and raise OSError on failure;
        otherwise failures are logged once and further messages dropped (progress is best-effort)."""
        with self._lock:
            if self._broken and not required:
                return
            self._seq += 1
            payload = dict(message, ack=required, time=time.time(), conn=self._conn, seq=self._seq)
            payload.setdefault("rank", int(os.environ.get("HOROVOD_RANK", "0")))
            data = signed_line(self.token, payload)
            try:
                if self._sock is None:
                    self._connect()
                try:
                    self._sock.sendall(data)
                except OSError:  # the driver dropped an idle connection: one new one
                    self._close()
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


_CLIENT: ProgressClient | None = None
_CLIENT_LOCK = threading.Lock()


def client() -> ProgressClient | None:
    """This process's shared client (None outside a sparkdl job)."""
    global _CLIENT
    with _CLIENT_LOCK:
        if _CLIENT is None:
            _CLIENT = ProgressClient.from_env()
        return _CLIENT


def close_client() -> None:
    """Close this process's connection: the driver's handler then has every message it sent."""
    if _CLIENT is not None:
        _CLIENT.close()


def mark(name: str) -> None:
    """Rank 0: report a named moment (an ``event``), timed on the driver (`RunStats.events`). Every rank: a
    heartbeat (`sparkdl.train.heartbeat`)."""
    heartbeat.beat()
    if os.environ.get("HOROVOD_RANK", "0") == "0":
        report("event", name=name)


def report(kind: str, required: bool = False, **fields) -> None:
    """Send a message of type `kind` to the driver, if this process runs in a sparkdl Horovod job. When the driver
    cannot be reached, epochs, logs and errors go to this process's log (the executor's stderr) instead."""
    c = client()
    if c is None:
        return
    c.send({"type": kind, **fields}, required=required)
    if not c.reachable and kind in ("epoch", "log", "error"):
        if kind == "epoch":
            logs = fields.get("logs") or {}
            log.info("rank %s: epoch %s/%s %s", os.environ.get("HOROVOD_RANK", "0"), int(fields.get("epoch", 0)) + 1,
                     fields.get("epochs"), format_logs(logs))
        else:
            log.info("rank %s: %s: %s", os.environ.get("HOROVOD_RANK", "0"), kind,
                     fields.get("message") or fields.get("traceback"))


def _address_towards(host: str) -> str:
    """This host's address on the route to `host` (the kernel picks it; no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostname()


def _bind_address(advertised_host: str) -> str:
    """The local address the server listens on: the advertised host's, when it is one of this host's (so the
    channel is not open on other interfaces), else all interfaces (e.g. behind NAT, advertised as another name)."""
    try:
        address = socket.gethostbyname(advertised_host)
    except OSError:
        return "0.0.0.0"
    if ipaddress.ip_address(address).is_loopback:
        return address
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
        return address
    except OSError:
        return "0.0.0.0"
