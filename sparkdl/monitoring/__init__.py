"""Monitoring in windows: drift of every window and slice of a table of model inputs and predictions against
the training data and the window before, performance estimated before labels arrive (CBPE) and realized once
they do, written to Delta tables with plots.

    >>> from sparkdl.monitoring import MonitorOptions, monitor_table
    >>> monitor_table("/lake/inference_log", "/lake/cancer_train", "ts", columns=["mean_radius", "prediction"],
    ...               options=MonitorOptions(window="1 day"), score="probability_1", label="malignant",
    ...               output_prefix="/lake/cancer_monitor")

Modules: `windowed` (drift per window from one pass: numpy bucket counts per task), `performance` (CBPE and
realized metrics).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyspark.sql import functions as F

from sparkdl import lake
from sparkdl.errors import ConfigError
from sparkdl.evaluation.slices import OVERALL, parse_slices
from sparkdl.log import get_logger
from sparkdl.monitoring.performance import Calibration, calibrate, estimated_performance, realized_performance
from sparkdl.monitoring.windowed import STATISTICS, MonitorOptions, monitor_frames
from sparkdl.plots import plot_statistic_over_windows

log = get_logger("monitoring")

DRIFT_DDL = ("window_start timestamp, window_end timestamp, slice string, column string, statistic string, "
             "baseline string, value double, threshold double, alert boolean")
PERFORMANCE_DDL = ("window_start timestamp, window_end timestamp, slice string, rows long, metric string, "
                   "value double, kind string")


def _double(value):
    """A statistic as the double its table column holds (a rate of 0 may come as the int 0)."""
    return None if value is None else float(value)


def monitor_table(table: str, reference: str, timestamp: str, *, columns: Sequence[str] | None = None,
                  slices: Sequence[Any] | None = None, options: MonitorOptions | None = None,
                  version: int | None = None, reference_version: int | None = None, score: str | None = None,
                  label: str | None = None, labels_table: str | None = None, id_columns: Sequence[str] = (),
                  output_prefix: str | None = None, plots_dir: str | None = None, spark=None) -> dict[str, Any]:
    """Monitor the Delta table `table` (an inference log or a scored table) in windows of `timestamp` against
    `reference` (the training table).

    Params:
        columns: the inputs and predictions to watch (default: every column of both tables but the timestamp).
        slices: as in evaluation (a column, a crossing, a named `where`): each gets its own windows.
        options: windows, buckets and thresholds (`MonitorOptions`).
        score, label: a binary classifier's positive-class score column and the label column: the reference's
            labels calibrate the score, and each window gets its estimated accuracy and ROC AUC (CBPE); when the
            monitored rows have the label (or `labels_table` joined on `id_columns` gives it), the realized
            metrics too.
        output_prefix: Delta tables `<prefix>_drift` and `<prefix>_performance` (long form, replaced on each run
            with the windows of the table version read).
        plots_dir: a PNG per statistic over the windows (overall slice, against the reference).

    Returns {"table", "reference" (lineage), "windows", "drift", "alerts", "thresholds", "performance",
    "plots", "outputs"}.

    Raises:
        TableError: a missing table; ValidationError / ConfigError: bad columns, slices or options (before any
            pass over the monitored table).
    """
    options = options or MonitorOptions()
    slice_specs = parse_slices(slices)
    current, snap = lake.read_table(table, version=version, spark=spark)
    ref, ref_snap = lake.read_table(reference, version=reference_version, spark=spark)
    if score and not label:
        raise ConfigError("monitor: 'score' needs 'label' (the reference's labels calibrate the score)")
    if labels_table:
        if not id_columns:
            raise ConfigError("monitor: labels_table needs id_columns to join the labels on")
        labels, _ = lake.read_table(labels_table, spark=spark)
        missing = [c for c in (*id_columns, label) if c not in labels.columns]
        if missing:
            raise ConfigError(f"monitor: the labels table {labels_table} has no column(s) {missing}")
        current = current.drop(label) if label in current.columns else current
        current = current.join(labels.select(*id_columns, label), list(id_columns), "left")
    watched = list(columns) if columns else None
    result = monitor_frames(ref, current, timestamp, watched, slice_specs, options)
    window = F.window(F.col(f"`{timestamp}`"), options.window)
    performance: list[dict] = []
    calibration: Calibration | None = None
    if score:
        calibration = calibrate(ref, score, label)
        performance += estimated_performance(current, window, score, calibration, slice_specs)
        if label in current.columns:
            performance += realized_performance(current, window, score, label, slice_specs,
                                                min_rows=options.min_window_rows)
    outputs = {}
    if output_prefix:
        session = current.sparkSession
        drift_rows = [tuple(_double(r[k]) if k in ("value", "threshold") else r[k]
                            for k in ("window_start", "window_end", "slice", "column", "statistic", "baseline",
                                      "value", "threshold", "alert")) for r in result["drift"]]
        outputs["drift"] = lake.write_table(session.createDataFrame(drift_rows, DRIFT_DDL), f"{output_prefix}_drift",
                                            mode="overwrite", commit_metadata={"source": snap.lineage()}).version
        if performance:
            perf_rows = [tuple(_double(r[k]) if k == "value" else r[k]
                               for k in ("window_start", "window_end", "slice", "rows", "metric", "value", "kind"))
                         for r in performance]
            outputs["performance"] = lake.write_table(session.createDataFrame(perf_rows, PERFORMANCE_DDL),
                                                      f"{output_prefix}_performance", mode="overwrite",
                                                      commit_metadata={"source": snap.lineage()}).version
    plots = _plots(result, plots_dir) if plots_dir else []
    log.info("monitor %s@%s: %d window(s), %d alert(s)", snap.table, snap.version, len(result["windows"]),
             len(result["alerts"]))
    return {"table": snap.lineage(), "reference": ref_snap.lineage(), **result, "performance": performance,
            "calibration": calibration, "plots": plots, "outputs": outputs}


def _plots(result: dict, folder: str) -> list[str]:
    paths = []
    for statistic in STATISTICS:
        series: dict[str, list] = {}
        for r in result["drift"]:
            if r["slice"] == OVERALL and r["baseline"] == "reference" and r["statistic"] == statistic:
                series.setdefault(r["column"], []).append((r["window_start"], r["value"]))
        if any(v is not None for points in series.values() for _, v in points):
            paths.append(plot_statistic_over_windows(series, statistic, result["thresholds"][statistic]["value"],
                                                     Path(folder) / f"drift_{statistic}.png"))
    return paths


__all__ = ["Calibration", "MonitorOptions", "calibrate", "estimated_performance", "monitor_frames", "monitor_table",
           "realized_performance"]
