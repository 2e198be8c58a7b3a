"""The registry behind `sparkdl.metrics`: `Metric` records by name."""
from __future__ import annotations

from dataclasses import dataclass

from sparkdl.errors import ConfigError


@dataclass(frozen=True)
class Metric:
    """A metric: its name, whether larger is better, the tasks it applies to and what it measures."""

    name: str
    larger_is_better: bool
    tasks: tuple[str, ...]
    doc: str = ""


_METRICS: dict[str, Metric] = {}


def register_metric(m: Metric, overwrite: bool = False) -> Metric:
    """Make metric `m` known by its name (and its `val_` form). Raises ConfigError for a name another definition
    holds, unless `overwrite`."""
    if not isinstance(m, Metric) or not m.name:
        raise ConfigError(f"register_metric: expected a sparkdl.metrics.Metric with a name, got {m!r}")
    existing = _METRICS.get(m.name)
    if existing is not None and existing != m and not overwrite:
        raise ConfigError(f"register_metric: {m.name!r} is already a metric where "
                          f"{'larger' if existing.larger_is_better else 'smaller'} is better (pass overwrite=True)")
    _METRICS[m.name] = m
    return m


def metric(name: str) -> Metric | None:
    """The metric called `name`, or None."""
    return _METRICS.get(name)


def known() -> list[str]:
    return list(_METRICS)
