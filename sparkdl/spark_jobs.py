"""The Spark jobs of one block of driver code, stopped for good before a failure leaves the block.

When a job fails, Spark reports the failure as soon as one task has failed; the job's other tasks are only asked to
stop, and a task that already has its first rows can still create its output file a moment later. Code that cleans
up after a failed write must first wait for those tasks, or the clean-up races with them. `stopped_on_error` tags
the block's jobs (a job tag: additive, so the caller's own job group and tags are kept), and when an exception
leaves the block it cancels what still runs and waits until no task of those jobs is running.
"""
from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from sparkdl.log import get_logger
from sparkdl.session_kind import add_tag, cancel_tag, remove_tag, wait_until_stopped

log = get_logger("spark_jobs")

STOP_TIMEOUT_S = 60.0


@contextlib.contextmanager
def stopped_on_error(spark, label: str, timeout: float = STOP_TIMEOUT_S) -> Iterator[str]:
    """Run a block whose Spark jobs have all stopped when an exception leaves it; yields the block's job tag.

    Args:
        spark: the SparkSession the block's jobs run on (classic or Spark Connect: `session_kind.wait_until_stopped`
            says how each knows the tasks stopped).
        label: the start of the tag (`<label>-<random hex>`); it names the jobs in the Spark UI. No commas.
        timeout: seconds to wait for the tasks after an error; past it a warning is logged and the error goes on.
    """
    tag = f"{label}-{uuid.uuid4().hex[:8]}"
    add_tag(spark, tag)
    try:
        yield tag
    except BaseException:
        cancel_tag(spark, tag)
        if not wait_until_stopped(spark, tag, timeout):
            log.warning("tasks of the failed Spark job(s) tagged %s still run after %.0f s", tag, timeout)
        raise
    finally:
        remove_tag(spark, tag)
