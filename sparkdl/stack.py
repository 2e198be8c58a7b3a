"""The one place that knows which of sparkdl's two stacks this interpreter runs, and where they differ.

* **pinned** (`constraints.txt`): TensorFlow 2.15, where `tf.keras` is Keras 2 (the `keras` 2.15 package),
  Petastorm 0.13.1 on PyArrow 14 / NumPy 1.26.
* **current** (`constraints-current.txt`): TensorFlow >= 2.16, where Keras 2 is the `tf_keras` package and
  `keras` is Keras 3; NumPy 2 and a current PyArrow, on which Petastorm cannot be imported.

Keras flavours (`KERAS_FLAVOURS`):
* ``"tf_keras"``: Keras 2 — what Horovod's Keras wrappers (`hvd.DistributedOptimizer`, its callbacks) and the
  zoo build by default. Importing sparkdl sets ``TF_USE_LEGACY_KERAS=1`` (unless set already), so `tf.keras`
  and `from tensorflow import keras` (inside Horovod) resolve to tf_keras on TensorFlow >= 2.16, as Ray Train
  does. TensorFlow resolves `tf.keras` at its first use, so this works even after `import tensorflow`, as long
  as nothing touched `tf.keras` before sparkdl was imported (`require_legacy_tf_keras` says so when it did).
* ``"keras3"``: Keras 3 (`import keras`), on the current stack only; sparkdl trains it with its own
  distributed step (`sparkdl.train.keras3_worker`).

This module imports neither TensorFlow nor Keras at import time.
"""
from __future__ import annotations

import importlib.metadata
import os
import zipfile
from typing import Literal

from sparkdl.errors import ConfigError, SparkDLError

KerasFlavour = Literal["tf_keras", "keras3"]
KERAS_FLAVOURS: tuple[str, ...] = ("tf_keras", "keras3")
PETASTORM_PIN = "petastorm==0.13.1 with pyarrow==14.0.2 and numpy==1.26.4 (constraints.txt, the pinned stack)"

__all__ = ["KERAS_FLAVOURS", "KerasFlavour", "check", "describe", "dist_version", "flavour_of", "is_keras_model",
           "keras_module", "keras_version", "petastorm_available", "require_petastorm", "saved_keras_version",
           "stack_name", "tensorflow_version"]


def dist_version(*names: str) -> str | None:
    """The installed version of the first of these distributions that is installed (None if none is)."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _major_minor(version: str | None) -> tuple[int, int]:
    parts = (version or "0.0").split(".")
    return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)


def tensorflow_version() -> str | None:
    """The installed TensorFlow version (without importing it), or None."""
    return dist_version("tensorflow-cpu", "tensorflow", "tensorflow-macos")


def legacy_keras_is_separate() -> bool:
    """True on TensorFlow >= 2.16, where Keras 2 is the tf_keras package."""
    return _major_minor(tensorflow_version()) >= (2, 16)


if legacy_keras_is_separate():
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
elif os.environ.get("TF_USE_LEGACY_KERAS") and dist_version("tf-keras", "tf_keras") is None:
    # On TF 2.15 the variable (inherited, e.g., from a process of the current stack) would send tf.keras to a
    # tf_keras that is not installed ("Keras cannot be imported"); tf.keras is Keras 2 there anyway.
    del os.environ["TF_USE_LEGACY_KERAS"]


def stack_name() -> str:
    """"current" on TensorFlow >= 2.16, else "pinned"."""
    return "current" if legacy_keras_is_separate() else "pinned"


def keras_version(flavour: str = "tf_keras") -> str | None:
    """The installed version of a Keras flavour (None when it is not installed)."""
    if flavour == "keras3":
        version = dist_version("keras")
        return version if version and version.startswith("3.") else None
    return dist_version("tf-keras", "tf_keras") if legacy_keras_is_separate() else dist_version("keras")


def check_flavour(flavour: str) -> str:
    """`flavour` if it is one of KERAS_FLAVOURS and installed here. Raises ConfigError naming what is missing."""
    if flavour not in KERAS_FLAVOURS:
        raise ConfigError(f"keras flavour must be one of {list(KERAS_FLAVOURS)}, got {flavour!r}")
    if keras_version(flavour) is None:
        if flavour == "keras3":
            raise ConfigError(f"keras flavour 'keras3' needs Keras 3 on TensorFlow >= 2.16 (the current stack, "
                              f"constraints-current.txt); this environment has TensorFlow {tensorflow_version()} "
                              f"and keras {dist_version('keras')}")
        raise ConfigError(f"keras flavour 'tf_keras' needs Keras 2: on TensorFlow {tensorflow_version()} install "
                          f"tf-keras of the same line (pip install 'sparkdl-lakehouse[tf-keras]')")
    return flavour


def keras_module(flavour: str = "tf_keras"):
    """The Keras API module of a flavour: `tf.keras` (TF < 2.16) or `tf_keras` for "tf_keras", `keras` for
    "keras3". Raises ConfigError when the flavour is not installed."""
    check_flavour(flavour)
    if flavour == "keras3":
        import keras

        return keras
    if legacy_keras_is_separate():
        import tf_keras

        return tf_keras
    import tensorflow as tf

    return tf.keras


def require_legacy_tf_keras() -> None:
    """Raise ConfigError when `tf.keras` resolved to Keras 3, with which Horovod's Keras module cannot work
    (`tf.keras` was used before sparkdl was imported, without TF_USE_LEGACY_KERAS=1)."""
    if not legacy_keras_is_separate():
        return
    import tensorflow as tf

    if tf.keras.Model is not keras_module("tf_keras").Model:
        raise ConfigError(f"tf.keras is Keras 3 ({tf.keras.Model.__module__}) in this process: set "
                          f"TF_USE_LEGACY_KERAS=1 before TensorFlow is first used (or import sparkdl first) to train "
                          f"tf_keras models with Horovod, or build the model with Keras 3 (`import keras`, "
                          f"keras='keras3')")


def is_keras_model(obj) -> bool:
    """True for a Keras model of either flavour."""
    return flavour_of(obj) is not None


def flavour_of(obj) -> str | None:
    """"keras3" for a Keras 3 model/optimizer/layer, "tf_keras" for a Keras 2 one, None for anything else.
    Looks only at modules already imported (never imports Keras)."""
    import sys

    keras3 = sys.modules.get("keras")
    if keras3 is not None and str(getattr(keras3, "__version__", "")).startswith("3."):
        if isinstance(obj, (keras3.Model, keras3.optimizers.Optimizer, keras3.layers.Layer)):
            return "keras3"
    for name in ("tf_keras", "keras"):
        module = sys.modules.get(name)
        if module is None or (name == "keras" and str(getattr(module, "__version__", "")).startswith("3.")):
            continue
        if isinstance(obj, (module.Model, module.layers.Layer)) or isinstance(obj, _optimizer_bases(module)):
            return "tf_keras"
    return None


def _optimizer_bases(module) -> tuple:
    bases = [module.optimizers.Optimizer]
    legacy = getattr(module.optimizers, "legacy", None)
    if legacy is not None:
        bases.append(legacy.Optimizer)
    return tuple(bases)


def saved_keras_version(path: str | os.PathLike) -> str:
    """The Keras version recorded in a `.keras` file (its metadata.json). Raises SparkDLError when unreadable."""
    import json

    try:
        with zipfile.ZipFile(path) as archive:
            return str(json.loads(archive.read("metadata.json"))["keras_version"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise SparkDLError(f"{path}: not a Keras v3 (.keras) file with metadata.json: {exc}") from None


def saved_flavour(path: str | os.PathLike) -> str:
    """The flavour able to load a `.keras` file: "keras3" when Keras 3 saved it, else "tf_keras".
    Raises SparkDLError when that flavour is not installed here, naming both Keras versions."""
    saved = saved_keras_version(path)
    flavour = "keras3" if saved.startswith("3.") else "tf_keras"
    if keras_version(flavour) is None:
        here = ", ".join(f"{f} {keras_version(f)}" for f in KERAS_FLAVOURS if keras_version(f)) or "no Keras"
        raise SparkDLError(f"{path}: saved with Keras {saved}, which this environment cannot load "
                           f"(TensorFlow {tensorflow_version()} with {here}); "
                           + ("load it on the current stack (constraints-current.txt)" if flavour == "keras3"
                              else "install tf-keras (pip install 'sparkdl-lakehouse[tf-keras]')"))
    return flavour


def petastorm_available() -> bool:
    """True when Petastorm is installed and importable with this PyArrow and NumPy."""
    if dist_version("petastorm") is None:
        return False
    return _major_minor(dist_version("pyarrow")) < (15, 0) and _major_minor(dist_version("numpy")) < (2, 0)


def require_petastorm() -> None:
    """Raise SparkDLError naming the pin when Petastorm cannot be used in this environment."""
    if not petastorm_available():
        raise SparkDLError(f"Petastorm is not usable here (pyarrow {dist_version('pyarrow')}, numpy "
                           f"{dist_version('numpy')}, petastorm {dist_version('petastorm')}): Petastorm's "
                           f"converter needs {PETASTORM_PIN}. sparkdl's own caches and tf.data input need no "
                           f"Petastorm; use PetastormDataset.files with pyarrow, or the pinned stack")


def describe() -> str:
    """One line: the stack, TensorFlow, the Keras flavours, NumPy, PyArrow, PySpark."""
    flavours = ", ".join(f"{f} {keras_version(f)}" for f in KERAS_FLAVOURS if keras_version(f))
    return (f"{stack_name()} stack: tensorflow {tensorflow_version()} ({flavours}), numpy {dist_version('numpy')}, "
            f"pyarrow {dist_version('pyarrow')}, pyspark {dist_version('pyspark')}, "
            f"petastorm {'usable' if petastorm_available() else 'not usable'}")


def check() -> list[str]:
    """Problems with this environment as one line each (empty when it is complete). Imports TensorFlow."""
    problems = []
    if keras_version("tf_keras") is None:
        problems.append(f"Keras 2 is missing for TensorFlow {tensorflow_version()} (install tf-keras)")
    if stack_name() == "current" and keras_version("keras3") is None:
        problems.append("Keras 3 (`keras` 3.x) is missing")
    if stack_name() == "pinned" and not petastorm_available():
        problems.append(f"Petastorm is not usable: the pinned stack needs {PETASTORM_PIN}")
    try:
        require_legacy_tf_keras()
    except ConfigError as exc:
        problems.append(str(exc))
    return problems


def arrow_schema(spark_schema):
    """`pyspark.sql.pandas.types.to_arrow_schema` on either stack: PySpark 4.3 takes the time zone of timestamps
    as `timezone` (and fails without it), 4.0 writes them as UTC (`timestamp_utc`). Timestamps are UTC either way."""
    import inspect

    from pyspark.sql.pandas.types import to_arrow_schema

    if "timezone" in inspect.signature(to_arrow_schema).parameters:
        return to_arrow_schema(spark_schema, timezone="UTC")
    return to_arrow_schema(spark_schema)
