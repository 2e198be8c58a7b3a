"""Metric names and their directions: the one place that says whether a larger value is better (as
`pyspark.ml.evaluation`'s `isLargerBetter`), read by early stopping, tuning, permutation importance and the metric
history. One module per task declares its metrics (`classification`, `regression`, `forecast`, and `keras` for the
names Keras logs while training); a new metric is one `Metric` in one of them, or `register_metric` for a user's.

    >>> from sparkdl.metrics import larger_is_better, direction
    >>> larger_is_better("val_accuracy"), direction("val_loss")
    (True, 'minimize')
"""
from __future__ import annotations

from sparkdl.errors import ConfigError
from sparkdl.metrics import classification, forecast, keras, regression
from sparkdl.metrics.registry import Metric, known, metric, register_metric

_VALIDATION_PREFIX = "val_"

for _module in (keras, classification, regression, forecast):
    for _metric in _module.METRICS:
        register_metric(_metric, overwrite=True)


def larger_is_better(name: str) -> bool:
    """Whether a larger value of metric `name` is better (`val_` prefixes are the same metric on validation data).

    Raises:
        ConfigError: an unknown metric (the message lists the known ones); register it with `register_metric`.
    """
    base = name[len(_VALIDATION_PREFIX):] if name.startswith(_VALIDATION_PREFIX) else name
    found = metric(base)
    if found is None:
        raise ConfigError(f"unknown metric {name!r}: known are {sorted(known())} (and their val_ forms); "
                          f"register others with sparkdl.metrics.register_metric")
    return found.larger_is_better


def direction(name: str) -> str:
    """"maximize" or "minimize" for metric `name` (Optuna's and `tune`'s words); ConfigError when unknown."""
    return "maximize" if larger_is_better(name) else "minimize"


__all__ = ["Metric", "direction", "larger_is_better", "metric", "register_metric"]
