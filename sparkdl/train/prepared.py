"""The data every fit of one table, feature spec and split shares: validated, its preprocessing fitted, cached.

Before the first training step a fit makes two passes over the data, whatever its size:

1. **One aggregation** checks every row (`sparkdl.data.validation`: types, nulls, NaN, lengths, labels) and
   computes the fitted statistics (means, deviations, label classes) of the training rows beside it
   (`Preprocessor.fit(validate=True, rows=...)`). Categorical and text vocabularies and image channel statistics
   add one small job each when the spec has them.
2. **One write** prepares every row with the fitted preprocessing and writes the training and validation caches
   together (`to_petastorm_split`: the split is a column, `validation_rows`, not two DataFrames). When preparing
   is only a cast (vectors without scaling or imputation) Spark SQL does it, with no Python round trip.

A re-fit of the same snapshot, preprocessing and split finds the cache and skips the write. `KerasEstimator.prepare`
returns this record, and `fit(prepared)` skips both passes: `sparkdl.tune` prepares once for all the trials that
share a split.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sparkdl.data.dataset import validation_rows
from sparkdl.data.petastorm_io import PetastormDataset, to_petastorm, to_petastorm_split
from sparkdl.data.preprocess import Preprocessor, PreprocessorModel
from sparkdl.data.spec import FeatureSpec
from sparkdl.data.validation import validate
from sparkdl.errors import ConfigError


@dataclass(frozen=True)
class PreparedData:
    """Validated data with its fitted preprocessing and training caches (see the module docstring).

    Attributes:
        df, snapshot: the input (`snapshot` None for a DataFrame that is not one table snapshot).
        spec, validation, seed: what the preparation depends on; a fit with other values refuses it.
        prep: the fitted preprocessing (statistics of the training rows).
        train_data, val_data: the caches (`val_data` None without a validation split).
        phases: seconds of `statistics` (the validation and statistics pass) and `cache` (the write, or finding it).
    """

    df: Any
    snapshot: Any
    spec: FeatureSpec
    validation: float | str | None
    seed: int
    prep: PreprocessorModel
    train_data: PetastormDataset
    val_data: PetastormDataset | None
    phases: dict = field(default_factory=dict)

    def check_fits(self, spec: FeatureSpec, validation, seed: int) -> None:
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
    if is_val is None:
        train_data, val_data = to_petastorm(df, prep, snapshot, key={**key, "split": "train"}), None
    else:
        train_data, val_data = to_petastorm_split(df, prep, snapshot, is_val, key=key, validated=True)
    phases = {"statistics": round(statistics_s, 3), "cache": round(time.perf_counter() - started - statistics_s, 3)}
    return PreparedData(df, snapshot, spec, validation, seed, prep, train_data, val_data, phases)


__all__ = ["PreparedData", "prepare_data"]
