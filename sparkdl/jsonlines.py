"""Append-only JSON-lines files: the one way sparkdl appends records (the metric history, a run's epochs log) and
reads them back.

A writer that dies mid-line leaves a torn last line. `append` first ends such a line (so the new record starts on
a line of its own and the torn one stays a single unreadable line), and `read` skips unreadable lines with a
warning naming the file and line: one torn write never hides the records written after it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sparkdl.log import get_logger

log = get_logger("jsonlines")


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
