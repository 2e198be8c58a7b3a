"""The `sparkdl-write-*` folders of delta-rs writes, and the clean-up of the ones a killed write left behind.

Each delta-rs write puts its Parquet files into a fresh folder `sparkdl-write-<UTC time>-<write id>/` inside the
table; a committed write's folder stays the home of its files. A write that fails removes its folder, but a
process killed between the Spark job and the commit cannot: its folder holds files no version references. They
never change what the table reads (readers follow the log), only its size.

A write in flight holds a **lease** on its folder: a file `_sparkdl_leases/<folder name>` in the table's root,
recording when it was last refreshed, that the writing process rewrites every `LEASE_REFRESH_S` seconds and
removes when the write ends. A lease is alive while it is younger than `LEASE_TIMEOUT_S` (by the time it records,
so storage without modification times works too). Before committing, a write checks that it still holds its lease
and that its staged files are all there (`Lease.fence`), else it fails instead of committing files a clean-up may
have taken. A folder is **debris** when all of these hold:
* no live lease is on it (a write in flight, however long it takes, is never removed);
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
import json
import re
import threading
import time
from dataclasses import dataclass

import pyarrow.fs as pafs

from sparkdl.errors import TableError
from sparkdl.lake.versions import history_entry
from sparkdl.log import get_logger

log = get_logger("lake.staging")

PREFIX = "sparkdl-write-"
DEFAULT_MIN_AGE = dt.timedelta(hours=1)
LEASES = "_sparkdl_leases"  # Delta readers and VACUUM skip folders whose names start with "_"
LEASE_REFRESH_S = 30.0
LEASE_TIMEOUT_S = 300.0
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


class Lease:
    """The lease of a write in flight on its staging folder (see the module docstring): `start()` writes it and
    refreshes it from a daemon thread every `refresh_s` seconds; `fence()` checks, right before the commit, that
    it is still held; `stop()` removes it. Only the lease's own file is ever deleted here: the shared
    `_sparkdl_leases/` folder is left to `clean_staging`, so a lease created meanwhile by another writer survives.
    """

    def __init__(self, fs, root: str, name: str, refresh_s: float = LEASE_REFRESH_S,
                 timeout_s: float = LEASE_TIMEOUT_S):
        self.fs, self.root, self.name = fs, root.rstrip("/"), name
        self.path, self.refresh_s, self.timeout_s = f"{self.root}/{LEASES}/{name}", refresh_s, timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refreshed = 0.0  # monotonic time of the last successful refresh

    def start(self) -> "Lease":
        self._touch()
        self._thread = threading.Thread(target=self._refresh, name=f"sparkdl-lease-{self.path[-12:]}", daemon=True)
        self._thread.start()
        return self

    def _touch(self) -> None:
        self.fs.create_dir(f"{self.root}/{LEASES}", recursive=True)  # another writer may have removed it
        holder = {"time": time.time(), "refresh_s": self.refresh_s}
        with self.fs.open_output_stream(self.path) as stream:
            stream.write(json.dumps(holder).encode())
        self._refreshed = time.monotonic()

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self._touch()
            except Exception as exc:  # noqa: BLE001 - the next refresh tries again; the fence sees a stale lease
                log.warning("could not refresh the write lease %s: %s", self.path, exc)

    def fence(self, files: list[str] | None = None) -> None:
        """Check, right before the commit, that this write still holds its lease: refreshed within the timeout
        (less one refresh, the margin a cleaner's clock needs), its file still there, and its staged `files`
        (paths relative to the table root, inside this lease's folder) all present, read in one listing. A write
        that lost its lease may have lost files to a clean-up: committing would reference missing files.

        Raises:
            TableError: the lease is stale or gone, or staged files are missing.
        """
        age = time.monotonic() - self._refreshed
        if age > self.timeout_s - self.refresh_s:
            raise TableError(f"the write's lease {self.path} was last refreshed {age:.0f} s ago (timeout "
                             f"{self.timeout_s:.0f} s): a clean-up may have removed its files; not committing")
        if lease_time(self.fs, self.path) is None:
            raise TableError(f"the write's lease {self.path} is gone: a clean-up may have removed its files; not "
                             f"committing")
        base = f"{self.root}/{self.name}"
        present = {info.path[len(self.root) + 1:] for info in self.fs.get_file_info(
            pafs.FileSelector(base, recursive=True, allow_not_found=True)) if info.type == pafs.FileType.File}
        missing = sorted(set(files or []) - present)
        if missing:
            raise TableError(f"{len(missing)} staged file(s) of the write are gone (e.g. {missing[0]}); not "
                             f"committing")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.fs.delete_file(self.path)
        except Exception as exc:  # noqa: BLE001 - a stale lease only delays the folder's clean-up
            log.debug("could not remove the write lease %s: %s", self.path, exc)


def lease_time(fs, path: str) -> float | None:
    """When the lease in `path` was last refreshed (the time it records; its mtime for a lease without one), or
    None when there is no such lease."""
    try:
        with fs.open_input_stream(path) as stream:
            holder = json.loads(stream.read().decode())
        if isinstance(holder, dict) and isinstance(holder.get("time"), (int, float)):
            return float(holder["time"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being rewritten: its mtime tells
        pass
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return None
    return info.mtime.timestamp() if info.mtime is not None else time.time()  # no mtime either: count it alive


def alive(fs, root: str, now: float | None = None, timeout_s: float = LEASE_TIMEOUT_S) -> set[str]:
    """The staging folders whose lease was refreshed within `timeout_s` seconds (their writes are in flight). The
    age is read from the lease itself, so this works on storage without modification times; liveness is never
    judged by host name and process id (containers share host names, not process ids)."""
    now = time.time() if now is None else now
    names = set()
    for info in fs.get_file_info(pafs.FileSelector(f"{root.rstrip('/')}/{LEASES}", allow_not_found=True)):
        if info.type != pafs.FileType.File:
            continue
        refreshed = lease_time(fs, info.path)
        if refreshed is not None and now - refreshed < timeout_s:
            names.add(info.base_name)
    return names


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
    now = now or dt.datetime.now(dt.timezone.utc)
    candidates = []
    for info in fs.get_file_info(pafs.FileSelector(root.rstrip("/"), allow_not_found=True)):
        folder = parse(info.base_name) if info.type == pafs.FileType.Directory else None
        if folder is not None and now - folder.created >= min_age:
            candidates.append(folder)
    if candidates:
        in_flight = alive(fs, root, now.timestamp())
        candidates = [c for c in candidates if c.name not in in_flight]
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
