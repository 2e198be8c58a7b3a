"""`sparkdl serve`: a stored model over HTTP, with micro-batching, Prometheus metrics and hot reload of aliases.

Endpoints (MLflow's scoring-server protocol where it has one):

* `POST /invocations` — a request in one of MLflow's formats (`sparkdl.serving.requests`) with the raw feature
  columns; answers `{"predictions": [...]}`, the values `score_dataframe` gives for the same rows (its default
  output; `?output=probabilities`, `embedding` or `struct` as in `score.output`). Client mistakes get a 4xx with a
  message naming the column and row: 400 (malformed JSON, unknown format, missing or mistyped column), 422 (rows
  the fitted preprocessing cannot prepare, e.g. a vector of the wrong length).
* `GET /ping`, `GET /health` — 200 once the model is loaded and warmed up, else 503.
* `GET /version` — JSON: `model` ("name@version"), `version`, `source` (the training table and version), `pid`
  (the process that answered: one of the workers of `--workers N`).
* `GET /metrics` — Prometheus text: requests by status, errors, latency and batch-size histograms, the version
  served, reload failures.

A server started on `name@alias` (or `name`, the latest version) checks the store every `reload_s` seconds and
switches to the version the reference names now once it is loaded and warmed up; requests in flight finish on the
old one. A version that fails to load keeps the old one serving (logged, and counted in
`sparkdl_serving_reload_failures_total`). The server binds to 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pyarrow as pa

from sparkdl.errors import BatcherClosed, RequestError, SparkDLError
from sparkdl.log import get_logger
from sparkdl.registry import ModelStore
from sparkdl.score.model_ref import resolve_model
from sparkdl.score.outputs import OUTPUTS, plan_output
from sparkdl.score.runtime import Scorer
from sparkdl.serving.batcher import MicroBatcher
from sparkdl.serving.inference_log import InferenceLog
from sparkdl.serving.requests import invalid_rows_error, parse_request

log = get_logger("serving")


@dataclass(frozen=True)
class Loaded:
    """One loaded, warmed-up model version and its scorers by output kind."""

    ref: object           # sparkdl.score.model_ref.ModelRef
    metadata: object      # ModelMetadata
    scorers: dict
    batchers: dict

    def close(self) -> None:
        for batcher in self.batchers.values():
            batcher.close()


class ModelServer:
    """Serves `ref` from `store` (see the module docstring).

    Args:
        ref: "name", "name@version" or "name@alias".
        store: a ModelStore or its root (default: the default store).
        host, port: where to listen (port 0: a free port, see `address`).
        max_batch_size, max_wait_ms: the micro-batching limits.
        reload_s: how often the reference is resolved again (hot reload); 0 = never.
        log_table: append requests and predictions to this Delta table (`sparkdl.serving.inference_log`).
        listen_socket: accept connections on this listening socket instead of binding `host`:`port` (the workers
            of `sparkdl.serving.workers` share their supervisor's).

    Raises:
        ConfigError / ModelStoreError: a bad reference or a model that cannot be loaded (at start).
    """

    def __init__(self, ref: str, store=None, host: str = "127.0.0.1", port: int = 8080, max_batch_size: int = 64,
                 max_wait_ms: float = 5.0, reload_s: float = 2.0, log_table: str | None = None,
                 listen_socket: socket.socket | None = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.ref_text = str(ref)
        self.store = store if isinstance(store, ModelStore) else ModelStore(store)
        self.max_batch_size, self.max_wait_ms, self.reload_s = max_batch_size, max_wait_ms, reload_s
        self.registry = CollectorRegistry()
        self.requests = Counter("sparkdl_serving_requests", "requests by HTTP status", ["status"],
                                registry=self.registry)
        self.errors = Counter("sparkdl_serving_errors", "failed requests by kind (client, server)", ["kind"],
                              registry=self.registry)
        self.latency = Histogram("sparkdl_serving_request_seconds", "time to answer a scoring request",
                                 registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.batch_rows = Histogram("sparkdl_serving_batch_rows", "rows per model call", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096))
        self.version_served = Gauge("sparkdl_serving_model_version", "the model version served",
                                    ["model"], registry=self.registry, multiprocess_mode="livemax")
        self.reload_failures = Counter("sparkdl_serving_reload_failures", "versions that failed to load",
                                       registry=self.registry)
        self._lock = threading.Lock()
        self._arriving = 0  # requests received and not yet queued for scoring (the batcher waits for them)
        self._loaded: Loaded | None = None
        self._loaded = self._load(self.ref_text)
        self._stop = threading.Event()
        self.inference_log = InferenceLog(log_table) if log_table else None
        if listen_socket is None:
            self.httpd = _HTTPServer((host, port), _handler(self))
        else:
            self.httpd = _HTTPServer(listen_socket.getsockname()[:2], _handler(self), bind_and_activate=False)
            self.httpd.socket.close()
            listen_socket.setblocking(False)  # processes that share it all wake on a connection: the ones that
            self.httpd.socket = listen_socket  # lose the race to accept it must go back to waiting, not block
        self.httpd.daemon_threads = True
        self._threads: list[threading.Thread] = []

    # -- model ------------------------------------------------------------------------------------------------
    @property
    def loaded(self) -> Loaded:
        with self._lock:
            return self._loaded

    def _load(self, ref: str) -> Loaded:
        model_ref, metadata = resolve_model(ref, self.store)
        scorers = {}
        for output in OUTPUTS:
            try:
                scorers[output] = Scorer(model_ref, plan_output(output, metadata))
            except SparkDLError:  # an output this model has not (e.g. probabilities of a regression)
                continue
        default = scorers["prediction"]
        shape = tuple(default.loaded.preprocessor.input_shape)
        default.predict(np.zeros((1, *shape), dtype=np.float32))  # warm-up: the first call traces the model
        batchers = {name: MicroBatcher(scorer.score, self.max_batch_size, self.max_wait_ms,
                                       on_batch=self.batch_rows.observe, arriving=lambda: self._arriving)
                    for name, scorer in scorers.items()}
        self.version_served.labels(model=model_ref.name).set(model_ref.version)
        log.info("serving %s (outputs %s)", model_ref, sorted(scorers))
        return Loaded(model_ref, metadata, scorers, batchers)

    def _reload_loop(self) -> None:
        while not self._stop.wait(self.reload_s):
            try:
                now = self.store.resolve(self.ref_text)
            except Exception as exc:  # noqa: BLE001 - the store may be mid-update: try again later
                log.warning("reload: cannot resolve %s: %s", self.ref_text, exc)
                continue
            current = self.loaded.ref
            if now.name == current.name and int(now.version) == current.version:
                continue
            try:
                fresh = self._load(f"{now.name}@{now.version}")
            except Exception as exc:  # noqa: BLE001 - keep serving the old version
                self.reload_failures.inc()
                self.version_served.labels(model=current.name).set(current.version)
                log.error("reload: %s now names %s@%s, which failed to load (%s: %s); still serving %s",
                          self.ref_text, now.name, now.version, type(exc).__name__, exc, current)
                continue
            with self._lock:
                old, self._loaded = self._loaded, fresh
            log.info("reload: %s now serves %s (was %s)", self.ref_text, fresh.ref, old.ref)
            threading.Thread(target=old.close, name="sparkdl-serving-retire", daemon=True).start()  # queued ones
            # are scored by the old version, new ones go to the new

    # -- requests ---------------------------------------------------------------------------------------------
    def arrive(self, delta: int) -> None:
        with self._lock:
            self._arriving += delta

    def invocations(self, body: bytes, output: str, queued=lambda: None) -> dict:
        """Score one request; `queued()` is called once it is queued for scoring (or failed before)."""
        try:
            future, loaded, parsed, output = self._queue_request(body, output)
        finally:
            queued()
        if future is None:
            return {"predictions": []}
        scored = future.result()
        if not np.all(scored.valid):
            raise invalid_rows_error(scored.valid, scored.reasons)
        if self.inference_log is not None and output == "prediction":
            self.inference_log.add(parsed.table, scored.output, loaded.ref)
        return {"predictions": _plain(scored.output)}

    def _queue_request(self, body: bytes, output: str):
        for _ in range(3):  # a reload may close the batcher between the lookup and the submit: take the new one
            loaded = self.loaded
            if output not in loaded.batchers:
                raise RequestError(f"output {output!r} is not available for {loaded.ref}; available: "
                                   f"{sorted(loaded.batchers)}")
            parsed = parse_request(body, loaded.metadata.spec)
            if parsed.rows == 0:
                return None, loaded, parsed, output
            try:
                return loaded.batchers[output].submit(parsed.table), loaded, parsed, output
            except BatcherClosed:
                continue
        raise BatcherClosed("the model was replaced three times while this request was queued")

    def version(self) -> dict:
        loaded = self.loaded
        return {"model": str(loaded.ref), "version": loaded.ref.version, "reference": self.ref_text,
                "source": loaded.metadata.raw.get("source"), "pid": os.getpid()}

    # -- life cycle -------------------------------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]

    def start(self) -> "ModelServer":
        """Serve in background threads (`stop()` ends them)."""
        self._threads = [threading.Thread(target=self.httpd.serve_forever, name="sparkdl-serving-http",
                                          daemon=True)]
        if self.reload_s > 0:
            self._threads.append(threading.Thread(target=self._reload_loop, name="sparkdl-serving-reload",
                                                  daemon=True))
        for thread in self._threads:
            thread.start()
        host, port = self.address
        log.info("listening on http://%s:%d (model %s)", host, port, self.loaded.ref)
        return self

    def serve_forever(self, on_ready=None) -> None:
        """Serve until Ctrl-C or SIGTERM (the CLI); requests in flight are answered first. `on_ready()` is called
        once the server accepts requests."""
        self.start()
        if on_ready is not None:
            on_ready()
        try:
            wait_for_interrupt()
        finally:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.loaded.close()
        if self.inference_log is not None:
            self.inference_log.close()


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


def metrics_text(registry) -> tuple[bytes, str]:
    """Prometheus text of `registry`, or of all processes' metrics in multi-process mode (`--workers N`)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = 128  # socketserver's 5 overflows under concurrent clients: their SYNs wait 1 s for a retry


def _plain(output: pa.Array) -> list:
    """An output column as JSON values (structs as objects, lists as lists)."""
    return output.to_pylist()


def _handler(server: ModelServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # the access log goes to the debug level
            log.debug("%s " + fmt, self.client_address[0], *args)

        def _answer(self, status: int, payload, content_type: str = "application/json") -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - http.server's name
            path = urlparse(self.path).path
            if path in ("/ping", "/health"):
                ready = server.loaded is not None
                self._answer(200 if ready else 503, {"status": "ready" if ready else "loading"})
            elif path == "/version":
                self._answer(200, server.version())
            elif path == "/metrics":
                self._answer(200, *metrics_text(server.registry))
            else:
                self._answer(404, {"error_code": "NOT_FOUND", "message": f"no endpoint {path}"})

        def do_POST(self):  # noqa: N802
            url = urlparse(self.path)
            if url.path != "/invocations":
                self._answer(404, {"error_code": "NOT_FOUND", "message": f"no endpoint {url.path}"})
                return
            started = time.perf_counter()
            status = 200
            server.arrive(1)  # the batcher waits for requests still arriving
            pending = [True]

            def queued() -> None:
                if pending[0]:
                    pending[0] = False
                    server.arrive(-1)

            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                output = parse_qs(url.query).get("output", ["prediction"])[0]
                answer = server.invocations(body, output, queued)
            except RequestError as exc:
                status, answer = exc.status, {"error_code": "INVALID_PARAMETER_VALUE" if exc.status == 400
                                              else "BAD_REQUEST", "message": str(exc)}
                server.errors.labels(kind="client").inc()
            except Exception as exc:  # noqa: BLE001 - a 500 names the failure; the server goes on
                log.exception("scoring failed")
                status, answer = 500, {"error_code": "INTERNAL_ERROR", "message": f"{type(exc).__name__}: {exc}"}
                server.errors.labels(kind="server").inc()
            queued()
            self._answer(status, answer)
            server.requests.labels(status=str(HTTPStatus(status).value)).inc()
            server.latency.observe(time.perf_counter() - started)

    return Handler
