"""Windows sliced from the series cache as it is read: the training input of a forecaster.

A `SeriesWindows` is one period's windows (`train`, `validation` or `test`) of a series cache
(`sparkdl.data.series`): the cache holds each series once, and a window is two slices of it — `lookback` steps of
every channel (scaled per series) as the input, the next `horizon` target values (scaled) as the label. Nothing is
materialized per window.

Sharding follows `sparkdl.data.dataset`'s rule: for epoch `e` every rank draws the same permutation of all the
period's windows (seeded by `seed + e`; across series and origins), and rank `r` of `size` takes windows
``[r * N // size, (r + 1) * N // size)`` of it, so every rank runs the same number of steps. Each rank holds the
series of the cache in memory (their size, not the windows': see `bench_forecast.py`) and gathers a block of
batches with one fancy index.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from sparkdl.data.dataset import batches_dataset
from sparkdl.data.petastorm_io import PetastormDataset
from sparkdl.data.series import VALUES
from sparkdl.errors import ConfigError
from sparkdl.parquet_reader import read_columns

PERIODS = ("train", "validation", "test")
BLOCK_WINDOWS = 16_384  # windows gathered per block (bounded further by bytes)
BLOCK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class SeriesWindows:
    """The windows of one period of a series cache (see the module docstring); picklable, sent to every rank.

    Attributes:
        data: the series cache.
        lookback, horizon, channels: a window's input steps, forecast steps and values per input step.
        stride: steps between window origins.
        lo, hi: the grid steps the window's targets must lie in, `[lo, hi)` (None: unbounded).
        starts, lengths: every series' first grid step and length, in cache order.
        num_rows: the number of windows.
    """

    data: PetastormDataset
    lookback: int
    horizon: int
    channels: int
    stride: int
    lo: int | None
    hi: int | None
    starts: tuple[int, ...]
    lengths: tuple[int, ...]
    num_rows: int = 0

    @classmethod
    def of(cls, data: PetastormDataset, starts, lengths, lookback: int, horizon: int, channels: int,
           stride: int = 1, lo: int | None = None, hi: int | None = None) -> "SeriesWindows":
        made = cls(data, int(lookback), int(horizon), int(channels), int(stride), lo, hi,
                   tuple(int(s) for s in starts), tuple(int(n) for n in lengths))
        return replace(made, num_rows=len(made.origins()[0]))

    def origins(self) -> tuple[np.ndarray, np.ndarray]:
        """(series index, position of the first target in the series) of every window, in cache order."""
        series, positions = [], []
        for i, (start, length) in enumerate(zip(self.starts, self.lengths)):
            first = self.lookback  # the earliest first-target position with a full history
            if self.lo is not None:
                first = max(first, self.lo - start)
            last = length - self.horizon  # the latest with a full horizon
            if self.hi is not None:
                last = min(last, self.hi - self.horizon - start)
            if last < first:
                continue
            pos = np.arange(first, last + 1, self.stride, dtype=np.int64)
            series.append(np.full(len(pos), i, np.int64))
            positions.append(pos)
        if not series:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(series), np.concatenate(positions)


def load_series(windows: SeriesWindows) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets): every series' scaled values stacked into one (total steps, channels) float32 array, and
    each series' first row in it."""
    parts = [read_columns([f], [VALUES, "length", "mean", "scale"]) for f in windows.data.files]
    lengths = np.concatenate([p.column("length").to_numpy() for p in parts]).astype(np.int64)
    if tuple(lengths.tolist()) != windows.lengths:
        raise ConfigError(f"the series cache {windows.data.url} changed since its windows were planned")
    channels = windows.channels
    values = np.concatenate([p.column(VALUES).combine_chunks().flatten().to_numpy(zero_copy_only=False)
                             for p in parts]).astype(np.float32).reshape(-1, channels)
    mean = np.concatenate([np.asarray(p.column("mean").to_pylist(), np.float64) for p in parts])
    scale = np.concatenate([np.asarray(p.column("scale").to_pylist(), np.float64) for p in parts])
    per_step = np.repeat(np.arange(len(lengths)), lengths)
    values -= mean[per_step].astype(np.float32)
    values /= scale[per_step].astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return values, offsets


def gather(values: np.ndarray, offsets: np.ndarray, series: np.ndarray, positions: np.ndarray, lookback: int,
           horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """The (inputs, targets) of windows (series, first-target position): (n, lookback, channels) and (n, horizon)."""
    first = offsets[series] + positions
    x = values[(first - lookback)[:, None] + np.arange(lookback)]
    y = values[first[:, None] + np.arange(horizon), 0]
    return x, y


def shard(num_windows: int, rank: int, size: int, epoch: int, shuffle: bool = True, seed: int = 0) -> np.ndarray:
    """The indices (into `SeriesWindows.origins()`) of the windows rank `rank` of `size` reads in `epoch`."""
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"rank must be in [0, size) and size >= 1, got rank={rank}, size={size}")
    per = num_windows // size
    if per == 0:
        raise ConfigError(f"{num_windows} windows cannot be shared by {size} ranks")
    order = np.random.default_rng([seed, epoch]).permutation(num_windows) if shuffle else np.arange(num_windows)
    return order[rank * per:(rank + 1) * per]


def iterate_windows(windows: SeriesWindows, rank: int, size: int, batch_size: int, shuffle: bool = True,
                    seed: int = 0, epochs: int = 1, first_epoch: int = 0):
    """Yield blocks (x, y) of whole batches for one rank, epoch after epoch from `first_epoch` (each epoch's order
    depends only on the seed and its number; see the module docstring)."""
    shard(windows.num_rows, rank, size, 0)  # bad rank/size: before the series are read
    values, offsets = load_series(windows)
    series, positions = windows.origins()
    row_bytes = (windows.lookback * windows.channels + windows.horizon) * 4
    block = max(batch_size, min(BLOCK_WINDOWS, BLOCK_BYTES // row_bytes) // batch_size * batch_size)
    for epoch in range(first_epoch, first_epoch + epochs):
        mine = shard(len(series), rank, size, epoch, shuffle, seed)
        for lo in range(0, len(mine), block):
            pick = mine[lo:lo + block]
            yield gather(values, offsets, series[pick], positions[pick], windows.lookback, windows.horizon)


def windows_tf_dataset(windows: SeriesWindows, rank: int, size: int, batch_size: int, input_shape=None,
                       shuffle: bool = True, seed: int = 0, epochs: int = 1, first_epoch: int = 0):
    """A `tf.data.Dataset` of `(inputs, targets)` batches for Horovod rank `rank` of `size`: the window
    counterpart of `sparkdl.data.dataset.tf_dataset` (same sharding rule, same finite length)."""
    shape = (windows.lookback, windows.channels)
    if input_shape is not None and tuple(int(d) for d in input_shape) != shape:
        raise ConfigError(f"the model's input shape {tuple(input_shape)} is not the windows' {shape}")
    steps = math.ceil(windows.num_rows // size / batch_size) * epochs
    return batches_dataset(lambda: iterate_windows(windows, rank, size, batch_size, shuffle, seed, epochs,
                                                   first_epoch),
                           batch_size, shape, (windows.horizon,), np.float32, steps)


__all__ = ["PERIODS", "SeriesWindows", "gather", "iterate_windows", "load_series", "shard", "windows_tf_dataset"]
