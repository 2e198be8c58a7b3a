"""The import layering of sparkdl (README, Architecture): imports flow one way, with no cycle — including the imports
made inside functions, which are where cycles used to hide — and the light entry points stay free of TensorFlow."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sparkdl"

# Lowest first. A module may import modules of its own layer or below, never above.
LAYERS: list[tuple[str, ...]] = [
    ("sparkdl.errors", "sparkdl.log", "sparkdl.fileutil", "sparkdl.uri", "sparkdl.stack", "sparkdl.plots",
     "sparkdl.ordered_scan", "sparkdl.tf_runtime", "sparkdl.session_kind", "sparkdl.spark_jobs",
     "sparkdl.jsonlines", "sparkdl.parquet_reader", "sparkdl.metric_history"),
    ("sparkdl.config", "sparkdl.session", "sparkdl.mlflow.tracking", "sparkdl.metrics"),  # metrics: names only
    ("sparkdl.lake",),
    ("sparkdl.data", "sparkdl.datasets"),
    ("sparkdl.models", "sparkdl.explain.integrated_gradients"),  # the math of the "attributions" output
    ("sparkdl.registry", "sparkdl.model_metadata"),
    ("sparkdl.score",),
    ("sparkdl.train",),     # training hands back a SparkDLModel, which scores through sparkdl.score
    ("sparkdl.monitor",),
    ("sparkdl.evaluate", "sparkdl.evaluation", "sparkdl.evaluate_forecast", "sparkdl.baselines"),
    ("sparkdl.monitoring",),  # windows, slices and performance over logged traffic: reads evaluation's slices
    ("sparkdl.explain",),   # explain_table / explain_model: the scoring path's attributions, aggregated
    ("sparkdl.tune",),      # hyper-parameter search: trials are KerasEstimator fits
    ("sparkdl.mlflow",),    # the pyfunc flavour scores through sparkdl.score
    ("sparkdl.serving",),   # the HTTP server scores through sparkdl.score
    ("sparkdl.workflows",),
    ("sparkdl.cli",),
    ("sparkdl",),           # the package itself: lazy names only
]


# The only imports of sparkdl's own modules allowed inside functions, (importer, imported) -> why. Each keeps a heavy
# dependency off the import path of a lighter module, or is a package's PEP 562 lazy name. Every other import of a
# sparkdl module sits at the top of its file, so the import graph the tests below check is the one Python runs.
LAZY_IMPORTS: dict[tuple[str, str], str] = {
    ("sparkdl.explain", "sparkdl.explain.model"): "scoring layer: importing explain.integrated_gradients (below "
                                                   "sparkdl.score) runs this __init__ first",
    ("sparkdl.explain", "sparkdl.explain.table"): "scoring layer, as above",
    ("sparkdl.mlflow", "sparkdl.mlflow.flavor"): "MLflow, optional; mlflow.tracking (below) runs this __init__",
    ("sparkdl.train", "sparkdl.train.estimator"): "pyspark.ml, off the Horovod workers (they import sparkdl.train.*)",
    ("sparkdl.train", "sparkdl.train.model"): "pyspark.ml, as above",
    ("sparkdl.registry", "sparkdl.models.saving"): "TensorFlow, only when a model is saved or loaded",
    ("sparkdl.train.serialization", "sparkdl.models.saving"): "TensorFlow, only when a model is (de)serialized",
    ("sparkdl.train.launch", "sparkdl.train.keras_worker"): "TensorFlow, imported ahead only in a standby rank",
    ("sparkdl.train.estimator", "sparkdl.models"): "TensorFlow, only when a model is built or checked",
    ("sparkdl.tune", "sparkdl.models"): "TensorFlow, only when a search space's hparams are checked",
    ("sparkdl.train.estimator", "sparkdl.train.keras_worker"): "TensorFlow, only once a fit runs (the CLI starts "
                                                                "without it)",
    ("sparkdl.workflows", "sparkdl.models"): "TensorFlow, only to list the model zoo (CLI start-up stays light)",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> int:
    best, layer = "", None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, layer = prefix, index
    assert layer is not None, f"{module} is in no layer of {__file__}"
    return layer


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported sparkdl module, line, inside a function) for each import of `module` (TYPE_CHECKING blocks and a
    module's own parent packages excluded: importing a submodule always runs its parents first)."""
    tree = ast.parse(MODULES[module].read_text())
    found: list[tuple[str, int, bool]] = []

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [f"{child.module}.{alias.name}" if f"{child.module}.{alias.name}" in MODULES else child.module
                         for alias in child.names]
            for name in names:
                if name.startswith("sparkdl") and name in MODULES and not module.startswith(name + ".") \
                        and name != module:
                    found.append((name, child.lineno, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)


def test_no_module_imports_a_higher_layer():
    upward = [f"{m}:{line} imports {target} ({'in a function' if lazy else 'at the top'})"
              for m, edges in GRAPH.items() for target, line, lazy in edges if _layer(target) > _layer(m)]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_imports_inside_functions_are_only_the_allowed_lazy_ones():
    lazy = {(m, target): line for m, edges in GRAPH.items() for target, line, in_function in edges if in_function}
    unlisted = [f"{m}:{line} imports {target} inside a function" for (m, target), line in sorted(lazy.items())
                if (m, target) not in LAZY_IMPORTS]
    assert not unlisted, ("move these imports to the top of the file, or add them to LAZY_IMPORTS with the heavy "
                          "dependency they keep off the import path:\n" + "\n".join(unlisted))
    stale = sorted(set(LAZY_IMPORTS) - set(lazy))
    assert not stale, f"LAZY_IMPORTS entries with no such import left: {stale}"


def test_no_import_cycle_even_through_function_level_imports():
    edges = {m: sorted({t for t, _, _ in found}) for m, found in GRAPH.items()}
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in edges[module]:
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                walk(target)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("entry", ["sparkdl", "sparkdl.score", "sparkdl.lake", "sparkdl.data", "sparkdl.explain",
                                   "sparkdl.cli", "sparkdl.serving"])
def test_light_entry_points_do_not_import_tensorflow_or_horovod(entry):
    code = (f"import sys, {entry}; heavy = sorted(m for m in ('tensorflow', 'keras', 'tf_keras', 'horovod') "
            f"if m in sys.modules); print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import {entry} pulled in {out}"


def test_every_error_class_is_in_errors_py():
    elsewhere = []
    for module, path in MODULES.items():
        if module == "sparkdl.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith(("Error", "Exception"))
                                                      for b in node.bases):
                elsewhere.append(f"{module}.{node.name}")
    assert not elsewhere, f"error classes outside sparkdl/errors.py: {elsewhere}"
