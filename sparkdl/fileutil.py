"""Small local-file helpers shared by the model store and the training checkpoints."""
from __future__ import annotations

import os
import uuid
from pathlib import Path


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
