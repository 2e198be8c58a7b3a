"""Encoded images (PNG, JPEG, GIF, BMP, WebP, ...) to pixel tensors: ONE decode used by validation, the training
reader, scoring and the baselines.

An image feature's column holds the encoded bytes (`binary`, what `spark.read.format("binaryFile")` gives in
`content`) or a path/URI per row (`string`, read through `sparkdl.uri.filesystem`: local paths, ``file:``,
``s3://``...). `ImageInput.prepare` turns an Arrow column of them into float32 ``(n, height, width, channels)``:

1. read (paths only) and decode with Pillow; the mode is converted to ``L`` (1 channel), ``RGB`` (3) or ``RGBA``
   (4), so grey, palette and colour files all give the declared channel count;
2. resize to ``height × width`` with Pillow's bilinear filter when the size differs (``resize: true``, the default);
   with ``resize: false`` an image of another size is a problem row instead;
3. scale: none (pixel values 0..255), ``minmax`` (÷255: the fixed range of 8-bit pixels, nothing fitted) or
   ``standard`` (per-channel mean and population standard deviation fitted in Spark on the decoded pixels).

Rows that cannot be decoded are never dropped silently: each gets a reason ("undecodable image: cannot identify
image file", "image is 12×10, expected 8×8 (resize: false)", "null"), which validation reports with a sample row id,
the training cache leaves out and counts, and scoring quarantines.

Pillow decodes per image (it has no batch decoder), but releases the GIL inside its codecs: batches are decoded on
a thread pool (`threads`, default: the CPU count), off the training thread.
"""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError

from sparkdl.errors import Problem, ValidationError
from sparkdl.uri import filesystem

MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_MIN_ROWS_PER_THREAD = 64


@dataclass(frozen=True)
class ImageInput:
    """How one image feature becomes a tensor; picklable, shipped to the training reader and to scoring.

    Attributes:
        name: the feature (column) name, for messages.
        shape: (height, width, channels), channels 1, 3 or 4.
        resize: resize other sizes (bilinear) instead of flagging them.
        scale: None, "minmax" (÷255) or "standard" (fitted `mean`/`std` per channel, on 0..255 values).
        mean, std: per-channel statistics for "standard".
    """

    name: str
    shape: tuple[int, int, int]
    resize: bool = True
    scale: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def decode(self, column, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 pixels (n, h, w, c), reasons (n,) object: None or why the row could not be decoded)."""
        return decode_images(column, self.shape, self.resize, self.name, threads)

    def prepare(self, column, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(float32 (n, h, w, c) scaled pixels — zeros for bad rows —, reasons (n,) object)."""
        pixels, reasons = self.decode(column, threads)
        x = pixels.astype(np.float32)
        if self.scale == "minmax":
            x *= np.float32(1.0 / 255.0)
        elif self.scale == "standard":
            std = np.asarray(self.std, dtype=np.float32)
            x -= np.asarray(self.mean, dtype=np.float32)
            x /= np.where(std > 0, std, 1.0).astype(np.float32)
        bad = ~np.equal(reasons, None)
        if bad.any():
            x[bad] = 0.0
        return x, reasons


def _encoded_values(column) -> tuple[list, bool]:
    """(per-row bytes/str/None, True when the values are paths) from an Arrow binary or string column."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not isinstance(column, pa.Array):
        column = pa.array(list(column))
    t = column.type
    paths = pa.types.is_string(t) or pa.types.is_large_string(t)
    if not (paths or pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_null(t)):
        raise ValidationError(f"image column: expected binary (encoded image bytes) or string (paths), got Arrow "
                              f"type {t}", [Problem("image", "wrong type", "binary or string", str(t))])
    return column.to_pylist(), paths


def _read(path: str) -> bytes:
    fs, local = filesystem(path)
    with fs.open_input_stream(local) as handle:
        return handle.read()


def decode_one(value, shape: tuple[int, int, int], resize: bool = True, is_path: bool = False):
    """(uint8 (h, w, c) array or None, reason or None) for one encoded image (bytes) or path."""
    height, width, channels = shape
    if value is None:
        return None, "null"
    try:
        data = _read(value) if is_path else value
    except (OSError, ValueError) as exc:
        return None, f"unreadable file {value!r}: {exc}"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert(MODES[channels])
            if img.size != (width, height):
                if not resize:
                    return None, f"image is {img.size[1]}×{img.size[0]}, expected {height}×{width} (resize: false)"
                img = img.resize((width, height), Image.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        message = str(exc).split(" <_io.")[0] or type(exc).__name__
        return None, f"undecodable image: {message}"
    return pixels.reshape(height, width, channels), None


def decode_images(column, shape, resize: bool = True, name: str = "image",
                  threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode an Arrow binary (encoded bytes) or string (paths) column; see the module docstring.

    Returns:
        (uint8 (n, h, w, c) pixels, zeros for bad rows; reasons (n,) object array: None, or
        "feature '<name>': <why>").
    """
    shape = tuple(int(d) for d in shape)
    values, paths = _encoded_values(column)
    n = len(values)
    out = np.zeros((n,) + shape, dtype=np.uint8)
    reasons = np.full(n, None, dtype=object)
    workers = max(1, min(threads or os.cpu_count() or 1, n // _MIN_ROWS_PER_THREAD))

    def run(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            pixels, why = decode_one(values[i], shape, resize, paths)
            if why is None:
                out[i] = pixels
            else:
                reasons[i] = f"feature {name!r}: {why}"

    if workers == 1:
        run(0, n)
    else:
        bounds = np.linspace(0, n, workers + 1).astype(int)
        with ThreadPoolExecutor(workers, thread_name_prefix="sparkdl-decode") as pool:
            list(pool.map(run, bounds[:-1], bounds[1:]))
    return out, reasons


def encoded_bytes(column, keep: np.ndarray | None = None) -> pa.Array:
    """The encoded bytes of each row as an Arrow binary array without nulls: a binary column as it is (nulls become
    empty), a path column's files read (only the rows where `keep` is True; others become empty)."""
    values, paths = _encoded_values(column)
    if not paths:
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        array = array.cast(pa.binary()) if not pa.types.is_binary(array.type) else array
        return pc.fill_null(array, pa.scalar(b"", pa.binary())) if array.null_count else array
    keep = np.ones(len(values), bool) if keep is None else keep
    return pa.array([_read(v) if k and v is not None else b"" for v, k in zip(values, keep)], type=pa.binary())


def channel_moments(column, shape, resize: bool = True) -> tuple[int, np.ndarray, np.ndarray]:
    """(decoded images, per-channel sum, per-channel sum of squares) over the decodable rows (float64)."""
    pixels, reasons = decode_images(column, shape, resize)
    ok = np.equal(reasons, None)
    good = pixels[ok].reshape(-1, shape[-1]).astype(np.float64)
    return int(ok.sum()), good.sum(axis=0), np.square(good).sum(axis=0)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of one uint8 (h, w) or (h, w, c) image (c = 1, 3 or 4)."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


__all__ = ["ImageInput", "decode_images", "decode_one", "channel_moments", "encoded_bytes", "encode_png"]
