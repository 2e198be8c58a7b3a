"""Micro-batching: concurrent requests scored together, one model call per batch.

`MicroBatcher.submit(table)` queues a request's rows and returns a `Future`. One scoring thread takes the oldest
request, then adds the requests that arrive within `max_wait_ms` of it, up to `max_batch_size` rows, and scores
them with one call of `score(table)`; each request's future gets its own slice of the result. It waits only while
`arriving()` says other requests are on their way (received, not yet queued): a lone request is scored at once. A
request never waits for others longer than `max_wait_ms` (plus the scoring of the batch it joined).
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import pyarrow as pa

from sparkdl.errors import BatcherClosed
from sparkdl.log import get_logger

log = get_logger("serving")


@dataclass(frozen=True)
class Scored:
    """One request's slice of a batch's result."""

    output: pa.Array
    valid: object           # numpy bool array
    reasons: list
    batch_rows: int         # rows of the batch it was scored in


class MicroBatcher:
    """See the module docstring. `score(table) -> (output array, valid mask, reasons)`; `on_batch(rows)` is called
    after each model call (metrics)."""

    def __init__(self, score: Callable, max_batch_size: int = 64, max_wait_ms: float = 5.0,
                 on_batch: Callable[[int], None] | None = None, arriving: Callable[[], int] | None = None):
        if max_batch_size < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch_size must be >= 1 and max_wait_ms >= 0, got {max_batch_size}, "
                             f"{max_wait_ms}")
        self.score, self.max_batch_size, self.max_wait_s = score, int(max_batch_size), max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.arriving = arriving or (lambda: 1)  # unknown: always wait up to max_wait_ms
        self._queue: queue.Queue = queue.Queue()
        self._busy_since: float | None = None  # monotonic start of the model call in progress
        self._stop = threading.Event()
        self._closing = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sparkdl-serving-batcher", daemon=True)
        self._thread.start()

    def submit(self, table: pa.Table) -> Future:
        """Queue a request's rows; raises `BatcherClosed` once `close()` was called (the caller takes the next
        model's batcher)."""
        future: Future = Future()
        with self._closing:
            if self._stop.is_set():
                raise BatcherClosed("this model version is no longer served")
            self._queue.put((table, future))
        return future

    def busy_for(self) -> float:
        """Seconds the model call in progress has run (0 when idle): a wedged model shows here."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def close(self) -> None:
        """Score what is queued, then stop."""
        with self._closing:
            self._stop.set()
            self._queue.put(None)
        self._thread.join(30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            rows = first[0].num_rows
            deadline = time.monotonic() + self.max_wait_s
            while rows < self.max_batch_size:
                try:
                    wait = max(0.0, deadline - time.monotonic()) if self.arriving() > 0 else 0.0
                    item = self._queue.get(timeout=wait) if wait else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._score(batch, rows)
                    return
                batch.append(item)
                rows += item[0].num_rows
            self._score(batch, rows)

    def _score(self, batch: list, rows: int) -> None:
        try:
            tables = [t for t, _ in batch]
            try:
                table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # differently typed columns: one call per request
                for item in batch:
                    self._score([item], item[0].num_rows)
                return
            self._busy_since = time.monotonic()
            try:
                output, valid, reasons = self.score(table)
            finally:
                self._busy_since = None
            if self.on_batch is not None:
                self.on_batch(rows)
            start = 0
            for t, future in batch:
                n = t.num_rows
                future.set_result(Scored(output.slice(start, n), valid[start:start + n],
                                         list(reasons[start:start + n]), rows))
                start += n
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
