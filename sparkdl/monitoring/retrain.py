"""The retraining policy of `sparkdl monitor --retrain`: when a window calls for a new model, and the record of
each decision.

A policy (YAML `monitor.retrain`) fires on a window when any of its tests does:

- `drift_share`: at least this share of the watched columns alert against the reference (overall slice);
- `statistic`: this statistic alerts on any watched column;
- `metric` + `below`: this performance metric of the window (realized when labels are there, else estimated) is
  below the floor.

When it fires, the job trains a challenger on the newest version of the training table (with `recent_windows: N`,
unioned with the labeled rows of the monitored table's last N windows, written to the Delta table `training_table`
so the challenger's lineage names the data), judges it (the job's
`gates` when it has some, else `judge_metric` against the champion on the same held-out rows) and moves `alias` only
if the challenger wins; servers on that alias follow by hot reload. One decision record per window goes to a Delta
table; a window that has one is not decided again.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sparkdl.config import options_from_mapping
from sparkdl.errors import ConfigError
from sparkdl.evaluation.slices import OVERALL
from sparkdl.monitoring.windowed import STATISTICS

DECISIONS_DDL = ("window_start timestamp, window_end timestamp, monitored_table string, monitored_version long, "
                 "tests_fired string, decision string, data_table string, data_version long, challenger string, "
                 "champion string, judge string, challenger_value double, champion_value double, "
                 "decided_at timestamp")
DECISIONS = ("no_retrain", "promoted", "kept_champion")


@dataclass(frozen=True)
class RetrainPolicy:
    """See the module docstring.

    Params:
        alias: the champion's alias, moved to a winning challenger.
        drift_share, statistic, metric, below: the tests (at least one).
        judge_metric: without gates, the metric the challenger must beat the champion on (its direction from
            `sparkdl.metrics`), by at least `min_improvement`.
        decisions_table: the Delta table of decision records (default `<monitor.output_prefix>_decisions`).
        recent_windows: the last N windows of the monitored table whose labeled rows (its label column, or
            `monitor.labels_table` joined on `monitor.id_columns`) join the challenger's training data (0: none).
        training_table: where that union goes (default `<monitor.output_prefix>_retrain_data`), replaced per
            decision (its Delta history keeps each one).
    """

    alias: str = "production"
    drift_share: float | None = None
    statistic: str | None = None
    metric: str | None = None
    below: float | None = None
    judge_metric: str = "accuracy"
    min_improvement: float = 0.0
    decisions_table: str | None = None
    recent_windows: int = 0
    training_table: str | None = None

    def __post_init__(self):
        if self.drift_share is None and self.statistic is None and self.metric is None:
            raise ConfigError("monitor.retrain: set at least one test: drift_share, statistic, or metric with below")
        if self.statistic is not None and self.statistic not in STATISTICS:
            raise ConfigError(f"monitor.retrain.statistic: unknown {self.statistic!r}; known: {', '.join(STATISTICS)}")
        if (self.metric is None) != (self.below is None):
            raise ConfigError("monitor.retrain: 'metric' and 'below' go together")
        if isinstance(self.recent_windows, bool) or not isinstance(self.recent_windows, int) \
                or self.recent_windows < 0:
            raise ConfigError(f"monitor.retrain.recent_windows must be an integer >= 0, got {self.recent_windows!r}")
        if self.drift_share is not None and not 0 < self.drift_share <= 1:
            raise ConfigError(f"monitor.retrain.drift_share must be in (0, 1], got {self.drift_share!r}")

    @classmethod
    def from_dict(cls, values: dict | None, where: str = "monitor.retrain") -> RetrainPolicy:
        """From a mapping such as its YAML section; ConfigError names an unknown key."""
        return options_from_mapping(cls, values, where)


def latest_window(result: dict[str, Any]) -> tuple[Any, Any] | None:
    """(start, end) of the monitored table's last window (overall slice), None without windows."""
    overall = sorted((w["start"], w["end"]) for w in result["windows"] if w["slice"] == OVERALL)
    return overall[-1] if overall else None


def tests_fired(policy: RetrainPolicy, result: dict[str, Any], window_start) -> list[str]:
    """The policy's tests that fire on the window starting at `window_start`, each as a short sentence."""
    fired = []
    records = [r for r in result["drift"] if r["window_start"] == window_start and r["slice"] == OVERALL
               and r["baseline"] == "reference"]
    if policy.drift_share is not None:
        columns = sorted({r["column"] for r in records})
        drifted = sorted({r["column"] for r in records if r["alert"]})
        if columns and len(drifted) / len(columns) >= policy.drift_share:
            fired.append(f"drift share {len(drifted)}/{len(columns)} >= {policy.drift_share:g} ({', '.join(drifted)})")
    if policy.statistic is not None:
        hits = sorted({r["column"] for r in records if r["statistic"] == policy.statistic and r["alert"]})
        if hits:
            fired.append(f"{policy.statistic} over its threshold on {', '.join(hits)}")
    if policy.metric is not None:
        values = {r["kind"]: r["value"] for r in result.get("performance", [])
                  if r["window_start"] == window_start and r["slice"] == OVERALL and r["metric"] == policy.metric}
        kind = "realized" if values.get("realized") is not None else "estimated"
        value = values.get(kind)
        if value is not None and value < policy.below:
            fired.append(f"{kind} {policy.metric} {value:.4g} < {policy.below:g}")
    return fired


def recent_labeled_rows(current, timestamp: str, window: tuple, recent_windows: int, training_schema, label: str,
                        labels=None, id_columns: Sequence[str] = ()):
    """The rows of the monitored DataFrame `current` in the `recent_windows` windows that end with `window`, that
    have a label (`label` in `current`, else from `labels` joined on `id_columns`), as the columns of the training
    table (`training_schema`), cast to its types.

    Raises:
        ConfigError: no label to use, or a training column the monitored rows lack (named).
    """
    from pyspark.sql import functions as F

    start, end = window
    first = start - (recent_windows - 1) * (end - start)
    rows = current.where((F.col(f"`{timestamp}`") >= F.lit(first)) & (F.col(f"`{timestamp}`") < F.lit(end)))
    if labels is not None:
        if not id_columns:
            raise ConfigError("monitor.retrain.recent_windows: labels_table needs id_columns to join the labels on")
        rows = rows.drop(label) if label in rows.columns else rows
        rows = rows.join(labels.select(*id_columns, label), list(id_columns), "inner")
    if label not in rows.columns:
        raise ConfigError(f"monitor.retrain.recent_windows: the monitored rows have no label column {label!r} and "
                          f"no monitor.labels_table gives one")
    missing = [f.name for f in training_schema.fields if f.name not in rows.columns]
    if missing:
        raise ConfigError(f"monitor.retrain.recent_windows: the monitored table lacks training column(s) {missing}")
    return rows.where(F.col(f"`{label}`").isNotNull()).select(
        *[F.col(f"`{f.name}`").cast(f.dataType).alias(f.name) for f in training_schema.fields])


def decision_record(window: tuple, monitored: dict, fired: list[str], decision: str, data: dict | None = None,
                    challenger: str | None = None, champion: str | None = None, judge: str | None = None,
                    challenger_value: float | None = None, champion_value: float | None = None) -> tuple:
    """One row of the decisions table, in `DECISIONS_DDL` order."""
    assert decision in DECISIONS, decision
    return (window[0], window[1], monitored["table"], monitored["version"], json.dumps(fired), decision,
            (data or {}).get("table"), (data or {}).get("version"), challenger, champion, judge,
            challenger_value, champion_value, dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
