"""The `data.forecast` block: what a forecaster reads from a long table, one row per (entity, time).

    >>> spec = ForecastSpec.from_dict({"time": "ts", "entity": "city", "target": "temp", "covariates": ["humidity"],
    ...                                "lookback": 72, "horizon": 24, "frequency": "1h", "test_from": "2010-12-01"})

Every series lives on a regular grid of `frequency` steps (`15min`, `1h`, `1d`, `1w`, `1mo`, `3mo`, ...): step `i`
of the grid is the time `i * step + offset` (months: the `i`-th month since 1970, plus the same offset into the
month). A window is `lookback` steps of history (the target, then the covariates, per step) and the `horizon`
target values that follow it; its *origin* is the time of its first forecast step.

The periods, by construction:

* **test**: windows whose origin is at or after `test_from` (their history may reach back before it);
* **validation**: windows whose targets lie in the last `validation` fraction of the training period, before
  `test_from`;
* **training**: windows whose targets end before the validation period (every `stride` steps);
* the per-series scaling (mean and deviation of each channel) and the seasonal-naive scale of MASE are fitted on
  the steps before `test_from` only.
"""
from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import dataclass, field

from sparkdl.data.spec import ModelSignature
from sparkdl.errors import ConfigError

FORECAST_KEYS = ("time", "entity", "target", "covariates", "lookback", "horizon", "frequency", "stride",
                 "test_from", "season", "backtest_folds", "entity_pii")
_FREQUENCY = re.compile(r"^\s*(\d+)?\s*(s|min|h|d|w|mo)\s*$")
_UNIT_SECONDS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MICROS = 1_000_000


@dataclass(frozen=True)
class Frequency:
    """A grid step: `count` units of `unit` (s, min, h, d, w, or mo: calendar months)."""

    count: int
    unit: str

    @classmethod
    def parse(cls, text: str, where: str = "forecast.frequency") -> "Frequency":
        match = _FREQUENCY.match(str(text)) if isinstance(text, str) else None
        if match is None or (match.group(1) is not None and int(match.group(1)) < 1):
            raise ConfigError(f"{where}: expected a step such as 15min, 1h, 1d, 1w, 1mo or 3mo, got {text!r}")
        return cls(int(match.group(1) or 1), match.group(2))

    @property
    def months(self) -> bool:
        return self.unit == "mo"

    @property
    def step_micros(self) -> int:
        """The step in microseconds (fixed-length units only)."""
        if self.months:
            raise ConfigError("a monthly grid has no fixed step length")
        return self.count * _UNIT_SECONDS[self.unit] * MICROS

    def default_season(self) -> int | None:
        """Steps per season: a day for sub-daily grids, a week for daily, a year for weekly and monthly ones."""
        if self.months:
            return 12 // self.count if 12 % self.count == 0 and self.count < 12 else None
        seconds = self.count * _UNIT_SECONDS[self.unit]
        if seconds < 86400:
            return 86400 // seconds if 86400 % seconds == 0 else None
        return {86400: 7, 7 * 86400: 52}.get(seconds)

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"


@dataclass(frozen=True)
class ForecastSpec:
    """A forecasting task on a long table (see the module docstring).

    Attributes:
        time: the timestamp or date column.
        entity: the column(s) naming a series (empty: the table is one series).
        target: the numeric column forecast.
        covariates: numeric columns whose past values are inputs too.
        lookback, horizon: steps of history per window, steps forecast.
        frequency: the grid step (`Frequency.parse`).
        stride: steps between training window origins.
        test_from: evaluation windows have their origin at or after this time (ISO date or timestamp, read in the
            session time zone); None: no test period (all windows train, `sparkdl evaluate` needs one).
        season: steps per season for the seasonal-naive baseline and MASE (default from the frequency).
        backtest_folds: rolling-origin folds of `sparkdl evaluate` (0: none).
        entity_pii: the entity values are personal data (customer or patient ids): the model stores each series'
            scaling under a salted hash of its key, and evaluation reports name series by that hash.
    """

    time: str
    target: str
    lookback: int
    horizon: int
    frequency: str
    entity: tuple[str, ...] = ()
    covariates: tuple[str, ...] = ()
    stride: int = 1
    test_from: str | None = None
    season: int | None = None
    backtest_folds: int = 0
    entity_pii: bool = False
    grid: Frequency = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        where = "forecast"
        for key in ("time", "target"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ConfigError(f"{where}.{key}: expected a column name, got {getattr(self, key)!r}")
        for key in ("entity", "covariates"):
            value = getattr(self, key)
            value = (value,) if isinstance(value, str) else tuple(value or ())
            if not all(isinstance(c, str) and c for c in value):
                raise ConfigError(f"{where}.{key}: expected a column name or a list of them, got {value!r}")
            object.__setattr__(self, key, value)
        for key in ("lookback", "horizon", "stride"):
            _positive(f"{where}.{key}", getattr(self, key))
        if not isinstance(self.backtest_folds, numbers.Integral) or isinstance(self.backtest_folds, bool) \
                or self.backtest_folds < 0:
            raise ConfigError(f"{where}.backtest_folds: expected an integer >= 0, got {self.backtest_folds!r}")
        if not isinstance(self.entity_pii, bool):
            raise ConfigError(f"{where}.entity_pii: expected true or false, got {self.entity_pii!r}")
        if self.entity_pii and not self.entity:
            raise ConfigError(f"{where}.entity_pii: the table has no entity column (forecast.entity) to hash")
        object.__setattr__(self, "grid", Frequency.parse(self.frequency, f"{where}.frequency"))
        object.__setattr__(self, "frequency", str(self.grid))
        season = self.season if self.season is not None else self.grid.default_season()
        if season is None:
            raise ConfigError(f"{where}.season: the frequency {self.frequency} has no default season; set "
                              f"forecast.season (steps per season, e.g. 24 for hourly data with a daily cycle)")
        _positive(f"{where}.season", season)
        object.__setattr__(self, "season", int(season))
        if self.test_from is not None:
            _timestamp(f"{where}.test_from", self.test_from)
            object.__setattr__(self, "test_from", str(self.test_from))
        names = [self.time, self.target, *self.entity, *self.covariates]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"{where}: columns listed more than once (time, target, entity, covariates): {dupes}")

    @property
    def channels(self) -> tuple[str, ...]:
        """The values per step of a window's history: the target first, then the covariates."""
        return (self.target, *self.covariates)

    @property
    def window(self) -> int:
        return self.lookback + self.horizon

    @property
    def signature(self) -> ModelSignature:
        """The forecaster's signature: windows (lookback, channels) in, `horizon` values out."""
        return ModelSignature((self.lookback, len(self.channels)), "regression", outputs=self.horizon)

    def test_time(self, time_zone: str = "UTC"):
        """`test_from` as a pandas Timestamp in `time_zone` (None without a test period)."""
        return None if self.test_from is None else _timestamp("forecast.test_from", self.test_from, time_zone)

    def with_test_from(self, test_from: str | None) -> "ForecastSpec":
        """The same task with another test period (a backtest fold)."""
        return ForecastSpec.from_dict({**self.to_dict(), "test_from": test_from})

    def to_dict(self) -> dict:
        return {"time": self.time, "entity": list(self.entity), "target": self.target,
                "covariates": list(self.covariates), "lookback": self.lookback, "horizon": self.horizon,
                "frequency": self.frequency, "stride": self.stride, "test_from": self.test_from,
                "season": self.season, "backtest_folds": self.backtest_folds,
                **({"entity_pii": True} if self.entity_pii else {})}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data) -> "ForecastSpec":
        """Build from the `data.forecast` mapping. Raises ConfigError naming an unknown or missing key."""
        if isinstance(data, ForecastSpec):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"forecast: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(FORECAST_KEYS))
        if unknown:
            raise ConfigError(f"forecast: unknown key(s) {unknown}; allowed: {list(FORECAST_KEYS)}")
        missing = sorted({"time", "target", "lookback", "horizon", "frequency"} - set(data))
        if missing:
            raise ConfigError(f"forecast: missing required key(s) {missing}")
        values = {k: v for k, v in data.items() if v is not None or k in ("test_from", "season")}
        return cls(**values)


def _positive(where: str, value) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where}: expected a positive integer, got {value!r}")


def _timestamp(where: str, value, time_zone: str = "UTC"):
    import pandas as pd

    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: expected an ISO date or timestamp such as '2010-12-01', got {value!r} "
                          f"({exc})") from None
    if stamp is pd.NaT or (isinstance(stamp, float) and math.isnan(stamp)):
        raise ConfigError(f"{where}: expected an ISO date or timestamp, got {value!r}")
    return stamp.tz_localize(time_zone) if stamp.tzinfo is None else stamp.tz_convert(time_zone)


__all__ = ["FORECAST_KEYS", "ForecastSpec", "Frequency"]
