"""Fairness metrics between the groups of a sensitive slice, from their confusion matrices.

Names follow Fairlearn's (`fairlearn.metrics`): the gap ("difference": largest minus smallest group value) or the
"ratio" (smallest over largest) of a rate across groups. Databricks' four fairness metrics are here under these
names: statistical parity is `demographic_parity_*`, equal opportunity is `equal_opportunity_*`, predictive parity
and predictive equality are `predictive_parity_*` and `predictive_equality_*`.

| metric | rate compared across groups |
|---|---|
| demographic_parity_difference / _ratio | selection rate: P(prediction = positive) |
| equal_opportunity_difference / _ratio | true positive rate (recall) |
| predictive_equality_difference / _ratio | false positive rate |
| predictive_parity_difference / _ratio | positive predictive value (precision) |
| equalized_odds_difference / _ratio | the worse of the TPR and FPR gaps (Fairlearn's "worst_case") |

A binary model's positive class is class 1. A multiclass model gets each metric one-vs-rest per class
(`per_class`), and the worst class at the top (largest difference, smallest ratio).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RATES = {"demographic_parity": "selection_rate", "equal_opportunity": "true_positive_rate",
         "predictive_equality": "false_positive_rate", "predictive_parity": "positive_predictive_value"}
METRICS = tuple(f"{name}_{kind}" for name in (*RATES, "equalized_odds") for kind in ("difference", "ratio"))


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def group_rates(matrices: np.ndarray, positive: int) -> dict[str, np.ndarray]:
    """The rates of each group with class `positive` as the positive one. `matrices`: (..., groups, k, k) with
    rows the label and columns the prediction; each rate has shape (..., groups), NaN where undefined."""
    n = matrices.sum(axis=(-2, -1))
    tp = matrices[..., positive, positive]
    predicted = matrices[..., :, positive].sum(axis=-1)
    actual = matrices[..., positive, :].sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        zero_if_empty = np.where(n > 0, predicted / np.where(n > 0, n, 1), np.nan)
    return {"selection_rate": zero_if_empty,
            "true_positive_rate": _div(tp, actual),
            "false_positive_rate": _div(predicted - tp, n - actual),
            "positive_predictive_value": _div(tp, predicted)}


def _gaps(rates: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, rate in RATES.items():
        high, low = np.nanmax(rates[rate], axis=-1), np.nanmin(rates[rate], axis=-1)
        out[f"{name}_difference"] = high - low
        out[f"{name}_ratio"] = _div(low, high)
    out["equalized_odds_difference"] = np.maximum(out["equal_opportunity_difference"],
                                                  out["predictive_equality_difference"])
    out["equalized_odds_ratio"] = np.minimum(out["equal_opportunity_ratio"], out["predictive_equality_ratio"])
    return out


def fairness_metrics(matrices: np.ndarray, labels: Sequence[str]) -> dict:
    """Fairness metrics of (replicates, groups, k, k) confusion matrices.

    Returns {"metrics": {name: (replicates,)}, "per_class": {class: {...}} (k > 2 only), "by_group": [per group
    {rate: (replicates,)}]}: differences and ratios as in the module docstring; rates of class 1 (binary) or
    `<rate>.<class>` per class (multiclass).
    """
    k = matrices.shape[-1]
    with np.errstate(all="ignore"):
        if k == 2:
            rates = group_rates(matrices, 1)
            by_group = [{name: rate[..., g] for name, rate in rates.items()} for g in range(matrices.shape[1])]
            return {"metrics": _gaps(rates), "by_group": by_group}
        per_class, by_group = {}, [{} for _ in range(matrices.shape[1])]
        for c, name in enumerate(labels):
            rates = group_rates(matrices, c)
            per_class[str(name)] = _gaps(rates)
            for g, entry in enumerate(by_group):
                entry.update({f"{rate}.{name}": value[..., g] for rate, value in rates.items()})
        worst = {}
        for metric in METRICS:
            stacked = np.stack([v[metric] for v in per_class.values()])
            worst[metric] = np.nanmax(stacked, axis=0) if metric.endswith("difference") else np.nanmin(stacked, axis=0)
    return {"metrics": worst, "per_class": per_class, "by_group": by_group}
