"""MLflow tracking of `KerasEstimator.fit` and of evaluations, from the driver only — optional, off the import path.

Tracking is decided once per fit by `tracking_wanted(setting)`:

* `True`: log a run (an error naming the `mlflow-skinny` package when MLflow is not installed);
* `False`: never;
* `None` (the default, estimator param `mlflow` / YAML `train.mlflow`): log when MLflow is installed **and** either a
  tracking URI is set (`MLFLOW_TRACKING_URI` or `mlflow.set_tracking_uri`) or a run is active (as in a Databricks
  notebook). Without MLflow nothing is imported and nothing changes.

A fit's run (nested under the active run when there is one, or under the study's run of `sparkdl.tune`, whose
trials are one nested run each) gets: the parameters (model, hyper-parameters,
`num_proc`, batch size, epochs, learning rate, optimizer, validation, seed, Keras flavour), per-epoch metrics from the
driver's progress channel (rank 0's epoch reports — never from every rank), tags with the source table URI, its Delta
version and commit time, and at the end the model-store reference (`sparkdl.model_ref`). `evaluate_model` logs its
metrics and plots into the run that trained the model (its id is kept in the model's metadata as `mlflow_run_id`).
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass

from sparkdl.errors import ConfigError
from sparkdl.log import get_logger

log = get_logger("mlflow")

RUN_ID_KEY = "mlflow_run_id"
MODEL_REF_TAG = "sparkdl.model_ref"
RECOVERY_TAG_PREFIX = "sparkdl.recovery."  # + the failure's number: one tag per failure a fit recovered from
_NEEDS = "install MLflow (pip install 'mlflow-skinny>=3.1') or set mlflow to False/None"


def installed() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def tracking_wanted(setting: bool | None) -> bool:
    """Whether to log to MLflow (see the module docstring).

    Raises:
        ConfigError: `setting` is not True/False/None, or True without MLflow installed.
    """
    if setting is not None and not isinstance(setting, bool):
        raise ConfigError(f"mlflow must be True, False or None (automatic), got {setting!r}")
    if setting is False:
        return False
    if not installed():
        if setting:
            raise ConfigError(f"mlflow=True but MLflow is not installed; {_NEEDS}")
        return False
    if setting:
        return True
    import mlflow
    from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

    return bool(is_tracking_uri_set() or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.active_run())


def _flat(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:6000]  # MLflow's limit on a param value


@dataclass
class FitRun:
    """The MLflow run of one fit (driver side)."""

    run_id: str
    experiment_id: str
    _client: object

    @classmethod
    def try_start(cls, run_name: str, experiment: str | None, params: dict, tags: dict,
                  parent_run_id: str | None = None, reuse_tag: str | None = None) -> "FitRun | None":
        """`start`, or None with a warning when the tracking server fails: tracking never fails a fit."""
        try:
            return cls.start(run_name, experiment, params, tags, parent_run_id, reuse_tag)
        except Exception as exc:  # noqa: BLE001 - an MLflow outage must not stop training
            log.warning("MLflow: could not start the run of %s (%s: %s); training goes on untracked", run_name,
                        type(exc).__name__, exc)
            return None

    @classmethod
    def start(cls, run_name: str, experiment: str | None, params: dict, tags: dict,
              parent_run_id: str | None = None, reuse_tag: str | None = None) -> "FitRun":
        """A new run named `run_name`, nested under `parent_run_id` (default: the thread's active run, if any).

        With `reuse_tag`, a run of the experiment whose tag `reuse_tag` has the value `tags[reuse_tag]` is taken
        up again instead (a resumed study's parent run); `params` are logged only on a new run.
        """
        import mlflow
        from mlflow import MlflowClient

        client = MlflowClient()
        active = mlflow.active_run()
        if parent_run_id:
            experiment_id = client.get_run(parent_run_id).info.experiment_id
        elif experiment:
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
        elif active is not None:
            experiment_id = active.info.experiment_id
        else:
            experiment_id = mlflow.tracking.fluent._get_experiment_id()
        if reuse_tag:
            value = str(tags[reuse_tag]).replace("'", "\\'")
            found = client.search_runs([experiment_id], f"tags.`{reuse_tag}` = '{value}'", max_results=1)
            if found:
                run_id = found[0].info.run_id
                client.update_run(run_id, status="RUNNING")
                log.info("MLflow run %s taken up again (experiment %s)", run_id, experiment_id)
                return cls(run_id, experiment_id, client)
        all_tags = {**{k: str(v) for k, v in tags.items()}, "mlflow.runName": run_name}
        parent = parent_run_id or (active.info.run_id if active is not None else None)
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = client.create_run(experiment_id, tags=all_tags, run_name=run_name)
        client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, _flat(v)) for k, v in params.items()])
        log.info("MLflow run %s (experiment %s)", run.info.run_id, experiment_id)
        return cls(run.info.run_id, experiment_id, client)

    def log_epoch(self, epoch: int, logs: dict) -> None:
        """Metrics of one epoch (0-based, as Keras counts it; the MLflow step)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(epoch)) for k, v in (logs or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if metrics:
            try:
                self._client.log_batch(self.run_id, metrics=metrics)
            except Exception as exc:  # noqa: BLE001 - tracking never fails the training
                log.warning("MLflow: could not log epoch %d metrics: %s", epoch, exc)

    def log_recovery(self, number: int, record: dict) -> None:
        """Failure `number` (from 1) the fit recovered from: the tag `sparkdl.recovery.<number>` (the record as
        JSON: epoch, step, cause, seconds_lost, ...) and the metrics `recoveries` and `recovery_seconds_lost`
        (step `number`)."""
        import time

        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        try:
            self._client.log_batch(self.run_id, metrics=[
                Metric("recoveries", float(number), now, int(number)),
                Metric("recovery_seconds_lost", float(record.get("seconds_lost", 0.0)), now, int(number))],
                tags=[RunTag(f"{RECOVERY_TAG_PREFIX}{number}", _flat(record))])
        except Exception as exc:  # noqa: BLE001 - tracking never fails the training
            log.warning("MLflow: could not log recovery %d: %s", number, exc)

    def finish(self, model_ref: str | None, status: str = "FINISHED", metrics: dict | None = None,
               tags: dict | None = None) -> None:
        """Tag the run with the saved model (and `tags`), log final `metrics`, and end it; a tracking failure is a
        warning (the fit's result stands)."""
        import time

        from mlflow.entities import Metric, RunTag

        try:
            if model_ref:
                self._client.set_tag(self.run_id, MODEL_REF_TAG, model_ref)
            now = int(time.time() * 1000)
            self._client.log_batch(self.run_id,
                                   metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
                                   tags=[RunTag(k, _flat(v)) for k, v in (tags or {}).items()])
            self._client.set_terminated(self.run_id, status=status)
        except Exception as exc:  # noqa: BLE001 - the model is saved: tracking never undoes a fit
            log.warning("MLflow: could not finish run %s as %s (model %s): %s: %s", self.run_id, status, model_ref,
                        type(exc).__name__, exc)


def source_tags(snapshot) -> dict:
    """Tags of the training data: the Delta table URI, version and commit time."""
    if snapshot is None:
        return {}
    tags = {"sparkdl.source_table": snapshot.table, "sparkdl.source_version": snapshot.version}
    if snapshot.timestamp:
        tags["sparkdl.source_timestamp"] = snapshot.timestamp
    return tags


def log_evaluation(metadata: dict, metrics: dict, plot_paths: list[str]) -> None:
    """Log an evaluation's numeric metrics and plots into the run that trained the model, when there is one and
    MLflow is installed (nothing otherwise)."""
    run_id = (metadata or {}).get(RUN_ID_KEY)
    if not run_id or not installed():
        return
    from mlflow import MlflowClient

    client = MlflowClient()
    flat = {f"eval_{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    try:
        for key, value in flat.items():
            client.log_metric(run_id, key, value)
        for path in plot_paths:
            client.log_artifact(run_id, path, artifact_path="evaluation")
    except Exception as exc:  # noqa: BLE001 - the evaluation itself succeeded
        log.warning("MLflow: could not log the evaluation to run %s: %s", run_id, exc)
