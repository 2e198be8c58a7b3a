"""Forecasting metrics (`evaluate_model` of a forecaster, the backtest); MAE and RMSE are regression's."""
from sparkdl.metrics.registry import Metric

METRICS = (
    Metric("smape", False, ("forecast",), "symmetric mean absolute percentage error, in percent"),
    Metric("mase", False, ("forecast",), "MAE scaled by the series' seasonal-naive MAE on its training steps"),
)
