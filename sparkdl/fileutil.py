"""Small local-file helpers shared by the model store and the training checkpoints."""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from sparkdl.errors import ConfigError

# The one rule for names that become folder or file names (models, aliases, runs, studies, builders): letters,
# digits, '_', '.' and '-'. `fullmatch`: a pattern ending in `$` would let a trailing newline through.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def is_safe_name(name) -> bool:
    """Whether `name` is a string of [A-Za-z0-9_.-]+ other than `.` and `..` (no newline, no path separator)."""
    return isinstance(name, str) and _SAFE_NAME.fullmatch(name) is not None and name not in (".", "..")


def check_name(name, what: str) -> str:
    """Return `name` if `is_safe_name(name)`; else raise ConfigError naming `what` it is."""
    if not is_safe_name(name):
        raise ConfigError(f"invalid {what} {name!r}: use letters, digits, '_', '.' and '-' only")
    return name


def write_atomic(path: Path, data: bytes, tmp_prefix: str = ".tmp-") -> None:
    """Write `data` to `path` through a fsynced temporary sibling and a rename: readers see all or nothing."""
    tmp = path.with_name(f"{tmp_prefix}{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
