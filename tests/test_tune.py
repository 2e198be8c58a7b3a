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


def _journal_study(work, name: str):
    """The study `tune` keeps under `work` (Optuna's own API, as another process would open it)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    (work / "tune").mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(work / "tune" / f"{name}.journal")))
    return optuna.create_study(storage=storage, study_name=name, direction="minimize", load_if_exists=True)


@pytest.mark.slow
def test_a_study_of_distributed_fits_prunes_records_failures_and_resumes(spark, demo_tables, training_store,
                                                                        tmp_path, tracking_uri):
    import optuna

    from sparkdl.lake import read_table
    from sparkdl.registry import ModelStore

    space = {"learning_rate": {"type": "loguniform", "low": 1e-7, "high": 3e-2},
             "hparams.hidden": {"type": "choice", "values": [[16], [-1]]}}  # a width of -1 cannot be built
    queued = _journal_study(tmp_path, "cancer-search")
    # two learning trials, one that cannot be built, then two that cannot learn: each of the last starts when a
    # learning trial has completed (2 at once), so the median pruner must stop it
    for lr, hidden in [(1e-2, 0), (1e-2, 1), (1e-2, 0), (1e-7, 0), (1e-7, 0)]:
        queued.enqueue_trial({"learning_rate": lr, "hparams.hidden#index": hidden})
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1)
    result = tune(_estimator(training_store), demo_tables["breast_cancer_train"], space, n_trials=5,
                  trial_proc=1, parallel=2, metric="val_loss", study="cancer-search", sampler="random",
                  pruner=pruner, work=tmp_path, spark=spark)
    states = [t.state for t in result.trials]
    assert states[0] == "COMPLETE" and states[1] == "FAIL" and states[3:] == ["PRUNED", "PRUNED"], states
    assert result.trials[1].reason and all(t.epochs < 3 for t in result.trials[3:])
    complete = [t for t in result.trials if t.state == "COMPLETE"]
    assert all(t.model and t.value is not None and t.epochs == 3 for t in complete)
    assert result.best_value == min(t.value for t in complete)
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

    _journal_study(tmp_path, "cancer-search").ask()  # a trial a killed search left RUNNING
    again = tune(_estimator(training_store), demo_tables["breast_cancer_train"], space, n_trials=7, trial_proc=1,
                 parallel=1, study="cancer-search", sampler="random", work=tmp_path, spark=spark)
    assert len(again.trials) == 7 and [t.number for t in again.trials][:5] == list(range(5))  # kept
    assert again.trials[5].state == "FAIL" and again.trials[5].reason == "interrupted"
    resumed = _study_runs("cancer-search")
    assert resumed["parent"].info.run_id == runs["parent"].info.run_id  # the same parent run, taken up again
    assert resumed["parent"].info.status == "FINISHED"
    assert again.trials[6].state == "FAIL" or "cancer-search-trial-6" in resumed["trials"]


def test_a_search_joining_a_running_study_leaves_its_trials_running(spark, demo_tables, training_store, tmp_path):
    """Another search holds the study (its lock, a RUNNING trial): a second `tune` on it must not fail that trial;
    once the other search is gone, the trial it left is an interrupted one."""
    from sparkdl.tune import _StudyLock

    running = _journal_study(tmp_path, "shared-search").ask()
    space = {"learning_rate": {"type": "uniform", "low": 1e-3, "high": 1e-2}}
    with _StudyLock(tmp_path / "tune" / "shared-search.lock") as alone:
        assert alone
        joined = tune(_estimator(training_store), demo_tables["breast_cancer_train"], space, n_trials=1,
                      study="shared-search", work=tmp_path, spark=spark)
    assert [t.state for t in joined.trials] == ["RUNNING"]  # the other search's trial, untouched
    assert _journal_study(tmp_path, "shared-search").trials[0].number == running.number
    alone = tune(_estimator(training_store), demo_tables["breast_cancer_train"], space, n_trials=1,
                 study="shared-search", work=tmp_path, spark=spark)
    assert [(t.state, t.reason) for t in alone.trials] == [("FAIL", "interrupted")]


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
