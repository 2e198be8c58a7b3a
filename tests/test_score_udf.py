"""sparkdl.score column UDF and SQL function: real Spark (local[2]), real ModelStore, tiny Keras models trained here.

The other score test files import the helpers of this module; the models they score are conftest's fixtures.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DIGITS_SPEC = {"features": [{"name": "pixels", "kind": "vector", "shape": [64], "scale": "minmax"}],
               "label": {"name": "digit", "task": "multiclass", "num_classes": 10}, "id_columns": ["id"]}
DIGITS_IMAGE_SPEC = {"features": [{"name": "pixels", "kind": "vector", "shape": [8, 8, 1], "scale": "minmax"}],
                     "label": {"name": "digit", "task": "multiclass", "num_classes": 10}, "id_columns": ["id"]}


# ------------------------------------------------------------------------------------------------ helpers
def digits_rows():
    from sklearn.datasets import load_digits

    data = load_digits()
    return [(i, [float(v) for v in row], int(t)) for i, (row, t) in enumerate(zip(data.data, data.target))]


def cancer_rows():
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = ["mean_radius", "mean_texture", "mean_area", "mean_smoothness"]
    cols = [list(data.feature_names).index(n.replace("_", " ")) for n in names]
    rows = [(i, *[float(row[c]) for c in cols], "malignant" if t == 0 else "benign")
            for i, (row, t) in enumerate(zip(data.data, data.target))]
    return names, rows


def train_and_save(store, name, spec_dict, df, model_kind, hparams=None, epochs=3, model_name=None,
                   keras="tf_keras"):
    """Fit the preprocessor in Spark, train a zoo model (of Keras flavour `keras`) in-process with model.fit,
    save it in the store.

    Returns (ModelVersion, PreprocessorModel, keras model)."""
    from sparkdl import stack
    from sparkdl.data.preprocess import Preprocessor
    from sparkdl.data.spec import FeatureSpec
    from sparkdl.models import build, default_loss

    spec = FeatureSpec.from_dict(spec_dict)
    prep = Preprocessor(spec).fit(df)
    table = pa.Table.from_pandas(df.toPandas(), preserve_index=False)
    prepared = prep.prepare_batch(table, with_label=True)
    stack.keras_module(keras).utils.set_random_seed(0)
    model = build(model_kind, prep.signature, keras=keras, **(hparams or {}))
    model.compile("adam", default_loss(prep.signature, model_kind, keras))
    model.fit(prepared.features[prepared.valid], prepared.labels[prepared.valid], epochs=epochs, batch_size=64,
              verbose=0)
    metadata = {"preprocessing": prep.to_dict(), "signature": prep.signature.to_dict(),
                "feature_spec": spec.to_dict(), "label_classes": prep.label_classes,
                "model_name": model_name or model_kind}
    return store.save(name, model, metadata), prep, model


def expected_outputs(prep, model, pdf, feature_cols):
    """In-process reference: the same rows prepared by the same PreprocessorModel, then model.predict."""
    table = pa.Table.from_pandas(pdf[feature_cols], preserve_index=False)
    prepared = prep.prepare_batch(table, with_label=False)
    return model.predict(prepared.features, verbose=0), prepared.valid


def check_probabilities(df, version, key, want, valid):
    """`score_dataframe(..., output="probabilities")` equals in-process `want` on the valid rows (ordered by
    `key`) and is null on the others."""
    from sparkdl.score import score_dataframe

    got = score_dataframe(df, version, output="probabilities", keep_columns=[key]).orderBy(key).toPandas()
    assert got["probabilities"][~valid].isna().all()
    np.testing.assert_allclose(as_matrix(got["probabilities"][valid]), want[valid], rtol=1e-5, atol=1e-6)


def check_sql_and_table_scoring(spark, store, lake, version, df, key, column, prep, want, valid, name):
    """The SQL function over `column` predicts in-process's class for the valid rows (null for the others, rows
    ordered by `key`), and `score_table` on a Delta copy of `df` scores the valid rows and quarantines the others.

    Returns ({key value: quarantine reason}, the ScoreReport)."""
    from sparkdl.lake import read_table, write_table
    from sparkdl.score import register_sql_function, score_table

    register_sql_function(spark, f"{name}_fn", version, store=store)
    df.createOrReplaceTempView(f"{name}_sample")
    sql = spark.sql(f"SELECT {key}, {name}_fn({column}) AS p FROM {name}_sample").orderBy(key).toPandas()
    classes = np.asarray(prep.label_classes)
    assert sql["p"][valid].tolist() == classes[want[valid].argmax(axis=1)].tolist()
    assert sql["p"][~valid].isna().all()

    write_table(df, str(lake / name), mode="error")
    report = score_table(version, str(lake / name), str(lake / f"{name}_scored"), mode="overwrite",
                         keep_columns=[key], quarantine=str(lake / f"{name}_quarantine"), spark=spark)
    assert (report.scored_rows, report.quarantined_rows) == (int(valid.sum()), int((~valid).sum()))
    reasons = {r[key]: r["_reason"] for r in read_table(str(lake / f"{name}_quarantine"))[0].collect()}
    return reasons, report


def as_matrix(values) -> np.ndarray:
    return np.asarray([np.asarray(v, dtype=np.float32) for v in values], dtype=np.float32)


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.both_sessions
def test_mlp_prediction_and_probabilities_match_in_process_predict(digits_df, digits_mlp, score_store):
    from sparkdl.score import model_udf

    version, prep, model = digits_mlp
    probs = model_udf(f"digits_mlp@{version.version}", output="probabilities", store=score_store)
    pred = model_udf(version, output="prediction")  # the ModelVersion carries its store
    pdf = digits_df.select("id", "pixels", probs("pixels").alias("p"), pred().alias("c")).orderBy("id").toPandas()
    want, valid = expected_outputs(prep, model, pdf, ["pixels"])
    assert valid.all() and len(pdf) == 1797
    got = as_matrix(pdf["p"])
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(pdf["c"].to_numpy(), want.argmax(axis=1))
    assert str(pred.return_type.simpleString()) == "int"


def test_cnn_matches_in_process_predict(digits_df, digits_cnn):
    from sparkdl.score import model_udf

    version, prep, model = digits_cnn
    assert prep.input_shape == (8, 8, 1)
    out = model_udf(version, output="struct")
    pdf = digits_df.where("id % 3 = 0").select("id", "pixels", out("pixels").alias("s")).orderBy("id").toPandas()
    want, _ = expected_outputs(prep, model, pdf, ["pixels"])
    got = as_matrix([s["probability"] for s in pdf["s"]])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert [s["label"] for s in pdf["s"]] == list(want.argmax(axis=1))


def test_embedding_model_output_and_refusals(digits_df, digits_embedding):
    from sparkdl.errors import ConfigError
    from sparkdl.score import model_udf

    version, prep, model = digits_embedding
    emb = model_udf(version, output="embedding")
    pdf = digits_df.where("id < 300").select("id", "pixels", emb("pixels").alias("e")).orderBy("id").toPandas()
    want, _ = expected_outputs(prep, model, pdf, ["pixels"])
    got = as_matrix(pdf["e"])
    assert got.shape == (300, 8)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    with pytest.raises(ConfigError, match="embedding model"):
        model_udf(version, output="prediction")


def test_binary_string_labels_and_penultimate_embedding(cancer):
    from sparkdl.score import model_udf

    df, names, version, prep, model = cancer
    assert prep.label_classes == ["benign", "malignant"]
    pred, probs = model_udf(version), model_udf(version, output="probabilities")
    emb = model_udf(version, output="embedding")
    pdf = df.select("id", *names, pred(*names).alias("label"), probs(*names).alias("p"),
                    emb(*names).alias("e")).orderBy("id").toPandas()
    want, _ = expected_outputs(prep, model, pdf, names)
    p1 = want[:, 0]
    np.testing.assert_allclose(as_matrix(pdf["p"]), np.column_stack([1 - p1, p1]), atol=1e-5)
    assert list(pdf["label"]) == ["malignant" if p >= 0.5 else "benign" for p in p1]
    assert as_matrix(pdf["e"]).shape == (len(pdf), 8)  # the hidden layer feeding the output layer


def test_rows_that_cannot_be_prepared_score_to_null(spark, digits_mlp):
    from sparkdl.score import model_udf

    version, _, _ = digits_mlp
    good = [float(i % 16) for i in range(64)]
    rows = [(0, good), (1, None), (2, good[:10]), (3, good[:63] + [float("nan")]), (4, good)]
    df = spark.createDataFrame(rows, "id long, pixels array<float>")
    got = {r.id: r.c for r in df.select("id", model_udf(version)("pixels").alias("c")).collect()}
    assert got[1] is None and got[2] is None and got[3] is None
    assert got[0] is not None and got[0] == got[4]
    strict = model_udf(version, on_invalid="error")
    with pytest.raises(Exception, match="cannot be scored"):
        df.select(strict("pixels")).collect()


@pytest.mark.both_sessions
def test_sql_function(spark, digits_df, digits_mlp):
    from sparkdl.errors import ConfigError
    from sparkdl.score import model_udf, register_sql_function

    version, _, _ = digits_mlp
    fn = register_sql_function(spark, "digits_class", version)
    assert fn.feature_names == ["pixels"]
    digits_df.createOrReplaceTempView("digits_sql")
    sql = spark.sql("SELECT id, digits_class(pixels) AS c FROM digits_sql WHERE id < 200 ORDER BY id").toPandas()
    api = digits_df.where("id < 200").select("id", model_udf(version)("pixels").alias("c")).orderBy("id").toPandas()
    np.testing.assert_array_equal(sql["c"].to_numpy(), api["c"].to_numpy())
    with pytest.raises(ConfigError, match="SQL identifier"):
        register_sql_function(spark, "bad-name; DROP", version)
    with pytest.raises(Exception, match=r"digits_class: expects 1 argument\(s\) \(pixels array<numeric>\[64\]\)"):
        spark.sql("SELECT digits_class(pixels, digit) FROM digits_sql").collect()
    with pytest.raises(Exception, match=r"digits_class: wrong argument type.*pixels.*array<numeric>.*int32"):
        spark.sql("SELECT digits_class(digit) FROM digits_sql").collect()


def test_bad_references_fail_before_any_job(digits_mlp, score_store):
    from sparkdl.errors import ConfigError, ModelStoreError
    from sparkdl.score import model_udf

    with pytest.raises(ModelStoreError, match="no model named 'nope'"):
        model_udf("nope", store=score_store)
    with pytest.raises(ModelStoreError, match="no version 99"):
        model_udf("digits_mlp@99", store=score_store)
    with pytest.raises(ConfigError, match="output must be one of"):
        model_udf(digits_mlp[0], output="logits")
    with pytest.raises(ConfigError, match="takes 1 feature column"):
        model_udf(digits_mlp[0])("pixels", "digit")


def test_transform_with_model(digits_df, digits_mlp):
    from sparkdl.score import transform_with_model

    version, prep, model = digits_mlp
    out = transform_with_model(version, digits_df.where("id < 100"), output_col="pred")
    assert out.columns == ["id", "pixels", "digit", "pred"]
    pdf = out.orderBy("id").toPandas()
    want, _ = expected_outputs(prep, model, pdf, ["pixels"])
    np.testing.assert_array_equal(pdf["pred"].to_numpy(), want.argmax(axis=1))


def test_model_loaded_once_per_python_worker(spark, digits_df, digits_mlp):
    import pandas as pd
    from pyspark.sql import functions as F
    from pyspark.util import PythonEvalType

    from sparkdl.score import model_udf

    version, _, _ = digits_mlp

    df = digits_df.repartition(20)
    # one load of this model per worker process (a worker may have loaded other test models before)
    from sparkdl.score.model_ref import resolve_model

    ref, _ = resolve_model(version)

    def probe(x):  # runs in the same Python worker as the model UDF, after it, batch by batch
        import os as _os

        from sparkdl.score.runtime import load_count

        return pd.Series([f"{_os.getpid()}:{load_count(ref)}"] * len(x))

    probe_model = F.pandas_udf(probe, "string", PythonEvalType.SQL_SCALAR_PANDAS_UDF)

    again = df.select(model_udf(version)("pixels").alias("c"), probe_model("id").alias("w")).toPandas()
    assert again["c"].notna().all() and len(again) == 1797
    per_model = {}
    for text in again["w"].unique():
        pid, loads = text.split(":")
        per_model[pid] = max(per_model.get(pid, 0), int(loads))
    assert 1 <= len(per_model) <= 4, per_model
    assert set(per_model.values()) == {1}, per_model
