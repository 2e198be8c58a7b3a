"""MLflow integration: fits tracked as MLflow runs, and sparkdl model versions logged as MLflow pyfunc models.

    >>> import sparkdl.mlflow
    >>> info = sparkdl.mlflow.log_model("digits_cnn@3", registered_model_name="digits")
    >>> predict = mlflow.pyfunc.spark_udf(spark, info.model_uri)      # same outputs as sparkdl scoring
    >>> sparkdl.mlflow.load_model(info.model_uri)                     # -> "digits_cnn@3"

MLflow is optional: `sparkdl.mlflow.tracking` (used by `KerasEstimator.fit` and `evaluate_model`) imports it only
when tracking is on; `log_model`/`load_model` need it installed (`pip install 'mlflow-skinny>=3.1'`).
"""
from __future__ import annotations

__all__ = ["log_model", "load_model"]


def __getattr__(name):
    if name in __all__:
        from sparkdl.mlflow import flavor

        return getattr(flavor, name)
    raise AttributeError(f"module 'sparkdl.mlflow' has no attribute {name!r}")
