"""Exceptions raised by sparkdl. Every message names the table, column, key or parameter at fault."""
import re
from dataclasses import asdict, dataclass


class SparkDLError(Exception):
    """Base class of all sparkdl errors."""


class ConfigError(SparkDLError, ValueError):
    """A configuration file or value is invalid (unknown key, missing key, wrong type)."""


class SessionError(SparkDLError, RuntimeError):
    """The Spark session cannot be built as configured (e.g. Delta jars that cannot be found)."""


class TableError(SparkDLError, ValueError):
    """A Delta table is missing, cannot be read at the requested version, or rejects a write."""


class UnsupportedTableFeature(TableError):
    """The table uses a Delta feature the active backend cannot read correctly."""


class SchemaMismatchError(TableError):
    """The data to write does not match the table's schema."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, as every check reports it: the column, what is wrong ("missing column",
    "wrong type", "null", "wrong length", ...), what was expected, what was found, how many rows (None: a schema
    problem) and a few sample values. Reads like the dict it serializes to: `problem["column"]`."""

    column: str
    problem: str
    expected: str = ""
    found: str = ""
    count: int | None = None
    samples: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "samples", tuple(self.samples))

    def __getitem__(self, key: str):
        return getattr(self, key)

    def __str__(self) -> str:
        return f"{self.column}: {self.problem} (expected {self.expected}, found {self.found})"

    def to_dict(self) -> dict:
        return {**asdict(self), "samples": list(self.samples)}


class ValidationError(SparkDLError, ValueError):
    """Input data does not match the feature spec (missing columns, wrong types, bad values); `problems` lists
    every `Problem` found."""

    def __init__(self, message: str, problems: list | None = None):
        super().__init__(message)
        self.problems = list(problems or [])
        if not all(isinstance(p, Problem) for p in self.problems):
            raise TypeError("ValidationError problems must be sparkdl.errors.Problem records")


class TrainingError(SparkDLError, RuntimeError):
    """A distributed training job failed; the message carries the failing worker's traceback.

    Attributes:
        recoverable: the job lost a rank to its surroundings (process killed, executor lost, no progress within
            the rank timeout) rather than to an error of its function: a relaunch from the last checkpoint may
            succeed (`KerasEstimator`'s `max_failures`).
        cause: what happened, in one line.
        errors: the records of every rank that failed (rank, error_type, message, traceback, time).
        failures: the causes of the failures a fit absorbed before this one (`KerasEstimator`).
    """

    recoverable: bool = False
    cause: str = ""
    errors: tuple = ()
    failures: tuple = ()


class ScoringError(SparkDLError, RuntimeError):
    """A scoring job failed (the message says what was and was not written)."""


class ModelStoreError(SparkDLError, LookupError):
    """A model name or version is missing from the model store, or its files are corrupt."""


class PromotionRefused(ModelStoreError):
    """An alias was not moved: the version's evaluation gates failed (`failures`: the failing gate results, each
    naming its slice, metric, value and limit). `set_alias(..., force=True)` overrides and records it."""

    def __init__(self, message: str, failures: list | None = None):
        super().__init__(message)
        self.failures = list(failures or [])


class FitStopped(TrainingError):
    """A fit stopped between epochs because its epoch listener asked (e.g. a pruned tuning trial); `epoch` is the
    last epoch that ran (0-based)."""

    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch


class AlreadyCommitted(TableError):
    """A write carrying a Delta transaction identifier (`sparkdl.lake.Txn`) that the table has already committed:
    nothing was written. `version` is the table version the write found (the earlier commit's or a later one)."""

    def __init__(self, message: str, version: int | None = None):
        super().__init__(message)
        self.version = version


class RequestError(SparkDLError, ValueError):
    """A client's mistake in a request to `sparkdl serve`: answered with HTTP `status` (4xx) and this message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class BatcherClosed(SparkDLError, RuntimeError):
    """A serving micro-batcher was closed (its model version was replaced by a reload); the request goes to the
    new version's."""


class GhostClippingUnsupported(SparkDLError, RuntimeError):
    """Found while tracing a DP step: the model's forward pass does not fit ghost clipping (a Dense layer applied
    twice, or to an input of rank > 2); `sparkdl.train.dp_clipping` then uses the per-example Jacobian."""


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b")


def one_line_reason(exc: BaseException) -> str:
    """`exc` as one non-empty line, for a command's one-line failure message. For an exception raised in a Spark
    Python worker (`PythonException`, whose message is the worker's traceback) it is the worker's own last
    exception line (`ValueError: could not convert string to float: 'abc'`)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if type(exc).__name__ == "PythonException" or not lines or "Traceback (most recent call last)" in lines[0]:
        for line in reversed(lines):
            if _EXCEPTION_LINE.match(line):
                return line
    return f"{type(exc).__name__}: {lines[0]}" if lines else f"{type(exc).__name__} (no message)"
