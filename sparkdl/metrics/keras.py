"""The names Keras logs while training (and sparkdl's training loops average over ranks)."""
from sparkdl.metrics.registry import Metric

_TRAINING = ("binary", "multiclass", "regression", "forecast", "embedding")

METRICS = (
    Metric("loss", False, _TRAINING, "the training loss"),
    Metric("learning_rate", False, _TRAINING, "the learning rate of the epoch's end (logged, not a goal)"),
    Metric("binary_accuracy", True, ("binary",), "Keras's accuracy of a sigmoid output"),
    Metric("sparse_categorical_accuracy", True, ("multiclass",), "Keras's accuracy of a softmax output"),
    Metric("categorical_accuracy", True, ("multiclass",), "Keras's accuracy with one-hot labels"),
    Metric("auc", True, ("binary",), "Keras's AUC"),
    Metric("mean_absolute_error", False, ("regression", "forecast"), "Keras's MAE"),
    Metric("mean_squared_error", False, ("regression", "forecast"), "Keras's MSE"),
    Metric("root_mean_squared_error", False, ("regression", "forecast"), "Keras's RMSE"),
)
