"""Petastorm conversion (cache keyed, reused, listed, cleaned), zero-copy from Delta, tf.data shards per rank."""
from __future__ import annotations

import datetime as dt
import os
import pickle
import subprocess
import sys
import uuid

import numpy as np
import pyarrow as pa
import pytest

from sparkdl import stack
from sparkdl.data import petastorm_io as pio
from sparkdl.data.dataset import iterate_batches, shard_plan, split, steps_per_epoch, tf_dataset
from sparkdl.data.preprocess import Preprocessor
from sparkdl.data.spec import Feature, FeatureSpec, Label
from sparkdl.errors import ConfigError
from sparkdl.lake.snapshot import Snapshot

WIDTH = 4


def _jobs(spark, fn):
    sc = spark.sparkContext
    group = f"jobs-{uuid.uuid4().hex}"
    sc.setJobGroup(group, "count jobs")
    try:
        result = fn()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    return result, len(sc.statusTracker().getJobIdsForGroup(group))


def _id_df(spark, n, partitions=2):
    """Rows whose features are [id, id, id, id] and label = id, so every row can be told apart."""
    return spark.range(n, numPartitions=partitions).selectExpr(
        f"array_repeat(cast(id as float), {WIDTH}) as features", "id as label")


def _ids(batches):
    out = []
    for x, y in batches:
        assert (x[:, 0] == y).all()
        out.append(y)
    return np.concatenate(out) if out else np.array([], np.int64)


@pytest.fixture
def parent(tmp_path):
    return (tmp_path / "cache").as_uri()


def test_cache_is_keyed_reused_listed_and_cleaned(spark, parent):
    df = _id_df(spark, 300)
    key = {"table": "file:///lake/t", "version": 3, "columns": ["features", "label"]}
    first, jobs1 = _jobs(spark, lambda: pio.convert(df, key, parent=parent))
    assert jobs1 >= 1 and first.num_rows == 300 and first.url.startswith(parent)
    folder = pio.local_path(first.url)
    mtime = os.stat(folder).st_mtime_ns
    files_before = sorted(os.listdir(folder))
    second, jobs2 = _jobs(spark, lambda: pio.convert(df, key, parent=parent))
    assert jobs2 == 0, "a second conversion of the same key must not run Spark"
    assert second == first and os.stat(folder).st_mtime_ns == mtime and sorted(os.listdir(folder)) == files_before
    # another key is another folder
    other = pio.convert(df, {**key, "version": 4}, parent=parent)
    assert other.url != first.url
    listed = pio.list_caches(parent)
    assert [c.url for c in listed] == [first.url, other.url]
    assert listed[0].key == key and listed[0].num_rows == 300 and listed[0].size_bytes > 0
    assert pio.cleanup(older_than=dt.timedelta(hours=1), parent=parent) == []
    assert pio.cleanup(key=key, parent=parent) == [first.url]
    assert not os.path.exists(folder)
    assert [c.url for c in pio.list_caches(parent)] == [other.url]
    assert pio.cleanup(parent=parent) == [other.url] and pio.list_caches(parent) == []


def test_cache_keyed_by_the_plan_is_reused(spark, parent):
    df = _id_df(spark, 120)
    data = pio.convert(df, parent=parent)                      # keyed by the plan hash
    assert "plan" in data.key
    again, jobs = _jobs(spark, lambda: pio.convert(_id_df(spark, 120), parent=parent))
    assert again.url == data.url and jobs == 0
    assert pio.convert(_id_df(spark, 121), parent=parent).url != data.url


@pytest.mark.skipif(not stack.petastorm_available(),
                    reason="Petastorm 0.13.1 imports only on the pinned stack (pyarrow 14, numpy 1.26); "
                           "test_stack checks the converter's error on the current stack")
def test_petastorms_own_reader_opens_the_cache(spark, parent):
    data = pio.convert(_id_df(spark, 120), parent=parent)
    with data.converter().make_tf_dataset(batch_size=50, num_epochs=1, workers_count=1) as ds:
        labels = np.concatenate([b.label.numpy() for b in ds])
    assert sorted(labels.tolist()) == list(range(120))


def test_temporary_cache_deleted_at_exit(tmp_path):
    folder = tmp_path / "cache" / "sparkdl-0123456789abcdef"
    folder.mkdir(parents=True)
    (folder / pio.MARKER).write_text("{}")
    code = ("from sparkdl.data import petastorm_io as p; "
            f"p._delete_at_exit({folder.as_uri()!r}); print('registered')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "registered" in out.stdout, out.stderr
    assert not folder.exists()


def test_temporary_conversion_is_registered_for_exit(spark, parent):
    data = pio.convert(_id_df(spark, 10), {"t": "temp"}, temporary=True, parent=parent)
    assert data.url in pio._AT_EXIT
    assert pio.list_caches(parent)[0].temporary


@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_are_disjoint_and_cover_each_epoch(spark, parent, shuffle):
    n, batch = 1001, 64
    data = pio.convert(_id_df(spark, n, partitions=3), {"shards": n}, parent=parent,
                       row_group_size_bytes=4096)          # several row groups per file
    assert len(data.row_groups) > 3
    per_epoch = {}
    for rank in (0, 1):
        batches = list(iterate_batches(data, rank, 2, batch, (WIDTH,), shuffle=shuffle, seed=5, epochs=2))
        assert len(batches) == 2 * steps_per_epoch(data, 2, batch)
        ids = _ids(batches)
        assert len(ids) == 2 * (n // 2)
        per_epoch[rank] = (ids[: n // 2], ids[n // 2:])
    for epoch in (0, 1):
        a, b = per_epoch[0][epoch], per_epoch[1][epoch]
        assert len(set(a)) == len(a) and len(set(b)) == len(b)
        assert not set(a) & set(b)
        assert len(set(a) | set(b)) == n - n % 2            # at most size-1 rows left out per epoch
    if shuffle:
        assert not np.array_equal(per_epoch[0][0], per_epoch[0][1])  # a new order every epoch


def test_a_resumed_epoch_reads_exactly_the_rows_an_uninterrupted_run_reads_after_the_checkpoint(spark, parent):
    """Resuming at (epoch 1, step 5) — what a step checkpoint records — reads the rest of epoch 1 and epoch 2 batch
    for batch as the uninterrupted run does: no row read twice, none skipped (the per-epoch order is a function of
    the seed and the epoch's number only)."""
    n, batch = 1001, 32
    data = pio.convert(_id_df(spark, n, partitions=3), {"resume": n}, parent=parent, row_group_size_bytes=4096)
    steps = steps_per_epoch(data, 2, batch)
    for rank in (0, 1):
        whole = list(iterate_batches(data, rank, 2, batch, (WIDTH,), shuffle=True, seed=9, epochs=3))
        resumed = tf_dataset(data, rank, 2, batch, (WIDTH,), shuffle=True, seed=9, epochs=2, first_epoch=1).skip(5)
        rest = [(x.numpy(), y.numpy()) for x, y in resumed]
        assert len(rest) == 2 * steps - 5
        np.testing.assert_array_equal(_ids(rest), _ids(whole[steps + 5:]))
        np.testing.assert_array_equal(_ids(whole[steps:steps + 5]).size, 5 * batch)  # what the checkpoint had read


def test_equal_steps_on_skewed_partitions(spark, parent):
    # partition 0 holds ids 0-996, partition 1 ids 997-999 (an RDD union keeps both partitions; Spark >= 4.3
    # may plan a DataFrame union of two one-partition scans as one partition)
    rows = spark.sparkContext.parallelize(range(997), 1).union(spark.sparkContext.parallelize(range(997, 1000), 1))
    df = spark.createDataFrame(rows.map(lambda i: ([float(i)] * WIDTH, i)), "features array<float>, label bigint")
    assert df.rdd.getNumPartitions() == 2
    data = pio.convert(df, {"skewed": True}, parent=parent)
    assert len(data.files) == 2
    sizes = sorted(os.path.getsize(pio.local_path(f)) for f in data.files)
    assert sizes[1] > 10 * sizes[0]
    counts = []
    seen = []
    for rank in (0, 1):
        ds = tf_dataset(data, rank, 2, 128, (WIDTH,), shuffle=True, seed=1, epochs=1)
        batches = [(x.numpy(), y.numpy()) for x, y in ds]
        counts.append(len(batches))
        seen.append(_ids(batches))
    assert counts[0] == counts[1] == steps_per_epoch(data, 2, 128) == 4
    assert len(seen[0]) == len(seen[1]) == 500 and not set(seen[0]) & set(seen[1])
    # what the Horovod workers receive: a picklable description, features-only datasets too
    shipped = pickle.loads(pickle.dumps(data))
    assert shipped == data
    only_x = [x.shape for x in tf_dataset(shipped, 1, 2, 128, (WIDTH,), with_label=False, epochs=2)]
    assert len(only_x) == 8 and only_x[0][1:] == (WIDTH,) and sum(s[0] for s in only_x) == 1000


def _delta_images(spark, lake, n=60):
    from deltalake import DeltaTable, write_deltalake

    rng = np.random.default_rng(3)
    images = rng.uniform(0, 1, (n, 8, 8, 1)).astype(np.float32)
    labels = np.arange(n) % 10
    table = pa.table({"features": pa.array(list(images.reshape(n, 64)), type=pa.list_(pa.float32())),
                      "label": pa.array(labels, type=pa.int64())})
    path = str(lake / "digits")
    write_deltalake(path, table.slice(0, n // 2))
    write_deltalake(path, table.slice(n // 2), mode="append")
    dtab = DeltaTable(path)
    files = tuple(dtab.file_uris())
    snap = Snapshot(table=dtab.table_uri.rstrip("/"), version=dtab.version(), files=files, num_files=len(files),
                    num_rows=n)
    df = spark.read.parquet(*files)
    return df, snap, images, labels


def test_zero_copy_matches_converter_path_and_keeps_image_shape(spark, lake, parent):
    df, snap, images, labels = _delta_images(spark, lake)
    spec = FeatureSpec((Feature("features", "vector", (8, 8, 1)),), Label("label", "multiclass", num_classes=10))
    model = Preprocessor(spec).fit(df)
    assert model.signature.input_shape == (8, 8, 1)
    zero = pio.to_petastorm(df, model, snap, parent=parent)
    assert zero.zero_copy and zero.url is None and set(zero.files) == set(snap.files) and zero.num_rows == 60
    copied = pio.to_petastorm(df, model, snap, zero_copy=False, parent=parent)
    assert not copied.zero_copy and copied.url.startswith(parent)
    assert copied.key["table"] == snap.table and copied.key["version"] == snap.version
    assert copied.key["preprocessing"] == model.fingerprint
    rows = {}
    for name, data in (("zero", zero), ("copy", copied)):
        xs, ys = [], []
        for x, y in tf_dataset(data, 0, 1, 16, model.signature.input_shape, shuffle=False):
            assert x.shape[1:] == (8, 8, 1) and x.dtype.name == "float32" and y.dtype.name == "int64"
            xs.append(x.numpy())
            ys.append(y.numpy())
        x, y = np.concatenate(xs), np.concatenate(ys)
        order = np.lexsort((x.reshape(len(x), -1)[:, 0], y))
        rows[name] = (x[order], y[order])
    np.testing.assert_array_equal(rows["zero"][0], rows["copy"][0])
    np.testing.assert_array_equal(rows["zero"][1], rows["copy"][1])
    order = np.lexsort((images.reshape(60, -1)[:, 0], labels))
    np.testing.assert_array_equal(rows["zero"][0], images[order])
    # a filtered DataFrame is not the snapshot: no zero-copy
    part = pio.to_petastorm(df.where("label < 5"), model, snap, parent=parent)
    assert not part.zero_copy and part.num_rows == 30


def test_split(spark):
    df = spark.range(400).selectExpr("id", "id % 4 = 0 as is_val", "if(id % 5 = 0, 'VAL', 'train') as part")
    train, val = split(df, 0.25, seed=1)
    a, b = {r.id for r in train.collect()}, {r.id for r in val.collect()}
    assert not a & b and len(a | b) == 400 and 50 < len(b) < 150
    train, val = split(df, "is_val")
    assert val.count() == 100 and train.count() == 300
    train, val = split(df, "part")
    assert val.count() == 80
    assert split(df, None) == (df, None)
    with pytest.raises(ConfigError, match="fraction"):
        split(df, 1.5)
    with pytest.raises(ConfigError, match="nope"):
        split(df, "nope")


def test_a_failed_conversion_leaves_no_folder_behind(spark, parent, tmp_path):
    from pyspark.sql import functions as F

    @F.udf("long")
    def explode_on_7(value):
        if value == 7:
            raise ValueError("boom on row 7")
        return value

    bad = _id_df(spark, 10).withColumn("label", explode_on_7("label"))
    with pytest.raises(Exception, match="boom on row 7"):
        pio.convert(bad, {"failing": 1}, parent=parent)
    cache_dir = tmp_path / "cache"
    assert not cache_dir.exists() or list(cache_dir.iterdir()) == []
    assert pio.convert(_id_df(spark, 10), {"failing": 1}, parent=parent).num_rows == 10  # the same key, written


def test_bad_arguments(spark, parent):
    data = pio.convert(_id_df(spark, 3), {"tiny": 1}, parent=parent)
    with pytest.raises(ConfigError, match="ranks"):
        steps_per_epoch(data, 4, 8)
    with pytest.raises(ConfigError, match="rank"):
        tf_dataset(data, 2, 2, 8, (WIDTH,))
    with pytest.raises(ConfigError, match="epochs"):
        list(iterate_batches(data, 0, 1, 8, (WIDTH,), epochs=0))
    with pytest.raises(Exception, match="values long"):
        list(iterate_batches(data, 0, 1, 8, (WIDTH + 1,)))
    assert shard_plan(data, 0, 1, 0, shuffle=False) == [(i, g, 0, n) for i, g, n in data.row_groups if n]


def test_rows_that_cannot_be_prepared_are_counted(spark, parent):
    df = spark.createDataFrame([(1.0, 0), (None, 1), (float("nan"), 0), (4.0, 1), (5.0, 3)], "x double, y int")
    spec = FeatureSpec((Feature("x"),), Label("y", "binary"))
    model = Preprocessor(spec).fit(df.where("y < 2"))
    data = pio.to_petastorm(df, model, parent=parent)
    assert data.num_rows == 2
    assert data.invalid_rows == {"feature 'x': null (no imputation)": 1, "feature 'x': NaN": 1,
                                 "label 'y': out of range [0, 2)": 1}
    again = pio.to_petastorm(df, model, parent=parent)        # from the cache marker
    assert again.url == data.url and again.invalid_rows == data.invalid_rows and again.num_invalid == 3
    ys = np.concatenate([y.numpy() for _, y in tf_dataset(data, 0, 1, 8, (1,), shuffle=False)])
    assert sorted(ys.tolist()) == [0, 1]


def test_zero_copy_through_lake_read_table(spark, lake, parent):
    from deltalake import write_deltalake

    import sparkdl.lake as lake_api
    n = 40
    rng = np.random.default_rng(0)
    table = pa.table({"features": pa.array(list(rng.uniform(size=(n, WIDTH)).astype(np.float32)),
                                           type=pa.list_(pa.float32())),
                      "label": pa.array(np.arange(n) % 3, type=pa.int64()), "other": np.arange(n)})
    write_deltalake(str(lake / "t"), table)
    df, snap = lake_api.read_table(str(lake / "t"), columns=["features", "label"])
    spec = FeatureSpec((Feature("features", "vector", (WIDTH,)),), Label("label", "multiclass", num_classes=3))
    model = Preprocessor(spec).fit(df)
    data = pio.to_petastorm(df, model, snap, parent=parent)
    assert data.zero_copy and data.num_rows == n and pio.list_caches(parent) == []
    ys = np.concatenate([y.numpy() for _, y in tf_dataset(data, 0, 1, 16, (WIDTH,), shuffle=False)])
    assert sorted(ys.tolist()) == sorted((np.arange(n) % 3).tolist())


def test_a_cache_is_published_by_its_marker_alone(spark, parent):
    """No directory rename (object stores have none): a conversion's data folder counts only once the marker,
    written last in one write, names it; an unnamed one (a conversion that died, or lost a race) is never read and
    is removed by cleanup once old."""
    import json
    import shutil
    import time

    data = pio.convert(_id_df(spark, 20), {"published": 1}, parent=parent)
    folder = pio.local_path(data.url)
    marker = os.path.join(folder, pio.MARKER)
    with open(marker) as f:
        published = json.load(f)["data_dir"]
    assert all(f.startswith(data.url + "/" + published + "/") for f in data.files)
    orphan = os.path.join(folder, pio.DATA_PREFIX + "died-before-its-marker")
    shutil.copytree(os.path.join(folder, published), orphan)
    assert pio.convert(_id_df(spark, 20), {"published": 1}, parent=parent).files == data.files
    assert pio.cleanup(older_than=dt.timedelta(hours=1), parent=parent) == []  # too new: may still be written
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    removed = pio.cleanup(older_than=dt.timedelta(hours=1), parent=parent)
    assert [r.rsplit("/", 1)[-1] for r in removed] == [os.path.basename(orphan)] and not os.path.exists(orphan)
    os.remove(marker)  # without its marker the folder is no cache
    assert pio.list_caches(parent) == [] and pio._load(data.url) is None
