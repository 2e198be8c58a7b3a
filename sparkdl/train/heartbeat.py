"""A rank's heartbeat: proof that its training loop is still making progress, read by the rank's Spark task.

A rank process touches one file (its "started" file, `sparkdl.train.launch.run_rank` creates the path) whenever
its loop makes progress: a training or validation step, an epoch's end, a named moment of the start-up
(`progress.mark`). The task that runs the rank polls the file's age, and a rank whose file is older than the job's
`rank_timeout` is stopped and reported as `RankTimeout` (`sparkdl.train.launch`). Beats come from the loop itself,
never from a thread of their own: a thread would go on beating while the loop is stopped (SIGSTOP) or blocked in a
collective whose peer is gone, which is exactly what the heartbeat must catch.

A beat costs one clock read; the file is touched at most once per `MIN_INTERVAL_S`.
"""
from __future__ import annotations

import os
import time

MIN_INTERVAL_S = 1.0

_path: str | None = None
_last = 0.0


def start(path: str | None) -> None:
    """Beat into `path` from now on (None: beats do nothing, as outside a sparkdl Horovod job)."""
    global _path, _last
    _path, _last = path, 0.0
    beat()


def beat() -> None:
    """Record progress (cheap enough for every training step)."""
    global _last
    if _path is None:
        return
    now = time.monotonic()
    if now - _last < MIN_INTERVAL_S:
        return
    _last = now
    try:
        os.utime(_path)
    except OSError:  # the task removed its folder: the job is over
        pass


def age(path: str) -> float | None:
    """Seconds since the last beat into `path` (None: no beat yet)."""
    try:
        return time.time() - os.stat(path).st_mtime
    except OSError:
        return None
