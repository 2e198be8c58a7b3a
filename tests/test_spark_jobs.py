"""sparkdl.spark_jobs: when a job fails, the block's error comes out only after the job's other tasks stopped."""
from __future__ import annotations

import pytest

from sparkdl.spark_jobs import running_tasks, stopped_on_error


def test_an_error_leaves_the_block_only_after_the_failed_jobs_tasks_stopped(spark, tmp_path,
                                                                           failing_job_with_a_busy_sibling):
    df, marker = failing_job_with_a_busy_sibling
    sc = spark.sparkContext
    sc.setJobGroup("callers-group", "the caller's own group")
    try:
        with pytest.raises(Exception, match="boom on row 77"):
            with stopped_on_error(spark, "sparkdl-test") as tag:
                assert tag in sc.getJobTags()
                df.write.parquet(str(tmp_path / "out"))
        assert marker.exists()  # the sibling task ran to its end before the error came out
        assert running_tasks(sc, tag) == 0
        assert tag not in sc.getJobTags()
        assert sc.getLocalProperty("spark.jobGroup.id") == "callers-group"
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setLocalProperty("spark.job.description", None)


def test_a_block_without_error_keeps_no_tag(spark):
    with stopped_on_error(spark, "sparkdl-test") as tag:
        assert spark.range(5).count() == 5
        assert running_tasks(spark.sparkContext, tag) == 0
    assert tag not in spark.sparkContext.getJobTags()
