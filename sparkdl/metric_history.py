"""`MetricHistory`: an append-only JSON-lines file of evaluation records, one line per evaluation (written by
`sparkdl.evaluate.evaluate_model`, read by people and dashboards to follow a model's metrics over time)."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sparkdl import jsonlines
from sparkdl.errors import ValidationError


class MetricHistory:
    """An append-only JSON-lines file of evaluation records, one line per evaluation.

    A record holds `model` (name, required), `model_version`, `table`, `table_version`, `timestamp` (UTC ISO
    8601, added when missing) and `metrics` (a dict, required); other keys are kept as given. Each record is
    written with a single `write` on a file opened for appending, then flushed and fsynced.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise ValidationError(
                f"metric history path {str(self.path)!r} is a folder; give a .jsonl file path"
            )

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append one evaluation record; returns it as stored (with its timestamp).

        Raises ValidationError: not a dict, no `model` name, `metrics` missing or not a dict, or values that
        cannot be written as JSON.
        """
        if not isinstance(record, Mapping):
            raise ValidationError(f"a metric record must be a dict, got {type(record).__name__}")
        if not isinstance(record.get("model"), str) or not record["model"]:
            raise ValidationError("a metric record needs 'model': the model name (a non-empty string)")
        if not isinstance(record.get("metrics"), Mapping):
            raise ValidationError(f"metric record of model {record['model']!r} needs 'metrics': a dict")
        stored = dict(record)
        stored.setdefault("timestamp", datetime.now(timezone.utc).isoformat())
        try:
            line = jsonlines.append(self.path, stored, default=_plain)
        except (TypeError, ValueError) as exc:
            raise ValidationError(
                f"metric record of model {record['model']!r} cannot be written as JSON: {exc}"
            ) from exc
        return json.loads(line)

    def records(self, model: str | None = None) -> list[dict[str, Any]]:
        """All records in the order written, or those of `model`. A missing file is an empty history; a line a
        writer tore (died mid-line) is skipped with a warning, and the records after it are kept
        (`sparkdl.jsonlines`)."""
        return [r for r in jsonlines.read(self.path) if model is None or r.get("model") == model]

    def to_pandas(self, model: str | None = None):
        """The records as a pandas DataFrame: one row per record, metrics flattened to `metrics.<name>`
        columns, `timestamp` parsed as UTC datetimes."""
        import pandas as pd

        frame = pd.json_normalize(self.records(model))
        if "timestamp" in frame.columns:
            frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
        return frame

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records())

    def __len__(self) -> int:
        return len(self.records())


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"value of type {type(value).__name__} is not JSON serializable: {value!r}")


__all__ = ["MetricHistory"]
