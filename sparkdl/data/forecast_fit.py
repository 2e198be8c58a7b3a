"""`ForecastPreparation`: what a forecaster's data preparation fitted, saved with the model and read to score it.

It holds the task (`ForecastSpec`), the grid (time type, time zone, offset), the period bounds (the first grid step
of the validation and of the test period) and, per series of the training table, the scaling of each channel and
the seasonal-naive scale of MASE — all fitted on the steps before `test_from` (`sparkdl.data.series`). A series the
model never saw is scaled by its own recent history when it is scored. With `forecast.entity_pii` the series are
keyed by a salted hash of their entity values (`series_key`), so no entity value is stored with the model.

    >>> prep = ForecastPreparation.from_dict(metadata["preprocessing"])
    >>> prep.signature.input_shape, prep.scaling(("berlin",))
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from sparkdl.data.forecast import ForecastSpec
from sparkdl.data.spec import ModelSignature

FORECAST_KEY = "forecast"


def entity_key(values) -> str:
    """The JSON key of a series: its entity values (numpy scalars and dates as plain JSON)."""
    return json.dumps([v.item() if hasattr(v, "item") else v for v in values], default=str)


def series_key(values, salt: str | None) -> str:
    """The key a series is stored under: `entity_key`, or with a salt (`entity_pii`) "h:" + the first 32 hex digits
    of sha256(salt + entity_key)."""
    key = entity_key(values)
    return key if salt is None else "h:" + hashlib.sha256((salt + key).encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class ForecastPreparation:
    """The fitted preparation of a forecaster (see the module docstring).

    Attributes:
        spec: the forecasting task.
        time_kind: "timestamp" or "date" (the time column's type).
        time_zone: the session time zone `test_from` and monthly grids were read in.
        offset: the grid offset every series shares (`sparkdl.data.series.grid_columns`).
        val_step, test_step: the first grid step of the validation and of the test period (None: no such period).
        series: {series_key: {"mean": [...], "scale": [...], "naive_mae": float, "last_step": int}}.
        entity_salt: the salt of `series_key` (`spec.entity_pii`), None when entities are stored as they are.
    """

    spec: ForecastSpec
    time_kind: str
    time_zone: str
    offset: int
    val_step: int | None
    test_step: int | None
    series: dict = field(default_factory=dict, repr=False)
    entity_salt: str | None = field(default=None, repr=False)

    @property
    def signature(self) -> ModelSignature:
        return self.spec.signature

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.spec.lookback, len(self.spec.channels))

    @property
    def label_classes(self):
        return None

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:24]

    def series_key(self, entity) -> str:
        """The key of the series with entity values `entity` (a sequence) in `series`."""
        return series_key(entity, self.entity_salt)

    def entity_label(self, entity) -> str:
        """How reports name a series: its entity values joined by "/", or its `series_key` under `entity_pii`."""
        if self.entity_salt is not None:
            return self.series_key(entity)
        return "/".join(str(v) for v in entity) if self.spec.entity else "series"

    def scaling(self, entity) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean, scale) per channel of a series seen in training (entity values), else None."""
        found = self.series.get(self.series_key(entity))
        if found is None:
            return None
        return np.asarray(found["mean"], np.float64), np.asarray(found["scale"], np.float64)

    def naive_mae(self, entity) -> float | None:
        found = self.series.get(self.series_key(entity))
        return None if found is None else found.get("naive_mae")

    def to_dict(self) -> dict:
        return {FORECAST_KEY: self.spec.to_dict(), "time_kind": self.time_kind, "time_zone": self.time_zone,
                "offset": int(self.offset), "val_step": self.val_step, "test_step": self.test_step,
                "series": self.series, **({"entity_salt": self.entity_salt} if self.entity_salt else {})}

    @classmethod
    def from_dict(cls, data: dict) -> "ForecastPreparation":
        return cls(ForecastSpec.from_dict(data[FORECAST_KEY]), data["time_kind"], data["time_zone"],
                   int(data["offset"]), data.get("val_step"), data.get("test_step"), dict(data.get("series") or {}),
                   data.get("entity_salt"))

    @staticmethod
    def is_forecast(preprocessing: dict | None) -> bool:
        return isinstance(preprocessing, dict) and FORECAST_KEY in preprocessing


__all__ = ["FORECAST_KEY", "ForecastPreparation", "entity_key", "series_key"]
