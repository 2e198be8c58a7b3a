"""`KerasEstimator`: a Spark ML estimator that trains a Keras model with Horovod on a Delta snapshot.

    >>> est = KerasEstimator(model="cnn", feature_spec=spec, epochs=5, num_proc=2, run_name="digits-cnn")
    >>> fitted = est.fit("/lake/digits")            # a table path, a Snapshot, a DataFrame, or (df, snapshot)
    >>> fitted.getHistory()["val_accuracy"][-1], fitted.getModelVersion()

Design choice: a real `pyspark.ml.Estimator` with typed `Params` (so it fits `Pipeline`, `copy(extra)` and
`fit(df, paramMap)`), whose constructor and `setParams` take the snake_case keywords of this module's docs
(`batch_size=64`) while the Params themselves follow Spark ML's camelCase (`batchSize`, `getBatchSize()`,
`setBatchSize()`). Objects that Spark ML cannot express (a Keras model, a builder function, callbacks, a loss)
are Params too, with identity conversion; ML persistence (`MLWritable`) is not provided — the trained model
goes to the sparkdl model store instead (see `SparkDLModel`).

`fit` order (every check that needs no data runs before any Spark job or Horovod launch):
1. parameters (model name, hparams, numbers), task slots for `num_proc`, and the input columns from the schema;
2. the model built on the driver for the signature known from the spec: unknown model or input-shape mismatch;
3. split train/validation, fit the `Preprocessor` on the training part, transform both, convert with Petastorm
   (cache key: source table and version, split, preprocessor fingerprint);
4. train on `num_proc` Horovod ranks (`hvd.DistributedOptimizer`, learning rate x ranks with warmup, broadcast
   from rank 0, averaged metrics, the same steps per epoch on every rank); rank 0 checkpoints every epoch into
   `<work_dir>/runs/<run_name>/checkpoints/`, and a rerun of the same `run_name` resumes after the last
   complete epoch (same weights and optimizer state on every rank; done epochs are not repeated);
5. the trained model and its metadata go to the model store; a `SparkDLModel` is returned.
"""
from __future__ import annotations

import dataclasses
import math
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, make_dataclass
from typing import TYPE_CHECKING, Any

from pyspark.ml import Estimator
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import MLReadable, MLWritable

from sparkdl import stack
from sparkdl.data.dataset import steps_per_epoch
from sparkdl.data.forecast import ForecastSpec
from sparkdl.data.preprocess import PreprocessorModel
from sparkdl.data.series import check_forecast_schema
from sparkdl.data.spec import ANOMALY, AUTOENCODER, TWO_TOWER, FeatureSpec, Label, ModelSignature
from sparkdl.data.text import TOKEN_ID_OFFSET
from sparkdl.data.validation import check_schema
from sparkdl.errors import ConfigError, FitStopped, ModelStoreError, TrainingError, ValidationError
from sparkdl.lake import read_table, source_of
from sparkdl.lake.snapshot import Snapshot
from sparkdl.log import get_logger
from sparkdl.mlflow import tracking
from sparkdl.registry import ModelStore, validate_name
from sparkdl.score.anomaly import fit_thresholds
from sparkdl.score.thresholds import AnomalyOptions
from sparkdl.train import dp, recovery
from sparkdl.train.checkpoints import RankCheckpointing, RunFolder, check_run_name, keras_history
from sparkdl.train.dp import DPConfig
from sparkdl.train.ml_persistence import EstimatorReader, EstimatorWriter
from sparkdl.train.model import SparkDLModel
from sparkdl.train.prepared import PreparedData, prepare_data, prepare_forecast_data
from sparkdl.train.rank_job import TrainJob
from sparkdl.train.recovery import RECOVERY_ABORT_GRACE_S, Recovery
from sparkdl.train.runner import ABORT_GRACE_S, HorovodRunner
from sparkdl.train.serialization import model_flavour, model_from_bytes, model_to_bytes

if TYPE_CHECKING:
    from sparkdl.train.model import SparkDLModel

log = get_logger("train")

# Horovod's background loop waits up to HOROVOD_CYCLE_TIME ms between negotiation rounds,
# and every training step waits for one round: with small models most of a step is that wait. Measured on 2 CPU
# ranks (MLP 32-64-64-1, batch 2048, Gloo): a custom step with one grouped allreduce took ~3.9 ms at 1 ms and
# ~2.5-3.3 ms at 0.1 ms (compute alone ~0.8 ms); see scripts/benchmarks/bench_train.py. Param cycle_time_ms.
DEFAULT_CYCLE_TIME_MS = 0.1
COMPRESSIONS = ("none", "fp16")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "ftrl")


def _to_spec(value) -> FeatureSpec:
    if isinstance(value, FeatureSpec):
        return value
    if isinstance(value, Mapping):
        return FeatureSpec.from_dict(dict(value))
    if isinstance(value, str):
        return FeatureSpec.from_json(value)
    raise TypeError(f"feature_spec must be a FeatureSpec, a dict or JSON, got {type(value).__name__}")


def _to_forecast(value) -> ForecastSpec | None:
    if value is None or isinstance(value, ForecastSpec):
        return value
    if isinstance(value, Mapping):
        return ForecastSpec.from_dict(dict(value))
    if isinstance(value, str):
        import json

        return ForecastSpec.from_dict(json.loads(value))
    raise TypeError(f"forecast must be a ForecastSpec, a dict or JSON, got {type(value).__name__}")


def _to_opt_int(value):
    return None if value is None else TypeConverters.toInt(value)


def _to_validation(value):
    if isinstance(value, str):
        return value
    if value is None:
        return 0.0
    return TypeConverters.toFloat(value)


def _to_list(value):
    return list(value) if value is not None else []


def _to_dp(value):
    """The `dp` param as a plain dict (Spark ML persistence stores JSON), checked by `DPConfig`."""
    config = DPConfig.of(value)
    return None if config is None else dataclasses.asdict(config)


def _to_anomaly(value):
    """The `anomaly` param as a plain dict (Spark ML persistence stores JSON), checked by `AnomalyOptions`."""
    options = AnomalyOptions.of(value)
    return None if options is None else options.to_dict()


def _to_opt_float(value):
    return None if value is None else TypeConverters.toFloat(value)


def worker_env(p: "FitSettings") -> dict[str, str]:
    """The Horovod settings of the worker processes: cycle time and fusion threshold from the params, then `env`
    (which overrides them)."""
    env = {"HOROVOD_CYCLE_TIME": f"{p.cycle_time_ms:g}"}
    if p.fusion_threshold_mb is not None:
        env["HOROVOD_FUSION_THRESHOLD"] = str(int(p.fusion_threshold_mb * 1024 * 1024))
    return {**env, **(p.env or {})}


@dataclass(frozen=True)
class EstimatorParam:
    """One `KerasEstimator` param, declared once: the keyword (`name`, snake_case, also the `FitSettings` field and
    the YAML `train.*` key where the job config has one), the Spark ML Param (`spark_name`, with its getter and
    setter), its type converter, default and doc; `tracked`: logged to the fit's MLflow run; `recorded`: kept in the
    model's metadata under `training`."""

    name: str
    spark_name: str
    converter: Callable | None
    default: Any
    tracked: bool = False
    recorded: bool = False
    doc: str = ""


_PARAMS: tuple[EstimatorParam, ...] = (
    EstimatorParam("model", "model", None, "mlp", tracked=True,
                   doc="zoo model name (mlp, cnn, lstm, embedding, ...), a Keras model (either flavour), or a "
                       "builder fn(signature, **hparams)"),
    EstimatorParam("keras", "keras", None, "tf_keras", tracked=True,
                   doc="Keras flavour the zoo model is built with: 'tf_keras' (Keras 2, Horovod's Keras wrappers) or "
                       "'keras3' (Keras 3 with sparkdl's Horovod step; TensorFlow >= 2.16). A ready model or a "
                       "builder's model trains in its own flavour"),
    EstimatorParam("feature_spec", "featureSpec", _to_spec, None,
                   doc="the FeatureSpec (or its dict/JSON): input features and label"),
    EstimatorParam("forecast", "forecast", _to_forecast, None,
                   doc="a forecasting task instead of feature_spec: a ForecastSpec or the data.forecast dict (windows "
                       "of a long table, per entity; see sparkdl.data.forecast); model a forecaster such as "
                       "lstm_forecaster, gru_forecaster or tcn_forecaster"),
    EstimatorParam("label", "label", None, None,
                   doc="label column name overriding the spec's label name, or a Label/dict"),
    EstimatorParam("loss", "loss", None, None,
                   doc="Keras loss (default: by task and model, see sparkdl.models.default_loss)"),
    EstimatorParam("optimizer", "optimizer", None, "adam", tracked=True, recorded=True,
                   doc="optimizer name or Keras optimizer instance (of the model's flavour)"),
    EstimatorParam("learning_rate", "learningRate", TypeConverters.toFloat, 1e-3, tracked=True, recorded=True,
                   doc="learning rate of ONE process; multiplied by num_proc"),
    EstimatorParam("metrics", "metrics", None, None,
                   doc="Keras metrics (default: sparkdl.models.default_metrics)"),
    EstimatorParam("batch_size", "batchSize", TypeConverters.toInt, 64, tracked=True, recorded=True,
                   doc="batch size per process"),
    EstimatorParam("epochs", "epochs", TypeConverters.toInt, 10, tracked=True, recorded=True,
                   doc="number of epochs"),
    EstimatorParam("steps_per_execution", "stepsPerExecution", TypeConverters.toInt, 8, tracked=True,
                   doc="training steps run per tf.function call (Keras compile's steps_per_execution): less Python "
                       "overhead per step, the same SGD steps; per-batch callbacks (and the warmup's learning-rate "
                       "updates) run every N steps"),
    EstimatorParam("backward_passes_per_step", "backwardPassesPerStep", TypeConverters.toInt, 1, recorded=True,
                   doc="local gradient aggregation (Horovod's backward_passes_per_step): each rank sums the "
                       "gradients of N batches and the ranks average and apply them once, so one allreduce serves N "
                       "batches (the effective batch is N x batch_size x num_proc; the learning rate is not rescaled)"),
    EstimatorParam("compression", "compression", TypeConverters.toString, "none", recorded=True,
                   doc="gradient compression for the allreduce: 'none' or 'fp16' (float32 gradients sent as float16: "
                       "half the bytes, ~3 significant digits)"),
    EstimatorParam("fusion_threshold_mb", "fusionThresholdMb", _to_opt_float, None,
                   doc="Horovod tensor fusion buffer in MiB (HOROVOD_FUSION_THRESHOLD; None = Horovod's 128 MiB, 0 = "
                       "no fusion: one allreduce per gradient tensor)"),
    EstimatorParam("cycle_time_ms", "cycleTimeMs", TypeConverters.toFloat, DEFAULT_CYCLE_TIME_MS,
                   doc="milliseconds Horovod's background loop waits between negotiation rounds (HOROVOD_CYCLE_TIME; "
                       "each step waits for one round, so small models want it short)"),
    EstimatorParam("validation", "validation", _to_validation, 0.2, tracked=True, recorded=True,
                   doc="fraction of rows held out for validation (0 = none), or the name of a boolean column (true = "
                       "validation row) or string column ('validation'/'val')"),
    EstimatorParam("callbacks", "callbacks", _to_list, (),
                   doc="extra Keras callbacks, run on every rank"),
    EstimatorParam("num_proc", "numProc", TypeConverters.toInt, 2, tracked=True,
                   doc="number of Horovod processes (Spark tasks)"),
    EstimatorParam("model_store", "modelStore", None, None,
                   doc="a sparkdl.registry.ModelStore or its root folder (default store if None)"),
    EstimatorParam("model_name", "modelName", None, None, tracked=True,
                   doc="name of the model in the store (default: the zoo name, else 'keras_model')"),
    EstimatorParam("run_name", "runName", None, None, tracked=True,
                   doc="run name: its folder keeps the checkpoints; rerunning it resumes (default: new name)"),
    EstimatorParam("seed", "seed", TypeConverters.toInt, 0, tracked=True, recorded=True,
                   doc="random seed (model init, shuffling, split)"),
    EstimatorParam("early_stopping", "earlyStopping", _to_opt_int, None, tracked=True, recorded=True,
                   doc="patience in epochs on val_loss (loss without validation); None = off"),
    EstimatorParam("resume", "resume", TypeConverters.toBoolean, True,
                   doc="resume the run's last complete checkpoint (False: start the run over)"),
    EstimatorParam("hparams", "hparams", None, None, tracked=True,
                   doc="hyper-parameters for the model builder"),
    EstimatorParam("warmup_epochs", "warmupEpochs", TypeConverters.toInt, 1, tracked=True, recorded=True,
                   doc="epochs of learning-rate warmup from lr to lr x num_proc"),
    EstimatorParam("checkpoint_every", "checkpointEvery", TypeConverters.toInt, 1,
                   doc="checkpoint every N epochs"),
    EstimatorParam("checkpoint_every_steps", "checkpointEverySteps", _to_opt_int, None, recorded=True,
                   doc="also checkpoint every N steps within an epoch (model, optimizer and data position), so a "
                       "failure loses at most N steps (None: at epochs' ends only)"),
    EstimatorParam("keep_checkpoints", "keepCheckpoints", TypeConverters.toInt, 2,
                   doc="complete checkpoints kept per run (0 = all)"),
    EstimatorParam("work_dir", "workDir", None, None,
                   doc="sparkdl work folder for runs (default: sparkdl.session.work_dir())"),
    EstimatorParam("use_gpu", "useGpu", None, None,
                   doc="None = GPUs when Spark tasks have them; True/False to force"),
    EstimatorParam("start_timeout", "startTimeout", TypeConverters.toInt, 120,
                   doc="seconds for the Horovod tasks to start (and, after a failure, for lost task slots to "
                       "come back)"),
    EstimatorParam("max_failures", "maxFailures", TypeConverters.toInt, 3, tracked=True, recorded=True,
                   doc="failures (a rank's process killed, a task or executor lost, a rank without progress) a "
                       "fit absorbs by relaunching every rank from the last complete checkpoint; 0 = none"),
    EstimatorParam("rank_timeout_s", "rankTimeoutS", TypeConverters.toFloat, 300.0, recorded=True,
                   doc="seconds a rank may go without progress (a training or validation step) before it counts "
                       "as failed"),
    EstimatorParam("min_proc", "minProc", _to_opt_int, None, recorded=True,
                   doc="after a failure, go on with as few as min_proc ranks when num_proc task slots do not come "
                       "back within start_timeout (None: wait for num_proc, else fail)"),
    EstimatorParam("dp", "dp", _to_dp, None, tracked=True, recorded=True,
                   doc="differentially private training (DP-SGD, sparkdl.train.dp): {epsilon, delta, clip_norm, "
                       "noise_multiplier, accountant}; Poisson-sampled steps at the expected batch batch_size x "
                       "num_proc, per-example clipping, the noise added once across ranks; None = off"),
    EstimatorParam("anomaly", "anomaly", _to_anomaly, None, tracked=True, recorded=True,
                   doc="an anomaly detector's thresholds (model 'autoencoder', a spec without a label or with a "
                       "label of task 'anomaly'): {segment_by, rate or percentile, min_segment_rows}, fitted on the "
                       "training table after the fit (sparkdl.score.anomaly); default one threshold at rate 0.01"),
    EstimatorParam("env", "env", None, None,
                   doc="extra environment variables for the worker processes (override cycle_time_ms and "
                       "fusion_threshold_mb)"),
    EstimatorParam("mlflow", "mlflow", None, None,
                   doc="log the fit as an MLflow run: True, False, or None = when MLflow is installed and a tracking "
                       "URI is set or a run is active (see sparkdl.mlflow.tracking)"),
    EstimatorParam("mlflow_experiment", "mlflowExperiment", None, None,
                   doc="MLflow experiment name of the run (default: the active one)"),
)
_SNAKE_TO_CAMEL = {param.name: param.spark_name for param in _PARAMS}


# A fit's settings, validated once by `KerasEstimator._checked`: every param of `_PARAMS` (by its snake_case name) and
# what the checks derive from them: `optimizer_spec` (the optimizer name, or the instance's serialized config),
# `optimizer_flavour` (the Keras flavour of an optimizer instance) and `track` (log the fit to MLflow).
FitSettings = make_dataclass("FitSettings", [(param.name, Any) for param in _PARAMS]
                             + [("optimizer_spec", Any), ("optimizer_flavour", Any), ("track", bool)], frozen=True)


class _KerasEstimatorParams(Params):
    """The Params of `KerasEstimator` (getters `getX()` and setters `setX()` generated from `_PARAMS`)."""


for _param in _PARAMS:
    _camel = _param.spark_name
    setattr(_KerasEstimatorParams, _camel,
            Param(Params._dummy(), _camel, _param.doc, typeConverter=_param.converter or TypeConverters.identity))
    _cap = _camel[0].upper() + _camel[1:]
    setattr(_KerasEstimatorParams, f"get{_cap}", (lambda c: lambda self: self.getOrDefault(c))(_camel))
    setattr(_KerasEstimatorParams, f"set{_cap}", (lambda c: lambda self, value: self._set(**{c: value}))(_camel))


class KerasEstimator(Estimator, _KerasEstimatorParams, MLReadable, MLWritable):
    """Train a Keras model on a Spark DataFrame or Delta table with Horovod; `fit` returns a `SparkDLModel`.

    Keywords (all optional except `feature_spec`): model="mlp", feature_spec, label=None, loss=None,
    optimizer="adam", learning_rate=1e-3, metrics=None, batch_size=64, epochs=10, steps_per_execution=8,
    backward_passes_per_step=1, compression="none", fusion_threshold_mb=None, cycle_time_ms=0.1,
    validation=0.2, callbacks=(),
    num_proc=2, model_store=None, model_name=None, run_name=None, seed=0, early_stopping=None, resume=True,
    hparams=None, warmup_epochs=1, checkpoint_every=1, keep_checkpoints=2, work_dir=None, use_gpu=None,
    start_timeout=120, env=None. See `_PARAMS` (or `explainParams()`) for each one.

    Raises:
        ConfigError: unknown keyword (at construction).
    """

    def __init__(self, **kwargs):
        super().__init__()
        self._setDefault(**{param.spark_name: param.default for param in _PARAMS})
        self.setParams(**kwargs)
        self.last_run = None  # RunStats of the last fit's Horovod job
        self._fit_run = None  # the MLflow run of the fit in progress (sparkdl.mlflow.tracking.FitRun)
        # Called on the driver with (epoch, rank 0's logs) as each epoch ends (when the progress channel reaches
        # the driver); returning True stops the fit between epochs with `FitStopped` (sparkdl.tune's pruning).
        self.epoch_listener = None
        self.mlflow_parent_run_id = None  # the fit's MLflow run is nested under this one (a study's trial)
        self.threads_per_proc = None  # threads per Horovod process (default: its share of the task's cores)

    def write(self) -> EstimatorWriter:
        """Spark ML persistence: `est.save(path)`, `KerasEstimator.load(path)`, and inside a `Pipeline` (see
        `sparkdl.train.ml_persistence`; a Keras model object, builder or callbacks are refused at save)."""
        return EstimatorWriter(self)

    @classmethod
    def read(cls) -> EstimatorReader:
        return EstimatorReader(cls)

    def setParams(self, **kwargs) -> "KerasEstimator":
        """Set params by snake_case keyword (camelCase names are accepted too)."""
        camel = set(_SNAKE_TO_CAMEL.values())
        unknown = sorted(k for k in kwargs if k not in _SNAKE_TO_CAMEL and k not in camel)
        if unknown:
            raise ConfigError(f"KerasEstimator: unknown parameter(s) {unknown}; known: {sorted(_SNAKE_TO_CAMEL)}")
        try:
            self._set(**{_SNAKE_TO_CAMEL.get(k, k): v for k, v in kwargs.items()})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"KerasEstimator: {exc}") from None
        return self

    # ------------------------------------------------------------------------------------------------ checks
    def _checked(self) -> FitSettings:
        """All params, validated, as one typed record. Raises ConfigError."""
        p = {param.name: self.getOrDefault(param.spark_name) for param in _PARAMS}
        if p["forecast"] is not None:
            if p["feature_spec"] is not None or p["label"] is not None:
                raise ConfigError("KerasEstimator: set forecast or feature_spec (and label), not both: a forecaster "
                                  "reads windows of its target")
            if isinstance(p["validation"], str):
                raise ConfigError(f"KerasEstimator: a forecaster's validation is the last fraction of the training "
                                  f"period, not a column ({p['validation']!r})")
        elif p["feature_spec"] is None:
            raise ConfigError("KerasEstimator: feature_spec (or forecast) is required")
        else:
            p["feature_spec"], p["anomaly"] = _detector_spec(_with_label(p["feature_spec"], p["label"]),
                                                             p["model"], p["anomaly"])
        for name in ("batch_size", "epochs", "num_proc", "checkpoint_every", "steps_per_execution",
                     "backward_passes_per_step"):
            if p[name] < 1:
                raise ConfigError(f"KerasEstimator: {name} must be >= 1, got {p[name]}")
        if p["checkpoint_every_steps"] is not None and p["checkpoint_every_steps"] < 1:
            raise ConfigError(f"KerasEstimator: checkpoint_every_steps must be >= 1 or None, "
                              f"got {p['checkpoint_every_steps']}")
        if p["max_failures"] < 0:
            raise ConfigError(f"KerasEstimator: max_failures must be >= 0, got {p['max_failures']}")
        if p["dp"] is not None:
            if p["anomaly"] is not None:
                raise ConfigError("KerasEstimator: dp is not offered for anomaly detectors: their thresholds are "
                                  "quantiles of the training rows' scores, which no DP-SGD budget covers")
            if p["forecast"] is not None or p["model"] in ("embedding", TWO_TOWER):
                raise ConfigError("KerasEstimator: dp needs a loss per example; a forecaster's windows, the "
                                  "embedding model's triplet loss and the two-tower model's in-batch softmax are not "
                                  "(train them without dp)")
            if (p["backward_passes_per_step"] != 1 or p["checkpoint_every_steps"] is not None
                    or p["early_stopping"] is not None):
                raise ConfigError("KerasEstimator: dp takes its own steps: backward_passes_per_step, "
                                  "checkpoint_every_steps and early_stopping do not apply (leave them unset)")
        if not p["rank_timeout_s"] > 0:
            raise ConfigError(f"KerasEstimator: rank_timeout_s must be > 0 seconds, got {p['rank_timeout_s']}")
        if p["min_proc"] is not None and not 1 <= p["min_proc"] <= p["num_proc"]:
            raise ConfigError(f"KerasEstimator: min_proc must be in [1, num_proc={p['num_proc']}] or None, "
                              f"got {p['min_proc']}")
        if p["keep_checkpoints"] < 0:
            raise ConfigError(f"KerasEstimator: keep_checkpoints must be >= 0, got {p['keep_checkpoints']}")
        if not isinstance(p["validation"], str) and not 0.0 <= p["validation"] < 1.0:
            raise ConfigError(f"KerasEstimator: validation must be a fraction in [0, 1) or a column name, "
                              f"got {p['validation']}")
        if p["learning_rate"] <= 0 or not math.isfinite(p["learning_rate"]):
            raise ConfigError(f"KerasEstimator: learning_rate must be a positive number, got {p['learning_rate']}")
        if p["compression"] not in COMPRESSIONS:
            raise ConfigError(f"KerasEstimator: compression must be one of {list(COMPRESSIONS)}, "
                              f"got {p['compression']!r}")
        if p["fusion_threshold_mb"] is not None and not 0 <= p["fusion_threshold_mb"] < 1024 * 1024:
            raise ConfigError(f"KerasEstimator: fusion_threshold_mb must be >= 0 MiB (or None), "
                              f"got {p['fusion_threshold_mb']}")
        if not 0 < p["cycle_time_ms"] <= 1000:
            raise ConfigError(f"KerasEstimator: cycle_time_ms must be in (0, 1000] ms, got {p['cycle_time_ms']}")
        if p["warmup_epochs"] < 0:
            raise ConfigError(f"KerasEstimator: warmup_epochs must be >= 0, got {p['warmup_epochs']}")
        if p["early_stopping"] is not None and p["early_stopping"] < 1:
            raise ConfigError(f"KerasEstimator: early_stopping (patience) must be >= 1, got {p['early_stopping']}")
        hparams = p["hparams"] or {}
        if not isinstance(hparams, Mapping):
            raise ConfigError(f"KerasEstimator: hparams must be a dict, got {type(hparams).__name__}")
        p["hparams"] = dict(hparams)
        stack.check_flavour(p["keras"])
        for callback in p["callbacks"]:
            if not hasattr(callback, "on_epoch_end"):
                raise ConfigError(f"KerasEstimator: callbacks must be Keras callbacks, got {type(callback).__name__}")
        p["optimizer_spec"] = _optimizer_spec(p["optimizer"])
        p["optimizer_flavour"] = None if isinstance(p["optimizer"], str) else stack.flavour_of(p["optimizer"])
        p["model_name"] = _model_name(p["model"], p["model_name"])
        p["run_name"] = check_run_name(p["run_name"] or f"{p['model_name']}-{time.strftime('%Y%m%d-%H%M%S')}-"
                                                          f"{uuid.uuid4().hex[:6]}")
        from sparkdl.models import check_choice  # TensorFlow: imported only when a fit starts

        check_choice(p["model"], p["hparams"])  # unknown zoo names and hparams, with no model built yet
        p["track"] = tracking.tracking_wanted(p["mlflow"])
        return FitSettings(**p)

    # ------------------------------------------------------------------------------------------------ fit
    def prepare(self, dataset) -> PreparedData:
        """Validate `dataset`, fit the preprocessing and write the training caches (two passes over the data, see
        `sparkdl.train.prepared`), for one or many `fit(prepared)` calls of estimators with this feature spec,
        validation and seed (hyper-parameter searches).

        Raises:
            ValidationError: bad data. ConfigError: bad settings.
        """
        p = self._checked()
        df, snapshot = _resolve_input(dataset)
        _check_columns(p, df)
        return _prepare(p, df, snapshot)

    def _fit(self, dataset) -> "SparkDLModel":
        p = self._checked()
        spec = p.forecast or p.feature_spec
        prepared = dataset if isinstance(dataset, PreparedData) else None
        if prepared is not None:
            prepared.check_fits(spec, p.validation or None, p.seed)
            df, snapshot = prepared.df, prepared.snapshot
        else:
            df, snapshot = _resolve_input(dataset)
        self._source = _source_lineage(df, snapshot)
        spark = df.sparkSession
        _check_columns(p, df)
        runner = HorovodRunner(p.num_proc, spark=spark, use_gpu=p.use_gpu, start_timeout=p.start_timeout,
                               threads_per_proc=self.threads_per_proc,
                               total_epochs=p.epochs, env=worker_env(p), rank_timeout=p.rank_timeout_s,
                               abort_grace_s=RECOVERY_ABORT_GRACE_S if p.max_failures else ABORT_GRACE_S)
        runner.check_slots()
        hint = p.forecast.signature if p.forecast is not None else signature_hint(spec)
        if hint is not None:
            _build_model(p, hint)  # unknown model, bad hparams, input-shape mismatch: before any Spark job

        run = RunFolder(p.work_dir, p.run_name)
        settings = _run_settings(p, snapshot)
        checkpoint = _resume_point(run, settings, p.resume)
        if checkpoint is not None:
            finished = _finished_model(run, p)
            if finished is not None:
                return finished

        self._fit_run = None
        if p.track:
            self._fit_run = tracking.FitRun.try_start(p.run_name, p.mlflow_experiment, _tracked_params(p),
                                                      tracking.source_tags(snapshot), self.mlflow_parent_run_id)
        try:
            model = self._fit_prepared(p, spec, df, snapshot, runner, run, settings, checkpoint, prepared)
        except BaseException as exc:
            if self._fit_run is not None:
                self._fit_run.finish(None, status="KILLED" if isinstance(exc, FitStopped) else "FAILED")
            raise
        if self._fit_run is not None:
            self._fit_run.finish(str(model.getModelVersion()))
        return model

    def _fit_prepared(self, p: FitSettings, spec, df, snapshot, runner, run, settings, checkpoint,
                      prepared: PreparedData | None) -> "SparkDLModel":
        phases = self._phases = {}
        started = time.perf_counter()
        # every row checked and the statistics fitted in one pass, the caches in one write: before Horovod starts
        saved = (run.settings() or {}).get("preprocessor") if checkpoint is not None else None
        # the same stats as attempt 1 (a forecaster's preparation is deterministic: it is prepared again)
        resumed_prep = PreprocessorModel.from_dict(saved) if saved and p.forecast is None else None
        if prepared is None or (resumed_prep is not None and
                                prepared.prep.fingerprint != resumed_prep.fingerprint):
            prepared = _prepare(p, df, snapshot, resumed_prep)
            phases.update(prepared.phases)
        else:
            phases.update({"statistics": 0.0, "cache": 0.0})  # prepared before the fit (KerasEstimator.prepare)
        prep = prepared.prep
        if p.forecast is None and spec.label is not None:
            _check_label_classes(spec, prep)
        signature = prep.signature
        attempt = int((run.settings() or {}).get("attempts", 0)) + 1
        run.write_settings({**settings, "preprocessor": prep.to_dict(), "attempts": attempt})

        history = _history_until(checkpoint)
        initial_epoch = checkpoint.resume_epoch if checkpoint is not None else 0
        self._recoveries = []
        if initial_epoch >= p.epochs:
            log.info("run %s: all %d epochs are already done (checkpoint of epoch %d/%d); nothing to train",
                     p.run_name, p.epochs, checkpoint.epoch + 1, p.epochs)
            result = {"model": checkpoint.model_bytes(), "history": {}, "epochs": []}
        else:
            result, history = self._train_recovering(p, runner, run, attempt, signature, prepared, checkpoint,
                                                     history)
            run_phases = self.last_run.phases() if self.last_run is not None else {}
            phases.update({k: round(v, 3) for k, v in run_phases.items()})
        for i, epoch in enumerate(result["epochs"]):  # rank 0's history is authoritative for this attempt
            history[epoch] = {k: v[i] for k, v in result["history"].items() if i < len(v)}
        fitted = self._save(p, run, prep, signature, snapshot, result, history, started)
        if p.anomaly is not None:  # what counts as anomalous: quantiles of the training rows' scores
            threshold_started = time.perf_counter()
            fit_thresholds(fitted, prepared.df, p.anomaly)
            log.info("run %s: anomaly thresholds fitted in %.1f s", p.run_name,
                     time.perf_counter() - threshold_started)
        recorded = fitted.getMetadata()["training"]["phases"]
        log.info("run %s: fit phases (s): %s, save %.1f; total %.1f", p.run_name,
                 ", ".join(f"{k} {v:.1f}" for k, v in recorded.items()),
                 time.perf_counter() - started - sum(recorded.values()), time.perf_counter() - started)
        return fitted

    def _train_recovering(self, p: FitSettings, runner, run, attempt, signature, prepared, checkpoint, history
                          ) -> tuple[dict, dict]:
        """`_train` from `checkpoint`, and again from the run's last complete checkpoint after each recoverable
        failure (`sparkdl.train.recovery`), up to `max_failures` times. Returns the last attempt's result and the
        history up to the checkpoint it started from. Raises the last TrainingError, with every cause, after
        `max_failures`."""
        recoveries: list[Recovery] = self._recoveries
        while True:
            attempt_started = time.time()
            initial_epoch = checkpoint.resume_epoch if checkpoint is not None else 0
            try:
                return self._train(p, runner, run, attempt, signature, prepared, checkpoint, initial_epoch,
                                   history), history
            except TrainingError as exc:
                if not exc.recoverable or isinstance(exc, FitStopped):
                    raise
                if len(recoveries) >= p.max_failures:
                    raise recovery.exhausted(p.run_name, p.max_failures, recoveries, exc) from exc
                failed_at = time.time()
                checkpoint = run.latest() or checkpoint
                written = float(checkpoint.info.get("written_at", 0.0)) if checkpoint is not None else 0.0
                resume_epoch = checkpoint.resume_epoch if checkpoint is not None else 0
                resume_step = checkpoint.resume_step if checkpoint is not None else 0
                num_proc = recovery.slots_for_relaunch(runner.spark, p.num_proc, p.min_proc, p.start_timeout)
                if num_proc != runner.num_proc and resume_step:  # a step position holds for the same shards only
                    checkpoint = run.latest_epoch_end()
                    resume_epoch, resume_step = (checkpoint.resume_epoch, 0) if checkpoint is not None else (0, 0)
                runner.num_proc = num_proc
                steps = steps_per_epoch(prepared.train_data, runner.num_proc, p.batch_size)
                record = Recovery(attempt=attempt, epoch=resume_epoch, step=resume_epoch * steps + resume_step,
                                  cause=exc.cause or str(exc).splitlines()[0],
                                  seconds_lost=round(failed_at - max(written, attempt_started), 3),
                                  num_proc=runner.num_proc)
                recoveries.append(record)
                log.warning("run %s: recovering from failure %d of max_failures=%d (%s): relaunching %d rank(s) "
                            "at epoch %d/%d", p.run_name, len(recoveries), p.max_failures, record.cause,
                            runner.num_proc, resume_epoch + 1, p.epochs)
                if self._fit_run is not None:
                    self._fit_run.log_recovery(len(recoveries), record.to_dict())
                attempt += 1
                run.write_settings({**(run.settings() or {}), "attempts": attempt})
                history = _history_until(checkpoint)

    def _train(self, p: FitSettings, runner, run, attempt, signature, prepared, checkpoint, initial_epoch,
               history) -> dict:
        from sparkdl.models import default_loss, default_metrics

        if checkpoint is not None:
            model_bytes, optimizer_state = checkpoint.model_bytes(), checkpoint.optimizer_bytes()
            # printed epochs count from 1 as in the progress lines and Keras's own "Epoch 1/8"; history and
            # epochs log keep Keras's 0-based History.epoch
            log.info("run %s: resuming at epoch %d/%d%s (attempt %d)", p.run_name, checkpoint.resume_epoch + 1,
                     p.epochs, f", step {checkpoint.resume_step}" if checkpoint.resume_step else "", attempt)
        else:
            stack.keras_module(p.keras).utils.set_random_seed(p.seed)
            model = _build_model(p, signature)
            model_bytes, optimizer_state = model_to_bytes(model), None

        flavour = model_flavour(model_bytes)
        wrong = [type(c).__name__ for c in p.callbacks if _callback_flavour(c) not in (None, flavour)]
        if wrong:
            raise ConfigError(f"KerasEstimator: callbacks {wrong} are not {flavour} callbacks, but the model is a "
                              f"{flavour} model; give callbacks of the model's Keras")
        if not isinstance(p.optimizer_spec, str) and p.optimizer_flavour not in (None, flavour):
            raise ConfigError(f"KerasEstimator: the optimizer is a {p.optimizer_flavour} optimizer but the model "
                              f"is a {flavour} model; pass an optimizer of the model's Keras or its name")
        zoo_name = p.model if isinstance(p.model, str) else None
        train_data, val_data = prepared.train_data, prepared.val_data
        num_proc = runner.num_proc  # p.num_proc, or fewer after a failure with min_proc
        steps = steps_per_epoch(train_data, num_proc, p.batch_size)
        val_steps = None
        if val_data is not None and val_data.num_rows // num_proc == 0:
            log.warning("run %s: the validation split has %d row(s), fewer than the %d processes: no validation",
                        p.run_name, val_data.num_rows, num_proc)
            val_data = None
        elif val_data is not None:
            val_steps = steps_per_epoch(val_data, num_proc, p.batch_size)

        privacy = None
        if p.dp is not None:  # checked before the launch: the model's layers, the budget against the steps
            dp.refuse_unsafe_layers(model_from_bytes(model_bytes))
            privacy = dataclasses.asdict(dp.plan(DPConfig.of(p.dp), train_data.num_rows, p.batch_size * num_proc,
                                                 p.epochs - initial_epoch))
            log.info("run %s: differentially private: q=%.4g, sigma=%.4g, %d step(s) of %d requested, epsilon %.3g "
                     "at delta %.1e (%s)", p.run_name, privacy["q"], privacy["noise_multiplier"], privacy["steps"],
                     privacy["steps_requested"], privacy["epsilon"], privacy["delta"], privacy["accountant"])
        job = TrainJob(
            model=model_bytes, optimizer=p.optimizer_spec, learning_rate=p.learning_rate,
            loss=p.loss if p.loss is not None else default_loss(
                signature, zoo_name, flavour, _item_counts(prepared, signature) if zoo_name == TWO_TOWER else None),
            metrics=list(p.metrics) if p.metrics is not None else default_metrics(signature, zoo_name),
            batch_size=p.batch_size, epochs=p.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
            train_data=train_data, input_shape=tuple(signature.input_shape), val_data=val_data,
            validation_steps=val_steps, optimizer_state=optimizer_state, seed=p.seed,
            warmup_epochs=p.warmup_epochs, early_stopping=p.early_stopping,
            monitor="val_loss" if val_data is not None else "loss", callbacks=list(p.callbacks),
            checkpointing=RankCheckpointing(str(run.path.parent.parent.resolve()), run.run_name, attempt,
                                            p.checkpoint_every, p.keep_checkpoints, dict(history),
                                            p.checkpoint_every_steps),
            initial_step=checkpoint.resume_step if checkpoint is not None else 0,
            steps_per_execution=p.steps_per_execution, flavour=flavour,
            backward_passes_per_step=p.backward_passes_per_step, compression=p.compression, dp=privacy,
            dp_secret=secrets.randbits(63) if privacy else 0)

        tracked_epochs: set[int] = set()
        stopped: dict[str, int] = {}
        listener = self.epoch_listener

        def on_epoch(message: dict) -> None:  # rank 0 keeps the run's epochs log; MLflow is this process's
            if self._fit_run is not None:
                self._fit_run.log_epoch(int(message["epoch"]), message.get("logs") or {})
                tracked_epochs.add(int(message["epoch"]))
            if listener is not None and not stopped and listener(int(message["epoch"]), message.get("logs") or {}):
                stopped["epoch"] = int(message["epoch"])
                runner.cancel()

        runner.message_handlers.update({"epoch": on_epoch})
        log.info("run %s: training %s on %d process(es): %d steps/epoch of %d, epochs %d..%d, input %s",
                 p.run_name, p.model_name, num_proc, steps, p.batch_size, initial_epoch,
                 p.epochs - 1, tuple(signature.input_shape))
        try:
            from sparkdl.train.keras_worker import train_on_rank  # TensorFlow: only once a fit runs

            result = runner.run(train_on_rank, job=job)
        except TrainingError as exc:
            if stopped:
                raise FitStopped(f"run {p.run_name}: stopped after epoch {stopped['epoch'] + 1} by the epoch "
                                 f"listener", stopped["epoch"]) from exc
            raise
        finally:
            self.last_run = runner.last_run
        if self._fit_run is not None:  # epochs the progress channel did not bring (executors could not reach us)
            for i, epoch in enumerate(result["epochs"]):
                if epoch not in tracked_epochs:
                    self._fit_run.log_epoch(epoch, {k: v[i] for k, v in result["history"].items() if i < len(v)})
        return result

    def _save(self, p: FitSettings, run, prep, signature, snapshot, result, history, started: float | None = None
              ) -> "SparkDLModel":
        model = model_from_bytes(result["model"])
        full_history = keras_history(history)
        final = {k: v[-1] for k, v in full_history.items() if k != "epoch" and v}
        store = _store(p)
        metadata = {
            "preprocessing": prep.to_dict(),  # holds the feature spec ("spec") beside its fitted statistics
            "signature": signature.to_dict(),
            "label_classes": prep.label_classes,
            "history": full_history,
            "metrics": final,
            "source": getattr(self, "_source", None) or (snapshot.lineage() if snapshot is not None else None),
            "hparams": p.hparams,
            "model_name": p.model if isinstance(p.model, str) else p.model_name,
            "num_proc": p.num_proc,
            "run_name": p.run_name,
            "training": {**_recorded_params(p),
                         "horovod_env": {k: v for k, v in worker_env(p).items() if k.startswith("HOROVOD_")},
                         "run_folder": str(run.path),
                         "recoveries": [r.to_dict() for r in getattr(self, "_recoveries", None) or []],
                         "stopped_early": bool(result["epochs"]) and result["epochs"][-1] < p.epochs - 1},
        }
        if result.get("privacy"):
            metadata["privacy"] = result["privacy"]
            if getattr(self, "_fit_run", None) is not None:
                self._fit_run.log_epoch(len(result["epochs"]), {f"dp_{k}": v for k, v in result["privacy"].items()
                                                                 if k in ("epsilon", "delta", "noise_multiplier",
                                                                          "q", "steps")})
        if getattr(self, "_fit_run", None) is not None:
            metadata[tracking.RUN_ID_KEY] = self._fit_run.run_id
        if getattr(self, "last_run", None) is not None:  # where the launch's seconds went (see RunStats)
            metadata["training"]["launch_phases"] = self.last_run.launch_breakdown()
        phases = dict(getattr(self, "_phases", None) or {})
        if started is not None:  # the rest of the fit so far (model build, job set-up, history): all time is counted
            phases["other"] = round(time.perf_counter() - started - sum(phases.values()), 3)
        metadata["training"]["phases"] = phases  # seconds until the save; the save itself is logged
        version = store.save(p.model_name, model, metadata)
        run.write_settings({**(run.settings() or {}), "finished": {
            "name": version.name, "version": version.version, "store": str(store.root), "epochs": p.epochs,
            "stopped_early": metadata["training"]["stopped_early"]}})
        return SparkDLModel(model=model, version=version, metadata=store.metadata(version), store=store)


# ---------------------------------------------------------------------------------------------------- helpers
def _shown(p: FitSettings, name: str):
    """A param's value as the MLflow run and the model's metadata show it."""
    if name == "model":
        return p.model if isinstance(p.model, str) else p.model_name
    if name == "optimizer":
        return p.optimizer_spec
    return getattr(p, name)


def _tracked_params(p: FitSettings) -> dict:
    """The fit's parameters as logged to MLflow: the `tracked` params, hparams one by one."""
    tracked = {param.name: _shown(p, param.name) for param in _PARAMS if param.tracked and param.name != "hparams"}
    return {**tracked, **{f"hparams.{k}": v for k, v in sorted(p.hparams.items())}}


def _recorded_params(p: FitSettings) -> dict:
    """The `recorded` params, kept in the model's metadata under `training`."""
    return {param.name: _shown(p, param.name) for param in _PARAMS if param.recorded}


def _store(p: FitSettings):
    return ModelStore.of(p.model_store)


def _finished_model(run: RunFolder, p: FitSettings):
    """The model a finished run already saved, when rerunning it would train nothing new; else None."""
    done = (run.settings() or {}).get("finished")
    if not done or not (done.get("stopped_early") or done.get("epochs", 0) >= p.epochs):
        return None
    store = _store(p)
    if str(store.root) != done.get("store"):
        return None
    try:
        model = SparkDLModel.load(f"{done['name']}@{done['version']}", store=store)
    except ModelStoreError:
        return None
    log.info("run %s is finished: returning its model %s", run.run_name, model.getModelVersion())
    return model


def _detector_spec(spec: FeatureSpec, model, anomaly) -> tuple[FeatureSpec, dict | None]:
    """(the spec to train on, the anomaly options) of a fit. A label of task "anomaly" names known anomalies for
    evaluation: it is taken off the training spec (a detector never learns from labels) into the options. A spec
    without a label trains a detector: model "autoencoder", or a model or builder of the user's own.

    Raises:
        ConfigError: no label for a zoo model that predicts one; anomaly options for a labelled model."""
    if spec.label is not None and spec.label.task == ANOMALY:
        options = AnomalyOptions.of(anomaly) or AnomalyOptions()
        if options.label not in (None, spec.label.name):
            raise ConfigError(f"KerasEstimator: the label of task 'anomaly' is {spec.label.name!r} but "
                              f"anomaly.label is {options.label!r}; name the known anomalies once")
        return dataclasses.replace(spec, label=None), dataclasses.replace(options, label=spec.label.name).to_dict()
    if spec.label is not None:
        if anomaly is not None:
            raise ConfigError(f"KerasEstimator: anomaly options apply to anomaly detectors, but label "
                              f"{spec.label.name!r} has task {spec.label.task!r}")
        return spec, None
    if isinstance(model, str) and model != AUTOENCODER:
        raise ConfigError(f"KerasEstimator: the feature spec has no label; set feature_spec.label or label=, or "
                          f"train an anomaly detector with model={AUTOENCODER!r} (zoo model {model!r} predicts a "
                          f"label)")
    return spec, (AnomalyOptions.of(anomaly) or AnomalyOptions()).to_dict()


def _with_label(spec: FeatureSpec, label) -> FeatureSpec:
    if label is None:
        return spec
    if isinstance(label, Label):
        new = label
    elif isinstance(label, Mapping):
        new = Label(**dict(label))
    elif isinstance(label, str):
        if spec.label is None:
            raise ConfigError(f"label={label!r}: the feature spec has no label to take the task from; pass a "
                              f"Label or a dict such as {{'name': {label!r}, 'task': 'multiclass'}}")
        new = Label(label, spec.label.task, spec.label.num_classes)
    else:
        raise ConfigError(f"label must be a column name, a Label or a dict, got {type(label).__name__}")
    return FeatureSpec(spec.features, new, spec.id_columns)


def _optimizer_spec(optimizer):
    if isinstance(optimizer, str):
        if optimizer.lower() not in OPTIMIZERS:
            raise ConfigError(f"KerasEstimator: unknown optimizer {optimizer!r}; known: {list(OPTIMIZERS)} "
                              f"(or pass a Keras optimizer instance)")
        return optimizer.lower()
    if hasattr(optimizer, "get_config") and hasattr(optimizer, "apply_gradients"):
        return stack.keras_module(stack.flavour_of(optimizer) or "tf_keras").optimizers.serialize(optimizer)
    raise ConfigError(f"KerasEstimator: optimizer must be a name or a Keras optimizer, "
                      f"got {type(optimizer).__name__}")


def _callback_flavour(callback) -> str | None:
    """"keras3" or "tf_keras" for a Keras callback (by its base class), None when it cannot be told."""
    import sys

    for flavour in ("keras3", "tf_keras"):
        if flavour == "keras3" and "keras" not in sys.modules:
            continue
        if stack.keras_version(flavour) and isinstance(callback, stack.keras_module(flavour).callbacks.Callback):
            return flavour
    return None


def _model_name(model, name) -> str:
    if name is None:
        name = model if isinstance(model, str) else "keras_model"
    return validate_name(name)


def _build_model(p: FitSettings, signature: ModelSignature):
    from sparkdl.models import Augmentation, build

    image = p.feature_spec.image_feature if p.feature_spec is not None else None
    augment = Augmentation(image.flip, image.zoom) if image is not None else None
    model = p.model
    if hasattr(model, "get_config") and hasattr(model, "predict"):
        return build(model, signature, augment=augment)
    return build(model, signature, keras=p.keras, augment=augment, **p.hparams)


def signature_hint(spec: FeatureSpec) -> ModelSignature | None:
    """The model signature known from the spec alone (before fitting), or None when it needs the data
    (categorical vocabularies; multiclass labels without num_classes get a stand-in of 2 classes, which is
    enough to check the input shape)."""
    if any(f.kind == "categorical" for f in spec.features) or spec.label is None:
        return None
    feats = spec.features
    if len(feats) == 1 and feats[0].kind in ("vector", "sequence", "image"):
        shape = tuple(feats[0].shape)
    else:
        shape = (sum(f.size for f in feats),)
    classes = spec.label.num_classes or (2 if spec.label.task == "multiclass" else None)
    texts = [f for f in feats if f.kind == "text"]  # the fitted vocabulary may be smaller: an upper bound
    vocabulary = max(f.vocabulary_size for f in texts) + TOKEN_ID_OFFSET if texts else None
    starts = [sum(f.size for f in feats[:i]) for i in range(len(feats))]
    return ModelSignature(shape, spec.label.task, classes, vocabulary,
                          layout=tuple((f.name, start, f.size) for f, start in zip(feats, starts)))


def _resolve_input(dataset):
    """(DataFrame, Snapshot | None) from a DataFrame, (df, snapshot), a table path or a Snapshot."""
    from pyspark.sql import DataFrame

    if isinstance(dataset, DataFrame):
        return dataset, None
    if isinstance(dataset, tuple) and len(dataset) == 2 and isinstance(dataset[0], DataFrame):
        return dataset
    if isinstance(dataset, Snapshot):
        return read_table(dataset.table, version=dataset.version)
    if isinstance(dataset, str) or hasattr(dataset, "__fspath__"):
        return read_table(str(dataset))
    raise ConfigError(f"fit: expected a DataFrame, a (DataFrame, Snapshot) pair, a table path or a Snapshot, "
                      f"got {type(dataset).__name__}")


def _source_lineage(df, snapshot) -> dict | None:
    """What the model records as its training data: the snapshot it was given; for a DataFrame, the Delta
    snapshot all its input files belong to (marked as inferred), else None with a warning (the source is unknown)."""
    if snapshot is not None:
        return snapshot.lineage()
    inferred = source_of(df)
    if inferred is not None:
        log.info("the training DataFrame reads %s at version %d: recorded as the model's source",
                 inferred.table, inferred.version)
        return {**inferred.lineage(), "inferred": "from the DataFrame's input files"}
    log.warning("the training DataFrame does not read one Delta table snapshot (several tables, files no version "
                "holds, or data without files): the model records its source as unknown; pass a table, a "
                "Snapshot or a (DataFrame, Snapshot) pair to record it")
    return None


def _check_columns(p: FitSettings, df) -> None:
    """Missing columns and wrong types, from the schema only (no Spark job)."""
    if p.forecast is not None:
        check_forecast_schema(p.forecast, df.schema, "the training data does not match the forecast spec")
    else:
        check_schema(p.feature_spec, df.schema, "the training data does not match the feature spec")


def _prepare(p: FitSettings, df, snapshot, prep: PreprocessorModel | None = None) -> PreparedData:
    """Validate, fit the preprocessing and write (or find) the caches of a fit (`sparkdl.train.prepared`)."""
    if p.forecast is not None:
        return prepare_forecast_data(p.forecast, df, snapshot, p.validation or None, p.seed)
    return prepare_data(p.feature_spec, df, snapshot, p.validation or None, p.seed, prep)


def _describe_model(model) -> str:
    if isinstance(model, str):
        return model
    if hasattr(model, "get_config"):  # layer names are auto-numbered per session: describe the structure instead
        return (f"keras:{model.__class__.__name__}:{model.count_params()} params:"
                f"{[tuple(t.shape[1:]) for t in model.inputs]}->{[tuple(t.shape[1:]) for t in model.outputs]}")
    return f"builder:{getattr(model, '__module__', '')}.{getattr(model, '__qualname__', repr(model))}"


def _run_settings(p: FitSettings, snapshot) -> dict:
    return {"model": _describe_model(p.model), "hparams": p.hparams,
            "feature_spec": (p.forecast or p.feature_spec).to_dict(),
            "source": snapshot.lineage() if snapshot is not None else None,
            "validation": p.validation, "seed": p.seed}


_MUST_MATCH = ("model", "hparams", "feature_spec", "source", "validation", "seed")


def _resume_point(run: RunFolder, settings: dict, resume: bool):
    """The checkpoint to resume from (None: start at epoch 0). Raises ConfigError when the run folder holds
    checkpoints of different settings."""
    previous = run.settings()
    if not resume:
        if previous is not None:
            log.info("run %s: resume=False, starting over (earlier checkpoints removed)", run.run_name)
        run.reset()
        return None
    checkpoint = run.latest()
    if previous is None or checkpoint is None:
        return None
    import json

    differ = [k for k in _MUST_MATCH
              if json.dumps(previous.get(k), sort_keys=True, default=str)
              != json.dumps(settings.get(k), sort_keys=True, default=str)]
    if differ:
        raise ConfigError(f"run {run.run_name!r} in {run.path} has checkpoints made with other settings "
                          f"({', '.join(differ)} differ); use another run_name, or resume=False to start over")
    return checkpoint


def _history_until(checkpoint) -> dict[int, dict]:
    """Per-epoch logs {epoch: {metric: value}} recorded up to a checkpoint."""
    if checkpoint is None:
        return {}
    recorded = checkpoint.history
    epochs = recorded.get("epoch") or []
    return {int(e): {k: v[i] for k, v in recorded.items() if k != "epoch" and i < len(v)}
            for i, e in enumerate(epochs)}


__all__ = ["KerasEstimator", "signature_hint"]


def _item_counts(prepared: PreparedData, signature: ModelSignature) -> list[float]:
    """Rows per item index of the training table, for a two-tower loss's log-Q correction (one aggregation)."""
    label = prepared.spec.label.name
    classes = prepared.prep.label_classes
    index = {c: i for i, c in enumerate(classes)} if classes is not None else None
    counts = [0.0] * int(signature.num_classes)
    for row in prepared.df.groupBy(label).count().collect():
        value = row[label]
        i = (index.get(value) if index is not None else int(value)) if value is not None else None
        if i is not None and 0 <= i < len(counts):
            counts[i] += float(row["count"])
    return counts


def _check_label_classes(spec: FeatureSpec, prep) -> None:
    """A model whose recorded classes disagree with `num_classes` could never be scored: refuse to train it."""
    classes, expected = prep.label_classes, spec.label.num_classes
    if classes is not None and expected is not None and len(classes) != int(expected):
        raise ValidationError(
            f"label {spec.label.name!r}: num_classes is {expected} but the training split holds {len(classes)} "
            f"class(es) {list(classes)[:20]}; a class present only in the validation rows (or absent) cannot be "
            f"learned. Use a larger training fraction, a stratified validation column, or fix num_classes.")
