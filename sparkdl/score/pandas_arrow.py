"""pandas Series (as a pandas UDF receives them) back to Arrow, without a per-row copy for array columns.

Spark hands a pandas UDF an `array<float>` column as an object Series of per-row numpy arrays. pyarrow builds
those arrays as consecutive slices of ONE flat values buffer, so when every row is a non-null slice of the same
length, lying back to back in that buffer, the whole column is a zero-copy (n, D) view of it: `series_to_arrow`
checks exactly that (lengths, shared base, first/last addresses) and rebuilds a list<float> Arrow array from the
view. Anything else (nulls, ragged rows, arrays from elsewhere) takes the general, per-row conversion.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa


def contiguous_block(series: pd.Series) -> np.ndarray | None:
    """The (n, D) numpy view behind an object Series of equal-length 1-D arrays that are consecutive slices of
    one buffer, else None."""
    values = series.to_numpy(dtype=object, copy=False)
    n = len(values)
    if n == 0:
        return None
    first, last = values[0], values[-1]
    if not (isinstance(first, np.ndarray) and isinstance(last, np.ndarray)) or first.ndim != 1:
        return None
    try:
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)
    except TypeError:  # a None (null row) or a non-array
        return None
    width = int(lengths[0])
    if width == 0 or not (lengths == width).all() or first.dtype != last.dtype:
        return None
    base = first.base
    if base is None or last.base is not base or not first.flags.c_contiguous:
        return None
    itemsize = first.dtype.itemsize
    start = first.__array_interface__["data"][0]
    if last.__array_interface__["data"][0] - start != (n - 1) * width * itemsize:
        return None
    # All n rows have `width` elements, share one base, and the first and last are exactly (n-1)*width apart.
    # pyarrow slices rows in offset order (offsets are monotonic), so the rows tile [start, start + n*width);
    # a few sampled rows confirm the order for Series built some other way.
    for i in np.linspace(0, n - 1, num=min(n, 9), dtype=np.int64)[1:-1]:
        row = values[i]
        if (not isinstance(row, np.ndarray) or row.base is not base
                or row.__array_interface__["data"][0] - start != int(i) * width * itemsize):
            return None
    flat = np.asarray(base).reshape(-1)
    if flat.dtype != first.dtype:
        return None
    offset = (start - flat.__array_interface__["data"][0]) // itemsize
    if offset < 0 or offset + n * width > flat.size:
        return None
    block = flat[offset:offset + n * width].reshape(n, width)
    return block


def series_to_arrow(series: pd.Series) -> pa.Array:
    """One pandas UDF argument as an Arrow array (list<...> for array columns)."""
    if series.dtype == object:
        block = contiguous_block(series)
        if block is not None:
            n, width = block.shape
            offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
            return pa.ListArray.from_arrays(offsets, pa.array(block.reshape(-1)))
        return pa.array(series.to_numpy(dtype=object, copy=False), from_pandas=True)
    if hasattr(series.array, "__arrow_array__"):
        return pa.array(series.array)
    return pa.Array.from_pandas(series)


def series_to_batch(series: list[pd.Series], names: list[str]) -> pa.RecordBatch:
    """pandas UDF arguments as one RecordBatch with the model's feature names."""
    return pa.RecordBatch.from_arrays([series_to_arrow(s) for s in series], names=names)


def arrow_to_series(array: pa.Array) -> pd.Series | pd.DataFrame:
    """A UDF result: scalars as an Arrow-backed Series (zero copy, nulls kept); structs as a DataFrame."""
    if pa.types.is_struct(array.type):
        fields = {array.type.field(i).name: arrow_to_series(array.field(i)) for i in range(array.type.num_fields)}
        return pd.DataFrame(fields)  # a null struct row comes back as a struct of nulls
    return pd.Series(pd.arrays.ArrowExtensionArray(array))
