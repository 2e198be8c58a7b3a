"""sparkdl.spark_jobs: when a job fails, the block's error comes out only after the job's other tasks stopped."""
from __future__ import annotations

import pytest

from sparkdl.session_kind import add_tag, is_connect, remove_tag, running_tasks, tags
from sparkdl.spark_jobs import stopped_on_error

pytestmark = pytest.mark.both_sessions


def test_an_error_leaves_the_block_only_after_the_failed_jobs_tasks_stopped(spark, tmp_path,
                                                                           failing_job_with_a_busy_sibling):
    df, marker = failing_job_with_a_busy_sibling
    add_tag(spark, "callers-tag")
    try:
        with pytest.raises(Exception, match="boom on row 77"):
            with stopped_on_error(spark, "sparkdl-test") as tag:
                assert {tag, "callers-tag"} <= tags(spark)
                df.write.parquet(str(tmp_path / "out"))
        assert marker.exists()  # the sibling task ran to its end before the error came out
        assert running_tasks(spark, tag) == (None if is_connect(spark) else 0)
        assert tag not in tags(spark)
        assert "callers-tag" in tags(spark)  # the caller's own tags are kept
    finally:
        remove_tag(spark, "callers-tag")


def test_a_block_without_error_keeps_no_tag(spark):
    with stopped_on_error(spark, "sparkdl-test") as tag:
        assert spark.range(5).count() == 5
    assert tag not in tags(spark)
