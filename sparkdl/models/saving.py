"""Saving a model as a `.keras` file from any thread, and loading one with the Keras flavour that saved it (the one
saver and the one loader of training, store and scoring).

Keras 2's `model.save("x.keras")` picks the v3 format from a thread-local flag that its own saver resets to
"unset" (= HDF5) after a save in a thread that did not import Keras: the second save in a Spark ML tuner's worker
thread wrote an HDF5 file named `.keras`. `save_keras_file` calls the v3 saver itself.

A model saved by Keras 2 (TF 2.15's keras, or tf_keras on TF >= 2.16) loads as tf_keras on either stack; a model
saved by Keras 3 loads only where Keras 3 is installed (the current stack). sparkdl's custom layers and losses
are registered for that flavour first, and `safe_mode` stays on (no Lambda bytecode is ever executed).

tf_keras >= 2.16 records its own package in each object's `module` (`tf_keras.src.engine.functional`), which the
pinned stack's Keras 2.15 (the same code as `keras.src...`) cannot import, and writes `InputLayer(optional=False)`,
an argument 2.15 predates. There the archive's config is read with those module paths mapped back to `keras.` and
that default argument dropped (from a temporary copy; the file itself is never changed).
"""
from __future__ import annotations

import importlib
import json
import os
import tempfile
import zipfile

from sparkdl import stack
from sparkdl.errors import SparkDLError
from sparkdl.models.layers import layer_classes
from sparkdl.models.losses import loss_classes

__all__ = ["check_config", "load_keras_file", "save_keras_file"]


def save_keras_file(model, path: str | os.PathLike) -> None:
    """Save `model` (either Keras flavour) to `path` in the Keras v3 (`.keras`) format, from any thread."""
    package = type(model).__module__.split(".", 1)[0]  # keras (2.15 or 3) or tf_keras
    importlib.import_module(f"{package}.src.saving.saving_lib").save_model(model, str(path))


def load_keras_file(path: str | os.PathLike, compile: bool = False):
    """Load the model in `path` (a `.keras` file) with the flavour that saved it.

    Raises:
        SparkDLError: the file is not a Keras v3 archive, or was saved by a Keras this environment lacks (the
            message names the saving and the installed Keras versions).
        Exception: whatever Keras raises for a file it cannot rebuild (callers wrap it with their context).
    """
    flavour = stack.saved_flavour(path)
    layer_classes(flavour)
    loss_classes(flavour)
    with zipfile.ZipFile(path) as archive:
        check_config(json.loads(archive.read("config.json")), flavour, str(path), compile=compile)
    load = stack.keras_module(flavour).models.load_model
    if flavour == "tf_keras" and not stack.legacy_keras_is_separate():
        with zipfile.ZipFile(path) as archive:
            config = archive.read("config.json").decode("utf-8")
            if '"tf_keras.' in config:
                with tempfile.TemporaryDirectory(prefix="sparkdl-keras-") as tmp:
                    copy = os.path.join(tmp, "model.keras")
                    with zipfile.ZipFile(copy, "w") as out:
                        for item in archive.infolist():
                            data = archive.read(item.filename)
                            if item.filename == "config.json":
                                data = json.dumps(_as_keras_215(json.loads(config))).encode("utf-8")
                            out.writestr(item, data)
                    return load(copy, compile=compile, safe_mode=True)
    return load(str(path), compile=compile, safe_mode=True)


# Modules an object of a saved config may name: Keras's own. Anything else must be an object registered with Keras
# (sparkdl's layers and losses, or the user's `register_keras_serializable` classes), which Keras finds by its
# registered name without importing anything.
_KERAS_MODULES = ("keras", "tf_keras")


def check_config(config, flavour: str, where: str = "the model", compile: bool = False) -> None:
    """Refuse a saved model whose config names a module Keras would import to rebuild it.

    Keras 2's loader (and Keras 3's before 3.9, CVE-2025-1550) imports the `module` an object of `config.json`
    names when the class is not registered: a crafted archive could run any importable module's code on load. Every
    object (layer, activation, initializer, regularizer, constraint, loss, nested model...) must come from Keras
    itself or be registered with Keras under its `registered_name`. The `compile_config` (optimizer, loss, metrics)
    is read only for a `compile` load: Keras ignores it otherwise (a trained model records Horovod's optimizer
    wrapper there).

    Raises:
        SparkDLError: an object names another module (the message names it, its class and where it is).
    """
    keras = stack.keras_module(flavour)
    registered = keras.saving.get_registered_object
    if not compile and isinstance(config, dict):
        config = {k: v for k, v in config.items() if k != "compile_config"}
    stack_ = [(config, "config")]
    while stack_:
        node, at = stack_.pop()
        if isinstance(node, list):
            stack_.extend((item, f"{at}[{i}]") for i, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        module = node.get("module")
        if module is not None and "class_name" in node:
            known = isinstance(module, str) and (module in _KERAS_MODULES or module.startswith(
                tuple(m + "." for m in _KERAS_MODULES)))
            name = node.get("registered_name")
            if not known and not (isinstance(name, str) and registered(name) is not None):
                raise SparkDLError(
                    f"{where}: refusing to load: {at} is a {node.get('class_name')!r} from module {module!r}, which "
                    f"is neither Keras nor an object registered with Keras (register the class with "
                    f"keras.saving.register_keras_serializable, or import the module that registers it, first)")
        stack_.extend((value, f"{at}.{key}") for key, value in node.items() if isinstance(value, (dict, list)))


def _as_keras_215(node):
    """A tf_keras >= 2.16 object config as Keras 2.15 reads it (see the module docstring)."""
    if isinstance(node, list):
        return [_as_keras_215(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _as_keras_215(value) for key, value in node.items()}
    if isinstance(out.get("module"), str) and out["module"].startswith("tf_keras."):
        out["module"] = "keras." + out["module"][len("tf_keras."):]
    if out.get("class_name") == "InputLayer" and isinstance(out.get("config"), dict) \
            and out["config"].get("optional") is False:
        out["config"] = {k: v for k, v in out["config"].items() if k != "optional"}
    return out
