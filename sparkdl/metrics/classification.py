"""Classification metrics (`evaluate_model` of a binary or multiclass model, permutation importance)."""
from sparkdl.metrics.registry import Metric

_TASKS = ("binary", "multiclass")

METRICS = (
    Metric("accuracy", True, _TASKS, "share of rows whose predicted class is the label"),
    Metric("precision", True, _TASKS, "of the rows predicted as a class, the share that is"),
    Metric("recall", True, _TASKS, "of the rows of a class, the share predicted as it"),
    Metric("f1", True, _TASKS, "harmonic mean of precision and recall"),
    Metric("roc_auc", True, _TASKS, "area under the ROC curve (exact, from one ordered scan)"),
    Metric("log_loss", False, _TASKS, "mean negative log-likelihood of the label"),
)
