"""sparkdl.train.prepared: what a fit does to the data before its first step, counted in Spark's own stage records
(classic session: the driver's status store), on a real Delta table."""
from __future__ import annotations

import numpy as np
import pytest
from test_train_estimator import BREAST_CANCER, cancer_spec

from sparkdl.train import KerasEstimator


def _stages(spark) -> list:
    """(stage id, input records, name) of every stage Spark has recorded in this session."""
    sc = spark.sparkContext
    store = sc._jsc.sc().statusStore()
    stages = store.stageList(None, False, False, sc._gateway.new_array(sc._gateway.jvm.double, 0), None).iterator()
    out = []
    while stages.hasNext():
        stage = stages.next()
        out.append((stage.stageId(), stage.inputRecords(), stage.name()))
    return out


def _full_scans(spark, after: int, rows: int) -> list[str]:
    """The stages after stage `after` that read every row of the table (a pass over the data)."""
    return [name for stage_id, records, name in _stages(spark) if stage_id > after and records >= rows]


def test_before_training_the_data_is_read_twice_and_once_when_the_cache_exists(spark, demo_tables):
    from sparkdl.data.dataset import validation_rows
    from sparkdl.lake import read_table

    table = demo_tables["breast_cancer_train"]
    df = read_table(table)[0]
    rows = df.count()
    est = KerasEstimator(model="mlp", feature_spec=cancer_spec(), validation=0.25, seed=8123)  # a split of its own
    before = max(stage_id for stage_id, _, _ in _stages(spark))
    prepared = est.prepare(table)
    scans = _full_scans(spark, before, rows)
    assert len(scans) == 2, scans  # one aggregation (validation + statistics), one write (both caches)

    train, val = prepared.train_data, prepared.val_data
    assert train.url == val.url and train.num_rows + val.num_rows == rows and 0.15 * rows < val.num_rows < 0.35 * rows
    is_val = validation_rows(df, 0.25, 8123)
    training_rows = df.where(~is_val).toPandas()
    assert len(training_rows) == train.num_rows
    stats = prepared.prep.stats["features"][BREAST_CANCER[0]]  # fitted on the training rows only
    assert stats["mean"] == pytest.approx(float(np.mean(training_rows[BREAST_CANCER[0]])), rel=1e-9)
    assert stats["count"] == train.num_rows

    before = max(stage_id for stage_id, _, _ in _stages(spark))
    again = est.prepare(table)
    assert len(_full_scans(spark, before, rows)) == 1  # validation + statistics; the cache is found
    assert again.train_data.files == train.files and again.val_data.files == val.files


def test_a_fit_of_prepared_data_refuses_another_split(spark, demo_tables):
    from sparkdl.errors import ConfigError

    prepared = KerasEstimator(feature_spec=cancer_spec(), validation=0.25, seed=8123).prepare(
        demo_tables["breast_cancer_train"])
    with pytest.raises(ConfigError, match=r"other \['seed'\].*seed=8123"):
        KerasEstimator(feature_spec=cancer_spec(), validation=0.25, seed=1, num_proc=1).fit(prepared)
