"""Per-epoch checkpoints of a training run, written by rank 0 (`RankCheckpointing`), and what a rerun resumes from.

Layout under `<work_dir>/runs/<run_name>/`::

    run.json                       what the run trains (model, input shape, ...): a rerun must match it
    epochs.jsonl                   one line per finished epoch and attempt (epoch, attempt, logs, time)
    checkpoints/epoch-0003.keras   the model after epoch 3 (Keras v3; load with compile=False)
    checkpoints/epoch-0003.optimizer.npz   the optimizer's variables (iterations and slots), in order
    checkpoints/epoch-0003.json    {"epoch": 3, "history": {...}, ...}: written LAST, so it marks the
                                   checkpoint complete

Every file is written under a temporary name and renamed into place, and the JSON marker only after the model
and optimizer files: a crash mid-write never leaves a half checkpoint that `latest()` would pick. Rank 0 writes
the checkpoints and the epochs log itself (nothing travels through the driver, which a Spark Connect client's
executors may not reach), so the work folder must be on storage every node sees, as the Petastorm cache is.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sparkdl import jsonlines
from sparkdl.errors import ConfigError
from sparkdl.fileutil import is_safe_name, write_atomic
from sparkdl.log import get_logger
from sparkdl.session import work_dir as default_work_dir

log = get_logger("train")

_MARKER = re.compile(r"^epoch-(\d{4,})\.json$")


def check_run_name(run_name: str) -> str:
    """Return `run_name` if it is a safe folder name; else raise ConfigError."""
    if not is_safe_name(run_name):
        raise ConfigError(f"run_name {run_name!r}: use letters, digits, '_', '.' and '-' only")
    return run_name



@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint: the state after `epoch` (0-based) finished."""

    epoch: int
    model_path: Path
    optimizer_path: Path
    info: dict

    def model_bytes(self) -> bytes:
        return self.model_path.read_bytes()

    def optimizer_bytes(self) -> bytes:
        return self.optimizer_path.read_bytes()

    @property
    def history(self) -> dict[str, list]:
        return dict(self.info.get("history") or {})


class RunFolder:
    """The folder of one training run: its checkpoints, its epochs log and its settings.

    Args:
        work_dir: the sparkdl work folder (default `sparkdl.session.work_dir()`).
        run_name: the run's name ([A-Za-z0-9_.-]+).
    """

    def __init__(self, work_dir: str | os.PathLike | None, run_name: str):
        if work_dir is None:
            work_dir = default_work_dir()
        self.run_name = check_run_name(run_name)
        self.path = Path(work_dir) / "runs" / run_name
        self.checkpoints = self.path / "checkpoints"

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- settings ----------------------------------------------------------------------------------------------
    def settings(self) -> dict | None:
        path = self.path / "run.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def write_settings(self, settings: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path / "run.json", json.dumps(settings, indent=2, sort_keys=True).encode())

    def reset(self) -> None:
        """Forget earlier attempts: remove checkpoints, settings and the epochs log."""
        if self.path.exists():
            shutil.rmtree(self.path)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _stem(self, epoch: int) -> str:
        return f"epoch-{epoch:04d}"

    def write(self, epoch: int, model: bytes, optimizer: bytes, info: dict) -> Checkpoint:
        """Write the checkpoint of `epoch`; the JSON marker goes last (write-then-rename for every file)."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        stem = self._stem(epoch)
        model_path = self.checkpoints / f"{stem}.keras"
        optimizer_path = self.checkpoints / f"{stem}.optimizer.npz"
        write_atomic(model_path, model)
        write_atomic(optimizer_path, optimizer)
        info = {**info, "epoch": int(epoch), "written_at": time.time(),
                "model_file": model_path.name, "optimizer_file": optimizer_path.name}
        write_atomic(self.checkpoints / f"{stem}.json", json.dumps(info, sort_keys=True, default=str).encode())
        return Checkpoint(int(epoch), model_path, optimizer_path, info)

    def list(self) -> list[int]:
        """Epochs with a complete checkpoint, ascending."""
        if not self.checkpoints.is_dir():
            return []
        epochs = []
        for path in self.checkpoints.iterdir():
            match = _MARKER.match(path.name)
            if match:
                epochs.append(int(match.group(1)))
        return sorted(epochs)

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint whose files are all present, or None."""
        for epoch in reversed(self.list()):
            stem = self._stem(epoch)
            try:
                info = json.loads((self.checkpoints / f"{stem}.json").read_text())
            except (OSError, ValueError):
                log.warning("%s: unreadable checkpoint marker %s.json, skipped", self, stem)
                continue
            model_path = self.checkpoints / info.get("model_file", f"{stem}.keras")
            optimizer_path = self.checkpoints / info.get("optimizer_file", f"{stem}.optimizer.npz")
            if model_path.is_file() and optimizer_path.is_file():
                return Checkpoint(epoch, model_path, optimizer_path, info)
            log.warning("%s: checkpoint %s lacks its files, skipped", self, stem)
        return None

    def prune(self, keep: int) -> None:
        """Remove all but the newest `keep` complete checkpoints (and stray temporary files)."""
        epochs = self.list()
        for epoch in epochs[:-keep] if keep > 0 else []:
            stem = self._stem(epoch)
            (self.checkpoints / f"{stem}.json").unlink(missing_ok=True)  # marker first: never a half "latest"
            for suffix in (".keras", ".optimizer.npz"):
                (self.checkpoints / f"{stem}{suffix}").unlink(missing_ok=True)

    # -- epochs log --------------------------------------------------------------------------------------------
    def log_epoch(self, epoch: int, attempt: int, logs: dict, **extra) -> None:
        jsonlines.append(self.path / "epochs.jsonl",
                         {"epoch": int(epoch), "attempt": int(attempt), "logs": logs, "time": time.time(), **extra})

    def epochs_log(self) -> list[dict]:
        """Every readable line of the epochs log, in order (`sparkdl.jsonlines`)."""
        return jsonlines.read(self.path / "epochs.jsonl")

    def next_attempt(self) -> int:
        return 1 + max((e["attempt"] for e in self.epochs_log()), default=0)


def keras_history(history: Mapping[int, dict], upto: int | None = None) -> dict[str, list]:
    """{epoch: logs} -> Keras-style {"epoch": [...], "loss": [...], ...} (epochs ascending, up to `upto`)."""
    epochs = sorted(e for e in history if upto is None or e <= upto)
    keys = sorted({k for e in epochs for k in history[e]})
    out: dict[str, list] = {"epoch": epochs}
    for key in keys:
        out[key] = [history[e].get(key) for e in epochs]
    return out


@dataclass(frozen=True)
class RankCheckpointing:
    """What rank 0 needs to keep a run's checkpoints and epochs log (pickled with the training job).

    Attributes:
        work_dir: the work folder, resolved on the driver (the same path on every node).
        run_name: the run's name.
        attempt: this attempt's number (1 for a new run, +1 per resume).
        every: a checkpoint after every `every`-th epoch.
        keep: complete checkpoints kept (0 = all).
        history: {epoch: logs} of the epochs before this attempt (a resumed run's).
    """

    work_dir: str
    run_name: str
    attempt: int
    every: int = 1
    keep: int = 0
    history: dict = field(default_factory=dict)

    def folder(self) -> RunFolder:
        return RunFolder(self.work_dir, self.run_name)

    def log_epoch(self, epoch: int, logs: dict, **extra) -> None:
        self.folder().log_epoch(epoch, self.attempt, logs, **extra)

    def write(self, epoch: int, model: bytes, optimizer: bytes, epoch_logs: Mapping[int, dict]) -> None:
        """The checkpoint of `epoch` (when it is due), with the history so far; then prune to `keep`."""
        if (epoch + 1) % max(1, int(self.every)):
            return
        history = {**self.history, **epoch_logs}
        folder = self.folder()
        folder.write(epoch, model, optimizer, {"attempt": self.attempt, "history": keras_history(history, upto=epoch)})
        if self.keep:
            folder.prune(self.keep)
