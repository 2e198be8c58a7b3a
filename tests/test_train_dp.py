"""Differentially private training (sparkdl.train.dp): the accountant is dp-accounting's, the sampling is Poisson,
the noise is added once across ranks, the fit stops at the budget, and layers that break privacy are refused."""
from __future__ import annotations

import sys

import cloudpickle
import numpy as np
import pytest

from sparkdl.errors import ConfigError
from sparkdl.train import dp

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the rank function below travels by value


def test_epsilon_is_dp_accountings_and_the_noise_is_calibrated_to_the_budget():
    import dp_accounting
    from dp_accounting import pld, rdp

    q, sigma, steps, delta = 0.02, 1.1, 500, 1e-5
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    for name, accountant in (("rdp", rdp.RdpAccountant()), ("pld", pld.PLDAccountant())):
        accountant.compose(event)
        assert dp.epsilon_for(q, sigma, steps, delta, name) == pytest.approx(accountant.get_epsilon(delta), rel=1e-12)

    plan = dp.plan(dp.DPConfig(epsilon=3.0), rows=50_000, expected_batch=500, epochs=4)
    assert plan.q == 0.01 and plan.steps == plan.steps_requested == 400 and plan.delta == 1e-5  # 1/N -> 10^-5
    assert plan.epsilon <= 3.0 and dp.epsilon_for(plan.q, plan.noise_multiplier * 0.99, 400, 1e-5) > 3.0

    # a given noise multiplier: the steps the budget allows, and not one more
    capped = dp.plan(dp.DPConfig(epsilon=1.0, noise_multiplier=1.2), rows=10_000, expected_batch=200, epochs=10)
    assert 100 < capped.steps < capped.steps_requested == 500 and capped.epsilon <= 1.0
    assert dp.epsilon_for(capped.q, 1.2, capped.steps + 1, capped.delta) > 1.0
    with pytest.raises(ConfigError, match="not one step fits"):
        dp.plan(dp.DPConfig(epsilon=1e-4, noise_multiplier=0.3), rows=10_000, expected_batch=200, epochs=1)


def test_poisson_sampling_by_hash():
    """Each row is in a step's batch with probability q, independently of the other rows and steps, the same on
    every call; a 2-rank split of the rows draws the same global batch as one rank holding them all."""
    n, q = 20_000, 0.01
    ids = np.arange(n, dtype=np.uint64)
    sizes = np.array([dp.poisson_mask(ids, step, 3, q).sum() for step in range(1000)])
    assert sizes.mean() == pytest.approx(q * n, rel=0.02)
    assert sizes.var() == pytest.approx(q * (1 - q) * n, rel=0.15)
    a, b = dp.poisson_mask(ids, 5, 3, q), dp.poisson_mask(ids, 6, 3, q)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.03 and np.array_equal(a, dp.poisson_mask(ids, 5, 3, q))
    halves = np.concatenate([dp.poisson_mask(ids[: n // 2], 5, 3, q), dp.poisson_mask(ids[n // 2:], 5, 3, q)])
    assert np.array_equal(halves, a)


def noise_of_two_ranks(steps: int, dim: int, sigma: float, clip: float):
    """Rank function: zero clipped-gradient sums through noisy_sum, then the sum-allreduce; returns rank 0's totals."""
    import horovod.tensorflow as hvd
    import tensorflow as tf

    from sparkdl.train.dp_worker import noisy_sum

    hvd.init()
    generator = tf.random.Generator.from_seed(hvd.rank())

    @tf.function
    def step(zeros):  # as in the private step's graph: noise on the clipped sums, then one sum-allreduce
        sums = noisy_sum([zeros], sigma * clip, hvd.rank(), generator)
        return hvd.grouped_allreduce(sums, op=hvd.Sum, name="noise_test")[0]  # one name: the graphs differ

    totals = [step(tf.zeros(dim)).numpy() for _ in range(steps)]
    return {"totals": np.stack(totals), "size": hvd.size()}


@pytest.mark.slow
def test_the_noise_is_added_once_across_ranks(spark):
    from sparkdl.train.runner import HorovodRunner

    result = HorovodRunner(num_proc=2, spark=spark).run(noise_of_two_ranks, steps=200, dim=500, sigma=1.3, clip=0.7)
    assert result["size"] == 2
    variance = result["totals"].var()
    assert variance == pytest.approx((1.3 * 0.7) ** 2, rel=0.03)  # sigma^2 C^2 once, not twice


def test_layers_and_settings_that_break_the_guarantee_are_refused_by_name():
    from sparkdl import stack

    keras = stack.keras_module("tf_keras")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.BatchNormalization(name="bn1")(inputs)))
    with pytest.raises(ConfigError, match=r"layer 'bn1' \(BatchNormalization\) mixes the examples"):
        dp.refuse_unsafe_layers(model)
    with pytest.raises(ConfigError, match=r"dp: unknown key\(s\) \['sigma'\]"):
        dp.DPConfig.of({"epsilon": 1, "sigma": 2})
    with pytest.raises(ConfigError, match="dp.epsilon"):
        dp.DPConfig.of({"clip_norm": 1})
    from sparkdl.train import KerasEstimator

    with pytest.raises(ConfigError, match="early_stopping do not apply"):
        KerasEstimator(feature_spec={"features": ["a"], "label": {"name": "y", "task": "binary"}}, early_stopping=2,
                       dp={"epsilon": 1})._checked()
    with pytest.raises(ConfigError, match="triplet loss"):
        KerasEstimator(model="embedding", feature_spec={"features": ["a"], "label": {"name": "y", "task": "binary"}},
                       dp={"epsilon": 1})._checked()


@pytest.mark.slow
def test_a_private_fit_learns_reports_its_budget_and_stops_at_it(spark, lake, training_store):
    """2 ranks at epsilon = 3 on 20,000 rows: the model learns, and its metadata and `models show` carry epsilon,
    delta, sigma, q, steps and the accountant. With a fixed noise multiplier the fit stops at the budget. The
    model is Keras 3 on the current stack and tf_keras on the pinned one: both flavours take the same DP step."""
    from pyspark.sql import functions as F

    from sparkdl import cli, stack
    from sparkdl.evaluate import evaluate_model
    from sparkdl.lake import write_table
    from sparkdl.train import KerasEstimator

    table = str(lake / "dp_rows")
    columns = [F.randn(i).alias(f"x{i}") for i in range(4)]
    write_table(spark.range(20_000, numPartitions=2).select(*columns).withColumn(
        "y", ((F.col("x0") + F.col("x1") - 0.5 * F.col("x2")) > 0).cast("int")), table)
    spec = {"features": [{"name": f"x{i}", "scale": "standard"} for i in range(4)],
            "label": {"name": "y", "task": "binary"}}
    flavour = "keras3" if stack.keras_version("keras3") is not None else "tf_keras"
    common = dict(model="mlp", keras=flavour, feature_spec=spec, batch_size=32, learning_rate=0.1, optimizer="sgd",
                  model_store=training_store, hparams={"hidden": [16]}, validation=0.0, warmup_epochs=0)
    fitted = KerasEstimator(**common, epochs=2, num_proc=2, model_name="rows_dp", run_name="test-dp",
                            dp={"epsilon": 3.0, "clip_norm": 1.0}).fit(table)
    privacy = fitted.getMetadata()["privacy"]
    assert privacy["epsilon"] <= 3.0 and privacy["steps"] == privacy["steps_requested"]
    assert privacy["expected_batch"] == 64 and privacy["q"] == pytest.approx(64 / privacy["rows"], rel=1e-12)
    assert {"delta", "noise_multiplier", "accountant", "clip_norm"} <= set(privacy) and privacy["delta"] == 1e-5
    metrics = evaluate_model(str(fitted.getModelVersion()), table, store=training_store, plots=False)
    assert metrics["accuracy"] >= 0.85 and metrics["privacy"] == privacy  # the budget beside the metrics
    shown = cli._show_model(training_store, str(fitted.getModelVersion()))
    assert shown["privacy"]["epsilon"] == privacy["epsilon"]

    capped = KerasEstimator(**common, epochs=20, num_proc=1, model_name="rows_dp_capped", run_name="test-dp-cap",
                            dp={"epsilon": 0.72, "noise_multiplier": 1.0}).fit(table)
    spent = capped.getMetadata()["privacy"]
    assert spent["steps"] < spent["steps_requested"] and spent["epsilon"] <= 0.72
    assert dp.epsilon_for(spent["q"], 1.0, spent["steps"] + 1, spent["delta"]) > 0.72
