"""Regression metrics (`evaluate_model` of a regression model, permutation importance)."""
from sparkdl.metrics.registry import Metric

METRICS = (
    Metric("rmse", False, ("regression", "forecast"), "root mean squared error"),
    Metric("mae", False, ("regression", "forecast"), "mean absolute error"),
    Metric("mse", False, ("regression",), "mean squared error"),
    Metric("r2", True, ("regression",), "coefficient of determination"),
)
