"""Timing helpers shared by the benchmark scripts of this folder (each run as `python scripts/benchmarks/bench_*.py`,
so this folder is on the import path)."""
from __future__ import annotations

import os
import time


def median_seconds(fn, rounds: int) -> float:
    """The median wall-clock seconds of `rounds` calls of `fn()`."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def load_line() -> str:
    """"load average: 1m 5m 15m", the line every benchmark ends with."""
    return f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
