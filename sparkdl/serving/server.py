"""`sparkdl serve`: a stored model over HTTP, with micro-batching, Prometheus metrics and hot reload of aliases.

Endpoints (MLflow's scoring-server protocol where it has one), served by uvicorn (`sparkdl.serving.http`):

* `POST /invocations` — a request in one of MLflow's formats (`sparkdl.serving.requests`) with the raw feature
  columns; answers `{"predictions": [...]}`, the values `score_dataframe` gives for the same rows (its default
  output; `?output=probabilities`, `embedding` or `struct` as in `score.output`). Every client mistake is a 4xx
  with a message naming what was wrong: 400 (malformed or too deeply nested JSON, unknown format, missing or
  mistyped column), 401 (a missing or wrong bearer token, when the server has one), 413 (a body over
  `max_body_bytes`, more rows than `max_rows`), 422 (rows the fitted preprocessing cannot prepare). 503: the model
  did not answer within `scoring_timeout_s`, or the server is at `max_connections`.
* `POST /similar?k=10&index=default&nprobe=` — the same request body; answers `{"neighbors": [[{"rank",
  "distance", kept columns...}, ...], ...]}`: each row's `k` nearest rows of the index `sparkdl.score.build_index`
  stored with the model version (404 when it has none), by the model's embedding, as
  `similar(..., approximate=True)` gives them.
* `GET /ping`, `GET /health` — 200 once the model is loaded and warmed up; 503 while a model call has run longer
  than `scoring_timeout_s` (a wedged model).
* `GET /version` — JSON: `model` ("name@version"), `version`, `source` (the training table and version), `pid`
  (the process that answered: one of the workers of `--workers N`).
* `GET /metrics` — Prometheus text: requests by status, errors by kind, latency and batch-size histograms, the
  version served, reload failures.

A server started on `name@alias` (or `name`, the latest version) checks the store every `reload_s` seconds and
switches to the version the reference names now once it is loaded and warmed up; requests in flight finish on the
old one, whose model is then released. A version that fails to load keeps the old one serving: counted once in
`sparkdl_serving_reload_failures_total`, logged once, and tried again with a growing back-off (up to
`RELOAD_BACKOFF_MAX_S`). On SIGTERM the server stops accepting, answers the requests in flight, flushes the
inference log and exits. The server binds to 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import asyncio
import gc
import os
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sparkdl.errors import BatcherClosed, ConfigError, RequestError, SparkDLError
from sparkdl.log import get_logger
from sparkdl.registry import ModelStore
from sparkdl.score import runtime
from sparkdl.score.ann_index import matrix
from sparkdl.score.model_ref import resolve_model
from sparkdl.score.outputs import OUTPUTS, plan_output, retrieval_outputs, scoring_spec
from sparkdl.score.runtime import Scorer
from sparkdl.serving.batcher import MicroBatcher
from sparkdl.serving.http import build_app, listening_socket, uvicorn_server, warn_if_exposed
from sparkdl.serving.inference_log import InferenceLog
from sparkdl.serving.limits import ServingLimits
from sparkdl.serving.live_drift import LiveDrift, read_reference
from sparkdl.serving.requests import ParsedRequest, invalid_rows_error, parse_request
from sparkdl.serving.retrieval import RETRIEVAL, LoadedIndexes, SimilarQuery

log = get_logger("serving")

RELOAD_BACKOFF_MAX_S = 300.0


@dataclass(frozen=True)
class Loaded:
    """One loaded, warmed-up model version, its scorers by output kind and its retrieval indexes."""

    ref: object           # sparkdl.score.model_ref.ModelRef
    metadata: object      # ModelMetadata
    scorers: dict
    batchers: dict
    indexes: LoadedIndexes

    @property
    def retrieval_output(self) -> str:
        """The output that embeds a `/similar` query: the query tower of a two-tower model, else "embedding"."""
        return retrieval_outputs(self.metadata)[0]

    def close(self) -> None:
        for batcher in self.batchers.values():
            batcher.close()


@dataclass(frozen=True)
class QueuedRequest:
    """A parsed request on its way through the batcher (`future` None: no rows)."""

    future: object
    loaded: Loaded
    parsed: ParsedRequest
    output: str


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
        limits: body and row limits, timeouts, connections (`ServingLimits`; default: its safe defaults).
        token: when set, `/invocations` requires `Authorization: Bearer <token>` (compared in constant time).

    Raises:
        ConfigError / ModelStoreError: a bad reference or a model that cannot be loaded (at start).
    """

    def __init__(self, ref: str, store=None, host: str = "127.0.0.1", port: int = 8080, max_batch_size: int = 64,
                 max_wait_ms: float = 5.0, reload_s: float = 2.0, log_table: str | None = None,
                 listen_socket: socket.socket | None = None, limits: ServingLimits | None = None,
                 token: str | None = None, drift_window: int = 0, drift_reference: str | None = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.ref_text = str(ref)
        self.store = ModelStore.of(store)
        self.max_batch_size, self.max_wait_ms, self.reload_s = max_batch_size, max_wait_ms, reload_s
        self.limits = limits or ServingLimits()
        self.registry = CollectorRegistry()
        self.requests = Counter("sparkdl_serving_requests", "requests by HTTP status", ["status"],
                                registry=self.registry)
        self.errors = Counter("sparkdl_serving_errors", "failed requests by kind (client, server)", ["kind"],
                              registry=self.registry)
        for kind in ("client", "server"):
            self.errors.labels(kind=kind)  # both series exported from the start, at 0
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
        self._broken: dict[tuple[str, int], tuple[float, float]] = {}  # version -> (next try, back-off)
        self._loaded: Loaded | None = None
        self._loaded = self._load(self.ref_text)
        self._stop = threading.Event()
        self._closed = False
        self.inference_log = InferenceLog(log_table) if log_table else None
        self.live_drift = self._live_drift(drift_window, drift_reference) if drift_window else None
        warn_if_exposed(host if listen_socket is None else listen_socket.getsockname()[0], token)
        self.socket = listen_socket if listen_socket is not None else listening_socket(host, port)
        self._on_ready = None
        self.app = build_app(self, self.limits, token=token, on_shutdown=self.close)
        self._uvicorn = uvicorn_server(self.app, self.limits)
        self._threads: list[threading.Thread] = []

    def _live_drift(self, window: int, reference: str | None) -> LiveDrift:
        """Live drift against `reference` (a Delta table), else the model's training snapshot."""
        loaded = self.loaded
        features = [(f.name, f.kind) for f in loaded.metadata.spec.features]
        source = loaded.metadata.raw.get("source") or {}
        table, version = (reference, None) if reference else (source.get("table"), source.get("version"))
        if not table:
            raise ConfigError(f"live drift: {loaded.ref} records no training table; pass --drift-reference TABLE")
        try:
            data = read_reference(table, version, [n for n, _ in features])
        except Exception as exc:  # noqa: BLE001 - any storage error: name the table
            raise ConfigError(f"live drift: cannot read the reference {table}"
                              f"{'' if version is None else f'@{version}'}: {exc}") from exc
        return LiveDrift(data, features, self.registry, window)

    # -- model ------------------------------------------------------------------------------------------------
    @property
    def loaded(self) -> Loaded:
        with self._lock:
            return self._loaded

    def _load(self, ref: str) -> Loaded:
        model_ref, metadata = resolve_model(ref, self.store)
        scorers = {}
        for output in OUTPUTS:
            if output == "anomaly":  # flags need the row's segment columns and a Spark plan: the score is served
                continue
            try:
                scorers[output] = Scorer(model_ref, plan_output(output, metadata))
            except SparkDLError:  # an output this model has not (e.g. probabilities of a regression)
                continue
        default = scorers.get("prediction") or next(iter(scorers.values()))  # a two-tower model has towers only
        shape = tuple(default.loaded.preprocessor.input_shape)
        default.predict(np.zeros((1, *shape), dtype=np.float32))  # warm-up: the first call traces the model
        batchers = {name: MicroBatcher(scorer.score, self.max_batch_size, self.max_wait_ms,
                                       on_batch=self.batch_rows.observe, arriving=lambda: self._arriving)
                    for name, scorer in scorers.items()}
        self.version_served.labels(model=model_ref.name).set(model_ref.version)
        log.info("serving %s (outputs %s)", model_ref, sorted(scorers))
        return Loaded(model_ref, metadata, scorers, batchers, LoadedIndexes(model_ref))

    def _reload_loop(self) -> None:
        while not self._stop.wait(self.reload_s):
            self.reload_once()

    def reload_once(self) -> None:
        """Resolve the reference again and switch to the version it names now, if another one loads; a version
        that fails is counted and logged once, and tried again only after a back-off that doubles each time."""
        try:
            now = self.store.resolve(self.ref_text)
        except Exception as exc:  # noqa: BLE001 - the store may be mid-update: try again later
            log.warning("reload: cannot resolve %s: %s", self.ref_text, exc)
            return
        current = self.loaded.ref
        key = (now.name, int(now.version))
        if now.name == current.name and int(now.version) == current.version:
            return
        next_try, backoff = self._broken.get(key, (0.0, 0.0))
        if time.monotonic() < next_try:
            return
        try:
            fresh = self._load(f"{now.name}@{now.version}")
        except Exception as exc:  # noqa: BLE001 - keep serving the old version
            backoff = min(RELOAD_BACKOFF_MAX_S, max(2 * backoff, self.reload_s, 1.0))
            if key not in self._broken:
                self.reload_failures.inc()
                log.error("reload: %s now names %s@%s, which failed to load (%s: %s); still serving %s, trying "
                          "again with a back-off up to %.0f s", self.ref_text, now.name, now.version,
                          type(exc).__name__, exc, current, RELOAD_BACKOFF_MAX_S)
            self._broken[key] = (time.monotonic() + backoff, backoff)
            self.version_served.labels(model=current.name).set(current.version)
            return
        self._broken.pop(key, None)
        with self._lock:
            old, self._loaded = self._loaded, fresh
        log.info("reload: %s now serves %s (was %s)", self.ref_text, fresh.ref, old.ref)
        threading.Thread(target=self._retire, args=(old,), name="sparkdl-serving-retire", daemon=True).start()

    def _retire(self, old: Loaded) -> None:
        """Score what the old version has queued, then free its model (new requests go to the new one)."""
        old.close()
        if old.ref.key != self.loaded.ref.key:
            runtime.release(old.ref)
        del old
        gc.collect()

    # -- requests ---------------------------------------------------------------------------------------------
    def arrive(self, delta: int) -> None:
        with self._lock:
            self._arriving += delta

    def queue_request(self, body: bytes, output: str) -> QueuedRequest:
        """Parse a request and queue its rows for scoring.

        Raises:
            RequestError: the client's mistake (see `parse_request`), or an output the model has not.
        """
        for _ in range(3):  # a reload may close the batcher between the lookup and the submit: take the new one
            loaded = self.loaded
            output = loaded.retrieval_output if output == RETRIEVAL else output
            if output not in loaded.batchers:
                raise RequestError(f"output {output!r} is not available for {loaded.ref}; available: "
                                   f"{sorted(loaded.batchers)}")
            spec = scoring_spec(loaded.metadata, loaded.scorers[output].plan)  # a tower reads its own features
            parsed = parse_request(body, spec, max_rows=self.limits.max_rows, max_depth=self.limits.max_json_depth)
            if parsed.rows == 0:
                return QueuedRequest(None, loaded, parsed, output)
            try:
                return QueuedRequest(loaded.batchers[output].submit(parsed.table), loaded, parsed, output)
            except BatcherClosed:
                continue
        raise BatcherClosed("the model was replaced three times while this request was queued")

    def finish_request(self, queued: QueuedRequest, scored) -> dict:
        """The answer of a scored request (and its inference-log rows). Raises RequestError (422) for rows the
        preprocessing could not prepare."""
        if not np.all(scored.valid):
            raise invalid_rows_error(scored.valid, scored.reasons)
        if self.inference_log is not None and queued.output == "prediction":
            self.inference_log.add(queued.parsed.table, scored.output, queued.loaded.ref)
        if self.live_drift is not None:
            self.live_drift.observe(queued.parsed.table)
        return {"predictions": _plain(scored.output)}

    def finish_similar(self, queued: QueuedRequest, scored, query: SimilarQuery) -> dict:
        """The answer of a `/similar` request whose rows were embedded: each row's nearest indexed rows.

        Raises:
            RequestError: 422 for rows the preprocessing could not prepare, 404 for a missing index.
        """
        if not np.all(scored.valid):
            raise invalid_rows_error(scored.valid, scored.reasons)
        embeddings = matrix(scored.output)
        return {"neighbors": queued.loaded.indexes.search(embeddings, query)}

    def invocations(self, body: bytes, output: str = "prediction") -> dict:
        """Score one request body in this thread (what `POST /invocations` answers, without HTTP)."""
        queued = self.queue_request(body, output)
        if queued.future is None:
            return {"predictions": []}
        return self.finish_request(queued, queued.future.result(self.limits.scoring_timeout_s))

    def health(self) -> tuple[bool, str]:
        """(ready, why not): not ready while a model call has run longer than the scoring timeout."""
        loaded = self.loaded
        if loaded is None:
            return False, "loading"
        stuck = max((b.busy_for() for b in loaded.batchers.values()), default=0.0)
        if stuck > self.limits.scoring_timeout_s:
            return False, f"stuck: a model call has run {stuck:.0f} s"
        return True, "ready"

    def version(self) -> dict:
        loaded = self.loaded
        return {"model": str(loaded.ref), "version": loaded.ref.version, "reference": self.ref_text,
                "source": loaded.metadata.raw.get("source"), "pid": os.getpid()}

    def metrics(self) -> tuple[bytes, str]:
        if self.live_drift is not None:
            self.live_drift.update()
        return metrics_text(self.registry)

    # -- life cycle -------------------------------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        return self.socket.getsockname()[:2]

    def _start_reload(self) -> None:
        if self.reload_s > 0:
            thread = threading.Thread(target=self._reload_loop, name="sparkdl-serving-reload", daemon=True)
            thread.start()
            self._threads.append(thread)

    def start(self) -> "ModelServer":
        """Serve in background threads (`stop()` ends them); returns once the server accepts requests."""
        thread = threading.Thread(target=lambda: asyncio.run(self._uvicorn.serve(sockets=[self.socket])),
                                  name="sparkdl-serving-http", daemon=True)
        thread.start()
        self._threads.append(thread)
        deadline = time.monotonic() + 30
        while not self._uvicorn.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._uvicorn.started:
            raise SparkDLError("the HTTP server did not start (see the log above)")
        self._start_reload()
        host, port = self.address
        log.info("listening on http://%s:%d (model %s)", host, port, self.loaded.ref)
        return self

    def serve_forever(self, on_ready=None) -> None:
        """Serve in this thread until Ctrl-C or SIGTERM (the CLI): then stop accepting, answer the requests in
        flight (up to `drain_timeout_s`), flush the inference log and return. `on_ready()` is called once the
        server accepts requests."""
        self._start_reload()

        async def serve() -> None:
            task = asyncio.ensure_future(self._uvicorn.serve(sockets=[self.socket]))
            while not self._uvicorn.started and not task.done():
                await asyncio.sleep(0.01)
            if self._uvicorn.started:
                host, port = self.address
                log.info("listening on http://%s:%d (model %s)", host, port, self.loaded.ref)
                if on_ready is not None:
                    on_ready()
            await task

        try:
            asyncio.run(serve())
        finally:
            self.close()

    def stop(self) -> None:
        """Stop serving: requests in flight are answered first, then the batchers and the inference log close."""
        self._uvicorn.should_exit = True
        for thread in self._threads:
            thread.join(self.limits.drain_timeout_s + 10)
        self.close()

    def close(self) -> None:
        """Stop the reload loop, score what is queued, and flush the inference log (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self.loaded.close()
        if self.inference_log is not None:
            self.inference_log.close()


def metrics_text(registry) -> tuple[bytes, str]:
    """Prometheus text of `registry`, or of all processes' metrics in multi-process mode (`--workers N`)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _plain(output: pa.Array) -> list:
    """An output column as JSON values (structs as objects, lists as lists)."""
    return output.to_pylist()
