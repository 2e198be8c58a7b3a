"""The `sparkdl-write-*` folders of delta-rs writes, and the clean-up of the ones a killed write left behind.

Each delta-rs write puts its Parquet files into a fresh folder `sparkdl-write-<UTC time>-<write id>/` inside the
table; a committed write's folder stays the home of its files. A write that fails removes its folder, but a
process killed between the Spark job and the commit cannot: its folder holds files no version references. They
never change what the table reads (readers follow the log), only its size.

A folder is **debris** when all of these hold:
* its name carries a write id that no commit in the log carries (the write never committed);
* no file of the latest version is inside it;
* it is older than the given age (default 1 hour), so a write still in flight in another process is left alone;
* its time is after the first commit still in the log (an older folder might belong to a commit whose log file
  log clean-up removed).

Debris is removed after every successful delta-rs write and on demand by `sparkdl.lake.clean_staging` /
`sparkdl lake clean TABLE`.
"""
from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass

from sparkdl.lake.versions import history_entry
from sparkdl.log import get_logger

log = get_logger("lake.staging")

PREFIX = "sparkdl-write-"
DEFAULT_MIN_AGE = dt.timedelta(hours=1)
_NAME = re.compile(r"^" + re.escape(PREFIX) + r"(\d{8}T\d{6})-([0-9a-f]{12})$")


@dataclass(frozen=True)
class StagingFolder:
    """A `sparkdl-write-*` folder: its name, the time in its name (UTC) and its write-id prefix."""

    name: str
    created: dt.datetime
    write_id_prefix: str


def folder_name(write_id: str, now: float | None = None) -> str:
    """The staging folder name of a write: `sparkdl-write-<UTC time>-<first 12 hex digits of write_id>`."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{PREFIX}{stamp}-{write_id[:12]}"


def parse(name: str) -> StagingFolder | None:
    """The folder a name describes, or None for any other name."""
    match = _NAME.match(name)
    if not match:
        return None
    created = dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=dt.timezone.utc)
    return StagingFolder(name, created, match.group(2))


def remove(fs, root: str, name: str) -> None:
    """Delete one staging folder, best-effort (an unreferenced folder is harmless)."""
    try:
        fs.delete_dir(root.rstrip("/") + "/" + name)
    except Exception as exc:  # noqa: BLE001
        log.debug("could not remove %s/%s: %s", root, name, exc)


def debris(fs, root: str, table, active_files, min_age: dt.timedelta = DEFAULT_MIN_AGE,
           now: dt.datetime | None = None) -> list[StagingFolder]:
    """The debris folders of a table (see the module docstring).

    Args:
        fs, root: the table's pyarrow filesystem and root path.
        table: an open table with `history()` (commit infos, newest first) — read only when a candidate exists.
        active_files: the locations of the latest version's files.
        min_age: folders younger than this are kept.
    """
    import pyarrow.fs as pafs

    now = now or dt.datetime.now(dt.timezone.utc)
    candidates = []
    for info in fs.get_file_info(pafs.FileSelector(root.rstrip("/"), allow_not_found=True)):
        folder = parse(info.base_name) if info.type == pafs.FileType.Directory else None
        if folder is not None and now - folder.created >= min_age:
            candidates.append(folder)
    if not candidates:
        return []
    committed, first_ms, complete = _committed_write_ids(table.history())
    used = {name for name in (c.name for c in candidates) if any(f"/{name}/" in f for f in active_files)}
    return [c for c in candidates
            if c.name not in used and not any(w.startswith(c.write_id_prefix) for w in committed)
            and (complete or (first_ms is not None and c.created.timestamp() * 1000 > first_ms))]


def remove_debris(fs, root: str, table, active_files, min_age: dt.timedelta = DEFAULT_MIN_AGE,
                  dry_run: bool = False) -> list[str]:
    """Remove the debris folders (see `debris`); returns their names."""
    found = debris(fs, root, table, active_files, min_age)
    for folder in found:
        if not dry_run:
            remove(fs, root, folder.name)
        log.info("%s uncommitted write folder %s/%s (from %s)", "found" if dry_run else "removed", root,
                 folder.name, folder.created.isoformat())
    return [f.name for f in found]


def _committed_write_ids(history: list[dict]) -> tuple[set[str], int | None, bool]:
    """(write ids of the commits in `history`, the first commit's writer time in ms, whether version 0 is there)."""
    ids = {w for w in (history_entry(h["version"], h)["write_id"] for h in history if "version" in h)
           if isinstance(w, str)}
    versions = [(int(h["version"]), h.get("timestamp")) for h in history if "version" in h]
    first = min(versions) if versions else None
    return ids, (first[1] if first else None), bool(first and first[0] == 0)
