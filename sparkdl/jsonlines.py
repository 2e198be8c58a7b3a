"""Append-only JSON-lines files: the one way sparkdl appends records (the metric history, a run's epochs log) and
reads them back; and `json_value`, the one `default=` sparkdl's JSON writers use for values JSON has no type for.

A writer that dies mid-line leaves a torn last line. `append` first ends such a line (so the new record starts on
a line of its own and the torn one stays a single unreadable line), and `read` skips unreadable lines with a
warning naming the file and line: one torn write never hides the records written after it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sparkdl.log import get_logger

log = get_logger("jsonlines")


def json_value(value: Any) -> Any:
    """A JSON-able stand-in for `value` (the `default=` of `json.dumps`): numpy scalars and arrays as Python values,
    sets (sorted) and tuples as lists, paths as strings, dates and datetimes in ISO 8601, objects with `to_dict()`
    (FeatureSpec, ModelSignature, ...) as their dict.

    Raises:
        TypeError: any other type (the caller names where the value came from).
    """
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalars, without importing numpy
        return value.item()
    if hasattr(value, "tolist"):  # numpy arrays
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"{type(value).__name__} is not JSON serializable: {value!r:.200}")


def json_value_or_text(value: Any) -> Any:
    """`json_value`, or the value's text for a type it does not know (messages that must always go out)."""
    try:
        return json_value(value)
    except TypeError:
        return str(value)


def append(path: str | os.PathLike, record: Mapping[str, Any], default: Callable | None = str) -> str:
    """Append `record` as one line (one `write`, flushed and fsynced); returns the line written, without its end.

    Raises:
        TypeError, ValueError: the record cannot be written as JSON.
    """
    line = json.dumps(record, sort_keys=True, default=default)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        torn = handle.tell() > 0 and _last_byte(handle) != b"\n"
        handle.write((b"\n" if torn else b"") + line.encode("utf-8") + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    if torn:
        log.warning("%s: the last line was torn (a writer died mid-line); ended it before appending", path)
    return line


def read(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every readable record in the order written (a missing file: none); unreadable lines are skipped with a
    warning naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s: skipping unreadable line %d (a torn write?)", path, number)
            continue
        if isinstance(record, dict):
            out.append(record)
        else:
            log.warning("%s: skipping line %d, not a JSON object", path, number)
    return out


def _last_byte(handle) -> bytes:
    handle.seek(-1, os.SEEK_END)
    byte = handle.read(1)
    handle.seek(0, os.SEEK_END)
    return byte
