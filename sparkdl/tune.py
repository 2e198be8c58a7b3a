"""Hyper-parameter search where every trial is a distributed fit: Optuna's ask/tell on the driver, each trial a
`KerasEstimator` fit on `trial_proc` Horovod processes, `parallel` trials at once on the cluster's task slots.

    >>> result = tune(KerasEstimator(model="mlp", feature_spec=spec, epochs=8), "lake/wine",
    ...               {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
    ...                "hparams.hidden": {"type": "choice", "values": [[32], [64, 32]]}},
    ...               n_trials=16, study="wine-search")
    >>> result.best_params, result.best_value, result.best_model          # model "name@version" in the store

* **Space**: any estimator param (snake_case, as in `KerasEstimator(...)`) and model hparams as `hparams.<name>`;
  types `uniform`, `loguniform`, `int` (`step`, `log`) and `choice`. An unknown param or hparam, an empty or
  inverted range, or `trial_proc` above the task slots is a `ConfigError` before any Spark job.
* **Data**: every trial reads the same table version. The data is validated, its preprocessing fitted and its
  cache written once per distinct split (`validation`, `seed`) for all the trials that share it
  (`KerasEstimator.prepare`); bad data stops the search before the first trial.
* **Pruning**: rank 0's per-epoch `metric` reaches the driver over the progress channel and is reported to the
  trial; when the pruner says so, the trial's fit stops between epochs (its Spark job is cancelled, its slots go to
  the next trial) and the trial is `PRUNED`. Without a progress channel (a Spark Connect client the executors
  cannot reach) trials run to the end.
* **Resumable**: the study lives in an Optuna `JournalStorage` file under `<work>/tune/<study>.journal`; calling
  `tune` again with the same study continues it (trials an interrupted search left running are marked `FAIL`).
* **Result**: `TuneResult` (best params, value and model, every trial), also written as a Delta table of trials
  (`<lake>/<study>_trials` unless `trials_table` says otherwise); the best trial's model version gets an artifact
  `tune.json` naming the study and trial. A trial that fails is `FAIL` with its reason, and the search goes on.
* **MLflow**: when the estimator's fits are tracked (its `mlflow` param; by default when a tracking URI is set or a
  run is active), the study is a parent run (the space and settings as params; the best value as the metric
  `best_<metric>`, the best model, trial and params as tags) with one nested run per trial (its params, per-epoch
  metrics and model; a pruned trial's run ends `KILLED`, a failed one's `FAILED`). A resumed study takes its
  parent run up again.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sparkdl import lake
from sparkdl.errors import ConfigError, FitStopped
from sparkdl.fileutil import check_name
from sparkdl.log import get_logger
from sparkdl.metrics import direction as metric_direction
from sparkdl.mlflow import tracking
from sparkdl.registry import ModelStore
from sparkdl.session import get_spark
from sparkdl.session import work_dir as default_work_dir
from sparkdl.train.estimator import _SNAKE_TO_CAMEL
from sparkdl.train.resources import check_cluster, cores_per_task, task_slots

if TYPE_CHECKING:
    from optuna.pruners import BasePruner

log = get_logger("tune")

SPACE_TYPES = ("uniform", "loguniform", "int", "choice")
PRUNERS = ("median", "successive_halving", "none")
SAMPLERS = ("tpe", "random")
# Estimator params a search may not set: where the fit runs and stores things, not what it learns.
_NOT_TUNABLE = ("feature_spec", "forecast", "label", "model_store", "model_name", "run_name", "work_dir", "resume",
                "num_proc", "callbacks", "mlflow", "mlflow_experiment", "env", "start_timeout", "use_gpu",
                "keep_checkpoints", "checkpoint_every", "checkpoint_every_steps", "max_failures", "rank_timeout_s",
                "min_proc")


@dataclass(frozen=True)
class Dimension:
    """One entry of the search space."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    values: tuple = ()

    def suggest(self, trial):
        if self.type == "choice":
            index = trial.suggest_categorical(f"{self.name}#index", list(range(len(self.values))))
            return self.values[index]
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.type == "loguniform")


@dataclass(frozen=True)
class TrialRecord:
    """One trial: `state` COMPLETE, PRUNED or FAIL; `model` the version it stored (None when none)."""

    number: int
    state: str
    params: dict
    value: float | None
    epochs: int
    start: str
    end: str
    model: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class TuneResult:
    study: str
    metric: str
    direction: str
    best_params: dict
    best_value: float | None
    best_model: str | None
    trials: tuple[TrialRecord, ...] = field(default_factory=tuple)
    trials_table: str | None = None


def check_space(space: dict, estimator) -> list[Dimension]:
    """The search space as checked `Dimension`s.

    Raises:
        ConfigError: not a mapping, an unknown or untunable param, an unknown hparam of the model, an unknown type,
            an empty or inverted range, or an empty choice (each named).
    """
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"tune: space must be a non-empty mapping of param -> distribution, got {space!r}")
    dims = []
    for name, spec in space.items():
        where = f"tune: space[{name!r}]"
        if not name.startswith("hparams.") and (name not in _SNAKE_TO_CAMEL or name in _NOT_TUNABLE):
            tunable = sorted(set(_SNAKE_TO_CAMEL) - set(_NOT_TUNABLE))
            raise ConfigError(f"{where}: not a tunable KerasEstimator param; tunable: {tunable}, and model "
                              f"hparams as 'hparams.<name>'")
        if not isinstance(spec, dict) or spec.get("type") not in SPACE_TYPES:
            raise ConfigError(f"{where}: expected {{type: {'|'.join(SPACE_TYPES)}, ...}}, got {spec!r}")
        kind = spec["type"]
        if kind == "choice":
            values = spec.get("values")
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"{where}: choice needs a non-empty list 'values'")
            dims.append(Dimension(name, kind, values=tuple(values)))
            continue
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
            raise ConfigError(f"{where}: {kind} needs numbers low < high, got low={low!r}, high={high!r}")
        if (kind == "loguniform" or spec.get("log")) and low <= 0:
            raise ConfigError(f"{where}: a log scale needs low > 0, got {low!r}")
        dims.append(Dimension(name, kind, float(low), float(high), spec.get("step"), bool(spec.get("log", False))))
    sampled = {d.name[len("hparams."):]: _sample(d) for d in dims if d.name.startswith("hparams.")}
    if sampled:
        from sparkdl.models import check_choice

        model = estimator.getOrDefault("model")
        try:
            check_choice(model, {**(estimator.getOrDefault("hparams") or {}), **sampled})
        except ConfigError as exc:
            raise ConfigError(f"tune: the space's hparams do not fit model {model!r}: {exc}") from None
    return dims


def _sample(dim: Dimension):
    if dim.type == "choice":
        return dim.values[0]
    return int(dim.low) if dim.type == "int" else float(dim.low)


def tune(estimator, table, space: dict, n_trials: int, trial_proc: int = 1, parallel: int | None = None,
         metric: str = "val_loss", direction: str | None = None, pruner: str | BasePruner = "median",
         study: str | None = None, sampler: str = "tpe", seed: int = 0, trials_table: str | None = None, work=None,
         spark=None) -> TuneResult:
    """Search `space` with `n_trials` fits of `estimator` on `table` (see the module docstring).

    Args:
        estimator: a `KerasEstimator` (its params are the defaults of every trial).
        table: the Delta table (path, URI, or a Snapshot) every trial trains on (one version for all).
        space: {param or "hparams.<name>": {type, low, high, step, log, values}}.
        n_trials: trials the study should have in all (a resumed study runs only the missing ones).
        trial_proc: Horovod processes per trial.
        parallel: trials at once (default: task slots // trial_proc).
        metric, direction: what a trial's value is (the last epoch's, from its history) and its goal ("minimize"
            or "maximize"; default: the metric's own, from `sparkdl.metrics`).
        pruner, sampler, seed: Optuna's pruner (median | successive_halving | none, or an
            `optuna.pruners.BasePruner`) and sampler (tpe | random).
        study: the study's name (resumable); default a new one. Several `tune` calls on one study at once (other
            threads or processes sharing `work`) share its trials: together they run up to `n_trials`.
        trials_table: the Delta table the trials are written to (default `<lake>/<study>_trials` next to `table`).

    Raises:
        ConfigError: bad arguments or space (before any Spark job).
    """
    import optuna

    spark = spark or get_spark()
    dims = check_space(space, estimator)
    if direction is None:
        direction = metric_direction(metric)
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"tune: direction must be 'minimize' or 'maximize', got {direction!r}")
    if not isinstance(pruner, optuna.pruners.BasePruner) and pruner not in PRUNERS or sampler not in SAMPLERS:
        raise ConfigError(f"tune: pruner must be one of {PRUNERS} and sampler one of {SAMPLERS}, got "
                          f"{pruner!r}, {sampler!r}")
    if not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError(f"tune: n_trials must be a positive integer, got {n_trials!r}")
    check_cluster(spark, trial_proc, who="tune (trial_proc)")
    slots = task_slots(spark) or trial_proc
    parallel = max(1, int(parallel or slots // trial_proc))
    if parallel * trial_proc > slots:
        raise ConfigError(f"tune: parallel={parallel} trials of trial_proc={trial_proc} need "
                          f"{parallel * trial_proc} task slots; the cluster has {slots}")
    snap = table if isinstance(table, lake.Snapshot) else lake.snapshot(str(table), spark=spark)
    name = check_name(study, "study name") if study is not None else f"tune-{uuid.uuid4().hex[:8]}"
    folder = Path(work or default_work_dir()) / "tune"
    folder.mkdir(parents=True, exist_ok=True)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(folder / f"{name}.journal")))
    samplers = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
                "random": lambda: optuna.samplers.RandomSampler(seed=seed)}
    # a trial is compared from a quarter of its epochs on, with the median of at least 5 trials (Optuna's default
    # start-up): earlier, the slow starters that end best are pruned with the hopeless ones
    epochs = int(estimator.getOrDefault("epochs"))
    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 4)),
               "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
               "none": lambda: optuna.pruners.NopPruner()}
    opt = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=samplers[sampler](),
                              pruner=pruner if isinstance(pruner, optuna.pruners.BasePruner) else pruners[pruner](),
                              load_if_exists=True)
    with _StudyLock(folder / f"{name}.lock") as alone:
        if alone:  # no other search runs the study: its RUNNING trials were left by an interrupted one
            for left in opt.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                opt.tell(left.number, state=optuna.trial.TrialState.FAIL)
        return _search(opt, name, estimator, snap, space, dims, n_trials, trial_proc, parallel, metric, direction,
                       pruner, sampler, seed, trials_table, spark)


def _search(opt, name, estimator, snap, space, dims, n_trials, trial_proc, parallel, metric, direction, pruner,
            sampler, seed, trials_table, spark) -> TuneResult:
    """The trials a study still needs, then the study's result (`tune` past its checks, holding the study lock)."""
    done = _started(opt)
    todo = max(0, n_trials - done)
    log.info("study %s: %d trial(s) done, %d to run, %d at once (%d process(es) each) on %s@%s", name, done, todo,
             parallel, trial_proc, snap.table, snap.version)
    preparations = _Preparations(snap)
    preparations.get(estimator)  # bad data fails the search here, before any trial
    study_run = _start_study_run(estimator, name, space, snap, n_trials=n_trials, trial_proc=trial_proc,
                                 parallel=parallel, metric=metric, direction=direction,
                                 pruner=pruner if isinstance(pruner, str) else type(pruner).__name__,
                                 sampler=sampler, seed=seed)
    try:
        _run_trials(opt, todo, n_trials, parallel, estimator, dims, preparations, trial_proc, metric, name,
                    study_run.run_id if study_run else None, cores_per_task(spark, parallel * trial_proc))
    except BaseException:
        if study_run is not None:
            study_run.finish(None, status="FAILED")
        raise
    records = tuple(_record(t) for t in opt.get_trials(deepcopy=False))
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None]
    best = (min if direction == "minimize" else max)(complete, key=lambda r: r.value) if complete else None
    if best is not None and best.model:
        store = estimator.getOrDefault("modelStore")
        ModelStore.of(store).add_artifact(
            best.model, "tune.json", {"study": name, "trial": best.number, "metric": metric, "value": best.value,
                                      "params": best.params})
    target = trials_table or _default_trials_table(snap.table, name)
    _write_trials(spark, records, target, name)
    result = TuneResult(name, metric, direction, dict(best.params) if best else {}, best.value if best else None,
                        best.model if best else None, records, target)
    if study_run is not None:
        counts = {state: sum(r.state == state for r in records) for state in ("COMPLETE", "PRUNED", "FAIL")}
        study_run.finish(result.best_model, metrics={f"best_{metric}": result.best_value} if best else {},
                         tags={"sparkdl.best_trial": best.number if best else "none",
                               "sparkdl.best_params": result.best_params, "sparkdl.trials_table": target,
                               **{f"sparkdl.trials_{k.lower()}": v for k, v in counts.items()}})
    log.info("study %s: best %s=%s with %s (%s); %d complete, %d pruned, %d failed", name, metric,
             result.best_value, result.best_params, result.best_model, len(complete),
             sum(r.state == "PRUNED" for r in records), sum(r.state == "FAIL" for r in records))
    return result


def _started(opt) -> int:
    """The study's trials that started (any state but WAITING: a trial enqueued and not yet asked for)."""
    import optuna

    return len(opt.get_trials(deepcopy=False, states=tuple(s for s in optuna.trial.TrialState
                                                            if s != optuna.trial.TrialState.WAITING)))


class _StudyLock:
    """A study's lock file, held shared by every search running the study; entered, it says whether this search
    is alone (it got the lock exclusively first, then shares it). Other searches on the study wait only for that
    check, never for each other's trials."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> bool:
        import fcntl

        self._file = open(self.path, "a+b")  # noqa: SIM115 - closed in __exit__
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        fcntl.flock(self._file, fcntl.LOCK_SH)  # from exclusive: a conversion; else waits for the check above
        return alone

    def __exit__(self, *exc) -> None:
        self._file.close()  # releases the lock


def _start_study_run(estimator, study: str, space: dict, snap, **settings):
    """The study's MLflow run (taken up again when the study resumes), when the estimator's fits are tracked."""
    if not tracking.tracking_wanted(estimator.getOrDefault("mlflow")):
        return None
    fixed = {k: settings[k] for k in ("trial_proc", "metric", "direction", "pruner", "sampler", "seed")}
    return tracking.FitRun.try_start(study, estimator.getOrDefault("mlflowExperiment"), {"space": space, **fixed},
                                     {**tracking.source_tags(snap), "sparkdl.study": study,
                                      "sparkdl.n_trials": settings["n_trials"], "sparkdl.parallel":
                                      settings["parallel"]}, reuse_tag="sparkdl.study")


class _Preparations:
    """The prepared data (`KerasEstimator.prepare`) of each distinct split (validation, seed) of the study, made
    once: trials that share it use the same validated data, fitted preprocessing and cache."""

    def __init__(self, snap):
        self.snap = snap
        self._lock = threading.Lock()
        self._made: dict[str, Future] = {}

    def get(self, estimator):
        key = json.dumps([estimator.getOrDefault("validation"), estimator.getOrDefault("seed")], default=str)
        with self._lock:
            future = self._made.get(key)
            owner = future is None
            if owner:
                future = self._made[key] = Future()
        if owner:
            try:
                future.set_result(estimator.prepare(self.snap))
            except BaseException as exc:
                future.set_exception(exc)
        return future.result()


def _run_trials(opt, todo: int, n_trials: int, parallel: int, estimator, dims, preparations, trial_proc, metric,
                study, parent_run_id, threads: int) -> None:
    """`todo` trials, `parallel` at once: each thread asks the study for a trial and fits it, until none is left
    or the study has `n_trials` (with another search's); each process of a trial gets `threads` threads (its share
    of the cores the trials run on together)."""
    lock = threading.Lock()
    remaining = [todo]

    def worker() -> None:
        while True:
            with lock:
                if remaining[0] <= 0 or _started(opt) >= n_trials:
                    return
                remaining[0] -= 1
                trial = opt.ask()
            _run_trial(opt, trial, lock, estimator, dims, preparations, trial_proc, metric, study, parent_run_id,
                       threads)

    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="sparkdl-trial") as pool:
        for future in [pool.submit(worker) for _ in range(parallel)]:
            future.result()


def _run_trial(opt, trial, lock, estimator, dims, preparations, trial_proc, metric, study, parent_run_id,
               threads: int) -> None:
    """One trial's fit, told to the study as COMPLETE (its value), PRUNED or FAIL (with the reason)."""
    import optuna

    params = {d.name: d.suggest(trial) for d in dims}
    overrides = {k: v for k, v in params.items() if not k.startswith("hparams.")}
    hparams = dict(estimator.getOrDefault("hparams") or {})
    hparams.update({k[len("hparams."):]: v for k, v in params.items() if k.startswith("hparams.")})
    est = estimator.copy()
    est.setParams(**overrides, hparams=hparams or None, num_proc=trial_proc,
                  run_name=f"{study}-trial-{trial.number}", resume=False)
    trial.set_user_attr("sparkdl.params", json.dumps(params, default=str))
    trial.set_user_attr("sparkdl.start", _now())

    def on_epoch(epoch: int, logs: dict) -> bool:
        value = logs.get(metric)
        if value is None or not math.isfinite(float(value)):
            return False
        with lock:
            trial.report(float(value), epoch)
            return trial.should_prune()

    est.epoch_listener = on_epoch
    est.mlflow_parent_run_id = parent_run_id
    est.threads_per_proc = threads
    try:
        fitted = est.fit(preparations.get(est))
    except FitStopped as exc:
        with lock:
            trial.set_user_attr("sparkdl.end", _now())
            trial.set_user_attr("sparkdl.epochs", exc.epoch + 1)
            opt.tell(trial, state=optuna.trial.TrialState.PRUNED)
        log.info("trial %d pruned after epoch %d", trial.number, exc.epoch + 1)
        return
    except Exception as exc:  # noqa: BLE001 - a failed trial is recorded, the search goes on
        with lock:
            trial.set_user_attr("sparkdl.end", _now())
            trial.set_user_attr("sparkdl.reason", f"{type(exc).__name__}: {str(exc)[:1000]}")
            opt.tell(trial, state=optuna.trial.TrialState.FAIL)
        log.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, str(exc).splitlines()[0][:300])
        return
    history = fitted.getHistory()
    values = history.get(metric) or []
    with lock:
        trial.set_user_attr("sparkdl.end", _now())
        trial.set_user_attr("sparkdl.epochs", len(values))
        trial.set_user_attr("sparkdl.model", str(fitted.getModelVersion()))
        if not values or values[-1] is None:
            trial.set_user_attr("sparkdl.reason", f"the fit's history has no {metric!r} (has {sorted(history)})")
            opt.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        opt.tell(trial, float(values[-1]))


def _record(trial) -> TrialRecord:
    attrs = trial.user_attrs
    params = json.loads(attrs["sparkdl.params"]) if "sparkdl.params" in attrs else {}
    state = trial.state.name
    reason = attrs.get("sparkdl.reason") or ("interrupted" if state == "FAIL" and "sparkdl.end" not in attrs
                                             else None)
    return TrialRecord(trial.number, state, params, trial.value if state == "COMPLETE" else None,
                       int(attrs.get("sparkdl.epochs", 0)), attrs.get("sparkdl.start", ""),
                       attrs.get("sparkdl.end", ""), attrs.get("sparkdl.model"), reason)


def _default_trials_table(source: str, study: str) -> str:
    return source.rstrip("/").rsplit("/", 1)[0] + f"/{study}_trials"


def _write_trials(spark, records, target: str, study: str) -> None:
    rows = [{**asdict(r), "params": json.dumps(r.params, sort_keys=True, default=str), "study": study}
            for r in records]
    schema = ("number int, state string, params string, value double, epochs int, start string, end string, "
              "model string, reason string, study string")
    df = spark.createDataFrame([tuple(r[c.split()[0]] for c in schema.split(", ")) for r in rows], schema)
    lake.write_table(df, target, mode="overwrite", commit_metadata={"sparkdl.operation": "tune", "study": study},
                     spark=spark)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


__all__ = ["tune", "check_space", "TuneResult", "TrialRecord", "Dimension", "SPACE_TYPES"]
