"""`tf.data` per Horovod rank from a `PetastormDataset`, and the train/validation split.

Sharding (the rule every rank follows, with no communication):

* The data is a list of row groups (from the Parquet footers, recorded at conversion). For epoch `e` the row groups
  are put in one order — a permutation seeded by `seed + e` when shuffling, file order otherwise — identical on all
  ranks, giving one virtual sequence of `N` rows.
* Rank `r` of `size` reads rows ``[r * N // size, (r + 1) * N // size)`` of that sequence: the shards of an epoch are
  disjoint, every rank has exactly ``N // size`` rows, and the last ``N % size`` rows of the sequence (at most
  ``size - 1``; different ones each epoch when shuffling) are left out of that epoch.
* So every rank runs the same number of steps, ``ceil((N // size) / batch_size)`` per epoch (the last batch of an
  epoch may be smaller, equally on every rank) — uneven shards would hang Horovod's allreduce. Skewed Spark
  partitions (file sizes) do not matter: shards are row ranges, not files.
* Within a rank, rows are shuffled in a buffer of `shuffle_buffer` rows (64k by default, one Arrow read batch).
  Reads and the buffer are also bounded in bytes of prepared float32 rows (64 MiB per read, 256 MiB of buffer), so
  large rows (decoded images: 48 KiB for 64×64 RGB) get fewer rows per read and per buffer, not gigabytes.

Reading is Arrow-native: `pyarrow.parquet` reads the feature and label columns of the planned row groups in Arrow
batches of ~64k rows (a whole number of training batches) on a background thread; the flat `array<float>` features
become an (n, *input_shape) matrix by `flatten()` + reshape after checking the list offsets (no per-row objects).
`from_generator` receives blocks of k batches as (k, batch, *shape) arrays and `unbatch()` splits them into
batches in C++ (per batch, never per row), then `prefetch`. A cache of encoded images
(`PetastormDataset.image`) is decoded in the same background thread by the model's `ImageInput` (Pillow on a
thread pool). Throughput (scripts/benchmarks/bench_input.py, 400k
rows × 32 floats, 2 busy cores): ~10× Petastorm's default `make_tf_dataset`, ~60-70% of a raw pyarrow scan
unshuffled; shuffling (one random gather per buffer) costs roughly a third more time. The epoch count is finite:
the dataset yields exactly `epochs * steps_per_epoch` batches.
"""
from __future__ import annotations

import itertools
import math
import queue
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sparkdl.data.arrow_utils import list_to_matrix, numeric_to_numpy
from sparkdl.data.petastorm_io import PetastormDataset
from sparkdl.errors import ConfigError, Problem, ValidationError
from sparkdl.log import get_logger
from sparkdl.parquet_reader import open_parquet, read_batches

log = get_logger("data.dataset")

DEFAULT_SHUFFLE_BUFFER = 65_536
READ_BATCH_ROWS = 65_536
READ_BATCH_BYTES = 64 * 1024 * 1024
SHUFFLE_BUFFER_BYTES = 256 * 1024 * 1024
# Batches `tf_dataset` holds ready ahead of the step (the reader thread reads ahead in its own buffer).
PREFETCH_BATCHES = 4


def _check(data: PetastormDataset, rank: int, size: int, batch_size: int) -> None:
    if not isinstance(getattr(data, "num_rows", None), int):
        raise ConfigError(f"data must be a PetastormDataset (or SeriesWindows), got {type(data).__name__}")
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"rank must be in [0, size) and size >= 1, got rank={rank}, size={size}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if data.num_rows // size == 0:
        raise ConfigError(f"{data.num_rows} rows cannot be shared by {size} ranks (each needs at least one row)")


def rows_per_rank(data: PetastormDataset, size: int) -> int:
    """Rows each rank reads per epoch: N // size."""
    return data.num_rows // size


def steps_per_epoch(data: PetastormDataset, size: int, batch_size: int) -> int:
    """Batches per epoch on every rank: ceil((N // size) / batch_size).

    Raises:
        ConfigError: fewer rows than ranks, or a batch size < 1.
    """
    _check(data, 0, size, batch_size)
    return math.ceil(rows_per_rank(data, size) / batch_size)


def _row_groups(data: PetastormDataset) -> list[tuple[int, int, int]]:
    if data.row_groups:
        return [tuple(r) for r in data.row_groups]
    out = []
    for i, f in enumerate(data.files):
        with open_parquet(f) as parquet:
            meta = parquet.metadata
        out += [(i, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    return out


def shard_plan(data: PetastormDataset, rank: int, size: int, epoch: int, shuffle: bool = True,
               seed: int = 0) -> list[tuple[int, int, int, int]]:
    """The (file index, row group, start, stop) slices rank `rank` reads in `epoch` (see the module docstring)."""
    _check(data, rank, size, 1)
    groups = _row_groups(data)
    order = np.random.default_rng([seed, epoch]).permutation(len(groups)) if shuffle else range(len(groups))
    per = data.num_rows // size
    lo, hi = rank * per, (rank + 1) * per
    plan, pos = [], 0
    for g in order:
        fi, rg, n = groups[g]
        start, stop = max(lo, pos), min(hi, pos + n)
        if start < stop:
            plan.append((fi, rg, start - pos, stop - pos))
        pos += n
        if pos >= hi:
            break
    return plan


class _Reader:
    """Reads row-group slices as (features (n, *shape) float32, labels) numpy arrays."""

    def __init__(self, data: PetastormDataset, input_shape: tuple[int, ...], with_label: bool,
                 read_rows: int = READ_BATCH_ROWS):
        self.data = data
        self.read_rows = read_rows
        self.shape = tuple(int(d) for d in input_shape)
        self.width = int(np.prod(self.shape))
        self.with_label = with_label
        if with_label and not data.label_column:
            raise ConfigError("with_label=True but the dataset has no label column")
        self.columns = [data.feature_column] + ([data.label_column] if with_label else [])
        self._files: dict[int, pq.ParquetFile] = {}

    def _file(self, index: int) -> pq.ParquetFile:
        if index not in self._files:
            self._files[index] = open_parquet(self.data.files[index])
        return self._files[index]

    def read(self, file_index: int, row_group: int, start: int, stop: int):
        """Yield (features, labels) numpy pieces of rows [start, stop) of one row group, in Arrow batches."""
        pos = 0
        parquet = self._file(file_index)
        schema = pa.schema([parquet.schema_arrow.field(c) for c in self.columns])  # as written: no cast
        for batch in read_batches(parquet, schema, row_groups=[row_group], batch_rows=self.read_rows,
                                  use_threads=True):
            n = batch.num_rows
            lo, hi = max(start, pos), min(stop, pos + n)
            pos += n
            if lo >= hi:
                if pos >= stop:
                    break
                continue
            if lo - (pos - n) or hi < pos:
                batch = batch.slice(lo - (pos - n), hi - lo)
            yield self._convert(batch, file_index, row_group)
            if pos >= stop:
                break

    def _convert(self, batch, file_index: int, row_group: int):
        if self.data.image is not None:
            return self._decode(batch, file_index, row_group)
        m = list_to_matrix(batch.column(self.data.feature_column), self.width)
        if m.null.any() or m.wrong_length.any():
            bad = int(m.null.sum() + m.wrong_length.sum())
            found = sorted(set(m.lengths[m.wrong_length].tolist()))[:5]
            raise ValidationError(
                f"{self.data.files[file_index]} (row group {row_group}): {bad} row(s) of column "
                f"{self.data.feature_column!r} are null or not {self.width} values long (lengths seen: {found}); "
                f"input_shape {self.shape} needs {self.width}",
                [Problem(self.data.feature_column, "wrong length", f"{self.width} values", f"lengths {found}",
                         count=bad)])
        features = m.values.reshape((len(m.values),) + self.shape)
        labels = _labels(batch.column(self.data.label_column)) if self.with_label else None
        return features, labels

    def _decode(self, batch, file_index: int, row_group: int):
        """Encoded images → scaled pixels with the model's own `ImageInput` (a thread pool, off this thread)."""
        image = self.data.image
        if tuple(image.shape) != self.shape:
            raise ConfigError(f"image feature {image.name!r} has shape {list(image.shape)}, the model's input "
                              f"shape is {list(self.shape)}")
        features, reasons = image.prepare(batch.column(self.data.feature_column))
        bad = [r for r in reasons if r is not None]
        if bad:
            raise ValidationError(
                f"{self.data.files[file_index]} (row group {row_group}): {len(bad)} image(s) of the training cache "
                f"cannot be decoded ({bad[0]}); the cache was written from other files: delete it and convert again",
                [Problem(image.name, "undecodable image", "a decodable image", bad[0], count=len(bad))])
        labels = _labels(batch.column(self.data.label_column)) if self.with_label else None
        return features, labels

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def _labels(arr):
    import pyarrow as pa

    if pa.types.is_integer(arr.type) or pa.types.is_boolean(arr.type):
        if arr.null_count:
            raise ValidationError("label column holds nulls", [])
        return arr.cast(pa.int64()).to_numpy(zero_copy_only=False)
    values, null = numeric_to_numpy(arr)
    if null.any():
        raise ValidationError("label column holds nulls", [])
    return values.astype(np.float32)


def label_dtype(data: PetastormDataset):
    """int64 for integer/boolean labels, float32 otherwise (read from the first file's schema)."""
    import pyarrow as pa

    with open_parquet(data.files[0]) as parquet:
        schema = parquet.schema_arrow
    t = schema.field(data.label_column).type
    return np.int64 if (pa.types.is_integer(t) or pa.types.is_boolean(t)) else np.float32


def iterate_blocks(data: PetastormDataset, rank: int, size: int, batch_size: int, input_shape, shuffle: bool = True,
                   seed: int = 0, epochs: int = 1, with_label: bool = True,
                   shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, read_ahead: int = 4, first_epoch: int = 0):
    """Yield `(features, labels)` blocks for one rank: each block is a whole number of batches, except the last
    block of an epoch, which may end with one smaller batch. A background thread reads ahead `read_ahead` pieces.
    Labels are None when `with_label` is False. The epochs are `first_epoch`, `first_epoch + 1`, ...: each one's
    order is a function of the seed and its number only, so a run resumed at epoch k reads what an uninterrupted
    run reads from epoch k on."""
    _check(data, rank, size, batch_size)
    if epochs < 1:
        raise ConfigError(f"epochs must be a finite number >= 1, got {epochs}")
    # Arrow batches of a whole number of training batches: blocks rarely need a copy to join a carried remainder.
    row_bytes = 4 * int(np.prod(input_shape))
    read_rows = max(batch_size, min(READ_BATCH_ROWS, READ_BATCH_BYTES // row_bytes) // batch_size * batch_size)
    shuffle_buffer = min(shuffle_buffer, max(batch_size, SHUFFLE_BUFFER_BYTES // row_bytes))
    reader = _Reader(data, input_shape, with_label, read_rows)
    threshold = max(shuffle_buffer, batch_size) if shuffle else batch_size
    chunks = _read_ahead(_pieces(data, reader, rank, size, epochs, shuffle, seed, first_epoch), read_ahead)
    rngs = (np.random.default_rng([seed, rank, 7919, epoch]) for epoch in itertools.count(first_epoch))
    try:
        yield from _batched_blocks(chunks, batch_size, shuffle, threshold, rngs, with_label)
    finally:
        chunks.close()  # stops the reading thread before its files are closed
        reader.close()


_END_OF_EPOCH = object()


def _pieces(data: PetastormDataset, reader: "_Reader", rank: int, size: int, epochs: int, shuffle: bool, seed: int,
            first_epoch: int = 0):
    """The rank's (features, labels) chunks in shard order, epoch after epoch, `_END_OF_EPOCH` after each."""
    for epoch in range(first_epoch, first_epoch + epochs):
        for piece in shard_plan(data, rank, size, epoch, shuffle, seed):
            yield from reader.read(*piece)
        yield _END_OF_EPOCH


def _read_ahead(items, depth: int):
    """`items`, produced by a background thread up to `depth` ahead (0: in the consuming thread). Closing this
    generator stops the thread; an error of the producer is raised here."""
    if depth <= 0:
        yield from items
        return
    chunks: queue.Queue = queue.Queue(maxsize=depth)
    stop, done = threading.Event(), object()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                chunks.put(item)
            chunks.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            chunks.put(exc)

    thread = threading.Thread(target=produce, name="sparkdl-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = chunks.get()
            if isinstance(item, BaseException):
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                chunks.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def _batched_blocks(chunks, batch_size: int, shuffle: bool, threshold: int, rngs, with_label: bool):
    """Blocks of whole batches from `chunks` (see `iterate_blocks`): unshuffled, chunks are cut at batch
    boundaries (a remainder completed by the next chunk's head); shuffled, chunks gather in a buffer of
    `threshold` rows that is permuted and cut, with the generator of `rngs` (one per epoch). An epoch's last block
    takes its remainder as a smaller batch."""
    rng = next(rngs)
    def cat(parts):
        if not with_label:
            return (parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])), None
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    pending: list = []
    pending_n = 0
    for item in chunks:
        end = item is _END_OF_EPOCH
        if not end:
            if not shuffle and pending_n:       # complete the carried-over batch with the head of this chunk
                need = batch_size - pending_n
                head = (item[0][:need], item[1][:need] if with_label else None)
                item = (item[0][need:], item[1][need:] if with_label else None)
                pending.append(head)
                pending_n += len(head[0])
                if pending_n == batch_size:
                    yield cat(pending)
                    pending, pending_n = [], 0
                if not len(item[0]):
                    continue
            if not shuffle:
                full = len(item[0]) // batch_size * batch_size
                if full:
                    yield (item[0][:full], item[1][:full] if with_label else None)
                if full < len(item[0]):
                    pending = [(item[0][full:], item[1][full:] if with_label else None)]
                    pending_n = len(item[0]) - full
                continue
            pending.append(item)
            pending_n += len(item[0])
            if pending_n < threshold:
                continue
        if not pending_n:
            if end:
                rng = next(rngs)
            continue
        x, y = cat(pending)
        if shuffle:
            perm = rng.permutation(len(x))
            x = np.take(x, perm, axis=0)
            y = np.take(y, perm) if with_label else None
        full = len(x) if end else len(x) // batch_size * batch_size
        yield x[:full], (y[:full] if with_label else None)
        pending = [(x[full:], y[full:] if with_label else None)] if full < len(x) else []
        pending_n = len(x) - full
        if end:
            rng = next(rngs)


def iterate_batches(data: PetastormDataset, rank: int, size: int, batch_size: int, input_shape, shuffle: bool = True,
                    seed: int = 0, epochs: int = 1, with_label: bool = True,
                    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, first_epoch: int = 0):
    """Yield numpy batches `(features, labels)` (or `features`) for one rank, as `tf_dataset` does."""
    for x, y in iterate_blocks(data, rank, size, batch_size, input_shape, shuffle, seed, epochs, with_label,
                               shuffle_buffer, first_epoch=first_epoch):
        for s in range(0, len(x), batch_size):
            yield (x[s:s + batch_size], y[s:s + batch_size]) if with_label else x[s:s + batch_size]


def tf_dataset(data: PetastormDataset, rank: int, size: int, batch_size: int, input_shape, shuffle: bool = True,
               seed: int = 0, epochs: int = 1, with_label: bool = True,
               shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, first_epoch: int = 0):
    """A `tf.data.Dataset` of `(features, label)` batches for Horovod rank `rank` of `size`.

    Args:
        data: the `PetastormDataset` (from `to_petastorm`), the same object on every rank.
        rank, size: this worker's Horovod rank and the number of workers.
        batch_size: rows per batch (per rank).
        input_shape: the model's input shape; features come out as float32 (batch, *input_shape).
        shuffle: permute row groups per epoch (same permutation on every rank) and rows in a buffer.
        seed: shuffling seed (the same on every rank).
        epochs: how many epochs the dataset yields (finite); each is `steps_per_epoch(data, size, batch_size)`
            batches on every rank.
        with_label: yield `(features, label)`; else features only.
        shuffle_buffer: rows shuffled together within a rank.
        first_epoch: the number of the first epoch yielded (a resumed run's): the order of each epoch depends
            only on the seed and the epoch's number.

    Raises:
        ConfigError: bad rank/size/batch size/epochs, or fewer rows than ranks.
        ValidationError (while iterating): feature rows whose length is not prod(input_shape).
    """
    _check(data, rank, size, batch_size)
    shape = tuple(int(d) for d in input_shape)
    y_dtype = (np.int64 if label_dtype(data) == np.int64 else np.float32) if with_label else None
    return batches_dataset(lambda: iterate_blocks(data, rank, size, batch_size, shape, shuffle, seed, epochs,
                                                  with_label, shuffle_buffer, first_epoch=first_epoch),
                           batch_size, shape, () if with_label else None, y_dtype,
                           steps_per_epoch(data, size, batch_size) * epochs)


def batches_dataset(make_blocks, batch_size: int, x_shape: tuple, y_shape: tuple | None, y_dtype, steps: int):
    """A finite `tf.data.Dataset` of batches from `make_blocks()`, an iterator of blocks `(x, y)` of rows (`y` None,
    and `x` alone in the batches, when `y_shape` is None) of shapes (n, *x_shape) and (n, *y_shape), every block but
    an epoch's last a whole number of batches; `steps` batches in all.

    The generator yields blocks of k batches as (k, batch, ...) arrays (a free reshape of contiguous rows), and
    `unbatch()` splits them into batches in C++: per batch, never per row."""
    import tensorflow as tf

    x_shape, with_label = tuple(x_shape), y_shape is not None
    x_spec = tf.TensorSpec((None, None) + x_shape, tf.float32)
    if with_label:
        y_shape = tuple(y_shape)
        signature = (x_spec, tf.TensorSpec((None, None) + y_shape, tf.as_dtype(y_dtype)))
    else:
        signature = x_spec

    def generator():
        for x, y in make_blocks():
            full = len(x) // batch_size * batch_size
            for lo, hi, k in ((0, full, full // batch_size), (full, len(x), 1)):
                if hi > lo:
                    xs = np.ascontiguousarray(x[lo:hi], dtype=np.float32).reshape((k, (hi - lo) // k) + x_shape)
                    if with_label:
                        yield xs, np.asarray(y[lo:hi], dtype=y_dtype).reshape((k, (hi - lo) // k) + y_shape)
                    else:
                        yield xs

    ds = tf.data.Dataset.from_generator(generator, output_signature=signature).unbatch()
    ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    # No autotuning: a fixed prefetch is the pipeline's one knob, and the autotuning thread does not wake when
    # its iterator is deleted, so the end of `fit` waited for its next period (up to 2.5 s on one rank).
    options.autotune.enabled = False
    return ds.with_options(options).prefetch(PREFETCH_BATCHES)


def validation_rows(df, validation: float | str | None, seed: int = 0):
    """The Column that is true on validation rows (None: no validation set), so the split is an expression that
    one pass can aggregate or write both sides of, not two DataFrames to compute.

    Args:
        df: the input DataFrame.
        validation: None (no validation set); a fraction in (0, 1): a row is a validation row when a hash of its
            values and `seed` falls in the last `validation` of the hash range, so the choice depends on the row
            alone (not on partitioning or order: every recomputation agrees, with no sort; identical rows go to the
            same side); or the name of a boolean column (true = validation row) or a string column whose value is
            "validation"/"val"/"valid" (case-insensitive) for validation rows; other values (and nulls) are
            training rows.
        seed: the fraction split's seed.

    Raises:
        ConfigError: a fraction outside (0, 1), an unknown column, or a column of another type.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType, MapType, StringType

    if validation is None:
        return None
    if isinstance(validation, bool):
        raise ConfigError("validation must be a fraction, a column name or None, not a bool")
    if isinstance(validation, (int, float)):
        if not 0.0 < float(validation) < 1.0:
            raise ConfigError(f"validation fraction must be in (0, 1), got {validation}")
        hashed = [F.col(f"`{f.name}`") for f in df.schema.fields if not isinstance(f.dataType, MapType)]
        unit = F.pmod(F.xxhash64(F.lit(int(seed)), *hashed), F.lit(_HASH_BUCKETS)) / float(_HASH_BUCKETS)
        return unit >= F.lit(1.0 - float(validation))
    if isinstance(validation, str):
        if validation not in df.columns:
            raise ConfigError(f"validation column {validation!r} not found; columns: {df.columns}")
        t = df.schema[validation].dataType
        if isinstance(t, BooleanType):
            return F.coalesce(F.col(validation), F.lit(False))
        if isinstance(t, StringType):
            return F.coalesce(F.lower(F.col(validation)).isin("validation", "val", "valid"), F.lit(False))
        raise ConfigError(f"validation column {validation!r} must be boolean or string, got {t.simpleString()}")
    raise ConfigError(f"validation must be a fraction, a column name or None, got {validation!r}")


_HASH_BUCKETS = 1 << 30


def split(df, validation: float | str | None, seed: int = 0):
    """Split a DataFrame into (train_df, val_df | None) by `validation_rows(df, validation, seed)`.

    Raises:
        ConfigError: as `validation_rows`.
    """
    is_val = validation_rows(df, validation, seed)
    if is_val is None:
        return df, None
    return df.where(~is_val), df.where(is_val)
