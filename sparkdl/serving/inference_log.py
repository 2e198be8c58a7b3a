"""The inference log of `sparkdl serve --log-table TABLE`: requests and predictions appended to a Delta table in
micro-batches, so `sparkdl.monitor` can measure drift on live traffic.

Each scored request's rows are buffered with their prediction, the model (`_model`, `_model_version`) and the
time (`_served_at`, UTC); a background thread appends the buffer every `flush_s` seconds, or as soon as it holds
`max_rows`, in one Delta commit through delta-rs (`sparkdl.lake.delta_rs.append_arrow`: no Spark in the serving
process). A failed append is logged and its rows are dropped (the log never blocks or fails scoring); `close()`
appends what is left.
"""
from __future__ import annotations

import datetime as dt
import threading

import pyarrow as pa

from sparkdl.lake.delta_rs import append_arrow
from sparkdl.log import get_logger
from sparkdl.uri import normalize_table_uri

log = get_logger("serving")


class InferenceLog:
    """See the module docstring. `add(features, output, ref)` is called once per scored request."""

    def __init__(self, table: str, flush_s: float = 5.0, max_rows: int = 10_000):
        self.table, self.flush_s, self.max_rows = normalize_table_uri(table), flush_s, max_rows
        self._buffer: list[pa.Table] = []
        self._rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.appended_rows = 0
        self.failed_rows = 0
        self._thread = threading.Thread(target=self._run, name="sparkdl-inference-log", daemon=True)
        self._thread.start()

    def add(self, features: pa.Table, output: pa.Array, ref) -> None:
        n = features.num_rows
        now = pa.array([dt.datetime.now(dt.timezone.utc)] * n, pa.timestamp("us", tz="UTC"))
        rows = (features.append_column("prediction", output)
                .append_column("_model", pa.array([ref.name] * n, pa.string()))
                .append_column("_model_version", pa.array([int(ref.version)] * n, pa.int32()))
                .append_column("_served_at", now))
        with self._lock:
            self._buffer.append(rows)
            self._rows += n
            if self._rows >= self.max_rows:
                self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self._lock:
            buffer, self._buffer, self._rows = self._buffer, [], 0
        if not buffer:
            return
        try:
            data = pa.concat_tables(buffer)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. another model version's output type after a reload
            for part in buffer:
                self._append(part)
            return
        self._append(data)

    def _append(self, data: pa.Table) -> None:
        try:
            version = append_arrow(self.table, data, {"sparkdl.operation": "serve", "rows": data.num_rows})
            self.appended_rows += data.num_rows
            log.debug("inference log: %d row(s) -> %s@%d", data.num_rows, self.table, version)
        except Exception as exc:  # noqa: BLE001 - the log never fails scoring
            self.failed_rows += data.num_rows
            log.error("inference log: could not append %d row(s) to %s: %s", data.num_rows, self.table, exc)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(30)
        self.flush()
