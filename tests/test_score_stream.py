"""sparkdl.score.score_stream: a real Structured Streaming query over real delta-rs tables, stopped and restarted."""
from __future__ import annotations

import pytest


def _run(query, timeout: int = 240) -> None:
    finished = query.awaitTermination(timeout)
    if not finished:
        query.stop()  # never leave a query running in the shared session
    assert finished, "the availableNow query did not finish in time"
    if query.exception() is not None:
        raise query.exception()


def _ids(table):
    from sparkdl.lake import read_table

    return sorted(r.id for r in read_table(table)[0].select("id").collect())


@pytest.mark.slow
@pytest.mark.both_sessions
def test_stream_restart_and_crash_between_commit_and_checkpoint(spark, lake, digits_df, digits_mlp):
    from sparkdl.lake import history, read_table, write_table
    from sparkdl.score import score_stream, stream_reports

    version, _, _ = digits_mlp
    source, target, checkpoint = str(lake / "src"), str(lake / "dst"), str(lake / "ckpt")
    write_table(digits_df.where("id < 100"), source)

    # 1. first run: the snapshot (100 rows)
    _run(score_stream(version, source, target, checkpoint, trigger="availableNow", keep_columns=["id"]))
    assert _ids(target) == list(range(100))

    # 2. two appends (one with bad rows), then a run that crashes after its commits, before Spark's checkpoint
    write_table(digits_df.where("id >= 100 AND id < 150"), source)
    bad = spark.createDataFrame([(5000 + i, None, 0) for i in range(3)], "id long, pixels array<float>, digit int")
    write_table(digits_df.where("id >= 150 AND id < 180").unionByName(bad), source)
    def crash(report):  # runs where foreachBatch runs (under Spark Connect: the server's Python process)
        raise RuntimeError("simulated crash after the commit, before the checkpoint")

    query = score_stream(version, source, target, checkpoint, trigger="availableNow", keep_columns=["id"],
                         on_batch=crash)
    try:
        with pytest.raises(Exception, match="simulated crash"):
            query.awaitTermination(240)
    finally:
        query.stop()
    seen = stream_reports(checkpoint)
    assert len(seen) == 2 and seen[-1].scored_rows == 80 and seen[-1].quarantined_rows == 3
    assert _ids(target) == list(range(180))  # the batch was committed ...
    commits_before = len(history(target))

    # 3. restart on the same checkpoint: Spark re-runs the uncommitted batch with the same id; nothing is duplicated
    _run(score_stream(version, source, target, checkpoint, trigger="availableNow", keep_columns=["id"]))
    assert len(history(target)) == commits_before
    assert _ids(target) == list(range(180))
    quarantine = read_table(target + "_quarantine")[0].toPandas()
    assert sorted(quarantine["id"]) == [5000, 5001, 5002]
    assert set(quarantine["_reason"]) == {"feature 'pixels': null (no imputation)"}

    # 4. a later append is picked up exactly once, with the source version that added it
    v3 = write_table(digits_df.where("id >= 180 AND id < 200"), source).version
    _run(score_stream(version, source, target, checkpoint, trigger="availableNow", keep_columns=["id"]))
    assert _ids(target) == list(range(200))
    scored = read_table(target)[0]
    assert {r[0] for r in scored.where("id >= 180").select("_source_version").distinct().collect()} == {v3}
    assert scored.columns == ["id", "prediction", "_model", "_model_version", "_source_version", "_scored_at"]

    # 5. a micro-batch of bad rows only: quarantined, and no (empty) new version of the target
    target_version = len(history(target)) - 1
    only_bad = spark.createDataFrame([(6000 + i, None, 0) for i in range(2)], "id long, pixels array<float>, digit int")
    write_table(only_bad, source)
    before = len(stream_reports(checkpoint))
    _run(score_stream(version, source, target, checkpoint, trigger="availableNow", keep_columns=["id"]))
    reports = stream_reports(checkpoint)[before:]
    assert [(r.scored_rows, r.quarantined_rows, r.target_version) for r in reports] == [(0, 2, None)]
    assert len(history(target)) - 1 == target_version
    assert sorted(read_table(target + "_quarantine")[0].toPandas()["id"]) == [5000, 5001, 5002, 6000, 6001]


def test_stream_refuses_bad_setup(spark, lake, digits_df, digits_mlp):
    from sparkdl.errors import ConfigError, TableError
    from sparkdl.lake import write_table
    from sparkdl.score import score_stream

    version, _, _ = digits_mlp
    with pytest.raises(TableError, match="no Delta table"):
        score_stream(version, str(lake / "none"), str(lake / "t"), str(lake / "c"))
    write_table(digits_df.where("id < 10"), str(lake / "s"))
    with pytest.raises(ConfigError, match="trigger"):
        score_stream(version, str(lake / "s"), str(lake / "t"), str(lake / "c"), trigger=5)


@pytest.mark.slow
@pytest.mark.both_sessions
def test_stream_from_a_partitioned_table_written_by_sparkdl(spark, lake, digits_df, digits_mlp):
    """sparkdl's delta-rs writes put a commit's files in a staging folder: the stream takes each file's partition
    values from the log (as the batch reader does), never from the folder's name."""
    from pyspark.sql import functions as F

    from sparkdl.lake import read_table, write_table
    from sparkdl.score import score_stream

    version, _, _ = digits_mlp
    source, target, checkpoint = str(lake / "parts"), str(lake / "parts_scored"), str(lake / "parts_ckpt")
    region = F.when(F.col("id") % 2 == 0, "north").otherwise("south")
    write_table(digits_df.where("id < 40").withColumn("region", region), source, partition_by=["region"])
    _run(score_stream(version, source, target, checkpoint, trigger="availableNow", keep_columns=["id", "region"]))
    write_table(digits_df.where("id >= 40 AND id < 60").withColumn("region", region), source, mode="append")
    _run(score_stream(version, source, target, checkpoint, trigger="availableNow", keep_columns=["id", "region"]))
    scored = read_table(target)[0].orderBy("id").toPandas()
    assert list(scored["id"]) == list(range(60))
    assert list(scored["region"]) == ["north" if i % 2 == 0 else "south" for i in range(60)]
