"""sparkdl.lake on real Spark (local[2]) and real delta-rs tables.

Every table written here is also read back by delta-rs itself (`rs_rows`) and compared with what was written.
"""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import threading
import time
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder, write_deltalake
from pyspark.sql import functions as F
from pyspark.sql import types as T

import sparkdl.lake as lk
from sparkdl.errors import SchemaMismatchError, TableError, UnsupportedTableFeature

UTC = dt.timezone.utc

ALL_TYPES = T.StructType([
    T.StructField("id", T.LongType()),
    T.StructField("i", T.IntegerType()),
    T.StructField("small", T.ShortType()),
    T.StructField("tiny", T.ByteType()),
    T.StructField("f", T.FloatType()),
    T.StructField("d", T.DoubleType()),
    T.StructField("flag", T.BooleanType()),
    T.StructField("name", T.StringType()),
    T.StructField("price", T.DecimalType(12, 3)),
    T.StructField("day", T.DateType()),
    T.StructField("ts", T.TimestampType()),
    T.StructField("vec", T.ArrayType(T.FloatType())),
    T.StructField("dvec", T.ArrayType(T.DoubleType())),
])


def typed_rows(n: int, start: int = 0) -> list[tuple]:
    rows = []
    for k in range(start, start + n):
        rows.append((
            k, k * 7 - 3, k % 300, k % 100 - 50, k / 4.0, k / 3.0, k % 2 == 0,
            None if k % 5 == 3 else f"name-{k} é:/%",
            Decimal(k * 1001) / Decimal(1000), dt.date(2023, 1, 1) + dt.timedelta(days=k),
            dt.datetime(2024, 3, 1, 12, 30, tzinfo=UTC) + dt.timedelta(seconds=k, microseconds=k * 37),
            [float(k), 0.5, -1.25], None if k % 4 == 1 else [k / 3.0, 1e-300],
        ))
    return rows


def norm(value):
    """Comparable form: timestamps as aware UTC, lists recursively."""
    if isinstance(value, dt.datetime):
        return value.astimezone(UTC)  # naive (from Spark's collect) means this process's local time
    if isinstance(value, list):
        return [norm(v) for v in value]
    return value


def canon(rows: list[dict], key: str = "id") -> list[dict]:
    return sorted(({k: norm(v) for k, v in r.items()} for r in rows), key=lambda r: r[key])


def spark_rows(df) -> list[dict]:
    return canon([r.asDict(recursive=True) for r in df.collect()])


def rs_rows(path, key: str = "id") -> list[dict]:
    """The independent reader: delta-rs's own scan of the latest version."""
    table = DeltaTable(str(path))
    if not table.metadata().partition_columns:
        return canon(table.to_pyarrow_table().to_pylist(), key)
    # deltalake 1.6's to_pyarrow_table() fails on partitioned tables with pyarrow 14 (it calls pa.field() on an
    # Arrow capsule, a pyarrow >= 15 API), so partitioned tables go through delta-rs's own DataFusion scan; its
    # string views (which pyarrow 14 cannot import) are cast to plain strings first.
    from arro3.core import DataType, Table

    result = QueryBuilder().register("t", table).execute("SELECT * FROM t").read_all()
    columns = {}
    for name in result.column_names:
        column = result.column(name)
        columns[name] = column.cast(DataType.string()) if column.type == DataType.string_view() else column
    return canon(pa.table(Table.from_pydict(columns)).to_pylist(), key)


def staged_dirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith("sparkdl-write-")) if path.exists() else []


# -- round trips -------------------------------------------------------------------------------------------------

@pytest.mark.both_sessions
def test_round_trip_all_types_matches_spark_and_delta_rs(spark, lake):
    table = lake / "types"
    df = spark.createDataFrame(typed_rows(40), ALL_TYPES).repartition(3)
    snap = lk.write_table(df, table, mode="error", commit_metadata={"run": "r-1", "rows": 40})

    assert snap.table == table.resolve().as_uri() and snap.table.startswith("file:///")
    assert snap.version == 0 and snap.num_rows == 40 and snap.num_files == len(snap.files) >= 1
    assert snap.schema.startswith("id BIGINT, i INT, small SMALLINT, tiny TINYINT, f FLOAT, d DOUBLE")
    assert "price DECIMAL(12,3)" in snap.schema and "vec ARRAY<FLOAT>" in snap.schema
    assert "dvec ARRAY<DOUBLE>" in snap.schema and snap.backend == "delta-rs"
    assert all(Path(f.removeprefix("file://")).is_file() for f in snap.files)

    back, read_snap = lk.read_table(table)
    assert read_snap == snap
    assert [(f.name, f.dataType) for f in back.schema.fields] == [(f.name, f.dataType) for f in ALL_TYPES.fields]
    expected = spark_rows(df)
    assert spark_rows(back) == expected
    assert rs_rows(table) == expected
    decimals = {r["id"]: r["price"] for r in expected}
    assert decimals[7] == Decimal("7.007")  # decimals kept exactly

    # per-file stats in the add actions: row counts always, min/max for ids (others can skip files on them)
    actions = pa.table(DeltaTable(str(table)).get_add_actions(flatten=True)).to_pylist()
    assert sum(a["num_records"] for a in actions) == 40
    assert min(a["min.id"] for a in actions) == 0 and max(a["max.id"] for a in actions) == 39
    assert sum(a["null_count.name"] for a in actions) == sum(1 for r in expected if r["name"] is None)


def test_columns_subset_empty_table_and_uri_forms(spark, lake, monkeypatch):
    folder = lake / "with space"
    folder.mkdir()
    monkeypatch.chdir(folder)
    empty = spark.createDataFrame([], "id LONG, v ARRAY<FLOAT>")
    snap = lk.write_table(empty, "rel_table")  # plain relative path
    assert snap.table == (folder / "rel_table").resolve().as_uri() and snap.num_rows == 0
    uri = (folder / "rel_table").resolve().as_uri()
    assert lk.exists(uri) and lk.exists("rel_table") and lk.exists(f"file:{folder}/rel_table")
    assert not lk.exists(folder / "nothing")
    df, _ = lk.read_table(uri)
    assert df.count() == 0 and df.schema == empty.schema
    lk.write_table(spark.createDataFrame([(1, [0.5])], "id LONG, v ARRAY<FLOAT>"), uri)
    only, snap1 = lk.read_table(f"file://{folder}/rel_table", columns=["V"])
    assert only.columns == ["v"] and only.collect()[0].v == [0.5] and snap1.version == 1
    assert lk.latest_version("rel_table") == 1
    assert lk.snapshot("rel_table", version=0).num_rows == 0
    with pytest.raises(TableError, match="no column"):
        lk.read_table(uri, columns=["missing"])


# -- versions ----------------------------------------------------------------------------------------------------

@pytest.mark.both_sessions
def test_time_travel_by_version_and_timestamp_and_history(spark, lake):
    table = lake / "tt"
    s0 = lk.write_table(spark.createDataFrame([(i, "a") for i in range(3)], "id LONG, tag STRING"), table)
    time.sleep(0.05)
    s1 = lk.write_table(spark.createDataFrame([(i, "b") for i in range(3, 5)], "id LONG, tag STRING"), table,
                          commit_metadata={"source": "unit", "params": {"lr": 0.1}})
    time.sleep(0.05)
    s2 = lk.write_table(spark.createDataFrame([(9, "c")], "id LONG, tag STRING"), table, mode="overwrite")
    assert (s0.version, s1.version, s2.version) == (0, 1, 2)
    assert lk.latest_version(table) == 2

    assert sorted(r.id for r in lk.read_table(table, version=0)[0].collect()) == [0, 1, 2]
    assert sorted(r.id for r in lk.read_table(table, version=1)[0].collect()) == [0, 1, 2, 3, 4]
    assert [r.id for r in lk.read_table(table)[0].collect()] == [9]

    at_v1 = dt.datetime.fromisoformat(s1.timestamp)
    df, snap = lk.read_table(table, timestamp=at_v1 + dt.timedelta(milliseconds=1))
    assert snap.version == 1 and df.count() == 5
    assert lk.snapshot(table, timestamp=s1.timestamp).version == 1
    assert lk.snapshot(table, timestamp=dt.datetime(2999, 1, 1)).version == 2

    with pytest.raises(TableError, match="before the first"):
        lk.read_table(table, timestamp="2000-01-01T00:00:00Z")
    with pytest.raises(TableError, match="version 7 does not exist; the latest version is 2"):
        lk.read_table(table, version=7)
    with pytest.raises(TableError, match="not both"):
        lk.snapshot(table, version=1, timestamp=s1.timestamp)

    entries = lk.history(table)
    assert [e["version"] for e in entries] == [2, 1, 0]
    assert entries[1]["metadata"] == {"source": "unit", "params": {"lr": 0.1}}
    assert entries[1]["commit_info"]["source"] == "unit"
    assert entries[0]["metadata"] == {} and entries[0]["write_id"]
    assert entries[1]["timestamp"] == s1.timestamp


# -- partitions --------------------------------------------------------------------------------------------------

@pytest.mark.both_sessions
def test_partitioned_table_restores_partition_types(spark, lake):
    table = lake / "parts"
    schema = "id LONG, x FLOAT, region STRING, day DATE, hour TIMESTAMP, bucket INT"
    rows = []
    for k in range(24):
        region = ["eu west", "us:east/1%", None][k % 3]
        rows.append((k, k / 2.0, region, dt.date(2024, 1, 1 + k % 2),
                     dt.datetime(2024, 1, 1, k % 4, 0, 0, 250000 * (k % 2), tzinfo=UTC), k % 3))
    df = spark.createDataFrame(rows, schema)
    snap = lk.write_table(df, table, partition_by=["region", "day", "hour", "bucket"])
    assert snap.partition_columns == ("region", "day", "hour", "bucket") and snap.num_rows == 24

    back, read_snap = lk.read_table(table)
    assert read_snap.version == 0
    assert back.schema == spark.createDataFrame([], schema).schema  # types and nullability from the log
    expected = spark_rows(df)
    assert spark_rows(back) == expected
    assert rs_rows(table) == expected

    log = pa.table(DeltaTable(str(table)).get_add_actions(flatten=True)).to_pylist()
    assert {a["partition.region"] for a in log} == {"eu west", "us:east/1%", None}
    assert {a["partition.hour"] for a in log} == {dt.datetime(2024, 1, 1, h, 0, 0, u, tzinfo=UTC)
                                                  for h in range(4) for u in (0, 250000) if (h % 2) * 250000 == u}

    filtered = back.where((F.col("bucket") == 1) & (F.col("day") == dt.date(2024, 1, 2)))
    assert sorted(r.id for r in filtered.collect()) == sorted(r["id"] for r in expected
                                                              if r["bucket"] == 1 and r["day"] == dt.date(2024, 1, 2))
    # appends must keep the partitioning
    with pytest.raises(SchemaMismatchError, match="partitioned by"):
        lk.write_table(df, table, partition_by=["day"])
    lk.write_table(df.limit(3), table)
    assert lk.read_table(table)[0].count() == 27 and len(rs_rows(table)) == 27


def test_timestamp_partitions_are_exact_in_any_session_time_zone(spark, lake):
    table = lake / "zones"
    rows = [(1, dt.datetime(2024, 6, 1, 23, 30, tzinfo=UTC), dt.datetime(2024, 6, 1, 23, 30)),
            (2, dt.datetime(2024, 12, 31, 22, 0, 0, 5, tzinfo=UTC), dt.datetime(2000, 1, 1))]
    schema = "id LONG, at TIMESTAMP, local TIMESTAMP_NTZ"
    previous = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        df = spark.createDataFrame(rows, schema)
        lk.write_table(df, table, partition_by=["at", "local"])
        log = pa.table(DeltaTable(str(table)).get_add_actions(flatten=True)).to_pylist()
        assert sorted(a["partition.at"] for a in log) == [r[1] for r in rows]  # stored in UTC
        assert sorted(a["partition.local"] for a in log) == sorted(r[2] for r in rows)
        assert spark_rows(lk.read_table(table)[0]) == spark_rows(df)
    finally:
        spark.conf.set("spark.sql.session.timeZone", previous)
    assert spark_rows(lk.read_table(table)[0]) == spark_rows(spark.createDataFrame(rows, schema))
    assert [(r["id"], r["at"], r["local"]) for r in rs_rows(table)] == [(r[0], norm(r[1]), norm(r[2])) for r in rows]


def test_only_the_snapshot_files_are_read(spark, lake):
    table = lake / "stale"
    lk.write_table(spark.createDataFrame([(1,), (2,)], "id LONG"), table)
    lk.write_table(spark.createDataFrame([(3,)], "id LONG"), table, mode="overwrite")
    # a stray Parquet file in the table folder (e.g. a crashed writer's) is not part of any version
    spark.createDataFrame([(99,)], "id LONG").write.parquet(str(table / "stray"))
    assert [r.id for r in lk.read_table(table)[0].collect()] == [3]
    assert sorted(r.id for r in lk.read_table(table, version=0)[0].collect()) == [1, 2]
    assert [r["id"] for r in rs_rows(table)] == [3]


# -- overwrite and schema evolution ------------------------------------------------------------------------------

def test_overwrite_merge_and_schema_replacement(spark, lake):
    table = lake / "evolve"
    lk.write_table(spark.createDataFrame([(1, 1.0), (2, 2.0)], "id LONG, x DOUBLE"), table)
    old_files = set(lk.snapshot(table).files)

    snap = lk.write_table(spark.createDataFrame([(3, 3.0)], "id LONG, x DOUBLE"), table, mode="overwrite")
    assert not old_files & set(snap.files) and snap.num_rows == 1
    assert rs_rows(table) == [{"id": 3, "x": 3.0}]

    # merge: a new nullable column; int data widened into the long id column
    merged = lk.write_table(spark.createDataFrame([(4, 4.0, "new")], "id INT, x DOUBLE, note STRING"), table,
                              schema_mode="merge", commit_metadata={"step": "merge"})
    assert merged.schema == "id BIGINT, x DOUBLE, note STRING"
    expected = [{"id": 3, "x": 3.0, "note": None}, {"id": 4, "x": 4.0, "note": "new"}]
    assert spark_rows(lk.read_table(table)[0]) == expected
    assert rs_rows(table) == expected
    assert lk.history(table)[0]["metadata"] == {"step": "merge"}

    # a table column missing from the data is written as null
    lk.write_table(spark.createDataFrame([(5,)], "id LONG"), table)
    assert {"id": 5, "x": None, "note": None} in spark_rows(lk.read_table(table)[0])

    # overwriting with another schema needs schema_mode="overwrite"
    other = spark.createDataFrame([("a", 1), ("b", 2)], "key STRING, n INT")
    with pytest.raises(SchemaMismatchError, match="key string"):
        lk.write_table(other, table, mode="overwrite")
    before = lk.latest_version(table)
    replaced = lk.write_table(other, table, mode="overwrite", schema_mode="overwrite", partition_by=["key"])
    assert replaced.version == before + 1
    assert replaced.schema == "key STRING, n INT" and replaced.partition_columns == ("key",)
    assert spark_rows(lk.read_table(table)[0].withColumnRenamed("key", "id")) == \
        [{"id": "a", "n": 1}, {"id": "b", "n": 2}]
    assert rs_rows(table, "key") == [{"key": "a", "n": 1}, {"key": "b", "n": 2}]
    assert lk.read_table(table, version=before)[0].count() == 3  # the old version is still readable


@pytest.mark.both_sessions
def test_modes_error_and_ignore(spark, lake):
    table = lake / "modes"
    df = spark.createDataFrame([(1,)], "id LONG")
    lk.write_table(df, table, mode="error")
    with pytest.raises(TableError, match="already exists"):
        lk.write_table(df, table, mode="error")
    assert lk.write_table(df, table, mode="ignore").version == 0
    assert lk.read_table(table)[0].count() == 1


# -- bad input -----------------------------------------------------------------------------------------------------

def test_bad_input_raises_before_any_write(spark, lake):
    table = lake / "strict"
    lk.write_table(spark.createDataFrame([(1, [1.0])], "id LONG, v ARRAY<FLOAT>"), table)

    with pytest.raises(SchemaMismatchError) as err:
        lk.write_table(spark.createDataFrame([("x", [1])], "id STRING, v ARRAY<INT>"), table)
    message = str(err.value)
    assert "id: table bigint, data string" in message and "v: table array<float>, data array<int>" in message
    with pytest.raises(SchemaMismatchError, match=r"columns not in the table: extra double .*schema_mode='merge'"):
        lk.write_table(spark.createDataFrame([(1, [1.0], 2.0)], "id LONG, v ARRAY<FLOAT>, extra DOUBLE"), table)
    with pytest.raises(SchemaMismatchError, match="interval"):
        lk.write_table(spark.sql("SELECT 1L AS id, INTERVAL '1' DAY AS gap"), lake / "interval")
    with pytest.raises(SchemaMismatchError, match="void"):
        lk.write_table(spark.sql("SELECT 1L AS id, NULL AS nothing"), lake / "void")
    with pytest.raises(SchemaMismatchError, match="partition column 'nope'"):
        lk.write_table(spark.createDataFrame([(1,)], "id LONG"), lake / "p", partition_by=["nope"])
    with pytest.raises(TableError, match="mode must be"):
        lk.write_table(spark.createDataFrame([(1,)], "id LONG"), table, mode="upsert")
    with pytest.raises(TableError, match="schema_mode='overwrite' needs mode='overwrite'"):
        lk.write_table(spark.createDataFrame([(1,)], "id LONG"), table, schema_mode="overwrite")
    with pytest.raises(TableError, match="not JSON-serializable"):
        lk.write_table(spark.createDataFrame([(1,)], "id LONG"), table, commit_metadata={"obj": object()})
    with pytest.raises(TableError, match="reserved"):
        lk.write_table(spark.createDataFrame([(1,)], "id LONG"), table, commit_metadata={"operation": "x"})
    with pytest.raises(TableError, match="no Delta table"):
        lk.read_table(lake / "missing")
    with pytest.raises(TableError, match="no Delta table"):
        lk.history(lake / "missing")
    with pytest.raises(TableError, match="version must be an integer"):
        lk.read_table(table, version=-1)

    assert lk.latest_version(table) == 0
    assert set(staged_dirs(table)) == {Path(f).parts[-2] for f in lk.snapshot(table).files}  # no leftovers
    assert not (lake / "interval").exists() and not (lake / "void").exists()


# -- faults ------------------------------------------------------------------------------------------------------

@pytest.mark.both_sessions
def test_failed_spark_job_leaves_table_unchanged(spark, lake, failing_job_with_a_busy_sibling):
    table = lake / "faulty"
    lk.write_table(spark.range(10).withColumn("y", F.col("id") * 2), table)
    before = lk.snapshot(table)

    bad, sibling_done = failing_job_with_a_busy_sibling
    bad = bad.selectExpr("v as id", "v * 2 as y")
    with pytest.raises(TableError, match="table is unchanged"):
        lk.write_table(bad, table)
    assert sibling_done.exists()  # the staging folder went only after the failed job's last task had stopped
    assert lk.latest_version(table) == before.version
    assert sorted(r.id for r in lk.read_table(table)[0].collect()) == list(range(10))
    assert len(rs_rows(table)) == 10
    assert staged_dirs(table) == sorted({Path(f).parts[-2] for f in before.files})  # staging folder removed

    with pytest.raises(TableError, match="not created"):
        lk.write_table(bad, lake / "never")
    assert not lk.exists(lake / "never")


def test_concurrent_appends_from_threads_and_another_process(spark, lake):
    table = lake / "busy"
    lk.write_table(spark.createDataFrame([(-1, "seed")], "id LONG, who STRING"), table)
    other = textwrap.dedent(f"""
        import time
        import pyarrow as pa
        from deltalake import write_deltalake
        for k in range(10):
            write_deltalake({str(table)!r}, pa.table({{"id": pa.array([1000 + k], pa.int64()),
                                                      "who": ["process"]}}), mode="append")
            time.sleep(0.15)
    """)
    proc = subprocess.Popen([sys.executable, "-c", other])
    errors: list[BaseException] = []

    def appender(worker: int) -> None:
        try:
            for k in range(3):
                rows = [(worker * 100 + k * 10 + j, f"thread-{worker}") for j in range(5)]
                lk.write_table(spark.createDataFrame(rows, "id LONG, who STRING"), table,
                                 commit_metadata={"worker": worker, "k": k})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(w,)) for w in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert proc.wait(timeout=120) == 0
    assert not errors, errors
    expected_ids = {-1} | {1000 + k for k in range(10)} | {w * 100 + k * 10 + j for w in (1, 2) for k in range(3)
                                                          for j in range(5)}
    ids = [r.id for r in lk.read_table(table)[0].collect()]
    assert sorted(ids) == sorted(expected_ids)  # nothing lost, nothing twice
    assert {r["id"] for r in rs_rows(table)} == expected_ids
    assert lk.latest_version(table) == 10 + 6  # seed at version 0, then one commit per append
    tagged = [e["metadata"] for e in lk.history(table) if e["metadata"]]
    assert sorted((m["worker"], m["k"]) for m in tagged) == [(w, k) for w in (1, 2) for k in range(3)]


# -- tables the delta-rs path must refuse ------------------------------------------------------------------------

def test_unsupported_table_features_are_refused(spark, lake):
    mapped = lake / "mapped"  # column mapping is read (see test_lake_protocol), not written
    write_deltalake(str(mapped), pa.table({"a": [1, 2]}), configuration={"delta.columnMapping.mode": "name"})
    assert sorted(r.a for r in lk.read_table(mapped)[0].collect()) == [1, 2]
    with pytest.raises(UnsupportedTableFeature, match="columnMapping.*delta-spark"):
        lk.write_table(spark.createDataFrame([(3,)], "a LONG"), mapped)

    # deletion vectors enabled but none present: readable (delta-rs rewrites files instead of writing DVs)
    dv = lake / "dv"
    write_deltalake(str(dv), pa.table({"a": pa.array([1, 2, 3], pa.int64())}),
                    configuration={"delta.enableDeletionVectors": "true"})
    DeltaTable(str(dv)).delete("a = 2")
    assert sorted(r.a for r in lk.read_table(dv)[0].collect()) == [1, 3]

    checked = lake / "checked"
    write_deltalake(str(checked), pa.table({"a": pa.array([1], pa.int64())}))
    DeltaTable(str(checked)).alter.add_constraint({"a_positive": "a > 0"})
    with pytest.raises(UnsupportedTableFeature, match="CHECK constraints"):
        lk.write_table(spark.createDataFrame([(-5,)], "a LONG"), checked)
    assert lk.read_table(checked)[0].count() == 1


@pytest.mark.both_sessions
def test_the_snapshot_a_dataframe_reads_is_found_from_its_files(spark, lake):
    """What a fit on a DataFrame records as its source: the one table version all its input files belong to."""
    table = lake / "lineage"
    v0 = lk.write_table(spark.range(10).withColumnRenamed("id", "x"), table)
    v1 = lk.write_table(spark.range(10, 20).withColumnRenamed("id", "x"), table, mode="append")
    old, _ = lk.read_table(table, version=v0.version)
    assert lk.source_of(old.where("x > 3").select("x")).version == v0.version  # filters read the same files
    assert lk.source_of(lk.read_table(table)[0]).version == v1.version
    other = lk.write_table(spark.range(3).withColumnRenamed("id", "x"), lake / "other")
    assert lk.source_of(lk.read_table(other.table)[0].unionByName(old)) is None  # two tables
    assert lk.source_of(spark.createDataFrame([(1,)], "x long")) is None  # no files
