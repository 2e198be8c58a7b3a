"""sparkdl.tune: an Optuna study whose trials are real KerasEstimator fits (Horovod on local[2]) on a real Delta
table, with pruning, a failing trial, the trials' Delta table, and a resumed study."""
from __future__ import annotations

import pytest

pytest.importorskip("optuna", reason="the tune extra (optuna) is not installed")

from test_train_estimator import cancer_spec  # noqa: E402

from sparkdl.errors import ConfigError  # noqa: E402
from sparkdl.train import KerasEstimator  # noqa: E402
from sparkdl.tune import check_space, tune  # noqa: E402


def _estimator(store, **kw):
    params = dict(model="mlp", feature_spec=cancer_spec(), epochs=3, batch_size=32, model_store=store,
                  model_name="cancer_tuned", hparams={"hidden": [8]})
    return KerasEstimator(**{**params, **kw})


@pytest.mark.parametrize("space, message", [
    ({"learning_rat": {"type": "uniform", "low": 0.1, "high": 1}}, r"space\['learning_rat'\]: not a tunable"),
    ({"model_store": {"type": "choice", "values": ["a"]}}, r"space\['model_store'\]: not a tunable"),
    ({"hparams.widths": {"type": "choice", "values": [[8]]}}, r"hparams do not fit model 'mlp'.*widths"),
    ({"learning_rate": {"type": "loguniform", "low": 0.1, "high": 0.01}}, r"low < high"),
    ({"learning_rate": {"type": "loguniform", "low": 0.0, "high": 0.01}}, r"log scale needs low > 0"),
    ({"batch_size": {"type": "choice", "values": []}}, r"non-empty list 'values'"),
    ({"batch_size": {"type": "normal"}}, r"expected \{type: uniform\|loguniform\|int\|choice"),
])
def test_a_bad_space_is_refused_naming_the_entry(training_store, space, message):
    with pytest.raises(ConfigError, match=message):
        check_space(space, _estimator(training_store))


def test_more_processes_per_trial_than_task_slots_is_refused_before_any_job(spark, demo_tables, training_store):
    with pytest.raises(ConfigError, match=r"trial_proc.*num_proc=3 is more than the 2 Spark task slot"):
        tune(_estimator(training_store), demo_tables["breast_cancer_train"],
             {"learning_rate": {"type": "uniform", "low": 1e-3, "high": 1e-2}}, n_trials=2, trial_proc=3, spark=spark)


@pytest.mark.slow
def test_a_study_of_distributed_fits_prunes_records_failures_and_resumes(spark, demo_tables, training_store,
                                                                        tmp_path, tracking_uri):
    from sparkdl.lake import read_table
    from sparkdl.registry import ModelStore

    space = {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 3e-2},
             "hparams.hidden": {"type": "choice", "values": [[16], [-1]]}}  # a width of -1 cannot be built
    result = tune(_estimator(training_store), demo_tables["breast_cancer_train"], space, n_trials=5,
                  trial_proc=1, parallel=2, metric="val_loss", study="cancer-search", sampler="random",
                  work=tmp_path, spark=spark)
    assert len(result.trials) == 5 and {t.state for t in result.trials} <= {"COMPLETE", "PRUNED", "FAIL"}
    for t in result.trials:
        if t.params["hparams.hidden"] == [-1]:
            assert t.state == "FAIL" and t.reason
        elif t.state == "COMPLETE":
            assert t.model and t.value is not None and t.epochs == 3
    complete = [t for t in result.trials if t.state == "COMPLETE"]
    assert complete and result.best_value == min(t.value for t in complete)
    best = ModelStore(training_store.root)
    assert "tune.json" in best.artifacts(result.best_model)
    trials = read_table(result.trials_table, spark=spark)[0].toPandas()
    assert sorted(trials["number"]) == list(range(5)) and set(trials["study"]) == {"cancer-search"}

    runs = _study_runs("cancer-search")
    assert runs["parent"].data.params["metric"] == "val_loss"
    assert runs["parent"].data.tags["sparkdl.model_ref"] == result.best_model
    assert runs["parent"].data.metrics["best_val_loss"] == pytest.approx(result.best_value)
    trial_runs = runs["trials"]  # one nested run per trial that started a fit; pruned ones are KILLED
    for t in result.trials:
        if t.state != "FAIL":
            run = trial_runs[f"cancer-search-trial-{t.number}"]
            assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[t.state]
            assert float(run.data.params["learning_rate"]) == pytest.approx(t.params["learning_rate"])

    again = tune(_estimator(training_store), demo_tables["breast_cancer_train"], space, n_trials=6, trial_proc=1,
                 parallel=1, study="cancer-search", sampler="random", work=tmp_path, spark=spark)
    assert len(again.trials) == 6 and [t.number for t in again.trials][:5] == list(range(5))  # one more trial
    resumed = _study_runs("cancer-search")
    assert resumed["parent"].info.run_id == runs["parent"].info.run_id  # the same parent run, taken up again
    assert resumed["parent"].info.status == "FINISHED"
    assert again.trials[5].state == "FAIL" or "cancer-search-trial-5" in resumed["trials"]


def _study_runs(study: str) -> dict:
    """The study's MLflow parent run and its nested runs by name."""
    import mlflow

    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, f"tags.`sparkdl.study` = '{study}'")
    assert len(parents) == 1
    children = client.search_runs(experiments, f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    return {"parent": parents[0], "trials": {r.info.run_name: r for r in children}}


@pytest.mark.slow
def test_an_epoch_listener_stops_a_fit_between_epochs_and_frees_its_slots(spark, demo_tables, training_store):
    """What pruning does to a trial: its fit stops after the epoch the listener saw, as FitStopped."""
    from sparkdl.errors import FitStopped
    from sparkdl.train import HorovodRunner

    seen = []
    est = _estimator(training_store, num_proc=2, epochs=20, run_name="stopped-by-listener", resume=False)
    est.epoch_listener = lambda epoch, logs: seen.append((epoch, logs.get("val_loss"))) or epoch == 0
    with pytest.raises(FitStopped) as info:
        est.fit(demo_tables["breast_cancer_train"])
    assert info.value.epoch == 0 and seen[0][0] == 0 and seen[0][1] is not None and len(seen) < 20
    assert HorovodRunner(num_proc=2, spark=spark).run(dict, slots="free") == {"slots": "free"}  # both slots again
