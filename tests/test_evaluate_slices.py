"""Evaluation by slice (sparkdl.evaluation): per-slice metrics and fairness metrics equal scikit-learn's and
Fairlearn's on the same rows, bootstrap intervals from Poisson weights, gates, and promotions refused by them."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fairlearn import metrics as fm
from sklearn import metrics as skm

from sparkdl.errors import ConfigError, PromotionRefused
from sparkdl.evaluation import SliceOptions, check_gates, parse_gates, parse_slices, sliced_classification
from sparkdl.evaluation.sliced import sliced_regression

TOL = 1e-9


def _frame(seed: int, k: int, n: int = 3000) -> pd.DataFrame:
    """Predictions whose quality differs by group: group c is noisier, group d has 12 rows (under min size)."""
    rng = np.random.default_rng(seed)
    group = rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2])
    group[:12] = "d"
    region = rng.choice(["north", "south", "east", "west"], size=n, p=[0.4, 0.3, 0.2, 0.1])
    y = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k)) + np.eye(k)[y] * np.where(group == "c", 0.8, 2.0)[:, None]
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return pd.DataFrame({"y": y, "p": prob.argmax(axis=1), "prob": list(prob), "group": group, "region": region,
                         "age": rng.integers(18, 80, size=n)})


def _spark(spark, pdf: pd.DataFrame):
    rows = [(int(r.y), int(r.p), [float(v) for v in r.prob], r.group, r.region, int(r.age)) for r in pdf.itertuples()]
    return spark.createDataFrame(rows, "y int, p int, prob array<double>, `group` string, region string, age int")


SLICES = ["group", ["group", "region"], {"columns": ["region"], "top_k": 2}, {"name": "young", "where": "age < 30"}]


@pytest.mark.both_sessions
def test_binary_slices_and_fairness_equal_sklearn_and_fairlearn(spark):
    pdf = _frame(0, 2)
    report = sliced_classification(_spark(spark, pdf), parse_slices(SLICES), 2, ["0", "1"],
                                   SliceOptions(n_boot=30, sensitive="group"))
    slices = report["slices"]
    subsets = {"overall": pdf, "group=a": pdf[pdf.group == "a"], "group=c": pdf[pdf.group == "c"],
               "group=b, region=north": pdf[(pdf.group == "b") & (pdf.region == "north")],
               "region=north": pdf[pdf.region == "north"], "region=other": pdf[pdf.region.isin(["east", "west"])],
               "young": pdf[pdf.age < 30]}
    for name, sub in subsets.items():
        m, prob = slices[name]["metrics"], np.stack(sub.prob.to_numpy())
        assert slices[name]["n"] == len(sub), name
        assert m["accuracy"]["value"] == pytest.approx(skm.accuracy_score(sub.y, sub.p), abs=TOL)
        assert m["recall"]["value"] == pytest.approx(skm.recall_score(sub.y, sub.p), abs=TOL)
        assert m["precision"]["value"] == pytest.approx(skm.precision_score(sub.y, sub.p), abs=TOL)
        assert m["f1.0"]["value"] == pytest.approx(skm.f1_score(sub.y, sub.p, pos_label=0), abs=TOL)
        assert m["log_loss"]["value"] == pytest.approx(skm.log_loss(sub.y, prob, labels=[0, 1]), abs=TOL)
        assert m["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(sub.y, prob[:, 1]), abs=TOL)
        # top-label expected calibration error, 10 equal-width bins
        conf, correct = prob.max(axis=1), (sub.y.to_numpy() == sub.p.to_numpy())
        bins = np.minimum((conf * 10).astype(int), 9)
        ece = sum(abs(correct[bins == b].sum() - conf[bins == b].sum()) for b in range(10)) / len(sub)
        assert m["ece"]["value"] == pytest.approx(ece, abs=TOL)
        low, high = m["accuracy"]["lower"], m["accuracy"]["upper"]
        assert low < m["accuracy"]["value"] < high, name
    # the group of 12 rows is suppressed, not silently dropped; region keeps its top 2 and merges the rest
    assert {"slice": "group=d", "definition": "group", "n": 12} in report["suppressed"]
    assert {n for n in slices if n.startswith("region")} == {"region=north", "region=south", "region=other"}
    assert "group=d" not in slices

    fair = report["fairness"]
    kept = pdf[pdf.group != "d"]
    args = (kept.y, kept.p)
    sf = {"sensitive_features": kept.group}
    expected = {
        "demographic_parity_difference": fm.demographic_parity_difference(*args, **sf),
        "demographic_parity_ratio": fm.demographic_parity_ratio(*args, **sf),
        "equalized_odds_difference": fm.equalized_odds_difference(*args, **sf),
        "equalized_odds_ratio": fm.equalized_odds_ratio(*args, **sf),
        "equal_opportunity_difference": fm.MetricFrame(metrics=fm.true_positive_rate, y_true=kept.y,
                                                       y_pred=kept.p, **sf).difference(),
        "predictive_equality_difference": fm.MetricFrame(metrics=fm.false_positive_rate, y_true=kept.y,
                                                         y_pred=kept.p, **sf).difference(),
        "predictive_parity_difference": fm.MetricFrame(metrics=skm.precision_score, y_true=kept.y,
                                                       y_pred=kept.p, **sf).difference(),
        "predictive_parity_ratio": fm.MetricFrame(metrics=skm.precision_score, y_true=kept.y,
                                                  y_pred=kept.p, **sf).ratio(),
    }
    assert sorted(fair["groups"]) == ["group=a", "group=b", "group=c"]
    for name, value in expected.items():
        assert fair["metrics"][name]["value"] == pytest.approx(value, abs=TOL), name
        assert fair["metrics"][name]["lower"] <= fair["metrics"][name]["upper"]
    # the noisy group c is the gap: an interval that excludes 0
    assert fair["metrics"]["equal_opportunity_difference"]["lower"] > 0


def test_multiclass_slices_and_one_vs_rest_fairness(spark):
    pdf = _frame(1, 3, n=2000)
    report = sliced_classification(_spark(spark, pdf), parse_slices(["group"]), 3, ["x", "y", "z"],
                                   SliceOptions(n_boot=0, sensitive="group"))
    sub = pdf[pdf.group == "b"]
    m = report["slices"]["group=b"]["metrics"]
    prob = np.stack(sub.prob.to_numpy())
    assert m["f1"]["value"] == pytest.approx(skm.f1_score(sub.y, sub.p, average="macro"), abs=TOL)
    assert m["recall.z"]["value"] == pytest.approx(skm.recall_score(sub.y, sub.p, labels=[2], average=None)[0],
                                                   abs=TOL)
    assert m["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(sub.y, prob, multi_class="ovr"), abs=TOL)
    assert m["accuracy"]["lower"] is None  # n_boot=0: no intervals
    kept = pdf[pdf.group != "d"]
    worst = 0.0
    for c, name in enumerate("xyz"):
        value = fm.demographic_parity_difference(kept.y == c, kept.p == c, sensitive_features=kept.group)
        assert report["fairness"]["per_class"][name]["demographic_parity_difference"]["value"] == pytest.approx(
            value, abs=TOL)
        worst = max(worst, value)
    assert report["fairness"]["metrics"]["demographic_parity_difference"]["value"] == pytest.approx(worst, abs=TOL)


def test_regression_slices_equal_sklearn(spark):
    rng = np.random.default_rng(2)
    n = 1500
    y = rng.normal(150, 70, size=n)
    group = rng.choice(["f", "m"], size=n)
    yhat = y + rng.normal(0, np.where(group == "f", 20, 40))
    df = spark.createDataFrame(pd.DataFrame({"y": y, "yhat": yhat, "sex": group}))
    report = sliced_regression(df, parse_slices(["sex"]), SliceOptions(n_boot=20))
    for name, mask in (("overall", np.ones(n, bool)), ("sex=f", group == "f"), ("sex=m", group == "m")):
        m = report["slices"][name]["metrics"]
        assert m["rmse"]["value"] == pytest.approx(np.sqrt(skm.mean_squared_error(y[mask], yhat[mask])), abs=TOL)
        assert m["mae"]["value"] == pytest.approx(skm.mean_absolute_error(y[mask], yhat[mask]), abs=TOL)
        assert m["r2"]["value"] == pytest.approx(skm.r2_score(y[mask], yhat[mask]), abs=1e-9)
        assert m["rmse"]["lower"] < m["rmse"]["value"] < m["rmse"]["upper"]


def test_intervals_are_those_of_a_row_level_poisson_bootstrap_and_repeat(spark):
    """The replicates drawn from the cells' sums give the intervals of weighting every row by its own Poisson(1)
    draw (done here in numpy, 400 replicates), for a count metric, log loss and ECE; the same seed, the same
    intervals."""
    pdf = _frame(3, 2, n=3000)
    df = _spark(spark, pdf)
    options = SliceOptions(n_boot=400, seed=11)
    report = sliced_classification(df, parse_slices(["group"]), 2, ["0", "1"], options)
    assert sliced_classification(df, parse_slices(["group"]), 2, ["0", "1"], options) == report
    rng = np.random.default_rng(0)
    for name, sub in (("overall", pdf), ("group=b", pdf[pdf.group == "b"])):
        prob = np.stack(sub.prob.to_numpy())
        y, p = sub.y.to_numpy(), sub.p.to_numpy()
        conf, nll, correct = prob.max(axis=1), -np.log(prob[np.arange(len(y)), y]), (y == p).astype(float)
        bins = np.minimum((conf * 10).astype(int), 9)
        w = rng.poisson(1.0, size=(400, len(sub)))
        ece = sum(np.abs(w[:, bins == b] @ (correct - conf)[bins == b]) for b in range(10)) / w.sum(axis=1)
        expected = {"accuracy": w @ correct / w.sum(axis=1), "log_loss": w @ nll / w.sum(axis=1), "ece": ece}
        for metric, values in expected.items():
            low, high = np.percentile(values, [2.5, 97.5])
            got = report["slices"][name]["metrics"][metric]
            assert abs(got["lower"] - low) < 0.3 * (high - low), (name, metric, got, low, high)
            assert abs(got["upper"] - high) < 0.3 * (high - low), (name, metric, got, low, high)


def test_slice_and_gate_definitions_are_checked():
    with pytest.raises(ConfigError, match=r"slices\[1\]: a 'where' slice needs a 'name'"):
        parse_slices(["sex", {"where": "age < 3"}])
    with pytest.raises(ConfigError, match="used twice"):
        parse_slices(["sex", "sex"])
    with pytest.raises(ConfigError, match=r"gates\[0\]: set exactly one of"):
        parse_gates([{"metric": "recall", "min": 0.5, "max_gap": 0.1, "between": "sex"}])
    with pytest.raises(ConfigError, match="unknown metric 'recal'"):
        parse_gates([{"metric": "recal", "min": 0.5}])
    with pytest.raises(ConfigError, match="max_gap needs 'between'"):
        parse_gates([{"metric": "recall", "max_gap": 0.1}])


def test_gates_bound_gap_and_baseline():
    def s(definition, n, **metrics):
        return {"definition": definition, "n": n,
                "metrics": {k: {"value": v, "lower": None, "upper": None} for k, v in metrics.items()}}

    report = {"slices": {"overall": s("overall", 500, recall=0.9, log_loss=0.3),
                         "sex=f": s("sex", 200, recall=0.8, log_loss=0.4),
                         "sex=m": s("sex", 300, recall=0.95, log_loss=0.25)},
              "suppressed": [{"slice": "sex=x", "definition": "sex", "n": 4}]}
    baseline = {"slices": {"overall": s("overall", 500, recall=0.88, log_loss=0.2),
                           "sex=f": s("sex", 200, recall=0.85, log_loss=0.4)}}
    gates = parse_gates([{"metric": "recall", "slice": "sex=f", "min": 0.75},
                         {"metric": "recall", "between": "sex", "max_gap": 0.1},
                         {"metric": "recall", "slice": "sex=x", "min": 0.5},
                         {"metric": "log_loss", "baseline": "m@production", "tolerance": 0.05},
                         {"metric": "recall", "baseline": "m@missing"}])
    result = check_gates(gates, report, {"m@production": baseline, "m@missing": None})
    outcomes = [(r.slice, r.metric, r.passed) for r in result.results]
    assert outcomes == [("sex=f", "recall", True), ("sex=m vs sex=f", "recall", False),
                        ("sex=x", "recall", False), ("overall", "log_loss", False), ("sex=f", "log_loss", True),
                        ("overall", "recall", True)]
    gap = result.results[1]
    assert gap.value == pytest.approx(0.15) and gap.limit == 0.1
    assert "suppressed" in result.results[2].detail and "skipped" in result.results[5].detail
    assert not result.passed and len(result.failures()) == 3


@pytest.mark.slow
@pytest.mark.both_sessions
def test_a_sliced_evaluation_writes_its_outputs_and_gates_the_promotion(spark, lake, cancer, score_store, tmp_path):
    """A stored model on a Delta table with a sensitive column: the report, the long-form Delta table, plots,
    gates.json, then `models alias` refused (naming slice, metric, value, limit), forced and recorded. The model is
    copied into a store of the test's own (its gates would refuse other tests' aliases of the shared one)."""
    from pyspark.sql import functions as F

    from sparkdl import cli
    from sparkdl.evaluate import evaluate_model
    from sparkdl.lake import read_table, write_table
    from sparkdl.registry import ModelStore

    df, _, shared, _, model = cancer
    store = ModelStore(tmp_path / "models")
    version = store.save(shared.name, model, score_store.metadata(shared))
    table = str(lake / "cancer_sliced")
    write_table(df.withColumn("size", F.when(F.col("mean_radius") > 14, "large").otherwise("small"))
                .withColumn("site", F.element_at(F.array(*map(F.lit, "ABC")), (F.col("id") % 3 + 1).cast("int"))),
                table)
    metrics = evaluate_model(version, table, store=store, slices=["size", "site"],
                             slice_options=SliceOptions(n_boot=20, sensitive="size"),
                             gates=[{"metric": "accuracy", "min": 0.8},
                                    {"metric": "recall", "between": "size", "max_gap": 0.0},
                                    {"metric": "accuracy", "baseline": f"{version.name}@{version.version}"},
                                    {"metric": "accuracy", "baseline": f"{version.name}@production"}],
                             metrics_table=str(lake / "slice_metrics"))
    assert set(metrics["slices"]) == {"overall", "size=large", "size=small", "site=A", "site=B", "site=C"}
    assert metrics["slices"]["overall"]["metrics"]["accuracy"]["value"] == pytest.approx(metrics["accuracy"])
    assert metrics["slices"]["overall"]["n"] == metrics["count"]
    assert metrics["fairness"]["sensitive"] == "size"
    results = {(r["slice"], r["metric"], r["detail"].split(":")[0]): r["passed"] for r in metrics["gates"]["results"]}
    assert results[("overall", "accuracy", "")] is True
    assert [p for (s, m, _), p in results.items() if m == "recall"] == [False]  # two sizes never recall equally
    same_model = [r for r in metrics["gates"]["results"] if r["detail"].startswith(f"baseline {version}")]
    assert len(same_model) == 6 and all(r["passed"] for r in same_model)  # itself on the same rows: no worse
    assert any(p.endswith("slices_accuracy.png") for p in metrics["plots"])
    rows, _ = read_table(str(lake / "slice_metrics"))
    assert rows.where("slice = 'size=large' and metric = 'accuracy'").count() == 1
    assert rows.where("slice = 'fairness:size'").count() == 10
    assert json.loads(store.artifact_path(version, "gates.json").read_text())["passed"] is False

    with pytest.raises(PromotionRefused, match=r"slice 'size=\w+ vs size=\w+' recall = [0-9.]+ \(limit 0"):
        store.set_alias(version, "production")
    assert cli.main(["models", "alias", str(version), "production", "--store", str(store.root),
                     "--force"]) == 0
    record = json.loads((store.root / version.name / "aliases" / "production.json").read_text())
    assert record["forced"] is True and record["failed_gates"][0]["metric"] == "recall"
    assert store.resolve(f"{version.name}@production").version == version.version
