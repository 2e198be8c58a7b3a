"""Version and timestamp arguments, commit metadata and history entries shared by both backends."""
from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass

from sparkdl.errors import TableError

WRITE_ID_KEY = "sparkdl.writeId"
RESERVED_KEYS = {"timestamp", "operation", "operationParameters", "readVersion", "userId", "userName",
                 "userMetadata", "isolationLevel", "isBlindAppend", "engineInfo", "clientVersion", "version",
                 "operationMetrics", "inCommitTimestamp", "txnId", WRITE_ID_KEY}


def check_version_args(version, timestamp, table: str) -> None:
    """Raise `TableError` for a negative/non-integer version, or for both version and timestamp."""
    if version is not None and timestamp is not None:
        raise TableError(f"{table}: pass version or timestamp, not both")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise TableError(f"{table}: version must be an integer >= 0, got {version!r}")


def parse_timestamp(value, table: str) -> dt.datetime:
    """A timezone-aware UTC datetime from a datetime, date or ISO-8601 string (naive values are UTC).

    Raises:
        TableError: the value is not a datetime, date or ISO-8601 string.
    """
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise TableError(f"{table}: timestamp {value!r} is not ISO-8601 (e.g. '2024-05-01T12:00:00Z')") from exc
    elif isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, dt.datetime):
        raise TableError(f"{table}: timestamp must be a datetime or an ISO-8601 string, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def iso_ms(millis: int | None) -> str | None:
    """ISO-8601 UTC text of epoch milliseconds."""
    if millis is None:
        return None
    return dt.datetime.fromtimestamp(millis / 1000, tz=dt.timezone.utc).isoformat(timespec="milliseconds")


def to_millis(value: dt.datetime) -> int:
    return int(round(value.timestamp() * 1000))


def check_commit_metadata(metadata, table: str) -> dict:
    """Validate `commit_metadata`: a dict of str -> str or JSON-able values, no reserved commit-info keys.

    Raises:
        TableError: not a dict, a non-string or reserved key, or a value that is not JSON-serializable.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TableError(f"commit_metadata for {table} must be a dict of str -> str/JSON values, "
                         f"got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise TableError(f"commit_metadata for {table}: keys must be non-empty strings, got {key!r}")
        if key in RESERVED_KEYS:
            raise TableError(f"commit_metadata for {table}: {key!r} is a reserved Delta commit-info key")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TableError(f"commit_metadata for {table}: value of {key!r} is not JSON-serializable "
                             f"({exc})") from exc
        if isinstance(value, float) and not math.isfinite(value):
            raise TableError(f"commit_metadata for {table}: value of {key!r} must be finite")
    return dict(metadata)


def user_metadata(metadata: dict, write_id: str) -> str:
    """The `userMetadata` string of a commit: the commit metadata plus the write id, as JSON."""
    return json.dumps({**metadata, WRITE_ID_KEY: write_id}, sort_keys=True)


def history_entry(version: int, info: dict, commit_millis: int | None = None) -> dict:
    """One `history()` entry: version, timestamp (ISO UTC: `commit_millis` when given — the commit time Delta
    defines — else the commit info's own), operation, metadata (the commit_metadata dict), write_id, and the raw
    commit info."""
    raw = info.get("userMetadata")
    metadata: dict = {}
    if isinstance(raw, str) and raw:
        try:
            parsed = json.loads(raw)
            metadata = parsed if isinstance(parsed, dict) else {"userMetadata": raw}
        except ValueError:
            metadata = {"userMetadata": raw}
    write_id = metadata.pop(WRITE_ID_KEY, None) or info.get(WRITE_ID_KEY)
    stamp = info.get("timestamp") if commit_millis is None else commit_millis
    if isinstance(stamp, dt.datetime):
        stamp = stamp.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")
    elif isinstance(stamp, (int, float)):
        stamp = iso_ms(int(stamp))
    return {"version": int(version), "timestamp": stamp, "operation": info.get("operation"),
            "metadata": metadata, "write_id": write_id, "commit_info": info}


@dataclass(frozen=True)
class Txn:
    """A Delta transaction identifier (the `txn` action Spark's streaming sinks write): a write carrying one
    commits only if the table has not committed `version` (or a later one) for `app_id`, checked as part of the
    commit itself, so two identical runs at once commit once.

    Attributes:
        app_id: who writes (a stream's id, a hash of a scoring run's inputs).
        version: which of its writes this is (a micro-batch id; 0 for a one-off run).
    """

    app_id: str
    version: int = 0

    def __post_init__(self):
        if not isinstance(self.app_id, str) or not self.app_id or len(self.app_id) > 256:
            raise TableError(f"Txn.app_id must be a non-empty string of at most 256 characters, got {self.app_id!r}")
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 0:
            raise TableError(f"Txn.version must be an int >= 0, got {self.version!r}")
