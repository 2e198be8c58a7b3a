"""Checkpoints of a training run, written by rank 0 (`RankCheckpointing`), and what a rerun or a recovery resumes
from: one per epoch (`checkpoint_every`), and with `checkpoint_every_steps` also within epochs.

Layout under `<work_dir>/runs/<run_name>/`::

    run.json                       what the run trains (model, input shape, ...): a rerun must match it
    epochs.jsonl                   one line per finished epoch and attempt (epoch, attempt, logs, time)
    checkpoints/epoch-0003.keras   the model after epoch 3 (Keras v3; load with compile=False)
    checkpoints/epoch-0003.optimizer.npz   the optimizer's variables (iterations and slots), in order
    checkpoints/epoch-0003.json    {"epoch": 3, "history": {...}, ...}: written LAST, so it marks the
                                   checkpoint complete
    checkpoints/epoch-0004-step-000120.*   the state after 120 steps of epoch 4 (the same three files)

A checkpoint within an epoch holds the model, the optimizer and the data position: the epoch and how many of its
steps were taken. Each epoch's data order depends only on the seed and the epoch's number
(`sparkdl.data.dataset`), so a resumed rank skips exactly the batches it had read and reads the rest.

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

_MARKER = re.compile(r"^epoch-(\d{4,})(?:-step-(\d{6,}))?\.json$")


def check_run_name(run_name: str) -> str:
    """Return `run_name` if it is a safe folder name; else raise ConfigError."""
    if not is_safe_name(run_name):
        raise ConfigError(f"run_name {run_name!r}: use letters, digits, '_', '.' and '-' only")
    return run_name



@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint: the state after `epoch` (0-based) finished, or with `step`, after `step` steps of it.

    `history` holds the logs of the epochs that finished before it."""

    epoch: int
    model_path: Path
    optimizer_path: Path
    info: dict
    step: int | None = None

    @property
    def resume_epoch(self) -> int:
        """The epoch a run resumed from this checkpoint trains first."""
        return self.epoch if self.step is not None else self.epoch + 1

    @property
    def resume_step(self) -> int:
        """The steps of `resume_epoch` already taken (skipped when resuming)."""
        return self.step or 0

    @property
    def key(self) -> tuple[int, float]:
        """Order of checkpoints: by epoch, a complete epoch after every step checkpoint of it."""
        return (self.epoch, float("inf") if self.step is None else self.step)

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
    @staticmethod
    def _stem(epoch: int, step: int | None = None) -> str:
        return f"epoch-{epoch:04d}" + (f"-step-{step:06d}" if step is not None else "")

    def write(self, epoch: int, model: bytes, optimizer: bytes, info: dict, step: int | None = None) -> Checkpoint:
        """Write the checkpoint of `epoch` (with `step`: after that many steps of it); the JSON marker goes last
        (write-then-rename for every file)."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        stem = self._stem(epoch, step)
        model_path = self.checkpoints / f"{stem}.keras"
        optimizer_path = self.checkpoints / f"{stem}.optimizer.npz"
        write_atomic(model_path, model)
        write_atomic(optimizer_path, optimizer)
        info = {**info, "epoch": int(epoch), "step": step, "written_at": time.time(),
                "model_file": model_path.name, "optimizer_file": optimizer_path.name}
        write_atomic(self.checkpoints / f"{stem}.json", json.dumps(info, sort_keys=True, default=str).encode())
        return Checkpoint(int(epoch), model_path, optimizer_path, info, step)

    def _keys(self) -> list[tuple[int, int | None]]:
        """(epoch, step) of every checkpoint marker, oldest first (a complete epoch after its step checkpoints)."""
        if not self.checkpoints.is_dir():
            return []
        keys = []
        for path in self.checkpoints.iterdir():
            match = _MARKER.match(path.name)
            if match:
                keys.append((int(match.group(1)), int(match.group(2)) if match.group(2) else None))
        return sorted(keys, key=lambda k: (k[0], float("inf") if k[1] is None else k[1]))

    def list(self) -> list[int]:
        """Epochs with a complete end-of-epoch checkpoint, ascending."""
        return [epoch for epoch, step in self._keys() if step is None]

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint (end of epoch or within one) whose files are all present, or None."""
        for epoch, step in reversed(self._keys()):
            checkpoint = self.latest_of(epoch, step)
            if checkpoint is not None:
                return checkpoint
            log.warning("%s: checkpoint %s is unreadable or lacks its files, skipped", self, self._stem(epoch, step))
        return None

    def latest_epoch_end(self) -> Checkpoint | None:
        """The newest complete end-of-epoch checkpoint (a resume on other shards cannot use a step position)."""
        for epoch in reversed(self.list()):
            checkpoint = self.latest_of(epoch, None)
            if checkpoint is not None:
                return checkpoint
        return None

    def latest_of(self, epoch: int, step: int | None) -> Checkpoint | None:
        """The checkpoint (epoch, step) when complete, else None."""
        stem = self._stem(epoch, step)
        try:
            info = json.loads((self.checkpoints / f"{stem}.json").read_text())
        except (OSError, ValueError):
            return None
        model_path = self.checkpoints / info.get("model_file", f"{stem}.keras")
        optimizer_path = self.checkpoints / info.get("optimizer_file", f"{stem}.optimizer.npz")
        if model_path.is_file() and optimizer_path.is_file():
            return Checkpoint(epoch, model_path, optimizer_path, info, step)
        return None

    def prune(self, keep: int) -> None:
        """Remove all but the newest `keep` complete checkpoints (step checkpoints count as checkpoints)."""
        keys = self._keys()
        for epoch, step in keys[:-keep] if keep > 0 else []:
            stem = self._stem(epoch, step)
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
        every_steps: also a checkpoint every this many steps within an epoch (None: at epochs' ends only).
        history: {epoch: logs} of the epochs before this attempt (a resumed run's).
    """

    work_dir: str
    run_name: str
    attempt: int
    every: int = 1
    keep: int = 0
    history: dict = field(default_factory=dict)
    every_steps: int | None = None

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

    def write_step(self, epoch: int, step: int, model: bytes, optimizer: bytes,
                   epoch_logs: Mapping[int, dict]) -> None:
        """The checkpoint after `step` steps of `epoch` (with the history of the epochs before it); then prune."""
        history = {**self.history, **epoch_logs}
        folder = self.folder()
        folder.write(epoch, model, optimizer, {"attempt": self.attempt,
                                               "history": keras_history(history, upto=epoch - 1)}, step=step)
        if self.keep:
            folder.prune(self.keep)
