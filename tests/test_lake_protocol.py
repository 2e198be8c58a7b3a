"""Delta protocol fidelity of the delta-rs path: commit times, deletion vectors, column mapping, one open per call,
and the clean-up of folders left by killed writes.

The deletion-vector and column-mapping tables are real tables written by Delta Lake itself (Delta's golden tables,
`../shared/delta-tables`, see its SOURCE.md), copied to a temporary folder with their file times.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder

import sparkdl.lake as lk
from sparkdl import cli
from sparkdl.errors import TableError, UnsupportedTableFeature
from sparkdl.lake import delta_rs, staging
from sparkdl.lake.commit_clock import ICT_ENABLED, ICT_VERSION, commit_times
from sparkdl.uri import filesystem

UTC = dt.timezone.utc
GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "delta-tables"
needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"Delta's golden tables are not at {GOLDEN}")


def golden(name: str, lake: Path) -> Path:
    target = lake / name
    shutil.copytree(GOLDEN / name, target)  # copy2: file times kept
    return target


def _log_file(table: Path, version: int) -> Path:
    return table / "_delta_log" / f"{version:020d}.json"


# -- commit times ------------------------------------------------------------------------------------------------

def test_timestamps_resolve_by_log_file_time_like_delta(spark, lake):
    table = lake / "clock"
    for i in range(3):
        lk.write_table(spark.createDataFrame([(i,)], "id LONG"), table)
    base = dt.datetime(2020, 1, 1, tzinfo=UTC)
    for version in range(3):  # the log files' times differ from commitInfo.timestamp (today)
        stamp = (base + dt.timedelta(days=version)).timestamp()
        os.utime(_log_file(table, version), (stamp, stamp))

    for wanted, expected in [("2020-01-01T12:00:00Z", 0), ("2020-01-02T00:00:00Z", 1), ("2020-01-02T23:59:59Z", 1),
                             ("2020-01-03T00:00:00Z", 2), ("2031-01-01T00:00:00Z", 2)]:
        df, snap = lk.read_table(table, timestamp=wanted)
        reference = DeltaTable(str(table))
        reference.load_as_version(dt.datetime.fromisoformat(wanted.replace("Z", "+00:00")))
        assert snap.version == expected == reference.version(), wanted
        assert sorted(r.id for r in df.collect()) == list(range(expected + 1))
    assert lk.snapshot(table, version=1).timestamp == "2020-01-02T00:00:00.000+00:00"
    assert [e["timestamp"][:10] for e in lk.history(table)] == ["2020-01-03", "2020-01-02", "2020-01-01"]
    with pytest.raises(TableError, match=r"before the first available commit \(version 0 at 2020-01-01"):
        lk.read_table(table, timestamp="2019-12-31T23:59:59Z")

    # a log file time no later than its predecessor's counts as 1 ms after it (delta-spark's monotonization)
    same = (base + dt.timedelta(days=1)).timestamp()
    os.utime(_log_file(table, 2), (same, same))
    assert lk.snapshot(table, version=2).timestamp == "2020-01-02T00:00:00.001+00:00"
    assert lk.snapshot(table, timestamp="2020-01-02T00:00:00.000Z").version == 1


def test_in_commit_timestamps_win_from_their_enablement_version():
    files = {0: 1_000, 1: 1_000, 2: 900, 3: 5_000}
    assert commit_times(files, {}, lambda: pytest.fail("not read without the feature")) == {
        0: 1_000, 1: 1_001, 2: 1_002, 3: 5_000}
    ict = {2: 2_000, 3: 3_000}
    assert commit_times(files, {ICT_ENABLED: "true", ICT_VERSION: "2"}, lambda: ict) == {
        0: 1_000, 1: 1_001, 2: 2_000, 3: 3_000}


# -- deletion vectors --------------------------------------------------------------------------------------------

@needs_golden
def test_deletion_vectors_hide_deleted_rows_in_every_version_and_across_the_checkpoint(spark, lake):
    table = golden("dv-partitioned-with-checkpoint", lake)
    # written by Delta: 50 rows col1 = 0..49 in partitions part = col1 % 10; version v deleted col1 = 2 * (v - 1)
    for version in (0, 1, 5, 9, 10, 11, 15):  # 10 is the checkpoint
        df, snap = lk.read_table(table, version=version)
        expected = sorted(set(range(50)) - {2 * v for v in range(version)})
        rows = df.collect()
        assert sorted(r.col1 for r in rows) == expected, version
        assert all(r.part == r.col1 % 10 for r in rows)  # partition values from the log
        assert snap.num_rows == len(expected)
        reference = DeltaTable(str(table), version=version)
        count = pa.table(QueryBuilder().register("t", reference).execute("SELECT count(*) AS n FROM t").read_all())
        assert count.column("n")[0].as_py() == len(expected)
    assert lk.read_table(table, columns=["part"])[0].count() == 35
    assert lk.read_table(table)[0].where("part = 6").count() == 2  # 6, 16, 26 deleted; 36, 46 kept
    with pytest.raises(UnsupportedTableFeature, match="deletion vectors.*stream source"):
        delta_rs.plain_files(lk.snapshot(table).table, 15)


# -- column mapping ----------------------------------------------------------------------------------------------

@needs_golden
def test_column_mapping_name_mode_reads_physical_columns_under_logical_names(spark, lake):
    table = golden("table-with-columnmapping-mode-name", lake)
    df, snap = lk.read_table(table)
    assert df.columns[:3] == ["ByteType", "ShortType", "IntegerType"] and "nested_struct" in df.columns
    assert not any("columnMapping" in str(f.metadata) for f in df.schema.fields)
    assert "nested_struct STRUCT<aa: STRING, ac: STRUCT<aca: INT>>" in snap.schema and "col-" not in snap.schema
    # (a map with array keys cannot become a Python dict: that column is checked through Spark functions)
    rows = {r.IntegerType: r for r in df.drop("struct_of_arrays_maps_of_structs").collect()}
    nested = df.selectExpr("IntegerType AS i", "struct_of_arrays_maps_of_structs.aa AS aa",
                           "map_keys(struct_of_arrays_maps_of_structs.ab)[0] AS k",
                           "map_values(struct_of_arrays_maps_of_structs.ab)[0].aca AS aca").where("i = 1").collect()
    assert [tuple(r) for r in nested] == [(1, [1, 2], [1, 2], 3)]
    assert sorted(k for k in rows if k is not None) == [0, 1, 2, 3, 4] and None in rows  # and one all-null row
    for i in range(5):
        r = rows[i]
        assert (r.ByteType, r.LongType, r.StringType, r.DoubleType) == (i, i, str(i), float(i))
        assert (r.nested_struct.aa, r.nested_struct.ac.aca) == (str(i), i)
        assert r.array_of_prims == [i, i + 1] and r.array_of_structs[0].ab == i
        assert r.map_of_rows == {i + 1: (i * 20,)} and r.map_of_prims == {i: i + 1, i + 2: i + 3}
    picked = lk.read_table(table, columns=["nested_struct", "StringType"])[0]
    assert sorted(r.aa for r in picked.select("nested_struct.aa").collect() if r.aa) == ["0", "1", "2", "3", "4"]
    with pytest.raises(UnsupportedTableFeature, match="columnMapping.*delta-spark"):
        lk.write_table(df.limit(1), table)
    with pytest.raises(UnsupportedTableFeature, match="column mapping.*stream source"):
        delta_rs.plain_files(snap.table, 0)


# -- one open per call -------------------------------------------------------------------------------------------

def test_a_write_opens_the_table_once_and_reads_its_history_once(spark, lake, monkeypatch):
    table = lake / "opens"
    lk.write_table(spark.createDataFrame([(1,)], "id LONG"), table)
    calls = {"open": 0, "history": 0}
    real_init, real_history = DeltaTable.__init__, DeltaTable.history

    def counting_init(self, *args, **kwargs):
        calls["open"] += 1
        real_init(self, *args, **kwargs)

    def counting_history(self, *args, **kwargs):
        calls["history"] += 1
        return real_history(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "__init__", counting_init)
    monkeypatch.setattr(DeltaTable, "history", counting_history)
    snap = lk.write_table(spark.createDataFrame([(2,)], "id LONG"), table)
    assert snap.version == 1 and calls == {"open": 1, "history": 1}
    calls.update(open=0, history=0)
    df, _ = lk.read_table(table, timestamp=dt.datetime.now(UTC))
    assert df.count() == 2 and calls == {"open": 1, "history": 0}


# -- folders of killed writes ------------------------------------------------------------------------------------

_KILLED_WRITE = textwrap.dedent("""
    import sys, time
    from sparkdl.lake import delta_rs
    from sparkdl.session import get_spark

    def hang(*args, **kwargs):  # the process is killed here: files written, nothing committed
        print("staged", flush=True)
        time.sleep(600)

    delta_rs._commit = hang
    spark = get_spark()
    delta_rs.write(spark, spark.range(100).withColumnRenamed("id", "x"), sys.argv[1])
""")


def _staged(table: Path) -> list[str]:
    return sorted(p.name for p in table.iterdir() if p.name.startswith(staging.PREFIX))


@pytest.mark.slow
def test_folders_of_killed_writes_are_cleaned_up_and_committed_ones_kept(spark, lake, capsys):
    table = lake / "killed"
    lk.write_table(spark.range(10).withColumnRenamed("id", "x"), table)
    committed = _staged(table)
    uri = lk.snapshot(table).table
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITE, uri], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "SPARKDL_LOG_LEVEL": "WARNING"})
    try:
        assert proc.stdout.readline().strip() == "staged"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    left = [name for name in _staged(table) if name not in committed]
    assert len(left) == 1 and any((table / left[0]).rglob("*.parquet"))
    assert lk.read_table(table)[0].count() == 10  # readers follow the log
    # the killed write's lease protects its folder until the lease is LEASE_TIMEOUT_S old (a process id says
    # nothing across containers); then it is debris like any other
    assert lk.clean_staging(table, older_than_hours=0, dry_run=True) == []
    (table / staging.LEASES / left[0]).write_text(json.dumps({"time": time.time() - staging.LEASE_TIMEOUT_S - 1}))

    # a copy of the debris dated two hours back: the next successful write removes it, not the young one
    old = staging.folder_name("ab" * 16, now=time.time() - 2 * 3600)
    shutil.copytree(table / left[0], table / old)
    lk.write_table(spark.range(5).withColumnRenamed("id", "x"), table)
    assert old not in _staged(table) and left[0] in _staged(table)
    assert lk.clean_staging(table, dry_run=True) == []  # younger than the default hour
    assert lk.clean_staging(table, older_than_hours=0, dry_run=True) == left
    assert cli.main(["lake", "clean", str(table), "--older-than", "0", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out) == {"found": left}
    assert lk.clean_staging(table, older_than_hours=0) == left
    remaining = _staged(table)
    assert left[0] not in remaining and set(committed) <= set(remaining) and len(remaining) == 2
    assert lk.read_table(table)[0].count() == 15
    with pytest.raises(TableError, match="older_than_hours"):
        lk.clean_staging(table, older_than_hours=-1)


def held_until(release: Path):
    """A UDF passing its value through once the file `release` exists (a Spark job held open on purpose)."""
    from pyspark.sql import functions as F

    release_path = str(release)

    @F.udf("long")
    def held(value):
        import os
        import time

        deadline = time.monotonic() + 120
        while not os.path.exists(release_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        return value

    return held


@pytest.mark.slow
def test_a_write_in_flight_is_never_cleaned_up_however_old(spark, lake):
    """A write held open (its Spark job waits) while another process cleans the table with no age limit, as a
    concurrent writer would an hour later: the write's folder is leased, so it stays, and the commit lands."""
    import threading

    table, release = lake / "held", lake / "release"
    lk.write_table(spark.range(10).withColumnRenamed("id", "x"), table)
    before = set(_staged(table))
    held = held_until(release)

    outcome = {}
    writer = threading.Thread(target=lambda: outcome.update(
        snap=lk.write_table(spark.range(10, 15).select(held("id").alias("x")), table, mode="append")))
    writer.start()
    try:
        deadline = time.monotonic() + 60
        while set(_staged(table)) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        (in_flight,) = set(_staged(table)) - before
        assert in_flight in staging.alive(*filesystem(lk.snapshot(table).table))
        cleaner = subprocess.run(
            [sys.executable, "-c", "import sys, json; from sparkdl import lake; "
             "print(json.dumps(lake.clean_staging(sys.argv[1], older_than_hours=0)))", str(table)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "SPARKDL_LOG_LEVEL": "WARNING"})
        assert cleaner.returncode == 0, cleaner.stderr[-2000:]
        assert json.loads(cleaner.stdout.strip().splitlines()[-1]) == [] and (table / in_flight).is_dir()
    finally:
        release.touch()
        writer.join(120)
    assert outcome["snap"].num_rows == 15 and lk.read_table(table)[0].count() == 15
    assert staging.alive(*filesystem(lk.snapshot(table).table)) == set()  # the lease went with the write


def test_a_lease_survives_another_writers_stop_and_a_removed_leases_folder(tmp_path):
    import pyarrow.fs as pafs

    fs, root = pafs.LocalFileSystem(), str(tmp_path)
    first = staging.Lease(fs, root, "sparkdl-write-a", refresh_s=0.2).start()
    second = staging.Lease(fs, root, "sparkdl-write-b", refresh_s=0.2).start()
    first.stop()  # never takes the shared folder with it
    assert staging.alive(fs, root) == {"sparkdl-write-b"}
    shutil.rmtree(tmp_path / staging.LEASES)  # as an older writer's stop() did
    time.sleep(0.6)
    assert staging.alive(fs, root) == {"sparkdl-write-b"}  # the refresh recreated folder and lease
    second.stop()
    assert staging.alive(fs, root) == set() and (tmp_path / staging.LEASES).is_dir()


def test_liveness_is_the_age_the_lease_records_not_its_mtime_or_its_process(tmp_path):
    import pyarrow.fs as pafs

    fs, root = pafs.LocalFileSystem(), str(tmp_path)
    folder = tmp_path / staging.LEASES
    folder.mkdir()
    (folder / "sparkdl-write-old").write_text(json.dumps({"time": time.time() - 3600, "host": os.uname().nodename,
                                                          "pid": os.getpid()}))
    (folder / "sparkdl-write-new").write_text(json.dumps({"time": time.time(), "host": "elsewhere", "pid": 1}))
    os.utime(folder / "sparkdl-write-new", (0, 0))  # an mtime that says nothing (storage without them)
    assert staging.alive(fs, root) == {"sparkdl-write-new"}


def test_a_write_that_lost_its_lease_or_its_files_is_fenced_off_before_the_commit(tmp_path):
    import pyarrow.fs as pafs

    fs, root = pafs.LocalFileSystem(), str(tmp_path)
    name = "sparkdl-write-x"
    (tmp_path / name).mkdir()
    for part in ("part-0.parquet", "part-1.parquet"):
        (tmp_path / name / part).write_bytes(b"x")
    files = [f"{name}/part-0.parquet", f"{name}/part-1.parquet"]
    lease = staging.Lease(fs, root, name, refresh_s=60).start()
    try:
        lease.fence(files)  # held, whole: the commit may go on
        (tmp_path / name / "part-1.parquet").unlink()
        with pytest.raises(TableError, match=r"1 staged file\(s\) of the write are gone \(e.g. .*part-1"):
            lease.fence(files)
        (tmp_path / name / "part-1.parquet").write_bytes(b"x")
        (tmp_path / staging.LEASES / name).unlink()
        with pytest.raises(TableError, match="is gone"):
            lease.fence(files)
        lease._touch()
        lease._refreshed -= staging.LEASE_TIMEOUT_S  # no refresh for the whole timeout (a stalled process)
        with pytest.raises(TableError, match="last refreshed"):
            lease.fence(files)
    finally:
        lease.stop()


def test_two_identical_writes_at_once_commit_once(spark, lake):
    """Two writes with one Delta transaction identifier, held until both passed the check before their Spark jobs:
    one commits, the other finds the identifier in the conflict and raises AlreadyCommitted; the rows are there
    once. A later third one is refused before any Spark job."""
    import threading

    from sparkdl.errors import AlreadyCommitted

    table, release = lake / "txn", lake / "release-txn"
    lk.write_table(spark.range(3).withColumnRenamed("id", "x"), table)
    held = held_until(release)

    outcomes: list = []

    def write():
        try:
            outcomes.append(lk.write_table(spark.range(10, 15).select(held("id").alias("x")), table,
                                           txn=lk.Txn("nightly-scoring", 7)).version)
        except AlreadyCommitted as exc:
            outcomes.append(exc)

    writers = [threading.Thread(target=write) for _ in range(2)]
    for w in writers:
        w.start()
    time.sleep(3)  # both past the check, their jobs waiting
    release.touch()
    for w in writers:
        w.join(180)
    assert sorted(type(o).__name__ for o in outcomes) == ["AlreadyCommitted", "int"]
    assert lk.read_table(table)[0].count() == 3 + 5
    assert DeltaTable(str(table)).transaction_version("nightly-scoring") == 7
    started = time.monotonic()
    with pytest.raises(AlreadyCommitted, match=r"committed transaction 6 of nightly-scoring \(its latest is 7\)"):
        lk.write_table(spark.range(2).withColumnRenamed("id", "x"), table, txn=lk.Txn("nightly-scoring", 6))
    assert time.monotonic() - started < 5 and lk.read_table(table)[0].count() == 8


def test_two_commits_creating_a_table_with_one_txn_at_once_commit_once(spark, lake):
    """The commit step of two writes that both found no table, released together: one creates the table, the other
    raises AlreadyCommitted (delta-rs alone retries the losing creation as a second commit, so both land)."""
    import threading

    from pyspark.sql import types as T

    from sparkdl.errors import AlreadyCommitted
    from sparkdl.lake.schema import plan_new_table

    schema = T.StructType([T.StructField("x", T.LongType())])
    for trial in range(5):
        uri = str(lake / f"created-at-once-{trial}")
        start, outcomes = threading.Barrier(2), []

        def commit(write_id):
            start.wait()
            try:
                delta_rs._commit(uri, None, plan_new_table(schema, None, uri), [], "append", {}, write_id,
                                 lk.Txn("nightly-scoring", 1))
                outcomes.append("committed")
            except AlreadyCommitted:
                outcomes.append("already")

        writers = [threading.Thread(target=commit, args=(f"w{trial}-{i}",)) for i in range(2)]
        for w in writers:
            w.start()
        for w in writers:
            w.join(60)
        assert sorted(outcomes) == ["already", "committed"], trial
        assert DeltaTable(uri).version() == 0


def test_unreadable_storage_is_an_error_not_a_missing_table(monkeypatch):
    for key, value in {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
                       "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(TableError, match="cannot tell whether s3://sparkdl-unreachable/t holds a Delta table"):
        delta_rs.exists(None, "s3://sparkdl-unreachable/t")
