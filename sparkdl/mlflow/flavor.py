"""sparkdl model versions as MLflow models: a pyfunc that applies the stored preprocessing and the Keras model.

`log_model(model_ref)` copies the model version (Keras file + metadata: feature spec, fitted preprocessing, label
classes, lineage) into the run's artifacts as a one-version model store, and logs a `mlflow.pyfunc` model whose
`predict` runs sparkdl's own scorer (`sparkdl.score.runtime.Scorer`, the code behind `score_dataframe` and the
SQL functions) — so `mlflow.pyfunc.load_model(uri).predict(pdf)` and `mlflow.pyfunc.spark_udf(spark, uri)` give
the same outputs as sparkdl scoring. Rows that cannot be prepared (e.g. a null without imputation) score as null,
like `score_dataframe(..., on_invalid="null")`. The signature comes from the feature spec.
`load_model(uri)` of such a model gives back the sparkdl model reference it was logged from.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow
import mlflow.pyfunc

from sparkdl.errors import ConfigError
from sparkdl.log import get_logger
from sparkdl.score.model_ref import ModelRef, resolve_model
from sparkdl.score.outputs import OUTPUTS, plan_output, refuse_row_level_flags
from sparkdl.score.runtime import get_scorer

log = get_logger("mlflow")

FLAVOR_KEY = "sparkdl"
_STORE_ARTIFACT = "model_store"


class SparkDLPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc of a logged sparkdl model version (see the module docstring)."""

    def __init__(self, name: str, version: int, output: str):
        self.name, self.version, self.output = name, int(version), output

    def load_context(self, context) -> None:
        root = str(Path(context.artifacts[_STORE_ARTIFACT]).resolve())
        ref, metadata = resolve_model(ModelRef(root, self.name, self.version))
        self.scorer = get_scorer(ref, plan_output(self.output, metadata))

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import pyarrow as pa

        names = self.scorer.feature_names
        missing = [n for n in names if n not in model_input.columns]
        if missing:
            raise ValueError(f"{self.name}@{self.version}: input lacks feature column(s) {missing}; "
                             f"it has {list(model_input.columns)}")
        table = pa.Table.from_pandas(model_input[names], preserve_index=False)
        out, _, _ = self.scorer.score(table)
        return pd.Series(out.to_pandas(), name=self.output)


def _signature(metadata, plan):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    scalar = {"numeric": DataType.double, "categorical": DataType.string, "text": DataType.string,
              "image": DataType.binary}
    cols = []
    for feature in metadata.spec.features:
        if feature.kind in scalar:
            cols.append(ColSpec(scalar[feature.kind], feature.name, required=False))
        else:  # vector / sequence: an array of numbers
            cols.append(ColSpec(Array(DataType.double), feature.name, required=False))
    out_type = {"int64": DataType.long, "int32": DataType.integer, "string": DataType.string,
                "large_string": DataType.string}.get(str(plan.arrow_type()), DataType.double)
    outputs = Schema([ColSpec(out_type, plan.kind)]) if plan.kind == "prediction" else None
    return ModelSignature(inputs=Schema(cols), outputs=outputs)


def log_model(model_ref, name: str = "model", output: str = "prediction", registered_model_name: str | None = None,
              store=None):
    """Log a sparkdl model version as an MLflow model in the active run (one is started when none is active).

    Args:
        model_ref: `"name@3"`, `"name"` (latest), a `ModelVersion` or a `SparkDLModel`.
        name: the model's name in the run (its artifact folder).
        output: what `predict` returns: "prediction" (the default) or another sparkdl output kind.
        registered_model_name: also register it in the MLflow Model Registry under this name.
        store: the sparkdl model store (default: the reference's own, else the default store).

    Returns:
        MLflow's `ModelInfo` (its `model_uri` loads the model with `mlflow.pyfunc.load_model` / `spark_udf`).

    Raises:
        ConfigError: unknown output; ModelStoreError: unknown model version.
    """
    if output not in OUTPUTS:
        raise ConfigError(f"output must be one of {OUTPUTS}, got {output!r}")
    ref, metadata = resolve_model(model_ref, store)
    plan = plan_output(output, metadata)
    refuse_row_level_flags(plan, f"log_model({ref})")
    with tempfile.TemporaryDirectory(prefix="sparkdl-mlflow-") as tmp:
        copy = Path(tmp) / "store"
        shutil.copytree(Path(ref.root) / ref.name / str(ref.version), copy / ref.name / str(ref.version))
        meta = {FLAVOR_KEY: {"name": ref.name, "version": ref.version, "output": output,
                             "source_store": ref.root, "model_ref": str(ref)}}
        started = mlflow.active_run() is None
        if started:
            mlflow.start_run(run_name=f"{ref}")
        try:
            info = mlflow.pyfunc.log_model(
                name=name, python_model=SparkDLPyfunc(ref.name, ref.version, output),
                artifacts={_STORE_ARTIFACT: str(copy)}, signature=_signature(metadata, plan), metadata=meta,
                registered_model_name=registered_model_name, pip_requirements=_requirements())
        finally:
            if started:
                mlflow.end_run()
    log.info("logged %s as MLflow model %s", ref, info.model_uri)
    return info


def load_model(model_uri: str) -> str:
    """The sparkdl model reference (`"name@version"`) an MLflow model logged by `log_model` was made from.

    Raises:
        ConfigError: the MLflow model was not logged by `sparkdl.mlflow.log_model`.
    """
    from mlflow.models import Model

    meta = (Model.load(model_uri).metadata or {}).get(FLAVOR_KEY)
    if not meta:
        raise ConfigError(f"{model_uri} is not a sparkdl model (logged by sparkdl.mlflow.log_model)")
    return f"{meta['name']}@{meta['version']}"


def _requirements() -> list[str]:
    from importlib.metadata import version

    pins = []
    for dist in ("sparkdl-lakehouse", "mlflow-skinny", "pyarrow", "pandas", "numpy"):
        try:
            pins.append(f"{dist}=={version(dist)}")
        except Exception:  # noqa: BLE001 - not installed under that name
            continue
    return pins
