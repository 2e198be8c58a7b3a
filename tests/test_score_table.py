"""sparkdl.score.score_table: real Spark (local[2]), real delta-rs tables, models in a real ModelStore."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_score_udf import as_matrix, expected_outputs


def _bad_digits(spark, digits_df):
    """The digits with 3 null pixel arrays, 2 of the wrong length and 4 with a NaN element (ids >= 10000)."""
    good = [float(i % 16) for i in range(64)]
    bad = ([(10000 + i, None, 1) for i in range(3)] + [(10100 + i, good[:32], 2) for i in range(2)]
           + [(10200 + i, good[:63] + [float("nan")], 3) for i in range(4)])
    return digits_df.unionByName(spark.createDataFrame(bad, "id long, pixels array<float>, digit int"))


@pytest.mark.both_sessions
def test_score_table_with_quarantine_and_lineage(spark, lake, digits_df, digits_mlp):
    from sparkdl.lake import history, read_table, write_table
    from sparkdl.score import score_table

    version, prep, model = digits_mlp
    source = str(lake / "digits")
    src = write_table(_bad_digits(spark, digits_df), source)
    report = score_table(version, source, str(lake / "scored"), output="struct")

    assert report.input_rows == 1797 + 9 == report.scored_rows + report.quarantined_rows
    assert (report.scored_rows, report.quarantined_rows) == (1797, 9)
    assert report.reasons == {"feature 'pixels': null (no imputation)": 3,
                              "feature 'pixels': wrong length (expected 64 values)": 2,
                              "feature 'pixels': null or NaN element": 4}
    assert report.source_version == src.version and report.model_version == version.version

    scored, snap = read_table(str(lake / "scored"))
    assert snap.version == report.target_version
    assert scored.columns == ["id", "struct", "_model", "_model_version", "_source_version", "_scored_at"]
    pdf = scored.orderBy("id").toPandas()
    assert set(pdf["_model"]) == {"digits_mlp"} and set(pdf["_model_version"]) == {version.version}
    assert set(pdf["_source_version"]) == {src.version} and pdf["_scored_at"].notna().all()
    # stored in UTC whatever the driver's local timezone: within a minute of now (Spark returns session-tz naive)
    now_utc = pd.Timestamp.now(tz="UTC").tz_localize(None)
    assert (abs(pdf["_scored_at"] - now_utc) < pd.Timedelta(minutes=1)).all()
    raw = digits_df.orderBy("id").toPandas()
    want, _ = expected_outputs(prep, model, raw, ["pixels"])
    np.testing.assert_allclose(as_matrix([s["probability"] for s in pdf["struct"]]), want, atol=1e-5)
    assert [s["label"] for s in pdf["struct"]] == list(want.argmax(axis=1))

    meta = history(str(lake / "scored"))[0]["metadata"]
    assert meta["model"] == "digits_mlp" and int(meta["model_version"]) == version.version
    assert int(meta["source_version"]) == src.version and int(meta["scored_rows"]) == 1797

    quarantine, _ = read_table(report.quarantine)
    assert report.quarantine.endswith("scored_quarantine")
    q = quarantine.toPandas()
    assert sorted(q["id"]) == [10000, 10001, 10002, 10100, 10101, 10200, 10201, 10202, 10203]
    assert dict(q["_reason"].value_counts()) == report.reasons
    assert "pixels" in q.columns and q.set_index("id").loc[10100, "pixels"].shape == (32,)


def test_score_table_overwrite_keeps_columns_and_source_version(spark, lake, digits_df, digits_mlp):
    from sparkdl.lake import read_table, write_table
    from sparkdl.score import score_table

    version, _, _ = digits_mlp
    source = str(lake / "digits")
    v0 = write_table(digits_df.where("id < 100"), source).version
    write_table(digits_df.where("id >= 100 AND id < 150"), source)
    target = str(lake / "out")
    first = score_table(version, source, target, keep_columns=["id", "digit"], source_version=v0)
    assert (first.input_rows, first.quarantined_rows, first.quarantine) == (100, 0, None)
    second = score_table(version, source, target, mode="overwrite", keep_columns=["id"], output_col="digit_hat")
    df, snap = read_table(target)
    assert snap.version == second.target_version == first.target_version + 1
    assert df.columns == ["id", "digit_hat", "_model", "_model_version", "_source_version", "_scored_at"]
    assert df.count() == 150 and {r[0] for r in df.select("_source_version").distinct().collect()} == {v0 + 1}


def test_nothing_scored_commits_no_empty_target_version(spark, lake, digits_df, digits_mlp):
    from pyspark.sql import functions as F

    from sparkdl.lake import exists, latest_version, write_table
    from sparkdl.score import score_table

    version, _, _ = digits_mlp
    target = str(lake / "out")
    first = score_table(version, write_table(digits_df.where("id < 10"), str(lake / "some")).table, target,
                        keep_columns=["id"])
    assert first.scored_rows == 10
    # every row quarantined: the quarantine gets them, the target no new version
    all_bad = write_table(digits_df.where("id < 5").withColumn("pixels", F.slice("pixels", 1, 3)),
                          str(lake / "bad")).table
    report = score_table(version, all_bad, target, keep_columns=["id"])
    assert (report.input_rows, report.scored_rows, report.quarantined_rows) == (5, 0, 5)
    assert report.target_version == first.target_version == latest_version(target)
    assert report.quarantine_version is not None and exists(target + "_quarantine")
    # an empty source: a report of zeros, no table created
    empty = write_table(digits_df.where("id < 0"), str(lake / "empty")).table
    nothing = score_table(version, empty, str(lake / "never"), keep_columns=["id"])
    assert (nothing.input_rows, nothing.scored_rows, nothing.target_version) == (0, 0, None)
    assert not exists(str(lake / "never")) and not exists(str(lake / "never") + "_quarantine")


def test_bad_input_is_refused_before_any_job(spark, lake, digits_df, digits_mlp):
    from sparkdl.errors import ConfigError, TableError, ValidationError
    from sparkdl.lake import write_table
    from sparkdl.score import score_table

    version, _, _ = digits_mlp
    source = str(lake / "wrong")
    write_table(digits_df.selectExpr("id", "digit AS pixels"), source)
    with pytest.raises(ValidationError, match=r"pixels: wrong type \(expected array<numeric> of 64 values"):
        score_table(version, source, str(lake / "t"))
    with pytest.raises(ValidationError, match="nope: missing column"):
        score_table(version, source, str(lake / "t"), keep_columns=["nope"])
    with pytest.raises(ConfigError, match="mode must be"):
        score_table(version, source, str(lake / "t"), mode="merge")
    with pytest.raises(TableError):
        score_table(version, str(lake / "missing"), str(lake / "t"))

    # appending to a target whose schema does not fit the scores: refused from the schemas, before scoring
    from sparkdl.errors import SchemaMismatchError
    from sparkdl.lake import latest_version

    good_source, target = str(lake / "good"), str(lake / "other_target")
    write_table(digits_df.limit(20), good_source)
    write_table(spark.createDataFrame([(1, "x")], "id long, prediction string"), target)
    sc = spark.sparkContext
    sc.setJobGroup("append-mismatch", "no scoring job may start")
    try:
        with pytest.raises(SchemaMismatchError, match=r"prediction: table string, data int"):
            score_table(version, good_source, target, keep_columns=["id"])
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    assert sc.statusTracker().getJobIdsForGroup("append-mismatch") == []
    assert latest_version(target) == 0


def _poison_model(store, spark):
    """A 4-feature classifier that raises on any prepared value >= 1000 (a CategoryEncoding guard)."""
    import tensorflow as tf

    from sparkdl.data.preprocess import Preprocessor
    from sparkdl.data.spec import FeatureSpec

    spec = FeatureSpec.from_dict({"features": [{"name": "x", "kind": "vector", "shape": [4]}],
                                  "label": {"name": "y", "task": "multiclass", "num_classes": 3}})
    train = spark.createDataFrame([(i, [float(i % 7)] * 4, i % 3) for i in range(30)], "id long, x array<float>, y int")
    prep = Preprocessor(spec).fit(train)
    inp = tf.keras.Input((4,), name="input")
    head = tf.keras.layers.Dense(3, activation="softmax", name="output")(inp)
    guard = tf.keras.layers.CategoryEncoding(num_tokens=1000, output_mode="count")(tf.keras.layers.ReLU()(inp))
    out = tf.keras.layers.Add()([head, tf.keras.layers.Dense(3, use_bias=False, kernel_initializer="zeros")(guard)])
    metadata = {"preprocessing": prep.to_dict(), "signature": prep.signature.to_dict(), "model_name": "poison"}
    return store.save("poison", tf.keras.Model(inp, out), metadata)


def test_job_failing_halfway_leaves_target_unchanged(spark, lake, score_store):
    from sparkdl.lake import exists, latest_version, read_table, write_table
    from sparkdl.score import score_table
    from sparkdl.score.table import ScoringError

    version = _poison_model(score_store, spark)
    clean, poisoned = str(lake / "clean"), str(lake / "poisoned")
    rows = [(i, [float(i % 5)] * 4) for i in range(400)]
    write_table(spark.createDataFrame(rows, "id long, x array<float>"), clean)
    write_table(spark.createDataFrame(rows[:399] + [(399, [1.0, 2.0, 3.0, 5000.0])], "id long, x array<float>")
                .repartition(4), poisoned)
    target = str(lake / "scores")
    ok = score_table(version, clean, target)
    assert ok.scored_rows == 400
    before = latest_version(target)
    with pytest.raises(ScoringError, match=r"nothing was written to .*scores \(still at version 0\)"):
        score_table(version, poisoned, target)
    assert latest_version(target) == before
    assert read_table(target)[0].count() == 400
    assert not exists(target + "_quarantine")


def test_a_rerun_after_a_partial_outcome_writes_only_what_is_missing(spark, lake, digits_df, digits_mlp):
    """The target is committed, then the quarantine's commit fails (its table holds `pixels` as text): the re-run
    of the same (model version, source version) writes the quarantine only, never the target's rows twice, and its
    report says so."""
    import shutil

    from sparkdl.errors import TableError
    from sparkdl.lake import read_table, write_table
    from sparkdl.score import score_table

    version, _, _ = digits_mlp
    source, target = str(lake / "partial_src"), str(lake / "partial_scored")
    write_table(_bad_digits(spark, digits_df.where("id < 100")), source)
    write_table(spark.createDataFrame([(1, "not an array")], "id long, pixels string"), target + "_quarantine")
    with pytest.raises(TableError):
        score_table(version, source, target)
    assert read_table(target)[0].count() == 100  # the target's commit landed before the quarantine's failed

    shutil.rmtree(lake / "partial_scored_quarantine")
    report = score_table(version, source, target)
    assert report.committed == {"target": "already", "quarantine": "written"}
    assert read_table(target)[0].count() == 100 and read_table(report.quarantine)[0].count() == 9
    again = score_table(version, source, target)
    assert again.committed == {"target": "already", "quarantine": "already"}
    assert again.target_version == report.target_version and read_table(target)[0].count() == 100


def test_two_identical_runs_at_once_write_the_rows_once(spark, lake, digits_df, digits_mlp):
    """The same (model version, source version) scored by two runs at the same time: the target has the rows once,
    and one report says "written", the other "already"."""
    import threading

    from sparkdl.lake import read_table, write_table
    from sparkdl.score import score_table

    version, _, _ = digits_mlp
    source, target = str(lake / "twice_src"), str(lake / "twice_scored")
    write_table(digits_df.where("id < 200"), source)
    reports = []
    runs = [threading.Thread(target=lambda: reports.append(score_table(version, source, target)))
            for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(300)
    assert sorted(r.committed["target"] for r in reports) == ["already", "written"]
    assert read_table(target)[0].count() == 200
