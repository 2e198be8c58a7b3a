"""PNG plots: training curves, confusion matrices, feature importance, saliency maps and attributions over time.

matplotlib is imported lazily, and figures are drawn on the Agg canvas directly (`matplotlib.figure.Figure` +
`FigureCanvasAgg`), so no display is needed and pyplot's global state and backend are left alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sparkdl.errors import ValidationError


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | os.PathLike) -> str:
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValidationError(f"plot path must end with .png, got {str(path)!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png")
    return str(target)


def plot_history(history: Mapping[str, Sequence[float]], path: str | os.PathLike) -> str:
    """Training curves: one panel per metric (loss first), training values and `val_<metric>` when present.

    Params:
        history: Keras-style history, e.g. {"loss": [...], "val_loss": [...], "accuracy": [...]}; one value
            per epoch. A `val_` series without its training series gets a panel of its own.
        path: the PNG file to write (parent folders are created).
    Returns the path of the PNG.
    Raises ValidationError: an empty history, a series that is not a list of numbers, or a path not ending in
    .png.
    """
    if not isinstance(history, Mapping) or not history:
        raise ValidationError("history must be a non-empty dict of metric name -> list of per-epoch values")
    series: dict[str, list[float]] = {}
    for name, values in history.items():
        if name == "epoch":  # the epoch index itself, not a metric
            continue
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValidationError(f"history[{name!r}] must be a non-empty list of numbers, got {values!r}")
        try:
            series[str(name)] = [float(v) for v in values]
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"history[{name!r}] holds a value that is not a number: {exc}") from exc
    bases = sorted({name.removeprefix("val_") for name in series}, key=lambda n: (n != "loss", n))
    columns = min(len(bases), 3)
    rows = math.ceil(len(bases) / columns)
    figure = _figure(4.5 * columns, 3.4 * rows)
    for index, base in enumerate(bases):
        axes = figure.add_subplot(rows, columns, index + 1)
        for name, label, style in ((base, "train", "-o"), (f"val_{base}", "validation", "--s")):
            if name in series:
                values = series[name]
                axes.plot(range(1, len(values) + 1), values, style, label=label, markersize=3)
        axes.set_title(base)
        axes.set_xlabel("epoch")
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.tight_layout()
    return _save(figure, path)


def plot_confusion_matrix(
    matrix: Sequence[Sequence[Any]],
    labels: Sequence[Any] | None,
    path: str | os.PathLike,
    normalize: bool = False,
) -> str:
    """A confusion matrix heat map with the count in each cell (rows = true class, columns = predicted).

    Params:
        matrix: k×k counts, e.g. classification_metrics(...)["confusion_matrix"].
        labels: k class names (None: 0..k-1).
        path: the PNG file to write (parent folders are created).
        normalize: colour and annotate by the fraction of each true class (row) instead of counts.
    Returns the path of the PNG.
    Raises ValidationError: a matrix that is empty, not square or not numeric, labels of the wrong length, or
    a path not ending in .png.
    """
    try:
        rows = [[float(v) for v in row] for row in matrix]
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"confusion matrix must be a k×k list of numbers: {exc}") from exc
    k = len(rows)
    if k == 0 or any(len(row) != k for row in rows):
        raise ValidationError(
            f"confusion matrix must be square and non-empty, got row lengths {[len(r) for r in rows]}"
        )
    names = [str(x) for x in (labels if labels is not None else range(k))]
    if len(names) != k:
        raise ValidationError(f"{len(names)} labels for a {k}×{k} confusion matrix")
    if normalize:
        rows = [[v / sum(row) if sum(row) else 0.0 for v in row] for row in rows]
    size = max(4.0, 0.6 * k + 2.5)
    figure = _figure(size, size)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(rows, cmap="Blues", vmin=0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(k), names, rotation=45 if k > 6 else 0, ha="right" if k > 6 else "center")
    axes.set_yticks(range(k), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    top = max((v for row in rows for v in row), default=0.0)
    if k <= 30:
        for i, row in enumerate(rows):
            for j, value in enumerate(row):
                text = f"{value:.2f}" if normalize else f"{int(value)}"
                axes.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if top and value > top / 2 else "black",
                )
    axes.set_title("confusion matrix" + (" (row-normalized)" if normalize else ""))
    figure.tight_layout()
    return _save(figure, path)


def plot_feature_importance(panels: Mapping[str, Mapping[str, float]], path: str | os.PathLike,
                            errors: Mapping[str, Mapping[str, float]] | None = None, top: int = 20) -> str:
    """Horizontal bar charts of feature importance, one panel per method, features in each panel's own order.

    Params:
        panels: method title -> {feature name: importance}, e.g. {"mean |integrated gradients|": {...},
            "permutation (accuracy drop)": {...}}.
        path: the PNG file to write.
        errors: optional method title -> {feature: standard deviation} drawn as error bars.
        top: at most this many features per panel (the largest).
    Returns the path of the PNG. Raises ValidationError: no panel, an empty panel, or a non-numeric value.
    """
    if not panels:
        raise ValidationError("feature importance: no panel to plot")
    ranked = {}
    for title, values in panels.items():
        if not values:
            raise ValidationError(f"feature importance: panel {title!r} is empty")
        try:
            items = sorted(((str(k), float(v)) for k, v in values.items()), key=lambda kv: -kv[1])[:top]
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"feature importance: panel {title!r} holds a value that is not a number: "
                                  f"{exc}") from exc
        ranked[title] = items
    height = max(2.5, 0.28 * max(len(items) for items in ranked.values()) + 1.2)
    figure = _figure(5.5 * len(ranked), height)
    for index, (title, items) in enumerate(ranked.items()):
        axes = figure.add_subplot(1, len(ranked), index + 1)
        names = [name for name, _ in items][::-1]
        values = [value for _, value in items][::-1]
        spread = [(errors or {}).get(title, {}).get(name, 0.0) for name in names] if errors else None
        axes.barh(range(len(names)), values, xerr=spread, color="#4477aa")
        axes.set_yticks(range(len(names)), names, fontsize=8)
        axes.set_title(title, fontsize=10)
        axes.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def plot_saliency(images: Sequence[Any], maps: Sequence[Any], titles: Sequence[str], path: str | os.PathLike) -> str:
    """A grid of sample rows: the input image above its saliency map (|attribution| summed over channels).

    Params:
        images, maps: per row an array of shape (height, width) or (height, width, channels).
        titles: one caption per row (e.g. "pred 3").
        path: the PNG file to write.
    Returns the path of the PNG. Raises ValidationError: no rows, or images and maps of different counts/shapes.
    """
    import numpy as np

    if not images or len(images) != len(maps) or len(titles) != len(images):
        raise ValidationError(f"saliency grid: need as many maps and titles as images, got {len(images)} images, "
                              f"{len(maps)} maps, {len(titles)} titles")
    count = len(images)
    figure = _figure(1.6 * count, 3.4)
    for index, (image, heat, title) in enumerate(zip(images, maps, titles)):
        image, heat = np.asarray(image, dtype=float), np.abs(np.asarray(heat, dtype=float))
        if image.shape != heat.shape:
            raise ValidationError(f"saliency grid: image {index} has shape {image.shape}, its map {heat.shape}")
        if image.ndim == 3:
            heat = heat.sum(axis=-1)
            image = image[..., 0] if image.shape[-1] == 1 else image / max(float(image.max()), 1e-12)
        top = figure.add_subplot(2, count, index + 1)
        top.imshow(image, cmap="gray" if image.ndim == 2 else None)
        top.set_title(title, fontsize=8)
        top.axis("off")
        bottom = figure.add_subplot(2, count, count + index + 1)
        bottom.imshow(heat, cmap="inferno")
        bottom.axis("off")
    figure.suptitle("inputs (top) and |integrated gradients| (bottom)", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def plot_over_time(series: Mapping[str, Sequence[float]], path: str | os.PathLike) -> str:
    """Mean |attribution| per time step of sequence features, one line per feature.

    Params:
        series: feature name -> one value per time step.
        path: the PNG file to write.
    Returns the path of the PNG. Raises ValidationError: no series or an empty one.
    """
    if not series or any(len(values) == 0 for values in series.values()):
        raise ValidationError("attribution over time: need at least one non-empty series")
    figure = _figure(6.0, 3.2)
    axes = figure.add_subplot(1, 1, 1)
    for name, values in series.items():
        axes.plot(range(len(values)), [float(v) for v in values], "-o", markersize=3, label=name)
    axes.set_xlabel("time step")
    axes.set_ylabel("mean |attribution|")
    axes.set_title("attribution over time steps")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return _save(figure, path)


def plot_forecasts(panels: Mapping[str, Mapping[str, Sequence[Any]]], path: str | os.PathLike) -> str:
    """Forecast against actual for a few series, one panel each.

    Params:
        panels: series name -> {"time", "actual", "forecast"} (the one-step-ahead forecasts over the test period)
            and optionally {"last_time", "last_forecast"} (the last window's forecast over its whole horizon).
        path: the PNG file to write (parent folders are created).
    Returns the path of the PNG.
    Raises ValidationError: no panel, series of unequal lengths, or a path not ending in .png.
    """
    if not panels:
        raise ValidationError("plot_forecasts needs at least one series")
    for name, panel in panels.items():
        if not (len(panel["time"]) == len(panel["actual"]) == len(panel["forecast"])):
            raise ValidationError(f"series {name!r}: time, actual and forecast must have the same length")
    columns = min(len(panels), 2)
    rows = math.ceil(len(panels) / columns)
    figure = _figure(6.0 * columns, 3.2 * rows)
    for index, (name, panel) in enumerate(panels.items()):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.plot(panel["time"], panel["actual"], "-", color="black", label="actual", linewidth=1.2)
        axes.plot(panel["time"], panel["forecast"], "-", color="tab:blue", label="forecast, 1 step ahead",
                  linewidth=1.0)
        if panel.get("last_time") is not None and len(panel["last_time"]):
            axes.plot(panel["last_time"], panel["last_forecast"], "--o", color="tab:orange", markersize=3,
                      label="last window's forecast")
        axes.set_title(str(name))
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7)
        axes.tick_params(axis="x", labelrotation=30, labelsize=7)
    figure.tight_layout()
    return _save(figure, path)


def plot_error_by_step(errors: Mapping[str, Sequence[float]], path: str | os.PathLike, metric: str = "MAE") -> str:
    """The error per forecast step (1..horizon) of each forecaster (e.g. the model and seasonal naive).

    Raises ValidationError: no series, or a path not ending in .png."""
    if not errors:
        raise ValidationError("plot_error_by_step needs at least one series of errors")
    figure = _figure(6.0, 3.6)
    axes = figure.add_subplot(1, 1, 1)
    for name, values in errors.items():
        values = [float("nan") if v is None else float(v) for v in values]
        axes.plot(range(1, len(values) + 1), values, "-o", markersize=3, label=str(name))
    axes.set_xlabel("forecast step")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} by forecast step")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return _save(figure, path)


def plot_slices(slices: Mapping[str, Mapping[str, Any]], metric: str, path: str | os.PathLike) -> str:
    """One metric across slices: a point per slice with its confidence interval, the overall value as a line.

    Params:
        slices: a sliced report's "slices" ({name: {"n", "metrics": {metric: {"value", "lower", "upper"}}}}).
        metric: the metric drawn; slices without it are left out.
        path: the PNG file to write.
    Returns the path of the PNG. Raises ValidationError: no slice has the metric, or a path not ending in .png.
    """
    rows = [(name, s["n"], s["metrics"][metric]) for name, s in slices.items()
            if s.get("metrics", {}).get(metric, {}).get("value") is not None]
    if not rows:
        raise ValidationError(f"no slice has a value of {metric!r} to plot")
    figure = _figure(6.5, 0.9 + 0.32 * len(rows))
    ax = figure.add_subplot(1, 1, 1)
    for i, (name, _, m) in enumerate(rows):
        if m.get("lower") is not None and m.get("upper") is not None:
            ax.plot([m["lower"], m["upper"]], [i, i], color="tab:blue", linewidth=2, alpha=0.5)
        ax.plot([m["value"]], [i], "o", color="tab:blue" if name != "overall" else "black")
    overall = slices.get("overall", {}).get("metrics", {}).get(metric, {}).get("value")
    if overall is not None:
        ax.axvline(overall, color="black", linestyle=":", linewidth=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{name} (n={n})" for name, n, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    ax.set_title(f"{metric} by slice (bars: confidence intervals)", fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def plot_statistic_over_windows(series: Mapping[str, Sequence[tuple[Any, float | None]]], statistic: str,
                                threshold: float | None, path: str | os.PathLike) -> str:
    """One drift statistic over time windows, a line per column, the alert threshold dashed.

    Params:
        series: column -> [(window start, value or None)], in time order.
        statistic: its name (the y axis); threshold: drawn when given.
        path: the PNG file to write.
    Returns the path of the PNG. Raises ValidationError: no value to draw.
    """
    drawn = {name: [(t, v) for t, v in points if v is not None] for name, points in series.items()}
    drawn = {name: points for name, points in drawn.items() if points}
    if not drawn:
        raise ValidationError(f"no value of {statistic!r} to plot")
    figure = _figure(7.0, 3.4)
    axes = figure.add_subplot(1, 1, 1)
    for name, points in drawn.items():
        axes.plot([t for t, _ in points], [v for _, v in points], "-o", markersize=3, label=name)
    if threshold is not None:
        axes.axhline(threshold, color="red", linestyle="--", linewidth=1, label="threshold")
    axes.set_ylabel(statistic)
    axes.set_title(f"{statistic} per window against the reference", fontsize=10)
    axes.legend(fontsize=7, loc="upper left")
    figure.autofmt_xdate()
    figure.tight_layout()
    return _save(figure, path)
