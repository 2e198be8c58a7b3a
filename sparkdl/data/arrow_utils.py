"""Arrow → numpy without per-row Python objects: fixed-length list columns become (n, D) matrices."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass
class ListMatrix:
    """A list column as a dense matrix, with what was wrong with each row.

    Attributes:
        values: (n, D) float32; rows that are null or have the wrong length are zeros.
        null: rows that are null.
        wrong_length: non-null rows whose length is not D.
        lengths: the length of each row (0 for null rows).
    """

    values: np.ndarray
    null: np.ndarray
    wrong_length: np.ndarray
    lengths: np.ndarray


def as_array(column) -> pa.Array:
    """A ChunkedArray or Array as one contiguous Array."""
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def to_table(data) -> pa.Table | pa.RecordBatch:
    """A pyarrow RecordBatch/Table as-is; a pandas DataFrame through `pa.Table.from_pandas`."""
    if isinstance(data, (pa.RecordBatch, pa.Table)):
        return data
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise TypeError(f"expected a pyarrow.RecordBatch, pyarrow.Table or pandas.DataFrame, got {type(data).__name__}")


def numeric_to_numpy(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values with NaN where null, null mask) for a numeric or boolean Arrow array."""
    arr = as_array(arr)
    if pa.types.is_boolean(arr.type) or pa.types.is_decimal(arr.type) or pa.types.is_integer(arr.type):
        arr = arr.cast(pa.float64())
    null = np.asarray(arr.is_null(), dtype=bool) if arr.null_count else np.zeros(len(arr), dtype=bool)
    values = arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return values, null


def list_to_matrix(arr, width: int) -> ListMatrix:
    """A list/large_list/fixed_size_list Arrow array of numbers as an (n, width) float32 matrix.

    The fast path (no nulls, every row of length `width`) is one `flatten()` + reshape; otherwise the good rows are
    gathered from the child values through the offsets (vectorized). Null elements inside a list become NaN.
    """
    arr = as_array(arr)
    n = len(arr)
    if pa.types.is_fixed_size_list(arr.type):
        arr = arr.cast(pa.list_(arr.type.value_type))
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise TypeError(f"expected a list column, got {arr.type}")
    null = np.asarray(arr.is_null(), dtype=bool) if arr.null_count else np.zeros(n, dtype=bool)
    offsets = np.asarray(arr.offsets)
    lengths = np.diff(offsets).astype(np.int64)
    lengths[null] = 0
    wrong = ~null & (lengths != width)
    child = arr.values
    if not null.any() and not wrong.any():
        flat = child.slice(int(offsets[0]), n * width) if n else child.slice(0, 0)
        values = _child_numpy(flat).reshape(n, width)
        return ListMatrix(values, null, wrong, lengths)
    good = ~null & ~wrong
    values = np.zeros((n, width), dtype=np.float32)
    if good.any():
        child_np = _child_numpy(child)
        idx = offsets[:-1][good].astype(np.int64)[:, None] + np.arange(width, dtype=np.int64)
        values[good] = child_np[idx]
    return ListMatrix(values, null, wrong, lengths)


def _child_numpy(child: pa.Array) -> np.ndarray:
    if pa.types.is_boolean(child.type) or pa.types.is_decimal(child.type):
        child = child.cast(pa.float64())
    if child.null_count and pa.types.is_integer(child.type):
        child = child.cast(pa.float64())
    return child.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)


def matrix_to_list_array(values: np.ndarray) -> pa.ListArray:
    """An (n, ...) float32 array as a list<float> Arrow array of rows (zero-copy for the values)."""
    n = values.shape[0]
    width = int(np.prod(values.shape[1:])) if values.ndim > 1 else 1
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    offsets = np.arange(0, n * width + 1, width, dtype=np.int32) if n * width < 2**31 else None
    if offsets is None:
        return pa.LargeListArray.from_arrays(pa.array(np.arange(0, n * width + 1, width, dtype=np.int64)),
                                             pa.array(flat))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
