"""sparkdl: distributed deep learning on Apache Spark over a Delta Lake lakehouse."""
from __future__ import annotations

__version__ = "0.1.0"
__distribution__ = "sparkdl-lakehouse"  # the PyPI name; `sparkdl` on PyPI is an unrelated project

from sparkdl import stack  # noqa: E402, F401  (first: sets TF_USE_LEGACY_KERAS before TensorFlow resolves tf.keras)
from sparkdl.errors import (  # noqa: E402
    ConfigError,
    ModelStoreError,
    ScoringError,
    SparkDLError,
    TableError,
    TrainingError,
    ValidationError,
)
from sparkdl.session import get_spark  # noqa: E402

__all__ = [
    "__version__",
    "get_spark",
    "SparkDLError",
    "ConfigError",
    "TableError",
    "ValidationError",
    "TrainingError",
    "ModelStoreError",
    "ScoringError",
]
