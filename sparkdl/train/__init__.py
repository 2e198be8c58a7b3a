"""Distributed training on Spark: the Horovod runner and the Keras estimator.

    >>> from sparkdl.train import HorovodRunner, KerasEstimator
    >>> HorovodRunner(num_proc=2).run(train_fn, epochs=3)            # rank 0's result
    >>> fitted = KerasEstimator(model="mlp", feature_spec=spec).fit("/lake/table")   # -> SparkDLModel

`KerasEstimator` and `SparkDLModel` are imported lazily (they pull in pyspark.ml; the runner does not).
"""
from sparkdl.train.runner import HorovodRunner, RunStats

__all__ = ["HorovodRunner", "KerasEstimator", "RunStats", "SparkDLModel"]


def __getattr__(name):
    if name == "KerasEstimator":
        from sparkdl.train.estimator import KerasEstimator

        return KerasEstimator
    if name == "SparkDLModel":
        from sparkdl.train.model import SparkDLModel

        return SparkDLModel
    raise AttributeError(f"module 'sparkdl.train' has no attribute {name!r}")
