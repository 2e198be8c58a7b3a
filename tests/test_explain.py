"""sparkdl.explain: integrated gradients in the scoring path, explain_table and explain_model, on real Spark
(local[2]), real Delta tables and real Keras models trained here (the scoring tests' fixtures and helpers)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from test_score_udf import as_matrix, train_and_save


def _in_process(prep, model, pdf, steps=64, baseline="zeros", target=None):
    """Reference: the same rows prepared by the same PreprocessorModel, integrated gradients in this process."""
    from sparkdl.explain.integrated_gradients import AttributionKernel, baseline_row, explained_index

    table = pa.Table.from_pandas(pdf[prep.spec.feature_names], preserve_index=False)
    prepared = prep.prepare_batch(table, with_label=False)
    x = prepared.features[prepared.valid]
    raw = model.predict(x, verbose=0).reshape(len(x), -1)
    task = prep.spec.label.task
    index = explained_index(raw, task, target)
    kernel = AttributionKernel(model, prep.input_shape, baseline_row(prep, baseline), steps)
    return kernel.attribute(x, index), raw[np.arange(len(x)), index], kernel.baseline_output[index]


@pytest.mark.parametrize("fixture", ["digits_mlp", "digits_cnn"])
def test_attributions_are_complete_and_equal_in_process(request, digits_df, fixture):
    """Completeness: Σ attributions = f(x) − f(baseline) within 1% at the default 64 steps; the scoring path
    equals the same integrated gradients computed in this process on the same rows."""
    from sparkdl.score import score_dataframe

    version, prep, model = request.getfixturevalue(fixture)
    rows = score_dataframe(digits_df.where("id < 120"), version, output="attributions", keep_columns=["id"]) \
        .orderBy("id").collect()
    got = as_matrix([r["attributions"]["features"]["pixels"] for r in rows])
    output = np.array([r["attributions"]["output"] for r in rows])
    base = np.array([r["attributions"]["baseline_output"] for r in rows])
    change = output - base
    gap = np.abs(got.sum(axis=1) - change)
    assert (gap <= 0.01 * np.abs(change) + 1e-6).all(), f"worst relative gap {np.max(gap / np.abs(change))}"
    np.testing.assert_allclose([r["attributions"]["delta"] for r in rows], got.sum(axis=1) - change, atol=1e-4)

    pdf = digits_df.where("id < 120").orderBy("id").toPandas()
    ref, ref_out, ref_base = _in_process(prep, model, pdf)
    np.testing.assert_allclose(got, ref.reshape(len(rows), -1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(output, ref_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(base, ref_base, rtol=1e-5, atol=1e-6)
    predicted = [r["attributions"]["prediction"] for r in rows]
    assert [r["attributions"]["explained_class"] for r in rows] == predicted  # classes are 0..9 here


def test_integrated_gradients_agree_with_finite_differences(cancer):
    """Outside reference: the path integral of central finite differences of the model (model.predict only, no
    autodiff), 400 midpoints. Measure: per row, ||a − a_ref||₂ / ||a_ref||₂ <= 2%."""
    from sparkdl.explain.integrated_gradients import AttributionKernel

    df, names, version, prep, model = cancer
    pdf = df.orderBy("id").limit(6).toPandas()
    prepared = prep.prepare_batch(pa.Table.from_pandas(pdf[names], preserve_index=False), with_label=False)
    x = prepared.features.astype(np.float64)
    got = AttributionKernel(model, prep.input_shape, np.zeros(prep.input_shape, np.float32), 64) \
        .attribute(prepared.features, np.zeros(len(x), np.int32))
    m, h, d = 400, 1e-2, x.shape[1]
    alphas = (np.arange(m) + 0.5) / m
    for row, a in zip(x, got):
        points = alphas[:, None] * row[None, :]                             # path from the zero baseline
        probes = np.concatenate([points[:, None, :] + h * np.eye(d)[None], points[:, None, :] - h * np.eye(d)[None]],
                                axis=1).reshape(-1, d)
        f = model.predict(probes.astype(np.float32), verbose=0, batch_size=8192).reshape(m, 2 * d)
        grads = (f[:, :d] - f[:, d:]) / (2 * h)
        ref = row * grads.mean(axis=0)
        assert np.linalg.norm(a - ref) <= 0.02 * np.linalg.norm(ref), (a, ref)


def _two_of_ten(spark, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 10))
    label = (x[:, 2] + 0.8 * x[:, 7] > 0).astype(int)
    color = rng.choice(["red", "green", "blue"], size=n)  # noise, categorical: one-hot slots summed
    rows = [(i, *[float(v) for v in x[i]], str(color[i]), int(label[i])) for i in range(n)]
    ddl = "id long, " + ", ".join(f"x{j} double" for j in range(10)) + ", color string, label int"
    return spark.createDataFrame(rows, ddl)


def test_explain_model_ranks_the_two_informative_features_first(spark, lake, score_store):
    """A label that depends only on x2 and x7 (of 10 numeric features and a categorical): both methods rank them
    first; the explanation is stored with the model, plotted, listed by `sparkdl models show`."""
    from sparkdl.cli import main
    from sparkdl.explain import explain_model, load_explanation
    from sparkdl.lake import write_table

    df = _two_of_ten(spark).cache()
    spec = {"features": [{"name": f"x{j}", "scale": "standard"} for j in range(10)] + [
        {"name": "color", "kind": "categorical"}], "label": {"name": "label", "task": "binary"}}
    version, prep, model = train_and_save(score_store, "two_of_ten", spec, df, "mlp", {"hidden": (16,)}, epochs=8)
    table = str(lake / "two_of_ten")
    write_table(df, table)

    explanation = explain_model(version, table, store=score_store, sample_rows=1500, repeats=2)
    assert {name for name, _ in explanation.top(2)} == {"x2", "x7"}
    assert {name for name, _ in explanation.top(2, by="permutation")} == {"x2", "x7"}
    assert explanation.explained_rows == 1500 and explanation.unexplained_rows == 0
    assert explanation.metric == "accuracy" and explanation.baseline_metric > 0.9
    by_name = {f.name: f for f in explanation.features}
    assert by_name["x2"].permutation_importance > 0.2 > abs(by_name["x0"].permutation_importance)
    assert set(by_name["x2"].per_class) == {"0", "1"}
    assert explanation.max_abs_delta < 0.01

    stored = load_explanation(version, store=score_store)
    assert stored == explanation
    files = score_store.artifacts(version)
    assert {"explanation.json", "feature_importance.png"} <= set(files)
    shown = json.loads(_run_cli(main, ["models", "show", str(version), "--store", str(score_store.root)]))
    assert shown["explanation"]["top_attribution"][0][0] in ("x2", "x7")
    assert "explanation.json" in shown["artifacts"]

    # the categorical's attribution is the sum of its one-hot slots
    from sparkdl.score import score_dataframe

    rows = score_dataframe(df.where("id < 20"), version, output="attributions", keep_columns=["id"]) \
        .orderBy("id").collect()
    ref, _, _ = _in_process(prep, model, df.where("id < 20").orderBy("id").toPandas())
    slot = next(s for s in prep.slots if s.name == "color")
    np.testing.assert_allclose([r["attributions"]["features"]["color"] for r in rows],
                               ref[:, slot.start:slot.start + slot.width].sum(axis=1), rtol=1e-4, atol=1e-7)


def _run_cli(main, argv):
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()


def test_explain_table_equals_score_dataframe_and_quarantines_bad_rows(spark, lake, cancer):
    """explain_table writes the scoring path's attributions with lineage; bad rows go to the quarantine with the
    reason, exactly as in scoring; the baseline "mean" and the attributions agree with the in-process ones."""
    from pyspark.sql import functions as F

    from sparkdl.explain import Attribution, explain_table
    from sparkdl.lake import read_table, write_table
    from sparkdl.score import score_dataframe

    df, names, version, prep, model = cancer
    bad = df.withColumn(names[1], F.when(F.col("id").isin(3, 8), F.lit(None)).otherwise(F.col(names[1])))
    source = str(lake / "patients")
    write_table(bad, source)
    option = Attribution(steps=32, baseline="mean")
    report = explain_table(version, source, str(lake / "explained"), attribution=option, keep_columns=["id"])
    assert (report.scored_rows, report.quarantined_rows) == (df.count() - 2, 2)
    assert report.reasons == {f"feature {names[1]!r}: null (no imputation)": 2}
    out, snap = read_table(str(lake / "explained"))
    assert {"_model", "_model_version", "_source_version", "_scored_at"} <= set(out.columns)
    quarantined = read_table(str(lake / "explained_quarantine"))[0]
    assert sorted(r["id"] for r in quarantined.collect()) == [3, 8]

    table_rows = {r["id"]: r["attributions"] for r in out.where("id < 40").collect()}
    frame_rows = {r["id"]: r["attributions"] for r in score_dataframe(
        read_table(source)[0].where("id < 40"), version, output="attributions", attribution=option,
        keep_columns=["id"]).collect()}
    assert frame_rows[3] is None and frame_rows[8] is None
    assert set(table_rows) == {i for i in frame_rows if frame_rows[i] is not None}
    good = sorted(table_rows)
    pdf = df.where(F.col("id").isin(good)).orderBy("id").toPandas()
    ref, _, _ = _in_process(prep, model, pdf, steps=32, baseline="mean")
    for i, row_id in enumerate(good):  # equal up to float32 rounding (batches of other sizes on the current stack)
        got, want = table_rows[row_id], frame_rows[row_id]
        assert (got["prediction"], got["explained_class"]) == (want["prediction"], want["explained_class"])
        np.testing.assert_allclose([got[k] for k in ("output", "baseline_output", "delta")],
                                   [want[k] for k in ("output", "baseline_output", "delta")], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose([got["features"][n] for n in names], [want["features"][n] for n in names],
                                   rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose([table_rows[row_id]["features"][n] for n in names], ref[i], rtol=1e-4, atol=1e-7)
    # the "mean" baseline of standardized features is the all-zero prepared row: f(baseline) is f(0)
    assert table_rows[good[0]]["baseline_output"] == pytest.approx(float(model.predict(
        np.zeros((1, len(names)), np.float32), verbose=0)[0, 0]), rel=1e-5)


def test_explain_model_of_images_and_sequences_writes_their_plots(spark, lake, score_store, digits_df, digits_cnn):
    """An image feature gets a per-pixel map and saliency.png; a sequence feature its attribution over time."""
    from sparkdl.explain import explain_model
    from sparkdl.lake import write_table

    version, _, _ = digits_cnn
    table = str(lake / "digits")
    write_table(digits_df.where("id < 300"), table)
    explanation = explain_model(version, table, store=score_store, sample_rows=100, permutation=False)
    (pixels,) = explanation.features
    assert len(pixels.per_element) == 64 and pixels.shape == (8, 8, 1)
    assert explanation.metric is None and explanation.permutation_rows == 0
    assert {"saliency.png", "feature_importance.png"} <= set(score_store.artifacts(version))

    rng = np.random.default_rng(1)
    seq = rng.normal(size=(800, 6, 2))
    seq[:, 2, 0] *= 3.0
    label = (seq[:, 2, 0] > 0).astype(int)  # only time step 2 matters
    seq_df = spark.createDataFrame([(i, [float(v) for v in seq[i].reshape(-1)], int(label[i])) for i in range(800)],
                                   "id long, series array<float>, label int")
    spec = {"features": [{"name": "series", "kind": "sequence", "shape": [6, 2]}],
            "label": {"name": "label", "task": "binary"}}
    seq_version, _, _ = train_and_save(score_store, "seq", spec, seq_df, "lstm", {"units": 16}, epochs=20)
    seq_table = str(lake / "seq")
    write_table(seq_df, seq_table)
    seq_explanation = explain_model(seq_version, seq_table, store=score_store, repeats=1)
    over_time = seq_explanation.features[0].over_time
    assert seq_explanation.baseline_metric > 0.85, seq_explanation.features[0].over_time
    assert len(over_time) == 6 and int(np.argmax(over_time)) == 2
    assert "attribution_over_time.png" in score_store.artifacts(seq_version)


def test_bad_options_and_tables_fail_before_any_job(spark, lake, cancer, digits_embedding):
    from sparkdl.errors import ConfigError, ValidationError
    from sparkdl.explain import Attribution, explain_model
    from sparkdl.lake import write_table
    from sparkdl.score import score_dataframe

    df, names, version, _, _ = cancer
    with pytest.raises(ConfigError, match="steps"):
        Attribution(steps=1)
    with pytest.raises(ConfigError, match="baseline"):
        Attribution(baseline="median")
    with pytest.raises(ConfigError, match="output='attributions' only"):
        score_dataframe(df, version, output="prediction", attribution=Attribution())
    with pytest.raises(ConfigError, match="target=0"):
        score_dataframe(df, version, output="attributions", attribution=Attribution(target=0))
    with pytest.raises(ConfigError, match="embedding model"):
        score_dataframe(df, digits_embedding[0], output="attributions")
    table = str(lake / "no_label")
    write_table(df.drop("diagnosis"), table)
    with pytest.raises(ValidationError, match="label column 'diagnosis'"):
        explain_model(version, table)
    with pytest.raises(ConfigError, match="metric must be one of"):
        explain_model(version, table, metric="rmse")
    with pytest.raises(ValidationError, match=names[0]):
        explain_model(version, write_table(df.drop(names[0]), str(lake / "no_feature")).table, permutation=False)
