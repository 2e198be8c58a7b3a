"""sparkdl.spark_jobs: when a job fails, the block's error comes out only after the job's other tasks stopped."""
from __future__ import annotations

import time

import pytest
from pyspark.sql import functions as F

from sparkdl.spark_jobs import running_tasks, stopped_on_error


def _failing_job_with_a_slow_sibling(spark, marker_dir):
    """Four partitions on local[2]: partitions 2 and 3 run together; 3 fails at once, 2 is still busy for 1.5 s and
    then leaves a marker file."""
    marker_path = marker_dir / "sibling-finished"
    marker = str(marker_path)

    @F.udf("long")
    def slow_or_failing(value):
        if value == 77:
            raise ValueError("boom on row 77")
        if value == 50:
            time.sleep(1.5)
            with open(marker, "w") as fh:
                fh.write("done")
        return value

    return spark.range(0, 100, numPartitions=4).select(slow_or_failing("id").alias("v")), marker_path


def test_an_error_leaves_the_block_only_after_the_failed_jobs_tasks_stopped(spark, tmp_path):
    df, marker = _failing_job_with_a_slow_sibling(spark, tmp_path)
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
