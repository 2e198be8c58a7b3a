"""Anomaly thresholds: the record stored with a detector's model version, and their application in Spark.

An anomaly detector (task "anomaly", the zoo's ``autoencoder``) scores a row by its reconstruction error: output
"prediction" is that score (double, larger = more anomalous), output "anomaly" adds the per-feature contributions
(see `sparkdl.score.outputs`). What counts as anomalous is decided here:

    >>> read_thresholds("cards@1").by_segment      # {'["FR"]': 0.83, ...}
    >>> score_dataframe(df, "cards@1", output="anomaly")   # struct<score, is_anomaly, threshold, contributions>

`sparkdl.score.anomaly.fit_thresholds` scores a table and takes, in ONE aggregation, the (1 − rate) quantile of the
score in each segment (`segment_by` columns) and over all rows; it writes them to ``anomaly.json`` in the model
version's folder.
`KerasEstimator.fit` of a detector does this on its training table. A segment with fewer than
`min_segment_rows` rows, or one not seen when fitting, gets the overall threshold. A row is flagged when its score
is >= its segment's threshold; the threshold is a score the fitting rows hold (`percentile_approx` returns one),
so with a rate above 0 the fitting rows always have a flagged row: the threshold cannot collapse to flag nothing.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sparkdl.errors import ConfigError, ModelStoreError, Problem, ValidationError
from sparkdl.fileutil import write_atomic
from sparkdl.registry import ModelStore
from sparkdl.score.model_ref import ModelRef, resolve_model

THRESHOLDS_FILE = "anomaly.json"
QUANTILE_ACCURACY = 100_000  # percentile_approx's accuracy: relative rank error 1/accuracy


@dataclass(frozen=True)
class AnomalyOptions:
    """How a detector's thresholds are fitted (the estimator's `anomaly` param, YAML `train.anomaly`).

    Args:
        segment_by: columns whose values each get their own threshold (none: one threshold).
        rate: the expected share of anomalies, in (0, 0.5]: the threshold is the (1 − rate) quantile of the score.
            ``percentile`` (e.g. 99) may be given instead, as 1 − rate in percent.
        label: a column of known anomalies (0/1 or boolean) that evaluation compares with (never read by training).
        min_segment_rows: segments with fewer fitting rows use the overall threshold.

    Raises:
        ConfigError: a rate outside (0, 0.5], a bad column list, unknown keys.
    """

    segment_by: tuple[str, ...] = ()
    rate: float = 0.01
    label: str | None = None
    min_segment_rows: int = 30

    def __post_init__(self):
        segment_by = (self.segment_by,) if isinstance(self.segment_by, str) else tuple(self.segment_by or ())
        if not all(isinstance(c, str) and c for c in segment_by) or len(set(segment_by)) != len(segment_by):
            raise ConfigError(f"anomaly.segment_by must be distinct column names, got {self.segment_by!r}")
        object.__setattr__(self, "segment_by", segment_by)
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not 0 < self.rate <= 0.5:
            raise ConfigError(f"anomaly.rate (the expected share of anomalies) must be in (0, 0.5], got "
                              f"{self.rate!r}")
        if self.label is not None and (not isinstance(self.label, str) or not self.label):
            raise ConfigError(f"anomaly.label must be a column name, got {self.label!r}")
        if isinstance(self.min_segment_rows, bool) or not isinstance(self.min_segment_rows, int) \
                or self.min_segment_rows < 1:
            raise ConfigError(f"anomaly.min_segment_rows must be a positive int, got {self.min_segment_rows!r}")

    @classmethod
    def of(cls, value) -> "AnomalyOptions | None":
        """From None, an instance or a dict (keys segment_by, rate or percentile, label, min_segment_rows)."""
        if value is None or isinstance(value, AnomalyOptions):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"anomaly must be a mapping of segment_by, rate (or percentile), label, "
                              f"min_segment_rows; got {type(value).__name__}")
        data = dict(value)
        unknown = sorted(set(data) - {"segment_by", "rate", "percentile", "label", "min_segment_rows"})
        if unknown:
            raise ConfigError(f"anomaly: unknown key(s) {unknown}; allowed: label, min_segment_rows, percentile, "
                              f"rate, segment_by")
        if "percentile" in data:
            if "rate" in data:
                raise ConfigError("anomaly: give rate or percentile, not both")
            percentile = data.pop("percentile")
            if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) \
                    or not 50 <= percentile < 100:
                raise ConfigError(f"anomaly.percentile must be in [50, 100), got {percentile!r}")
            data["rate"] = round(1.0 - percentile / 100.0, 12)
        return cls(**data)

    def to_dict(self) -> dict:
        return {**asdict(self), "segment_by": list(self.segment_by)}


@dataclass(frozen=True)
class Thresholds:
    """A detector's fitted thresholds: `overall`, and per segment key (`segment_key`'s JSON of the values)."""

    options: AnomalyOptions
    overall: float
    by_segment: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)  # fitting rows per segment, "" for all
    fitted_at: str = ""

    def to_dict(self) -> dict:
        return {"options": self.options.to_dict(), "overall": self.overall, "by_segment": self.by_segment,
                "rows": self.rows, "fitted_at": self.fitted_at}

    @classmethod
    def from_dict(cls, data: dict) -> "Thresholds":
        return cls(AnomalyOptions.of(data["options"]), float(data["overall"]),
                   {k: float(v) for k, v in (data.get("by_segment") or {}).items()},
                   {k: int(v) for k, v in (data.get("rows") or {}).items()}, data.get("fitted_at", ""))


def segment_key(columns: tuple[str, ...]):
    """The Column naming a row's segment: a JSON array of its segment values as strings (one rule for fitting and
    flagging)."""
    from pyspark.sql import functions as F

    return F.to_json(F.array(*[F.col(f"`{c}`").cast("string") for c in columns]))


def _version_path(ref: ModelRef) -> Path:
    return ModelStore(ref.root).resolve(str(ref)).path


def save_thresholds(ref: ModelRef, thresholds: Thresholds) -> Path:
    """Write `thresholds` into the model version's folder (atomically; a later fit replaces them)."""
    path = _version_path(ref) / THRESHOLDS_FILE
    write_atomic(path, json.dumps(thresholds.to_dict(), indent=2, sort_keys=True).encode())
    return path


def read_thresholds(model_ref, store=None) -> Thresholds | None:
    """The detector's stored thresholds, or None when none were fitted.

    Raises:
        ModelStoreError: an ``anomaly.json`` that is not one (names its path)."""
    ref = model_ref if isinstance(model_ref, ModelRef) else resolve_model(model_ref, store)[0]
    path = _version_path(ref) / THRESHOLDS_FILE
    if not path.exists():
        return None
    try:
        thresholds = Thresholds.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, ConfigError) as exc:
        raise ModelStoreError(f"{path}: not a thresholds file of sparkdl ({exc})") from None
    if not math.isfinite(thresholds.overall):
        raise ModelStoreError(f"{path}: the overall threshold is not a finite number")
    return thresholds


def required_thresholds(ref: ModelRef, where: str) -> Thresholds:
    """The detector's thresholds, for output "anomaly". Raises ConfigError when none were fitted."""
    thresholds = read_thresholds(ref)
    if thresholds is None:
        raise ConfigError(f"{where}: {ref} has no fitted anomaly thresholds (a fit of the detector fits them on its "
                          f"training table; else call sparkdl.score.anomaly.fit_thresholds on normal rows)")
    return thresholds


def check_detector(metadata, where: str) -> None:
    """Raise ConfigError unless the model is an anomaly detector (task "anomaly")."""
    if metadata.task != "anomaly":
        raise ConfigError(f"{where}: {metadata.where} is not an anomaly detector (its task is {metadata.task!r}); "
                          f"train one with model='autoencoder' on a spec without a label or with a label of "
                          f"task 'anomaly'")


def check_segment_columns(df, options: AnomalyOptions, where: str) -> None:
    missing = [c for c in options.segment_by if c not in df.columns]
    if missing:
        raise ValidationError(f"{where}: segment column(s) {missing} are not in the table; it has {df.columns}",
                              [Problem(c, "missing column", "a segment column of anomaly.segment_by")
                               for c in missing])


def borrowed_segments(thresholds: Thresholds | None, kept) -> list[str]:
    """The segment columns a scoring job must carry (and not keep) so its flags can be set."""
    return [c for c in (thresholds.options.segment_by if thresholds else ()) if c not in kept]


def threshold_column(thresholds: Thresholds):
    """The Column of each row's threshold: its segment's, else the overall one."""
    from pyspark.sql import functions as F

    overall = F.lit(thresholds.overall).cast("double")
    if not thresholds.options.segment_by or not thresholds.by_segment:
        return overall
    pairs = [item for k, t in sorted(thresholds.by_segment.items()) for item in (F.lit(k), F.lit(t))]
    return F.coalesce(F.element_at(F.create_map(*pairs), segment_key(thresholds.options.segment_by)), overall)


def with_flags(scored, column: str, thresholds: Thresholds, drop: tuple[str, ...] = ()):
    """`scored` with its "anomaly" output `column` (struct<score, contributions>, as the scoring UDF returns it)
    replaced by struct<score, is_anomaly, threshold, contributions>; null stays null. `drop`: helper columns (the
    segment columns the caller added) to remove after. `score_dataframe` and `score_table` call this.

    Raises:
        ValidationError: a segment column missing from `scored`."""
    from pyspark.sql import functions as F

    check_segment_columns(scored, thresholds.options, f"anomaly flags of {column!r}")
    threshold = threshold_column(thresholds)
    score = F.col(f"`{column}`.score")
    flagged = F.when(F.col(f"`{column}`").isNotNull(), F.struct(
        score.alias("score"), (score >= threshold).alias("is_anomaly"), threshold.alias("threshold"),
        F.col(f"`{column}`.contributions").alias("contributions")))
    out = scored.withColumn(column, flagged)
    return out.drop(*drop) if drop else out


__all__ = ["AnomalyOptions", "Thresholds", "borrowed_segments", "read_thresholds", "save_thresholds", "with_flags"]
