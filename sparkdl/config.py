"""Typed job configuration loaded from YAML (`conf/*.yaml`).

Each section of a job file is a dataclass below; `load_config(path)` checks every key and type and raises a
`ConfigError` naming the file and the dotted key (`conf/digits.yaml: train.epochs: expected int, got 'ten'`).

Strings may reference the environment as `${VAR}` or `${VAR:-default}`. Paths can also be overridden without editing
files: `SPARKDL_WORK_DIR` (work_dir), `SPARKDL_LAKE_DIR` (lake.root), `SPARKDL_MODEL_STORE` (registry.root),
`SPARKDL_MASTER` (spark.master), `SPARKDL_REMOTE` (spark.remote: a Spark Connect session). Command-line overrides
use dotted keys: `train.epochs=3`.
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparkdl.errors import ConfigError


@dataclass
class SparkSection:
    """How to get the Spark session. In a notebook or under spark-submit the active session wins."""

    master: str | None = None
    remote: str | None = None  # a Spark Connect server: `sc://host:port`, or `local[N]` (a local server)
    app_name: str = "sparkdl"
    conf: dict[str, str] = field(default_factory=dict)


@dataclass
class LakeSection:
    """Where relative table names live: `lake.root/<name>` (a folder or URI)."""

    root: str | None = None  # default: <work_dir>/lake


@dataclass
class RegistrySection:
    """The model store folder (shared storage on a cluster)."""

    root: str | None = None


@dataclass
class DataSection:
    """The training input: a Delta table pinned to a version or timestamp, and the features and label to read — or,
    for a forecaster, the `forecast` block (`sparkdl.data.forecast.ForecastSpec`: time, entity, target, lookback,
    horizon, frequency, ...) instead of both."""

    table: str
    features: list[Any] = field(default_factory=list)
    forecast: dict[str, Any] | None = None
    label: Any = None
    version: int | None = None
    timestamp: str | None = None
    validation: Any = 0.2
    id_columns: list[str] = field(default_factory=list)


@dataclass
class ModelSection:
    """The model: a zoo name (`mlp`, `cnn`, `lstm`, `embedding`), its hyper-parameters and its store name."""

    name: str = "mlp"
    store_name: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    keras: str = "tf_keras"  # the Keras flavour the zoo builds: tf_keras (Keras 2) or keras3 (current stack)


@dataclass
class TrainSection:
    num_proc: int = 2
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 0.001
    optimizer: str = "adam"
    early_stopping: int | None = None
    warmup_epochs: int = 1
    backward_passes_per_step: int = 1    # Horovod's scaling options (KerasEstimator params of the same names)
    compression: str = "none"
    fusion_threshold_mb: float | None = None
    cycle_time_ms: float = 0.1
    seed: int = 0
    run_name: str | None = None
    resume: bool = True
    checkpoint_every_steps: int | None = None
    max_failures: int = 3               # failures a fit recovers from (KerasEstimator params of the same names)
    dp: dict[str, Any] | None = None    # differentially private training: {epsilon, delta, clip_norm, ...}
    anomaly: dict[str, Any] | None = None  # a detector's thresholds: {segment_by, rate | percentile, ...}
    rank_timeout_s: float = 300.0
    min_proc: int | None = None
    mlflow: bool | None = None
    mlflow_experiment: str | None = None


@dataclass
class ScoreSection:
    source: str | None = None
    target: str | None = None
    source_version: int | None = None
    mode: str = "append"
    output: str = "prediction"
    keep_columns: list[str] = field(default_factory=list)
    model: str | None = None
    sql_function: str | None = None


@dataclass
class EvaluateSection:
    table: str | None = None
    version: int | None = None
    model: str | None = None
    plots: bool = True
    baseline: bool = False              # also fit a scikit-learn baseline on the training table (sparkdl.baselines)
    slices: list[Any] = field(default_factory=list)       # column | [columns] | {name, where} (sparkdl.evaluation)
    slice_options: dict[str, Any] = field(default_factory=dict)  # SliceOptions: sensitive, n_boot, min_slice_size...
    metrics_table: str | None = None    # sliced metrics in long form, appended to this Delta table


@dataclass
class ExplainSection:
    table: str | None = None            # the table explained (default: evaluate.table)
    version: int | None = None
    model: str | None = None
    steps: int = 64                     # integrated-gradients steps
    baseline: str = "zeros"             # zeros | mean
    target: int | None = None           # class explained (default: the predicted class)
    sample_rows: int | None = 10000
    permutation: bool = True
    repeats: int = 3
    metric: str | None = None           # accuracy | log_loss | rmse | mae (default: accuracy / rmse)
    output_table: str | None = None     # also write per-row attributions here (explain_table)
    plots: bool = True


@dataclass
class MonitorSection:
    """Monitoring in windows (`sparkdl monitor`, `sparkdl.monitoring.monitor_table`)."""

    table: str | None = None            # the monitored table: the inference log of `sparkdl serve`, or a scored table
    version: int | None = None
    reference: str | None = None        # the training table (default: data.table)
    reference_version: int | None = None
    timestamp: str = "_served_at"       # the inference log's time column
    columns: list[str] = field(default_factory=list)      # default: every column both tables have
    slices: list[Any] = field(default_factory=list)       # as evaluate.slices
    options: dict[str, Any] = field(default_factory=dict)  # MonitorOptions: window, bins, thresholds, sigma...
    score: str | None = None            # a binary classifier's positive-class score column: CBPE estimates
    label: str | None = None            # the label column (default: data.label's name)
    labels_table: str | None = None     # labels that arrive later, joined on id_columns: realized metrics
    id_columns: list[str] = field(default_factory=list)
    output_prefix: str | None = None    # Delta tables <prefix>_drift and <prefix>_performance
    retrain: dict[str, Any] = field(default_factory=dict)  # RetrainPolicy, for `sparkdl monitor --retrain`


@dataclass
class TuneSection:
    """A hyper-parameter search (`sparkdl tune`, `sparkdl.tune.tune`): trials of the `model` + `train` sections."""

    study: str | None = None            # resumable: the same study continues
    trials: int = 16
    trial_proc: int = 1                 # Horovod processes per trial
    parallel: int | None = None         # trials at once (default: free task slots // trial_proc)
    metric: str = "val_loss"
    direction: str | None = None        # minimize | maximize (default: the metric's own, sparkdl.metrics)
    pruner: str = "median"              # median | successive_halving | none
    sampler: str = "tpe"                # tpe | random
    seed: int = 0
    space: dict[str, Any] = field(default_factory=dict)   # param or hparams.<name> -> {type, low, high, values}
    trials_table: str | None = None     # default: <study>_trials beside data.table


@dataclass
class JobConfig:
    """A whole job file. Only `data` is required for training; scoring and evaluation read their own sections."""

    spark: SparkSection = field(default_factory=SparkSection)
    work_dir: str = "${SPARKDL_WORK_DIR:-~/.sparkdl}"
    lake: LakeSection = field(default_factory=LakeSection)
    registry: RegistrySection = field(default_factory=RegistrySection)
    data: DataSection | None = None
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    score: ScoreSection = field(default_factory=ScoreSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    explain: ExplainSection = field(default_factory=ExplainSection)
    tune: TuneSection = field(default_factory=TuneSection)
    monitor: MonitorSection = field(default_factory=MonitorSection)
    gates: list[dict[str, Any]] = field(default_factory=list)   # promotion gates (sparkdl.evaluation.gates)
    origin: str = field(default="<dict>", repr=False, compare=False)  # the file it was loaded from

    def table_uri(self, name: str) -> str:
        """A table name relative to `lake.root`, or an absolute path/URI as is."""
        if "://" in name or os.path.isabs(os.path.expanduser(name)):
            return os.path.expanduser(name)
        return str(Path(self.lake_root()) / name)

    def lake_root(self) -> str:
        """`lake.root`, else `<work_dir>/lake`, with `~` expanded."""
        return os.path.expanduser(self.lake.root or str(Path(os.path.expanduser(self.work_dir)) / "lake"))


_ENV_OVERRIDES = {
    ("work_dir",): "SPARKDL_WORK_DIR",
    ("lake", "root"): "SPARKDL_LAKE_DIR",
    ("registry", "root"): "SPARKDL_MODEL_STORE",
    ("spark", "master"): "SPARKDL_MASTER",
    ("spark", "remote"): "SPARKDL_REMOTE",
}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def options_from_mapping(cls: type, values: dict | None, where: str):
    """An options dataclass (`SliceOptions`, `MonitorOptions`, `RetrainPolicy`, ...) from a YAML mapping; the
    dataclass checks its values. Raises ConfigError naming `where` and an unknown key."""
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {values!r}")
    values = dict(values or {})
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: "
                          f"{', '.join(f.name for f in dataclasses.fields(cls))}")
    return cls(**values)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None, cls: type = JobConfig):
    """Load a YAML job file into `cls` (default `JobConfig`).

    Args:
        path: the YAML file.
        overrides: `dotted.key=value` strings applied on top (values parsed as YAML: `3`, `true`, `[1, 2]`).

    Raises:
        ConfigError: the file is missing or not YAML, or a key is unknown, missing or of the wrong type; the message
            names the file and the dotted key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return config_from_dict(raw, overrides, cls, source=str(path))


def config_from_dict(raw: dict, overrides: list[str] | None = None, cls: type = JobConfig, source: str = "<dict>"):
    """Like `load_config`, from an already-parsed mapping."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    raw = _apply_overrides(raw, [], source)  # a copy
    if cls is JobConfig:  # environment over the file, command line over both
        for keys, env in _ENV_OVERRIDES.items():
            if os.environ.get(env):
                _set_dotted(raw, list(keys), os.environ[env])
    raw = _apply_overrides(raw, overrides or [], source)
    config = _build(cls, raw, source, "")
    if hasattr(config, "origin"):
        config.origin = source
    return config


def _apply_overrides(raw: dict, overrides: list[str], source: str) -> dict:
    import copy

    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        _set_dotted(raw, key.strip().split("."), parsed)
    return raw


def _set_dotted(raw: dict, keys: list[str], value) -> None:
    node = raw
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def _expand(value: str) -> str:
    def sub(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        return os.environ.get(name) or (default if default is not None else "")

    return _ENV_REF.sub(sub, value)


def _build(tp, value, source: str, key: str):
    where = f"{source}: {key or '<top level>'}"
    origin = typing.get_origin(tp)
    if tp is Any:
        return _expand(value) if isinstance(value, str) else value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: a value is required")
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _build(arg, value, source, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else ConfigError(f"{where}: expected {_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping ({tp.__name__}), got {value!r}")
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init and f.name != "origin"}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ConfigError(f"{source}: unknown key {_join(key, unknown[0])!r}"
                              f"{' (and ' + ', '.join(unknown[1:]) + ')' if unknown[1:] else ''}; "
                              f"allowed keys here: {', '.join(sorted(fields))}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for name, fld in fields.items():
            sub = _join(key, name)
            if name in value:
                kwargs[name] = _build(hints[name], value[name], source, sub)
            elif fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: missing required key {sub!r}")
        return tp(**kwargs)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_build(item_tp, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {str(k): _build(val_tp, v, source, _join(key, str(k))) for k, v in value.items()}
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return _expand(str(value))
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _name(tp) -> str:
    return getattr(tp, "__name__", str(tp))
