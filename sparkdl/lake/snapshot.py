"""`Snapshot`: exactly which version of which Delta table a DataFrame came from (or a write produced)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Snapshot:
    """A resolved Delta table version.

    Attributes:
        table: the table URI (e.g. `file:///lake/digits`) or, with delta-spark, a catalog name.
        version: the resolved table version.
        timestamp: commit time of that version, ISO-8601 UTC.
        schema: the table schema as a Spark DDL string (`a INT, b ARRAY<FLOAT>`).
        partition_columns: partition column names.
        files: absolute URIs of the data files of that version (empty when the backend does not expose them).
        num_files: number of data files.
        num_rows: row count when the log has per-file stats, else None.
        backend: "delta-rs" or "delta-spark".
    """

    table: str
    version: int
    timestamp: str | None = None
    schema: str = ""
    partition_columns: tuple[str, ...] = ()
    files: tuple[str, ...] = field(default=(), repr=False)
    num_files: int = 0
    num_rows: int | None = None
    backend: str = "delta-rs"

    def lineage(self) -> dict:
        """The part of the snapshot recorded with models and predictions."""
        return {"table": self.table, "version": self.version, "timestamp": self.timestamp}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["partition_columns"] = list(self.partition_columns)
        data["files"] = list(self.files)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> "Snapshot":
        data = dict(data)
        data["partition_columns"] = tuple(data.get("partition_columns", ()))
        data["files"] = tuple(data.get("files", ()))
        return cls(**data)
