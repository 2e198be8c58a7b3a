"""The HTTP layer of `sparkdl serve`: a Starlette app on uvicorn (the server MLflow's own scoring server runs on),
with the limits of `ServingLimits`.

What uvicorn and h11 give: HTTP/1.1 parsing that refuses malformed framing (`Content-Length: -1` is a 400 before
the app runs), request bodies framed by their length (a body left unread is discarded, never read as a second
request), idle keep-alive timeouts, a cap on concurrent connections (503 beyond), graceful shutdown on SIGTERM
(stop accepting, let requests in flight finish within the drain timeout, then the app's shutdown: the batchers
and the inference log flush). What this module adds: a read timeout from a request's first byte to its last
(`TimedH11Protocol`: uvicorn has none, so a client sending headers byte by byte would hold its connection forever),
the body-size limit checked on `Content-Length` before anything is read and again while reading, the scoring
timeout, bearer-token auth, and JSON answers for every route including unknown ones.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import time
from collections.abc import Callable

import h11
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from sparkdl.errors import ConfigError, RequestError
from sparkdl.log import get_logger
from sparkdl.serving.limits import ServingLimits
from sparkdl.serving.retrieval import RETRIEVAL, SimilarQuery

log = get_logger("serving")

# Bodies up to this size are parsed on the event loop (tens of microseconds); larger ones in a worker thread, so a
# large request does not hold up the small ones.
_INLINE_PARSE_BYTES = 64 * 1024
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a read timeout: a request (headers and body) must arrive within
    `read_timeout_s` of its first byte, and a new connection must send a whole request within that time too;
    otherwise the connection is closed. Time spent scoring a received request does not count."""

    read_timeout_s = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._read_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_read_timer()

    def data_received(self, data: bytes) -> None:
        if self._read_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_read_timer()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)

    def on_response_complete(self) -> None:
        self._cancel_read_timer()
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self._cancel_read_timer()
        super().connection_lost(exc)

    def _arm_read_timer(self) -> None:
        self._cancel_read_timer()
        self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _cancel_read_timer(self) -> None:
        if getattr(self, "_read_timer", None) is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY) or self.transport.is_closing():
            return  # the request arrived whole (DONE, or MUST_CLOSE after "Connection: close"): being answered
        log.debug("closing a connection from %s: no whole request within %.0f s", self.client, self.read_timeout_s)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()


def protocol_class(limits: ServingLimits) -> type:
    """`TimedH11Protocol` with the read timeout of `limits` (uvicorn instantiates the class per connection)."""
    return type("TimedH11Protocol", (TimedH11Protocol,), {"read_timeout_s": float(limits.read_timeout_s)})


def error(status: int, code: str, message: str, close: bool = False) -> JSONResponse:
    """An MLflow-style error answer (`error_code`, `message`); `close` ends the connection after it (a body that
    was not read must not be waited for)."""
    return JSONResponse({"error_code": code, "message": message}, status_code=status,
                        headers={"Connection": "close"} if close else None)


async def read_body(request: Request, max_bytes: int) -> bytes | JSONResponse:
    """The request's body, or the 413 answer when it is (or announces to be) larger than `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        return error(413, "REQUEST_TOO_LARGE", f"the body has {int(declared)} bytes, more than max_body_bytes="
                                               f"{max_bytes}", close=True)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            return error(413, "REQUEST_TOO_LARGE", f"the body is larger than max_body_bytes={max_bytes}", close=True)
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(core, limits: ServingLimits, token: str | None = None,
              on_shutdown: Callable[[], None] | None = None) -> Starlette:
    """The ASGI app over `core` (a `sparkdl.serving.server.ModelServer`: `queue_request`, `finish_request`,
    `finish_similar`, `arrive`, `health`, `version`, `metrics`, its metric objects)."""

    def authorized(request: Request) -> bool:
        if token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    async def invocations(request: Request) -> Response:
        output = request.query_params.get("output", "prediction")
        return await _counted(lambda queued: _invocation(request, queued, output, lambda: core.finish_request,
                                                         "predictions", offload=False))

    async def similar(request: Request) -> Response:
        def finish():
            query = SimilarQuery.from_params(request.query_params)
            return lambda queued, scored: core.finish_similar(queued, scored, query)

        return await _counted(lambda queued: _invocation(request, queued, RETRIEVAL, finish, "neighbors",
                                                         offload=True))

    async def _counted(answer) -> Response:
        """`await answer(queued)`, counted in the metrics; `queued()` tells the batcher the request is queued."""
        started = time.perf_counter()
        core.arrive(1)  # the batcher waits for requests still arriving
        pending = [True]

        def queued() -> None:
            if pending[0]:
                pending[0] = False
                core.arrive(-1)

        status = 200
        try:
            response = await answer(queued)
            status = response.status_code
            return response
        except ClientDisconnect:
            status = 499  # the client left (or was too slow): nobody to answer
            return Response(status_code=400)
        finally:
            queued()
            core.requests.labels(status=str(status)).inc()
            if status >= 500 and status != 503:
                core.errors.labels(kind="server").inc()
            elif 400 <= status < 500:
                core.errors.labels(kind="client").inc()
            core.latency.observe(time.perf_counter() - started)

    async def _invocation(request: Request, queued, output: str, finisher, key: str, offload: bool) -> Response:
        """Score the request's rows with `output`; `finisher()` (which may refuse the request's parameters) gives
        `finish(queued_request, scored)`, the answer's body, run in a worker thread when `offload`."""
        if not authorized(request):
            return error(401, "UNAUTHENTICATED", "a valid 'Authorization: Bearer <token>' header is required",
                         close=True)
        body = await read_body(request, limits.max_body_bytes)
        if isinstance(body, Response):
            return body
        try:
            finish = finisher()
            if len(body) <= _INLINE_PARSE_BYTES:
                queued_request = core.queue_request(body, output)
            else:
                queued_request = await run_in_threadpool(core.queue_request, body, output)
            queued()
            if queued_request.future is None:
                return JSONResponse({key: []})
            try:
                scored = await asyncio.wait_for(asyncio.wrap_future(queued_request.future),
                                                timeout=limits.scoring_timeout_s)
            except asyncio.TimeoutError:
                return error(503, "TIMEOUT", f"the model did not answer within scoring_timeout_s="
                                             f"{limits.scoring_timeout_s:g}")
            return JSONResponse(await run_in_threadpool(finish, queued_request, scored) if offload
                                else finish(queued_request, scored))
        except RequestError as exc:
            code = {400: "INVALID_PARAMETER_VALUE", 404: "RESOURCE_DOES_NOT_EXIST"}.get(exc.status, "BAD_REQUEST")
            return error(exc.status, "REQUEST_TOO_LARGE" if exc.status == 413 else code, str(exc))
        except Exception:  # noqa: BLE001 - the server goes on; the details are in its log, not in the answer
            log.exception("scoring failed")
            return error(500, "INTERNAL_ERROR", "scoring failed on the server (see its log)")

    async def health(request: Request) -> Response:
        ready, reason = core.health()
        return JSONResponse({"status": "ready" if ready else reason}, status_code=200 if ready else 503)

    async def version(request: Request) -> Response:
        return JSONResponse(core.version())

    async def metrics(request: Request) -> Response:
        data, content_type = core.metrics()
        return Response(data, media_type=content_type)

    async def not_found(request: Request) -> Response:
        return error(404, "NOT_FOUND", f"no endpoint {request.method} {request.url.path}")

    routes = [Route("/invocations", invocations, methods=["POST"]), Route("/similar", similar, methods=["POST"]),
              Route("/ping", health, methods=["GET"]), Route("/health", health, methods=["GET"]),
              Route("/version", version, methods=["GET"]), Route("/metrics", metrics, methods=["GET"]),
              Route("/{path:path}", not_found, methods=_ALL_METHODS)]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if on_shutdown is not None:
            await run_in_threadpool(on_shutdown)

    return Starlette(routes=routes, lifespan=lifespan)


def uvicorn_server(app, limits: ServingLimits):
    """A `uvicorn.Server` for `app` with `limits` (run it on sockets of the caller's: `server.run(sockets=[...])`)."""
    import uvicorn

    config = uvicorn.Config(app, http=protocol_class(limits), lifespan="on", log_level="warning",
                            access_log=False, limit_concurrency=int(limits.max_connections),
                            timeout_keep_alive=max(1, round(limits.keep_alive_s)),
                            timeout_graceful_shutdown=max(1, round(limits.drain_timeout_s)),
                            h11_max_incomplete_event_size=64 * 1024, server_header=False, proxy_headers=False)
    return uvicorn.Server(config)


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound and listening on `host`:`port` (0: a free port), for uvicorn's `sockets`."""
    sock = socket.create_server((host, port), backlog=2048)
    sock.set_inheritable(True)
    return sock


def read_token(path: str | None) -> str | None:
    """The bearer token in file `path` (surrounding whitespace removed); None without a path.

    Raises:
        ConfigError: the file cannot be read or holds no token.
    """
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"--token-file {path}: cannot read it ({exc.strerror})") from None
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"--token-file {path}: expected one token without spaces, found "
                          f"{'nothing' if not token else 'whitespace inside it'}")
    return token


def warn_if_exposed(host: str, token: str | None) -> None:
    """Log a warning for a server bound beyond loopback without a token."""
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("sparkdl.serving").warning(
            "serving on %s without --token-file: anyone who reaches this address can score", host)


__all__ = ["TimedH11Protocol", "build_app", "listening_socket", "read_token", "uvicorn_server", "warn_if_exposed"]
