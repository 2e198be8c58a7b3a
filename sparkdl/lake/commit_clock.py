"""When each commit of a Delta table happened, as Delta's protocol defines it (the delta-rs backend).

A commit's time is its in-commit timestamp (`commitInfo.inCommitTimestamp`) for the versions written while the
`inCommitTimestamp` table feature is on, and otherwise the modification time of the commit's log file
(`_delta_log/<version>.json`) — not `commitInfo.timestamp`, which is the writer's own clock. File times are made
strictly increasing the way delta-spark does it (a commit no later than the one before it is taken as 1 ms after
it), so timestamp time travel resolves to the version delta-spark and delta-rs (`load_as_version(datetime)`)
resolve it to. Only versions whose log file is still there have a time (log clean-up removes the old ones).
"""
from __future__ import annotations

import re
from collections.abc import Callable

from sparkdl.errors import TableError
from sparkdl.lake.versions import iso_ms

_COMMIT_FILE = re.compile(r"^(\d{20})\.json$")
ICT_ENABLED = "delta.enableInCommitTimestamps"
ICT_VERSION = "delta.inCommitTimestampEnablementVersion"


def log_file_times(fs, root: str) -> dict[int, int]:
    """Version -> modification time (epoch ms) of each commit file in `root/_delta_log`, from one listing."""
    import pyarrow.fs as pafs

    times: dict[int, int] = {}
    for info in fs.get_file_info(pafs.FileSelector(root.rstrip("/") + "/_delta_log", allow_not_found=True)):
        match = _COMMIT_FILE.match(info.base_name)
        if match and info.type == pafs.FileType.File and info.mtime_ns is not None:
            times[int(match.group(1))] = info.mtime_ns // 1_000_000
    return times


def commit_times(file_times: dict[int, int], configuration: dict,
                 in_commit_timestamps: Callable[[], dict[int, int]]) -> dict[int, int]:
    """Version -> commit time (epoch ms) of every version with a log file.

    Args:
        file_times: from `log_file_times`.
        configuration: the table's configuration (for `delta.enableInCommitTimestamps` and its enablement version).
        in_commit_timestamps: called only when the feature is on: version -> `commitInfo.inCommitTimestamp`.
    """
    times: dict[int, int] = {}
    previous = None
    for version in sorted(file_times):
        stamp = file_times[version]
        if previous is not None and stamp <= previous:
            stamp = previous + 1
        times[version] = previous = stamp
    if str(configuration.get(ICT_ENABLED, "false")).lower() == "true":
        since = int(configuration.get(ICT_VERSION, 0) or 0)
        for version, stamp in in_commit_timestamps().items():
            if version >= since and version in times and stamp is not None:
                times[version] = int(stamp)
    return times


def version_at(times: dict[int, int], wanted_ms: int, table: str) -> int:
    """The latest version committed at or before `wanted_ms`.

    Raises:
        TableError: no commit times, or `wanted_ms` is before the first available commit.
    """
    if not times:
        raise TableError(f"{table}: no commit files in the log to resolve a timestamp against")
    first = min(times)
    if wanted_ms < times[first]:
        raise TableError(f"{table}: timestamp {iso_ms(wanted_ms)} is before the first available commit "
                         f"(version {first} at {iso_ms(times[first])})")
    return max(v for v, stamp in times.items() if stamp <= wanted_ms)
