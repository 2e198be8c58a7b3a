"""The jobs behind `sparkdl train|score|evaluate|explain|monitor|demo` and `jobs/*.py`: config in, library calls,
summary out."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

from pyspark.sql import functions as F

from sparkdl import lake
from sparkdl.baselines import baseline_accuracy
from sparkdl.config import JobConfig, load_config
from sparkdl.data.forecast import ForecastSpec
from sparkdl.data.series import step_time
from sparkdl.data.spec import FeatureSpec
from sparkdl.datasets import create_demo_tables
from sparkdl.errors import AlreadyCommitted, ConfigError, ModelStoreError, TableError
from sparkdl.evaluate import evaluate_model
from sparkdl.evaluation import SliceOptions
from sparkdl.explain import Attribution, explain_model, explain_table
from sparkdl.log import get_logger
from sparkdl.metrics import larger_is_better
from sparkdl.model_metadata import ModelMetadata
from sparkdl.monitoring import MonitorOptions, monitor_table
from sparkdl.monitoring.retrain import (
    DECISIONS_DDL,
    RetrainPolicy,
    decision_record,
    latest_window,
    recent_labeled_rows,
    tests_fired,
)
from sparkdl.registry import ModelStore
from sparkdl.score import register_sql_function, score_table
from sparkdl.session import get_spark
from sparkdl.train import KerasEstimator
from sparkdl.tune import check_space
from sparkdl.tune import tune as run_search

log = get_logger("workflows")
PACKAGED_CONF = Path(__file__).resolve().parent.parent / "conf"
DEMO_CONFIGS = ("digits.yaml", "breast_cancer.yaml", "fortunes.yaml", "digit_images.yaml", "macro_forecast.yaml",
                "fair_survey.yaml")


def spark_for(cfg: JobConfig):
    """The active session, or the embedded default configured by the job's `spark` section."""
    return get_spark(conf=cfg.spark.conf, master=cfg.spark.master, app_name=cfg.spark.app_name,
                     work=os.path.expanduser(cfg.work_dir), remote=cfg.spark.remote)


def model_store(cfg: JobConfig):
    root = cfg.registry.root or str(Path(os.path.expanduser(cfg.work_dir)) / "models")
    return ModelStore(os.path.expanduser(root))


def store_name(cfg: JobConfig) -> str:
    if cfg.model.store_name:
        return cfg.model.store_name
    if cfg.data is None:
        raise ConfigError(f"{cfg.origin}: model.store_name is required when there is no data section")
    return f"{Path(cfg.data.table).name}_{cfg.model.name}"


def feature_spec(cfg: JobConfig) -> FeatureSpec | None:
    """The job's feature spec; None for a forecaster (`data.forecast`, see `forecast_spec`)."""
    if cfg.data is None:
        raise ConfigError(f"{cfg.origin}: missing required section 'data'")
    if cfg.data.forecast is not None:
        if cfg.data.features or cfg.data.label is not None:
            raise ConfigError(f"{cfg.origin}: data: a forecaster (data.forecast) reads windows of its target; remove "
                              f"data.features and data.label")
        return None
    if not cfg.data.features:
        raise ConfigError(f"{cfg.origin}: data: data.features (or data.forecast) is required")
    try:
        return FeatureSpec.from_dict({"features": cfg.data.features, "label": cfg.data.label,
                                      "id_columns": cfg.data.id_columns})
    except ConfigError as exc:
        raise ConfigError(f"{cfg.origin}: data: {exc}") from exc


def forecast_spec(cfg: JobConfig) -> ForecastSpec | None:
    """The job's `data.forecast` block, checked; None when the job trains on features."""
    if cfg.data is None or cfg.data.forecast is None:
        return None
    try:
        return ForecastSpec.from_dict(dict(cfg.data.forecast))
    except ConfigError as exc:
        raise ConfigError(f"{cfg.origin}: data.{exc}") from exc


@dataclass
class TrainResult:
    model_ref: str
    metrics: dict
    source: dict
    seconds: float

    def summary(self) -> dict:
        return {"model": self.model_ref, "metrics": self.metrics, "source": self.source,
                "seconds": round(self.seconds, 1)}


def train(cfg: JobConfig, spark=None) -> TrainResult:
    """Train `model.name` on `data.table` (pinned version) with Horovod and save it in the model store."""
    from sparkdl.models import available

    spec = feature_spec(cfg)
    if cfg.model.name not in available():
        raise ConfigError(f"{cfg.origin}: model.name: unknown model {cfg.model.name!r}; known: {sorted(available())}")
    table = cfg.table_uri(cfg.data.table)
    _require_table(cfg, table, "data.table")
    spark = spark or spark_for(cfg)
    snapshot = lake.snapshot(table, version=cfg.data.version, timestamp=cfg.data.timestamp)
    store = model_store(cfg)
    started = time.perf_counter()
    estimator = estimator_for(cfg, spec, store)
    model = estimator.fit(snapshot)
    version = model.getModelVersion()
    meta = store.metadata(version)
    log.info("trained %s on %s@%d in %.0f s", version, snapshot.table, snapshot.version,
             time.perf_counter() - started)
    return TrainResult(str(version), meta.get("metrics", {}), snapshot.lineage(), time.perf_counter() - started)


def estimator_for(cfg: JobConfig, spec: FeatureSpec | None, store) -> KerasEstimator:
    """The `KerasEstimator` of a job's `model` and `train` sections: every `train.*` key is the estimator param of
    the same name (tests/test_config.py checks that each one is); a forecaster's `data.forecast` is its
    `forecast` param."""
    train = {f.name: getattr(cfg.train, f.name) for f in fields(cfg.train)}
    return KerasEstimator(
        **train, model=cfg.model.name, feature_spec=spec, forecast=forecast_spec(cfg),
        hparams=dict(cfg.model.hparams), keras=cfg.model.keras,
        validation=cfg.data.validation, model_store=store, model_name=store_name(cfg),
        work_dir=os.path.expanduser(cfg.work_dir))


def tune(cfg: JobConfig, spark=None) -> dict:
    """Search the job's `tune.space` with `tune.trials` distributed fits of its model on `data.table`."""
    if not cfg.tune.space:
        raise ConfigError(f"{cfg.origin}: tune.space is required to tune (param -> {{type, ...}})")
    spec = feature_spec(cfg)
    table = cfg.table_uri(cfg.data.table)
    _require_table(cfg, table, "data.table")
    estimator = estimator_for(cfg, spec, model_store(cfg))
    check_space(dict(cfg.tune.space), estimator)  # before Spark starts
    spark = spark or spark_for(cfg)
    snapshot = lake.snapshot(table, version=cfg.data.version, timestamp=cfg.data.timestamp)
    t = cfg.tune
    result = run_search(estimator, snapshot, dict(t.space), t.trials,
                        trial_proc=t.trial_proc, parallel=t.parallel, metric=t.metric, direction=t.direction,
                        pruner=t.pruner, study=t.study, sampler=t.sampler, seed=t.seed,
                        trials_table=cfg.table_uri(t.trials_table) if t.trials_table else None,
                        work=os.path.expanduser(cfg.work_dir), spark=spark)
    return {"study": result.study, "best_params": result.best_params, "best_value": result.best_value,
            "best_model": result.best_model, "trials_table": result.trials_table,
            "trials": {s: sum(tr.state == s for tr in result.trials) for s in ("COMPLETE", "PRUNED", "FAIL")}}


def _require_table(cfg: JobConfig, table: str, key: str) -> None:
    """Fail before Spark starts when a local table path has no Delta log (remote URIs are checked by the read)."""
    path = table[len("file://"):] if table.startswith("file://") else table
    if "://" not in path and not (Path(path) / "_delta_log").is_dir():
        raise TableError(f"{cfg.origin}: {key}: no Delta table at {table} (no _delta_log folder)")


def _model_ref(cfg: JobConfig, explicit: str | None, section_model: str | None) -> str:
    return explicit or section_model or f"{store_name(cfg)}@latest"


def score(cfg: JobConfig, model_ref: str | None = None, spark=None):
    """Score `score.source` into `score.target` (Delta, atomic, with quarantine and lineage)."""
    if not cfg.score.source or not cfg.score.target:
        raise ConfigError(f"{cfg.origin}: score.source and score.target are required to score")
    _require_table(cfg, cfg.table_uri(cfg.score.source), "score.source")
    spark = spark or spark_for(cfg)
    ref = _model_ref(cfg, model_ref, cfg.score.model)
    store = model_store(cfg)
    store.resolve(ref)  # a missing model fails before any Spark work
    report = score_table(ref, cfg.table_uri(cfg.score.source), cfg.table_uri(cfg.score.target), mode=cfg.score.mode,
                         keep_columns=list(cfg.score.keep_columns) or None, source_version=cfg.score.source_version,
                         output=cfg.score.output, store=store, spark=spark)
    if cfg.score.sql_function:
        register_sql_function(spark, cfg.score.sql_function, ref, store=store)
    return report


def evaluate(cfg: JobConfig, model_ref: str | None = None, spark=None) -> dict:
    """Evaluate a stored model on `evaluate.table`; metrics.json and plots go next to the model version."""
    table = cfg.evaluate.table or (cfg.score.source if cfg.score.source else None)
    if not table:
        raise ConfigError(f"{cfg.origin}: evaluate.table is required to evaluate")
    _require_table(cfg, cfg.table_uri(table), "evaluate.table")
    spark = spark or spark_for(cfg)
    ref = _model_ref(cfg, model_ref, cfg.evaluate.model)
    store = model_store(cfg)
    store.resolve(ref)
    options = SliceOptions.from_dict(cfg.evaluate.slice_options, f"{cfg.origin}: evaluate.slice_options")
    metrics = evaluate_model(ref, cfg.table_uri(table), version=cfg.evaluate.version, store=store, spark=spark,
                             plots=cfg.evaluate.plots, slices=cfg.evaluate.slices or None, slice_options=options,
                             gates=cfg.gates or None,
                             metrics_table=cfg.table_uri(cfg.evaluate.metrics_table) if cfg.evaluate.metrics_table
                             else None)
    spec = forecast_spec(cfg)
    if spec is not None and spec.backtest_folds:
        metrics["backtest"] = backtest(cfg, ModelMetadata.from_dict(store.metadata(ref)).forecast,
                                       cfg.table_uri(table), spark)
    if cfg.evaluate.baseline:
        metrics["baseline"] = _baseline(cfg, store.metadata(ref), table, spark)
    return metrics


def monitor(cfg: JobConfig, spark=None, retrain: bool = False) -> dict:
    """Monitor `monitor.table` in windows against the training table (`sparkdl.monitoring.monitor_table`); drift and
    performance go to the Delta tables of `monitor.output_prefix`, plots under `<work_dir>/monitor/<table name>`.
    With `retrain`, the latest window is decided by the policy `monitor.retrain` (`sparkdl.monitoring.retrain`).
    Returns a summary: windows, alerts, thresholds, performance records, outputs, plots (and the decision)."""
    policy = RetrainPolicy.from_dict(cfg.monitor.retrain, f"{cfg.origin}: monitor.retrain") if retrain else None
    section = cfg.monitor
    if not section.table:
        raise ConfigError(f"{cfg.origin}: monitor.table is required to monitor")
    reference = section.reference or (cfg.data.table if cfg.data is not None else None)
    if not reference:
        raise ConfigError(f"{cfg.origin}: monitor.reference (or data.table) is required: the training data")
    label = section.label or (_label_name(cfg) if section.score else None)
    table = cfg.table_uri(section.table)
    for name, uri in (("monitor.table", table), ("monitor.reference", cfg.table_uri(reference))):
        _require_table(cfg, uri, name)
    options = MonitorOptions.from_dict(section.options, f"{cfg.origin}: monitor.options")
    spark = spark or spark_for(cfg)
    result = monitor_table(
        table, cfg.table_uri(reference), section.timestamp, columns=section.columns or None,
        slices=section.slices or None, options=options, version=section.version,
        reference_version=section.reference_version, score=section.score, label=label,
        labels_table=cfg.table_uri(section.labels_table) if section.labels_table else None,
        id_columns=section.id_columns, spark=spark,
        output_prefix=cfg.table_uri(section.output_prefix) if section.output_prefix else None,
        plots_dir=str(Path(os.path.expanduser(cfg.work_dir)) / "monitor" / Path(table).name))
    summary = {"table": result["table"], "reference": result["reference"], "windows": len(result["windows"]),
               "alerts": result["alerts"], "thresholds": result["thresholds"], "performance": result["performance"],
               "outputs": result["outputs"], "plots": result["plots"]}
    if policy is not None:
        summary["retrain"] = _retrain(cfg, policy, result, spark)
    return summary


def _retrain(cfg: JobConfig, policy: RetrainPolicy, result: dict, spark) -> dict:
    """Decide the latest window once: nothing when the policy does not fire; else train a challenger on the newest
    training data, judge it, move the alias only if it wins. The decision record commits with a Delta transaction
    identifier per (monitored table, window), so a window is decided once."""
    name = policy.decisions_table or (f"{cfg.monitor.output_prefix}_decisions" if cfg.monitor.output_prefix else None)
    if not name:
        raise ConfigError(f"{cfg.origin}: monitor --retrain needs monitor.retrain.decisions_table or "
                          f"monitor.output_prefix (the decisions table)")
    uri, window = cfg.table_uri(name), latest_window(result)
    if window is None:
        return {"decision": None, "reason": "no window in the monitored table"}
    monitored = result["table"]
    txn = lake.Txn(f"sparkdl-retrain:{monitored['table']}", int(window[0].replace(tzinfo=None).timestamp()))
    if lake.exists(uri):
        done = lake.read_table(uri, spark=spark)[0].where(
            (F.col("monitored_table") == monitored["table"]) & (F.col("window_start") == window[0])).limit(1).collect()
        if done:
            log.info("monitor: window %s already decided (%s): nothing to do", window[0], done[0]["decision"])
            return {"window": window, "decision": done[0]["decision"], "already_decided": True}
    fired = tests_fired(policy, result, window[0])
    store = model_store(cfg)
    champion = f"{store_name(cfg)}@{policy.alias}"
    try:
        store.resolve(champion)
    except ModelStoreError:
        champion = None
    if not fired:
        record = decision_record(window, monitored, fired, "no_retrain", champion=champion)
    else:
        record = _challenge(cfg, policy, window, monitored, fired, champion, store, spark)
    try:
        lake.write_table(spark.createDataFrame([record], DECISIONS_DDL), uri, mode="append", txn=txn)
    except AlreadyCommitted:
        log.info("monitor: a concurrent run recorded window %s first", window[0])
    log.info("monitor: window %s: %s (%s)", window[0], record[5], "; ".join(fired) or "no test fired")
    return {"window": window, "decision": record[5], "tests_fired": fired, "challenger": record[8],
            "champion": record[9], "judge": record[10], "challenger_value": record[11], "champion_value": record[12]}


def _challenge(cfg: JobConfig, policy: RetrainPolicy, window, monitored, fired, champion, store, spark) -> tuple:
    """Train a challenger on the newest training data (a run named after the window: a crashed retrain resumes),
    judge it against the champion, move the alias if it wins; the decision record."""
    import copy

    if not cfg.evaluate.table:
        raise ConfigError(f"{cfg.origin}: retraining judges on evaluate.table (held-out rows); set it")
    fresh = copy.deepcopy(cfg)
    fresh.data.version, fresh.data.timestamp = None, None
    if policy.recent_windows:
        fresh.data.table = _retraining_data(cfg, policy, window, monitored, spark)
    fresh.train.run_name = f"retrain-{store_name(cfg)}-{window[0]:%Y%m%dT%H%M%S}"
    trained = train(fresh, spark=spark)
    challenger = trained.model_ref
    table = cfg.table_uri(cfg.evaluate.table)
    if cfg.gates:
        metrics = evaluate(cfg, model_ref=challenger, spark=spark)
        wins, judge = metrics["gates"]["passed"], "gates"
        mine = theirs = None
    else:
        judge = policy.judge_metric
        mine = evaluate_model(challenger, table, version=cfg.evaluate.version, store=store, spark=spark,
                              plots=False).get(judge)
        theirs = (evaluate_model(champion, table, version=cfg.evaluate.version, store=store, spark=spark,
                                 plots=False).get(judge) if champion else None)
        if mine is None:
            raise ConfigError(f"{cfg.origin}: monitor.retrain.judge_metric {judge!r} is not a metric of the "
                              f"evaluation (one of accuracy, roc_auc, rmse, mae, r2, ...)")
        larger = larger_is_better(judge)
        gain = (mine - theirs if larger else theirs - mine) if theirs is not None else None
        wins = gain is None or gain > policy.min_improvement or (policy.min_improvement == 0 and gain == 0)
    if wins:
        store.set_alias(challenger, policy.alias)
    log.info("monitor: challenger %s %s the champion %s on %s", challenger, "beats" if wins else "does not beat",
             champion, judge)
    return decision_record(window, monitored, fired, "promoted" if wins else "kept_champion", trained.source,
                           challenger, champion, judge, mine, theirs)


def _retraining_data(cfg: JobConfig, policy: RetrainPolicy, window, monitored: dict, spark) -> str:
    """The newest training table unioned with the labeled rows of the monitored table's last
    `policy.recent_windows` windows (`recent_labeled_rows`), written over `policy.training_table`; its URI."""
    name = policy.training_table or (f"{cfg.monitor.output_prefix}_retrain_data" if cfg.monitor.output_prefix
                                     else None)
    if not name:
        raise ConfigError(f"{cfg.origin}: monitor.retrain.recent_windows needs monitor.retrain.training_table or "
                          f"monitor.output_prefix")
    train_df, train_snap = lake.read_table(cfg.table_uri(cfg.data.table), spark=spark)
    current, _ = lake.read_table(monitored["table"], version=monitored["version"], spark=spark)
    section = cfg.monitor
    labels = lake.read_table(cfg.table_uri(section.labels_table), spark=spark)[0] if section.labels_table else None
    recent = recent_labeled_rows(current, section.timestamp, window, policy.recent_windows, train_df.schema,
                                 section.label or _label_name(cfg), labels, section.id_columns)
    uri = cfg.table_uri(name)
    version = lake.write_table(train_df.unionByName(recent), uri, mode="overwrite", schema_mode="overwrite",
                               commit_metadata={"sparkdl.operation": "retrain_data", "training": train_snap.lineage(),
                                                "monitored": monitored, "window_start": str(window[0]),
                                                "recent_windows": policy.recent_windows}).version
    log.info("monitor: the challenger trains on %s@%s (%s@%s and the labeled rows of %d recent window(s))", uri,
             version, train_snap.table, train_snap.version, policy.recent_windows)
    return uri


def _label_name(cfg: JobConfig) -> str | None:
    label = cfg.data.label if cfg.data is not None else None
    return label.get("name") if isinstance(label, dict) else label


def backtest(cfg: JobConfig, prep, table: str, spark) -> list[dict]:
    """A rolling-origin backtest of the job's forecaster: fold i (of `data.forecast.backtest_folds`) refits the model
    on the data before origin `test_from + i * horizon` (stored as `<store name>_backtest`) and is evaluated on the
    windows whose origin lies in that fold's `horizon` steps. Returns one record per fold."""
    import copy

    spec, folds = prep.spec, []
    for i in range(spec.backtest_folds):
        origin = prep.test_step + i * spec.horizon
        test_from = str(step_time(spec, prep.time_kind, origin, prep.offset, prep.time_zone))
        fold = copy.deepcopy(cfg)
        fold.data.forecast = {**dict(cfg.data.forecast), "test_from": test_from, "backtest_folds": 0}
        fold.model.store_name = f"{store_name(cfg)}_backtest"
        fold.train.run_name = None
        trained = train(fold, spark=spark)
        m = evaluate_model(trained.model_ref, table, version=cfg.evaluate.version, store=model_store(cfg),
                           spark=spark, plots=False, forecast_until=origin + spec.horizon)
        folds.append({"fold": i + 1, "test_from": test_from, "model": trained.model_ref, "windows": m["windows"],
                      **{k: m[k] for k in ("mae", "rmse", "smape", "mase", "mae_by_step")},
                      "seasonal_naive": {k: m["seasonal_naive"][k] for k in ("mae", "rmse", "smape", "mase")}})
        log.info("backtest fold %d/%d (origin %s): MAE %.4g, seasonal naive %.4g", i + 1, spec.backtest_folds,
                 test_from, m["mae"], m["seasonal_naive"]["mae"] or float("nan"))
    return folds


def _baseline(cfg: JobConfig, metadata: dict, table: str, spark) -> dict:
    """The scikit-learn baseline on the model's own training snapshot and the evaluation table."""
    source = metadata.get("source") or {}
    train_table = source.get("table") or cfg.table_uri(cfg.data.table)
    train_df, _ = lake.read_table(train_table, version=source.get("version"), spark=spark)
    test_df, _ = lake.read_table(cfg.table_uri(table), version=cfg.evaluate.version, spark=spark)
    spec = ModelMetadata.from_dict(metadata).spec
    return baseline_accuracy(spec, train_df, test_df).to_dict()


def explain(cfg: JobConfig, model_ref: str | None = None, spark=None) -> dict:
    """Explain a stored model on `explain.table` (default `evaluate.table`): explanation.json and plots next to the
    model version; with `explain.output_table`, per-row attributions written there too (Delta, with quarantine)."""
    table = cfg.explain.table or cfg.evaluate.table
    if not table:
        raise ConfigError(f"{cfg.origin}: explain.table (or evaluate.table) is required to explain")
    try:
        attribution = Attribution(steps=cfg.explain.steps, baseline=cfg.explain.baseline, target=cfg.explain.target)
    except ConfigError as exc:
        raise ConfigError(f"{cfg.origin}: explain: {exc}") from exc
    _require_table(cfg, cfg.table_uri(table), "explain.table")
    spark = spark or spark_for(cfg)
    ref = _model_ref(cfg, model_ref, cfg.explain.model)
    store = model_store(cfg)
    store.resolve(ref)
    explanation = explain_model(ref, cfg.table_uri(table), version=cfg.explain.version, store=store, spark=spark,
                                attribution=attribution, sample_rows=cfg.explain.sample_rows,
                                permutation=cfg.explain.permutation, repeats=cfg.explain.repeats,
                                metric=cfg.explain.metric, plots=cfg.explain.plots)
    summary = explanation.summary()
    if cfg.explain.output_table:
        report = explain_table(ref, cfg.table_uri(table), cfg.table_uri(cfg.explain.output_table),
                               attribution=attribution, mode="overwrite", source_version=cfg.explain.version,
                               store=store, spark=spark)
        summary["attributions"] = report.to_dict()
    return summary


def demo(config_paths: list[str] | None = None, overrides: list[str] | None = None, work: str | None = None) -> dict:
    """The end-to-end demo: bundled data → Delta → Horovod training → evaluation → scoring → SQL.

    Runs conf/digits.yaml (CNN on pixel arrays), conf/breast_cancer.yaml (MLP on a table), conf/fortunes.yaml
    (text CNN on free text), conf/digit_images.yaml (CNN on PNG files ingested through binaryFile) and
    conf/macro_forecast.yaml (an LSTM forecasting 12 macroeconomic series), or only the files of `config_paths`.
    Returns {"runs": [one summary per config], "seconds": ...}.
    """
    started = time.perf_counter()
    if work:
        os.environ["SPARKDL_WORK_DIR"] = str(Path(work).expanduser().resolve())
    paths = [Path(p) for p in config_paths] if config_paths else [PACKAGED_CONF / name for name in DEMO_CONFIGS]
    if not config_paths and not all(p.is_file() for p in paths):
        raise ConfigError(f"the demo configs {list(DEMO_CONFIGS)} are in the source checkout's conf/ folder, not "
                          f"found at {PACKAGED_CONF}; run the demo from a checkout or pass --config FILE")
    configs = [load_config(path, overrides) for path in paths]  # every config is checked before any work
    runs = [_demo_run(cfg) for cfg in configs]
    return {"runs": runs, "seconds": round(time.perf_counter() - started, 1)}


def _demo_run(cfg: JobConfig) -> dict:
    started = time.perf_counter()
    spark = spark_for(cfg)
    tables = create_demo_tables(spark, cfg.lake_root())
    trained = train(cfg, spark=spark)
    log.info("demo: trained %s (%s)", trained.model_ref, trained.metrics)
    metrics = evaluate(cfg, model_ref=trained.model_ref, spark=spark)
    report = score(cfg, model_ref=trained.model_ref, spark=spark)
    explained = explain(cfg, model_ref=trained.model_ref, spark=spark) if cfg.explain.table else None
    target = cfg.table_uri(cfg.score.target)
    sql_rows = []
    if cfg.score.sql_function:
        # SQL over the scores: per-class accuracy of the scored Delta table, and the SQL function agreeing with it
        label = cfg.data.label["name"] if isinstance(cfg.data.label, dict) else cfg.data.label
        features = ", ".join(f"t.{f['name'] if isinstance(f, dict) else f}" for f in cfg.data.features)
        row_id = (cfg.data.id_columns or ["id"])[0]
        lake.read_table(target, spark=spark)[0].createOrReplaceTempView("demo_scores")
        lake.read_table(cfg.table_uri(cfg.score.source), spark=spark)[0].createOrReplaceTempView("demo_source")
        query = (f"SELECT s.{label} AS label, count(*) AS n, "
                 f"round(avg(CAST(s.{cfg.score.output} = s.{label} AS DOUBLE)), 4) AS accuracy, "
                 f"sum(CAST({cfg.score.sql_function}({features}) = s.{cfg.score.output} AS INT)) AS sql_agrees "
                 f"FROM demo_scores s JOIN demo_source t ON s.{row_id} = t.{row_id} GROUP BY s.{label} "
                 f"ORDER BY s.{label}")
        log.info("demo: %s", query)
        sql_rows = [r.asDict() for r in spark.sql(query).collect()]
    summary = {
        "config": cfg.origin,
        "model": trained.model_ref,
        "train_seconds": round(trained.seconds, 1),
        "source_table": trained.source,
        "test_metrics": _demo_metrics(metrics),
        "baseline": metrics.get("baseline"),
        "scored_table": target,
        "scoring": report.to_dict(),
        "sql_query": sql_rows,
        "tables": tables,
        "model_path": str(model_store(cfg).resolve(trained.model_ref).path),
        "plots": metrics.get("plots", []) + (explained["plots"] if explained else []),
        "explanation": explained,
        "slices": _demo_slices(metrics),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return summary


def _demo_slices(metrics: dict) -> dict | None:
    """The sliced part of an evaluation, for the demo's report: per slice n, accuracy and recall with intervals;
    the fairness metrics; the gates."""
    if not metrics.get("slices"):
        return None
    keep = ("accuracy", "recall")
    return {"slices": {name: {"n": s["n"], **{k: s["metrics"][k] for k in keep if k in s["metrics"]}}
                       for name, s in metrics["slices"].items()},
            "suppressed": metrics.get("suppressed", []),
            "fairness": {k: v for k, v in (metrics.get("fairness") or {}).get("metrics", {}).items()
                         if k.endswith("difference")},
            "gates": metrics.get("gates")}


def _slice_lines(sliced: dict) -> list[str]:
    def interval(m: dict) -> str:
        if m.get("value") is None:
            return f"{'-':<22}"
        ci = f" [{m['lower']:.3f}, {m['upper']:.3f}]" if m.get("lower") is not None else ""
        return f"{m['value']:.3f}{ci:<17}"

    lines = [f"  slices           {'slice':<34} {'n':>5}  {'accuracy [95% CI]':<22} recall [95% CI]"]
    lines += [f"                   {name[:34]:<34} {s['n']:>5}  {interval(s.get('accuracy', {}))} "
              f"{interval(s.get('recall', {}))}" for name, s in sliced["slices"].items()]
    if sliced["suppressed"]:
        lines.append("                   suppressed (under min_slice_size): "
                     + ", ".join(f"{s['slice']} ({s['n']})" for s in sliced["suppressed"][:6])
                     + (" ..." if len(sliced["suppressed"]) > 6 else ""))
    for name, m in sliced["fairness"].items():
        lines.append(f"  fairness         {name:<34} {interval(m)}")
    for r in (sliced.get("gates") or {}).get("results", []):
        value = "-" if r["value"] is None else f"{r['value']:.3f}"
        lines.append(f"  gate             {'PASS' if r['passed'] else 'FAIL'}  {r['gate']}: {r['slice']} = {value}")
    return lines


def _demo_metrics(metrics: dict) -> dict:
    if metrics.get("task") == "forecast":
        naive = metrics["seasonal_naive"]
        return {"forecast": True, **{k: metrics.get(k) for k in ("mae", "smape", "mase", "windows", "series")},
                "naive_mae": naive.get("mae"), "naive_smape": naive.get("smape"), "naive_mase": naive.get("mase")}
    if metrics.get("isolation_forest") is not None:  # an anomaly detector's evaluation
        return {"anomaly": True, **{k: metrics.get(k) for k in ("roc_auc", "pr_auc", "precision", "recall")},
                "isolation_forest_roc_auc": metrics["isolation_forest"]["roc_auc"],
                "isolation_forest_pr_auc": metrics["isolation_forest"]["pr_auc"]}
    return {"accuracy": metrics.get("accuracy"), "roc_auc": metrics.get("roc_auc"),
            "macro_f1": (metrics.get("macro_avg") or {}).get("f1")}


def _metrics_line(m: dict) -> str:
    if m.get("forecast"):
        return (f"  test MAE         {m['mae']:.4g}   sMAPE {m['smape']:.2f}%   MASE {m['mase']:.3f}   "
                f"({m['windows']} windows of {m['series']} series)\n"
                f"  seasonal naive   {m['naive_mae']:.4g}   sMAPE {m['naive_smape']:.2f}%   MASE {m['naive_mase']:.3f}")
    if m.get("anomaly"):
        return (f"  test ROC AUC     {m['roc_auc']:.4f}   PR AUC {m['pr_auc']:.4f}   "
                f"precision {m['precision'] or 0:.3f}   recall {m['recall'] or 0:.3f}\n"
                f"  IsolationForest  {m['isolation_forest_roc_auc']:.4f}   PR AUC {m['isolation_forest_pr_auc']:.4f}")
    auc = f"{m['roc_auc']:.4f}" if m.get("roc_auc") is not None else "n/a"
    return f"  test accuracy    {m['accuracy']:.4f}   macro F1 {m['macro_f1'] or 0:.4f}   ROC AUC {auc}"


def format_demo_report(result: dict) -> str:
    """The demo result as a short human-readable report."""
    lines = [f"sparkdl demo: done in {result['seconds']:.0f} s"]
    for summary in result["runs"]:
        m = summary["test_metrics"]
        lines += [
            f"  [{Path(summary['config']).name}]",
            f"  model            {summary['model']}  ({summary['model_path']})",
            f"  trained on       {summary['source_table']['table']} @ version {summary['source_table']['version']}"
            f"  ({summary['train_seconds']:.0f} s, Horovod)",
            _metrics_line(m),
            *([f"  baseline         {summary['baseline']['accuracy']:.4f}   ({summary['baseline']['method']}, "
               f"same split)"] if summary.get("baseline") else []),
            f"  scored table     {summary['scored_table']}  ({summary['scoring']['scored_rows']} scored, "
            f"{summary['scoring']['quarantined_rows']} quarantined, version {summary['scoring']['target_version']})",
            "  plots            " + "\n                   ".join(summary["plots"]),
        ]
        if summary.get("explanation"):
            explained = summary["explanation"]
            heading = f"{'mean |integrated gradients|':<33} permutation ({explained['metric']} drop)"
            lines.append(f"  top features     {heading}")
            by_permutation = explained["top_permutation"][:5] or [("", float("nan"))] * 5
            lines += [f"                   {a:<24} {x:.4f}   {b:<24} {y:+.4f}"
                      for (a, x), (b, y) in zip(explained["top_attribution"][:5], by_permutation)]
        if summary.get("slices"):
            lines += _slice_lines(summary["slices"])
        if summary["sql_query"]:
            lines.append("  SQL per class    label  n   accuracy  sql_function_agrees")
            lines += [f"                   {r['label']:>5}  {r['n']:<3} {r['accuracy']:<9} {r['sql_agrees']}"
                      for r in summary["sql_query"]]
    tables = {t for run in result["runs"] for t in run["tables"].values()}
    lines.append("  tables           " + "\n                   ".join(sorted(tables)))
    return "\n".join(lines) + "\n"
