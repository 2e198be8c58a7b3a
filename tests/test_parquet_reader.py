"""sparkdl.parquet_reader: the one rule every direct Parquet read follows (names, casts, partition values, nulls)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparkdl.parquet_reader import read_batches, read_columns


@pytest.fixture
def parquet_file(tmp_path):
    path = tmp_path / "part-0.parquet"
    table = pa.table({"ID": pa.array([1, 2, 3, 4, 5], pa.int32()), "x": pa.array([0.5, 1.5, 2.5, 3.5, 4.5]),
                      "v": pa.array([[1.0, 2.0]] * 5, pa.list_(pa.float32()))})
    pq.write_table(table, path, row_group_size=2)
    return "file://" + str(path)


def test_columns_are_matched_cast_filled_and_given_their_partition_values(parquet_file):
    wanted = pa.schema([("id", pa.int64()), ("x", pa.float32()), ("day", pa.date32()), ("added", pa.string()),
                        ("v", pa.list_(pa.float32()))])
    batches = list(read_batches(parquet_file, wanted, partition_values={"day": "2024-01-02", "added": None},
                                case_sensitive=False))
    table = pa.Table.from_batches(batches, wanted)
    assert table.schema == wanted and table.num_rows == 5
    assert table.column("id").to_pylist() == [1, 2, 3, 4, 5]  # "ID" in the file, int32 -> int64
    assert table.column("x").to_pylist() == [0.5, 1.5, 2.5, 3.5, 4.5]
    assert {str(d) for d in table.column("day").to_pylist()} == {"2024-01-02"}  # one value for the file
    assert table.column("added").null_count == 5  # a column the file does not have
    # case-sensitive (Spark's default is not): "id" is not "ID"
    strict = pa.Table.from_batches(list(read_batches(parquet_file, wanted, case_sensitive=True)), wanted)
    assert strict.column("id").null_count == 5


def test_row_groups_batches_and_files_without_any_wanted_column(parquet_file):
    wanted = pa.schema([("x", pa.float64())])
    picked = list(read_batches(parquet_file, wanted, row_groups=[1, 2], batch_rows=1))
    assert [b.column(0).to_pylist() for b in picked] == [[2.5], [3.5], [4.5]]
    nothing = list(read_batches(parquet_file, pa.schema([("gone", pa.int64())]), batch_rows=2))
    assert [b.num_rows for b in nothing] == [2, 2, 1] and all(b.column(0).null_count == b.num_rows for b in nothing)
    both = read_columns([parquet_file, parquet_file], ["x", "ID"])
    assert both.num_rows == 10 and both.schema.field("ID").type == pa.int32()  # stored types
