"""Recovery inside one `KerasEstimator.fit`: what a failure the fit absorbed records, how the relaunch finds its
task slots, and the error once `max_failures` are used up.

A fit relaunches all its ranks from the run's last complete checkpoint when the Horovod job lost a rank to its
surroundings (`TrainingError.recoverable`: a process killed, a task or executor lost, a rank without a heartbeat
for `rank_timeout_s`, its peers' collective errors). An error raised by the training code itself (a bad loss, a
failing callback) is not retried: it would fail the same way again.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from sparkdl.errors import TrainingError
from sparkdl.log import get_logger
from sparkdl.session_kind import live_task_slots
from sparkdl.train.resources import task_slots

log = get_logger("train")

_SLOT_POLL_S = 1.0
# A fit that will relaunch does not wait for the ranks of a failed job to give up by themselves: after a rank's
# error it cancels the job within these seconds (`HorovodRunner`'s `abort_grace_s`).
RECOVERY_ABORT_GRACE_S = 3.0


@dataclass(frozen=True)
class Recovery:
    """One failure a fit recovered from.

    Attributes:
        attempt: the attempt that failed (attempts count from 1 over the run's life, reruns included).
        epoch: the epoch the relaunch starts at (0-based): the one in progress when the rank was lost.
        step: the global step (per rank) the relaunch starts at: `epoch * steps_per_epoch`.
        cause: what happened, in one line (`TrainingError.cause`).
        seconds_lost: from the later of the last checkpoint and the attempt's start to the failure's detection:
            the training done again, plus the time to notice.
        num_proc: the ranks of the relaunch (fewer than asked only with `min_proc`).
    """

    attempt: int
    epoch: int
    step: int
    cause: str
    seconds_lost: float
    num_proc: int

    def to_dict(self) -> dict:
        return asdict(self)


def slots_for_relaunch(spark, num_proc: int, min_proc: int | None, timeout_s: float) -> int:
    """The ranks a relaunch may use: `num_proc` once the cluster has that many task slots again (waiting up to
    `timeout_s` for lost executors to come back), else — with `min_proc` — the slots there are, if at least
    `min_proc`.

    Raises:
        TrainingError: fewer than `num_proc` slots (or `min_proc`, when set) after `timeout_s`.
    """
    def count() -> int | None:
        live = live_task_slots(spark)
        return live if live is not None else task_slots(spark)

    deadline = time.monotonic() + timeout_s
    slots = count()
    while slots is not None and slots < num_proc and time.monotonic() < deadline:
        time.sleep(_SLOT_POLL_S)
        slots = count()
    if slots is None or slots >= num_proc:
        return num_proc
    if min_proc is not None and slots >= min_proc:
        log.warning("only %d of num_proc=%d task slots came back within %.0fs: going on with %d rank(s) "
                    "(min_proc=%d); the global batch and the learning rate scale with them", slots, num_proc,
                    timeout_s, slots, min_proc)
        return slots
    raise TrainingError(f"only {slots} Spark task slot(s) are left after the failure, fewer than num_proc={num_proc}"
                        + (f" and min_proc={min_proc}" if min_proc is not None else "")
                        + f", and no more came back within {timeout_s:.0f}s")


def exhausted(run_name: str, max_failures: int, recoveries: list[Recovery], last: TrainingError) -> TrainingError:
    """The error of a fit whose failures outnumbered `max_failures`: every cause, in order, and the last one's
    details (its `rank`, `error_type` and traceback are kept)."""
    causes = [r.cause for r in recoveries] + [last.cause or str(last).splitlines()[0]]
    lines = "\n".join(f"  {i}. {cause}" for i, cause in enumerate(causes, 1))
    error = TrainingError(
        f"run {run_name}: training failed {len(causes)} time(s), more than max_failures={max_failures}; nothing was "
        f"registered, and the run folder keeps its checkpoints (rerun the same run_name to resume):\n{lines}\n\n"
        f"The last failure:\n{last}")
    for name in ("rank", "worker_traceback", "error_type"):
        if hasattr(last, name):
            setattr(error, name, getattr(last, name))
    error.cause, error.errors, error.failures = last.cause, last.errors, tuple(causes)
    return error


__all__ = ["RECOVERY_ABORT_GRACE_S", "Recovery", "exhausted", "slots_for_relaunch"]
