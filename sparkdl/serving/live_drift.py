"""Live drift of `sparkdl serve`: the last N requested rows of each feature against a reference, as Prometheus
gauges, so a Grafana panel shows drift as traffic comes (docs/grafana-sparkdl-serving.json).

The reference is read once at start-up through delta-rs (no Spark in the server): the model's own training
snapshot (its metadata's `source`: table and version), or `--drift-reference TABLE`, up to `max_reference_rows`
rows. It fixes each numeric feature's quantile bins and each categorical feature's most frequent values (plus
"other"), as `sparkdl.monitor` does. Every scored request's feature columns go into a ring buffer of the last
`window` rows; the gauges are computed when `/metrics` is scraped (PSI and Jensen-Shannon distance with
`sparkdl.monitor`'s formulas, and the null rate), so serving pays only the copy into the buffer.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sparkdl.errors import ConfigError
from sparkdl.log import get_logger
from sparkdl.monitor import jensen_shannon, psi_value
from sparkdl.uri import normalize_table_uri

log = get_logger("serving.live_drift")

NUMERIC_KINDS = ("numeric",)
CATEGORICAL_KINDS = ("categorical", "text")
STATISTICS = ("psi", "js_distance", "null_rate")


@dataclass(frozen=True)
class _Reference:
    name: str
    edges: np.ndarray | None          # numeric: inner bin edges
    categories: tuple[str, ...]       # categorical: kept values (then "other")
    counts: np.ndarray                # reference counts per bucket, the null bucket last

    def buckets(self, values: list) -> np.ndarray:
        counts = np.zeros(len(self.counts))
        for v in values:
            if v is None or (isinstance(v, float) and np.isnan(v)):
                counts[-1] += 1
            elif self.edges is not None:
                counts[int(np.searchsorted(self.edges, float(v), side="right"))] += 1
            else:
                text = str(v)
                counts[self.categories.index(text) if text in self.categories else len(self.categories)] += 1
        return counts


class LiveDrift:
    """Drift of the last `window` rows per feature against a reference table; `observe` per request, `update`
    before each scrape sets the gauges."""

    def __init__(self, reference: pa.Table, features: list[tuple[str, str]], registry, window: int = 1000,
                 bins: int = 10, max_categories: int = 20):
        from prometheus_client import Gauge

        if window < 10:
            raise ConfigError(f"--drift-window must be at least 10 rows, got {window}")
        self.window = window
        self.references = {}
        for name, kind in features:
            if name not in reference.column_names or kind not in NUMERIC_KINDS + CATEGORICAL_KINDS:
                continue
            self.references[name] = _reference(name, kind, reference.column(name).to_pylist(), bins,
                                               max_categories)
        if not self.references:
            raise ConfigError(f"live drift: the reference has none of the numeric or categorical features "
                              f"{[n for n, _ in features]}; its columns: {reference.column_names}")
        self._buffers = {n: collections.deque(maxlen=window) for n in self.references}
        self._lock = threading.Lock()
        self.gauge = Gauge("sparkdl_serving_drift", "drift of the last requested rows against the reference",
                           ["feature", "statistic"], registry=registry, multiprocess_mode="livemax")
        self.rows = Gauge("sparkdl_serving_drift_rows", "rows in the live drift window", registry=registry,
                          multiprocess_mode="livemax")
        log.info("live drift: %d feature(s) against %d reference rows, over the last %d requested rows",
                 len(self.references), reference.num_rows, window)

    def observe(self, table: pa.Table) -> None:
        columns = {n: table.column(n).to_pylist() for n in self._buffers if n in table.column_names}
        with self._lock:
            for name, values in columns.items():
                self._buffers[name].extend(values)

    def update(self) -> dict[str, dict[str, float | None]]:
        """Compute the statistics of the current window and set the gauges; returns them."""
        with self._lock:
            snapshot = {n: list(b) for n, b in self._buffers.items()}
        out = {}
        for name, values in snapshot.items():
            if not values:
                continue
            ref = self.references[name]
            current = ref.buckets(values)
            stats = {"psi": psi_value(list(ref.counts), list(current), 1e-4),
                     "js_distance": jensen_shannon(list(ref.counts), list(current)),
                     "null_rate": float(current[-1] / current.sum())}
            for stat, value in stats.items():
                if value is not None:
                    self.gauge.labels(feature=name, statistic=stat).set(value)
            out[name] = stats
        self.rows.set(max((len(v) for v in snapshot.values()), default=0))
        return out


def _reference(name: str, kind: str, values: list, bins: int, max_categories: int) -> _Reference:
    present = [v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
    nulls = len(values) - len(present)
    if kind in NUMERIC_KINDS:
        data = np.asarray(present, dtype=float)
        edges = np.unique(np.quantile(data, [i / bins for i in range(1, bins)])) if data.size else np.array([])
        counts = np.bincount(np.searchsorted(edges, data, side="right"), minlength=len(edges) + 1).astype(float)
        return _Reference(name, edges, (), np.append(counts, nulls))
    texts = collections.Counter(str(v) for v in present)
    kept = tuple(v for v, _ in sorted(texts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_categories])
    counts = [texts[v] for v in kept] + [sum(texts.values()) - sum(texts[v] for v in kept), nulls]
    return _Reference(name, None, kept, np.asarray(counts, dtype=float))


def read_reference(table: str, version: int | None, columns: list[str], max_rows: int = 100_000) -> pa.Table:
    """Up to `max_rows` rows of `columns` of a Delta table (pinned to `version`), through delta-rs."""
    from deltalake import DeltaTable

    dt = DeltaTable(normalize_table_uri(table), version=version)
    present = [c for c in columns if c in {f.name for f in dt.schema().fields}]
    return dt.to_pyarrow_dataset().head(max_rows, columns=present)
