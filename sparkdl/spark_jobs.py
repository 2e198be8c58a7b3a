"""The Spark jobs of one block of driver code, stopped for good before a failure leaves the block.

When a job fails, Spark reports the failure as soon as one task has failed; the job's other tasks are only asked to
stop, and a task that already has its first rows can still create its output file a moment later. Code that cleans
up after a failed write must first wait for those tasks, or the clean-up races with them. `stopped_on_error` tags
the block's jobs (a job tag: additive, so the caller's own job group and tags are kept), and when an exception
leaves the block it cancels what still runs and waits until no task of those jobs is running.
"""
from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

from sparkdl.log import get_logger

log = get_logger("spark_jobs")

STOP_TIMEOUT_S = 60.0
_POLL_S = 0.05


@contextlib.contextmanager
def stopped_on_error(spark, label: str, timeout: float = STOP_TIMEOUT_S) -> Iterator[str]:
    """Run a block whose Spark jobs have all stopped when an exception leaves it; yields the block's job tag.

    Args:
        spark: the SparkSession the block's jobs run on (classic, not Spark Connect).
        label: the start of the tag (`<label>-<random hex>`); it names the jobs in the Spark UI. No commas.
        timeout: seconds to wait for the tasks after an error; past it a warning is logged and the error goes on.
    """
    sc = spark.sparkContext
    tag = f"{label}-{uuid.uuid4().hex[:8]}"
    sc.addJobTag(tag)
    try:
        yield tag
    except BaseException:
        sc.cancelJobsWithTag(tag)
        if not _wait_until_stopped(sc, tag, timeout):
            log.warning("tasks of the failed Spark job(s) tagged %s still run after %.0f s", tag, timeout)
        raise
    finally:
        sc.removeJobTag(tag)


def running_tasks(sc, tag: str) -> int:
    """How many tasks of the jobs tagged `tag` run now (a job still running counts as at least one)."""
    tracker = sc.statusTracker()
    running = 0
    # PySpark's StatusTracker has no getJobIdsForTag; the JVM's SparkStatusTracker has (Spark 3.5+).
    for job_id in sc._jsc.sc().statusTracker().getJobIdsForTag(tag):
        job = tracker.getJobInfo(job_id)
        if job is None:
            continue
        active = 0
        for stage_id in job.stageIds:
            stage = tracker.getStageInfo(stage_id)
            active += stage.numActiveTasks if stage is not None else 0
        running += max(active, 1 if job.status == "RUNNING" else 0)
    return running


def _wait_until_stopped(sc, tag: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while running_tasks(sc, tag):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_S)
    return True
