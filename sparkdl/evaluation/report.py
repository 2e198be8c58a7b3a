"""A sliced report in the forms people read it: long-form rows for a Delta table, MLflow metric names, plots."""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from typing import Any

from sparkdl.plots import plot_slices

# The long-form table of sliced metrics: one row per (model version, slice, metric).
TABLE_DDL = ("model string, version int, definition string, slice string, metric string, value double, "
             "lower double, upper double, n long, data_table string, data_version long, evaluated_at timestamp")
PLOTTED = {"binary": ("accuracy", "recall", "f1", "roc_auc"), "multiclass": ("accuracy", "f1", "roc_auc"),
           "regression": ("rmse", "mae", "r2"), "forecast": ("mae", "mase")}


def long_rows(report: Mapping[str, Any], model: str, version: int, data: Mapping[str, Any]) -> list[tuple]:
    """One tuple per (slice, metric) of the report, fairness metrics as rows of their sensitive definition (slice
    "fairness:<definition>"), in `TABLE_DDL` order."""
    at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    head = (model, int(version))
    tail = (str(data.get("table")), data.get("version"), at)
    rows = []
    for name, s in report.get("slices", {}).items():
        for metric, m in s["metrics"].items():
            rows.append((*head, s["definition"], name, metric, m["value"], m["lower"], m["upper"], int(s["n"]), *tail))
    fairness = report.get("fairness")
    if fairness:
        n = sum(report["slices"][g]["n"] for g in fairness["groups"])
        for metric, m in fairness["metrics"].items():
            rows.append((*head, fairness["sensitive"], f"fairness:{fairness['sensitive']}", metric, m["value"],
                         m["lower"], m["upper"], n, *tail))
    return rows


def mlflow_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """MLflow metric names for the slices' values: `slice.<slice>.<metric>` and `fairness.<metric>` (characters
    MLflow refuses become `_`)."""
    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_\-. /]", "_", text)

    out = {}
    for name, s in report.get("slices", {}).items():
        for metric, m in s["metrics"].items():
            if m["value"] is not None:
                out[clean(f"slice.{name}.{metric}")] = float(m["value"])
    for metric, m in (report.get("fairness") or {}).get("metrics", {}).items():
        if m["value"] is not None:
            out[clean(f"fairness.{metric}")] = float(m["value"])
    return out


def slice_plots(report: Mapping[str, Any], task: str, path_for: Callable[[str], Any]) -> list[str]:
    """A PNG per headline metric of `task` (`slices_<metric>.png`), slices with their intervals."""
    paths = []
    for metric in PLOTTED.get(task, ()):
        if any(s["metrics"].get(metric, {}).get("value") is not None for s in report.get("slices", {}).values()):
            paths.append(plot_slices(report["slices"], metric, path_for(f"slices_{metric}.png")))
    return paths
