"""The data every fit of one table, feature spec and split shares: validated, its preprocessing fitted, cached.

Before the first training step a fit makes two passes over the data, whatever its size:

1. **One aggregation** checks every row (`sparkdl.data.validation`: types, nulls, NaN, lengths, labels) and
   computes the fitted statistics (means, deviations, label classes) of the training rows beside it
   (`Preprocessor.fit(validate=True, rows=...)`). Categorical and text vocabularies and image channel statistics
   add one small job each when the spec has them.
2. **One write** prepares every row with the fitted preprocessing and writes the training and validation caches
   together (`to_petastorm_split`: the split is a column, `validation_rows`, not two DataFrames). When preparing
   involves only numeric, vector and categorical features (imputed, scaled, one-hot) Spark SQL does it, with no
   Python round trip.

A re-fit of the same snapshot, preprocessing and split finds the cache and skips the write. `KerasEstimator.prepare`
returns this record, and `fit(prepared)` skips both passes: `sparkdl.tune` prepares once for all the trials that
share a split.
"""
from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from sparkdl.data.dataset import validation_rows
from sparkdl.data.forecast import ForecastSpec
from sparkdl.data.forecast_fit import ForecastPreparation, series_key
from sparkdl.data.petastorm_io import PetastormDataset, to_petastorm, to_petastorm_split
from sparkdl.data.preprocess import Preprocessor, PreprocessorModel
from sparkdl.data.series import build_series, check_forecast_schema, first_step_from, time_kind
from sparkdl.data.spec import FeatureSpec
from sparkdl.data.validation import validate
from sparkdl.data.windows import SeriesWindows
from sparkdl.errors import ConfigError, Problem, ValidationError


@dataclass(frozen=True)
class PreparedData:
    """Validated data with its fitted preprocessing and training caches (see the module docstring).

    Attributes:
        df, snapshot: the input (`snapshot` None for a DataFrame that is not one table snapshot).
        spec, validation, seed: what the preparation depends on (a `FeatureSpec`, or a `ForecastSpec` for a
            forecaster); a fit with other values refuses it.
        prep: the fitted preprocessing (statistics of the training rows; a `ForecastPreparation` for a forecaster).
        train_data, val_data: the caches (`val_data` None without a validation split); for a forecaster, the
            `SeriesWindows` of the training and validation periods of one series cache.
        phases: seconds of `statistics` (the validation and statistics pass) and `cache` (the write, or finding it).
    """

    df: Any
    snapshot: Any
    spec: FeatureSpec | ForecastSpec
    validation: float | str | None
    seed: int
    prep: PreprocessorModel | ForecastPreparation
    train_data: PetastormDataset | SeriesWindows
    val_data: PetastormDataset | SeriesWindows | None
    phases: dict = field(default_factory=dict)

    def check_fits(self, spec: FeatureSpec | ForecastSpec, validation, seed: int) -> None:
        """Raise ConfigError unless this data was prepared for `spec`, `validation` and `seed`."""
        wanted = {"feature_spec": spec.to_dict(), "validation": validation, "seed": seed}
        have = {"feature_spec": self.spec.to_dict(), "validation": self.validation, "seed": self.seed}
        wrong = [k for k in wanted if wanted[k] != have[k]]
        if wrong:
            raise ConfigError(f"fit: the PreparedData was prepared with other {wrong} than this estimator's "
                              f"({', '.join(f'{k}={have[k]!r}' for k in wrong if k != 'feature_spec')}); prepare "
                              f"it with this estimator (KerasEstimator.prepare)")


def prepare_data(spec: FeatureSpec, df, snapshot, validation, seed: int,
                 prep: PreprocessorModel | None = None) -> PreparedData:
    """Validate `df`, fit the preprocessing on its training rows and write (or find) the caches: two passes.

    Args:
        spec: the feature spec.
        df, snapshot: the input and the Delta snapshot it reads (None when it is not one).
        validation, seed: the split (`sparkdl.data.dataset.validation_rows`).
        prep: preprocessing fitted before (a resumed run keeps its first attempt's statistics): only validated.

    Raises:
        ValidationError: bad data (every problem at once), before any cache is written. ConfigError: a bad split.
    """
    started = time.perf_counter()
    is_val = validation_rows(df, validation, seed)
    if prep is None:
        prep = Preprocessor(spec).fit(df, validate=True, rows=~is_val if is_val is not None else None)
    else:
        validate(spec, df, require_label=True)
    statistics_s = time.perf_counter() - started
    key = {"validation": validation, "seed": seed}
    labelled = spec.label is not None  # a detector's spec has none: it reconstructs its features
    if is_val is None:
        train_data, val_data = to_petastorm(df, prep, snapshot, key={**key, "split": "train"},
                                            with_label=labelled), None
    else:
        train_data, val_data = to_petastorm_split(df, prep, snapshot, is_val, key=key, validated=True,
                                                  with_label=labelled)
    phases = {"statistics": round(statistics_s, 3), "cache": round(time.perf_counter() - started - statistics_s, 3)}
    return PreparedData(df, snapshot, spec, validation, seed, prep, train_data, val_data, phases)


def prepare_forecast_data(spec: ForecastSpec, df, snapshot, validation: float | None, seed: int = 0
                          ) -> PreparedData:
    """Build (or find) the series cache of a forecasting table (ONE Spark job, `sparkdl.data.series`) and plan the
    windows of its periods: training windows end before the validation period, validation windows before
    `test_from` (see `sparkdl.data.forecast`).

    Args:
        spec: the forecasting task.
        df, snapshot: the long table and its Delta snapshot (None when it is not one).
        validation: the last fraction of the training period (by time) held out for validation; None or 0: none.
        seed: recorded with the preparation (windows are shuffled by the fit's seed).

    Raises:
        ValidationError: bad columns (before any job), bad data (duplicates, off-grid times, short series: after
            the one job, all at once), or no training window before the validation/test period.
        ConfigError: a validation that is not a fraction in [0, 1).
    """
    if isinstance(validation, str) or not (validation is None or 0.0 <= float(validation) < 1.0):
        raise ConfigError(f"forecast: validation is the last fraction of the training period, in [0, 1); got "
                          f"{validation!r}")
    started = time.perf_counter()
    check_forecast_schema(spec, df.schema, "the forecasting table does not match data.forecast")
    kind = time_kind(df, spec)
    time_zone = "UTC" if kind == "date" else df.sparkSession.conf.get("spark.sql.session.timeZone") or "UTC"
    test_stamp = spec.test_time(time_zone)
    info = build_series(df, spec, snapshot, test_stamp=test_stamp)
    offset = int(info.offset[0])
    test_step = first_step_from(spec, test_stamp, offset) if test_stamp is not None else None
    end = test_step if test_step is not None else int((info.start + info.length).max())
    val_step = end - math.ceil(float(validation) * (end - int(info.start.min()))) if validation else None
    channels = len(spec.channels)
    plan = dict(data=info.data, starts=info.start, lengths=info.length, lookback=spec.lookback, horizon=spec.horizon,
                channels=channels)
    train = SeriesWindows.of(**plan, stride=spec.stride, hi=val_step if val_step is not None else test_step)
    val = SeriesWindows.of(**plan, lo=val_step, hi=test_step) if val_step is not None else None
    if train.num_rows == 0:
        raise ValidationError(
            f"forecast: no training window ends before the {'validation' if val_step else 'test'} period (each "
            f"needs lookback + horizon = {spec.window} steps before it); move test_from later or shorten the "
            f"windows", [Problem(spec.time, "no training windows", f">= {spec.window} steps before the held-out "
                                 f"periods", f"series of {sorted(set(info.length.tolist()))[:5]} steps")])
    salt = secrets.token_hex(16) if spec.entity_pii else None  # per model; no entity value is stored
    series = {series_key(e, salt): {"mean": info.mean[i].tolist(), "scale": info.scale[i].tolist(),
                              "naive_mae": None if not math.isfinite(info.naive_mae[i]) else float(info.naive_mae[i]),
                              "last_step": int(info.start[i] + info.length[i] - 1)}
              for i, e in enumerate(info.entities)}
    prep = ForecastPreparation(spec, kind, time_zone, offset, val_step, test_step, series, salt)
    phases = {"statistics": 0.0, "cache": round(time.perf_counter() - started, 3)}
    return PreparedData(df, snapshot, spec, validation or None, seed, prep, train, val, phases)


__all__ = ["PreparedData", "prepare_data", "prepare_forecast_data"]
