"""sparkdl.metrics: one registry of metric names and directions, read by early stopping, tuning and explanation."""
from __future__ import annotations

import pytest

from sparkdl.errors import ConfigError
from sparkdl.metrics import Metric, direction, larger_is_better, metric, register_metric
from sparkdl.train.rank_job import EarlyStop


@pytest.mark.parametrize("name, larger", [
    ("accuracy", True), ("val_accuracy", True), ("roc_auc", True), ("auc", True), ("val_binary_accuracy", True),
    ("r2", True), ("f1", True), ("loss", False), ("val_loss", False), ("log_loss", False), ("rmse", False),
    ("val_mean_absolute_error", False), ("mase", False), ("smape", False)])
def test_every_metric_sparkdl_reports_has_one_direction(name, larger):
    assert larger_is_better(name) is larger
    assert direction(name) == ("maximize" if larger else "minimize")


def test_unknown_metrics_are_named_and_can_be_registered():
    with pytest.raises(ConfigError, match=r"unknown metric 'val_my_score'.*register_metric"):
        larger_is_better("val_my_score")
    register_metric(Metric("my_score", True, ("binary",), "a user's score"))
    assert larger_is_better("val_my_score") and metric("my_score").tasks == ("binary",)
    with pytest.raises(ConfigError, match="already a metric where larger is better"):
        register_metric(Metric("my_score", False, ("binary",)))


def test_early_stopping_follows_the_metrics_direction():
    rule = EarlyStop("val_accuracy", patience=2)
    assert [rule.should_stop({"val_accuracy": v}) for v in (0.5, 0.6, 0.55, 0.58)] == [False, False, False, True]
    rule = EarlyStop("val_loss", patience=1)
    assert [rule.should_stop({"val_loss": v}) for v in (1.0, 0.8, 0.9)] == [False, False, True]
