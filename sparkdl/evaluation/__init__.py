"""Evaluation by slice: metrics per group of rows with bootstrap intervals, fairness metrics between the groups of
a sensitive slice, and gates that a model version must pass to be promoted.

    >>> from sparkdl import evaluate_model
    >>> evaluate_model("cancer@3", "lake/cancer_test", slices=["sex", {"name": "young", "where": "age < 25"}],
    ...                slice_options=SliceOptions(sensitive="sex"),
    ...                gates=[{"metric": "recall", "between": "sex", "max_gap": 0.05}])

Modules: `slices` (definitions), `sliced` (the one-pass metrics), `fairness`, `gates`, `report` (long-form rows,
MLflow names, plots), `auc` (exact ROC AUC per group), `anomaly` (an anomaly detector against known anomalies, beside an
IsolationForest).
"""
from sparkdl.evaluation.anomaly import AnomalyEvaluation, evaluate_anomalies
from sparkdl.evaluation.gates import Gate, GateReport, GateResult, check_gates, parse_gates
from sparkdl.evaluation.sliced import SliceOptions, sliced_classification, sliced_regression
from sparkdl.evaluation.slices import Slice, parse_slices

__all__ = ["AnomalyEvaluation", "Gate", "GateReport", "GateResult", "Slice", "SliceOptions", "check_gates",
           "evaluate_anomalies", "parse_gates", "parse_slices", "sliced_classification", "sliced_regression"]
