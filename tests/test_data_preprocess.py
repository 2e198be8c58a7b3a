"""Preprocessor: statistics match numpy, prepare_batch (scoring) == transform (training), invalid rows reported."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from sparkdl.data.preprocess import Preprocessor, PreprocessorModel
from sparkdl.data.spec import Feature, FeatureSpec, Label
from sparkdl.errors import ConfigError, ValidationError

N = 400


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    x = rng.normal(5.0, 2.0, N)
    x[rng.choice(N, 30, replace=False)] = np.nan            # missing → imputed
    z = rng.uniform(-3, 9, N)
    cats = rng.choice(["red", "green", "blue", "cyan"], N, p=[0.5, 0.3, 0.15, 0.05])
    v = rng.normal(0, 1, (N, 4)).astype(np.float32) * np.array([1, 2, 3, 4], np.float32) + 1
    y = rng.choice(["cat", "dog", "bird"], N)
    return pd.DataFrame({"id": np.arange(N), "x": x, "z": z, "color": cats, "v": list(v), "y": y})


@pytest.fixture(scope="module")
def df(spark, data):
    return spark.createDataFrame(data, "id long, x double, z double, color string, v array<float>, y string")


SPEC = FeatureSpec(
    (Feature("x", impute="median", scale="standard"), Feature("z", scale="minmax"),
     Feature("color", "categorical"), Feature("v", "vector", (4,), scale="standard")),
    Label("y", "multiclass"),
    id_columns=("id",),
)


@pytest.fixture(scope="module")
def model(df):
    return Preprocessor(SPEC, max_categories=3).fit(df)


def test_stats_match_numpy(model, data):
    fx = data["x"].dropna().to_numpy()
    sx = model.stats["features"]["x"]
    assert sx["count"] == len(fx)
    assert sx["mean"] == pytest.approx(fx.mean())
    assert sx["std"] == pytest.approx(fx.std())              # population std
    assert sx["min"] == pytest.approx(fx.min()) and sx["max"] == pytest.approx(fx.max())
    assert abs(sx["median"] - np.median(fx)) <= 0.05 * fx.std()  # percentile_approx
    sz = model.stats["features"]["z"]
    assert (sz["min"], sz["max"]) == (pytest.approx(data["z"].min()), pytest.approx(data["z"].max()))
    v = np.stack(data["v"].to_numpy()).astype(np.float64)
    sv = model.stats["features"]["v"]
    np.testing.assert_allclose(sv["mean"], v.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(sv["std"], v.std(axis=0), rtol=1e-5)
    counts = data["color"].value_counts()
    assert model.stats["features"]["color"]["vocabulary"] == list(counts.index[:3])  # top 3 by frequency
    assert model.label_classes == sorted(data["y"].unique())
    sig = model.signature
    assert sig.input_shape == (1 + 1 + 4 + 4,) and sig.task == "multiclass" and sig.num_classes == 3


def test_prepare_batch_math(model, data):
    p = model.prepare_batch(data, with_label=True)
    assert p.features.dtype == np.float32 and p.features.flags.c_contiguous
    assert p.features.shape == (N, 10) and p.valid.all() and p.reasons == [None] * N
    s = model.stats["features"]
    x = data["x"].fillna(s["x"]["median"]).to_numpy()
    np.testing.assert_allclose(p.features[:, 0], (x - s["x"]["mean"]) / s["x"]["std"], rtol=1e-5, atol=1e-6)
    z = data["z"].to_numpy()
    np.testing.assert_allclose(p.features[:, 1], (z - z.min()) / (z.max() - z.min()), rtol=1e-5, atol=1e-6)
    vocab = s["color"]["vocabulary"]
    expect_idx = [vocab.index(c) if c in vocab else 3 for c in data["color"]]
    np.testing.assert_array_equal(p.features[:, 2:6].argmax(axis=1), expect_idx)
    assert (p.features[:, 2:6].sum(axis=1) == 1).all()          # one-hot, OOV is the last bucket
    v = np.stack(data["v"].to_numpy())
    np.testing.assert_allclose(p.features[:, 6:], (v - s["v"]["mean"]) / np.asarray(s["v"]["std"]), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_array_equal(p.labels, [model.label_classes.index(c) for c in data["y"]])


def test_scoring_equals_training(spark, model, df, data):
    train = {r["id"]: (r["features"], r["label"]) for r in model.transform(df, keep_columns=["id"]).collect()}
    scored = model.prepare_batch(pa.Table.from_pandas(data, preserve_index=False), with_label=True)
    assert len(train) == N
    for i in range(N):
        feats, label = train[i]
        np.testing.assert_array_equal(np.asarray(feats, np.float32), scored.features[i])
        assert label == scored.labels[i]
    # the same after a JSON round trip (what travels with the model)
    again = PreprocessorModel.from_json(model.to_json())
    assert again.fingerprint == model.fingerprint
    np.testing.assert_array_equal(again.prepare_batch(data, with_label=False).features, scored.features)


def test_invalid_rows_are_reported_not_dropped(spark):
    spec = FeatureSpec((Feature("a"), Feature("v", "vector", (2,))), Label("y", "multiclass", num_classes=3))
    rows = [(0, 1.0, [1.0, 2.0], 0), (1, None, [1.0, 2.0], 1), (2, float("nan"), [1.0, 2.0], 2),
            (3, 1.0, [1.0], 0), (4, 2.0, [3.0, 4.0], 7), (5, 3.0, None, 1), (6, 4.0, [5.0, 6.0], 2)]
    df = spark.createDataFrame(rows, "id int, a double, v array<float>, y int")
    m = Preprocessor(spec).fit(df)
    valid, invalid = m.transform_with_report(df, keep_columns=["id"])
    assert sorted(r["id"] for r in valid.collect()) == [0, 6]
    reasons = {r["id"]: r["reason"] for r in invalid.collect()}
    assert set(reasons) == {1, 2, 3, 4, 5}
    assert "null" in reasons[1] and "NaN" in reasons[2] and "wrong length" in reasons[3]
    assert "out of range" in reasons[4] and "null" in reasons[5] and "'v'" in reasons[5]
    assert set(invalid.columns) == {"id", "a", "v", "y", "reason"}
    p = m.prepare_batch(pd.DataFrame({"a": [1.0, None], "v": [[1.0, 2.0], [1.0, 2.0]], "y": [0, 1]}))
    assert p.valid.tolist() == [True, False] and (p.features[1] == 0).all()


def test_vector_shape_kept_and_vector_udt(spark):
    from pyspark.ml.linalg import Vectors

    rng = np.random.default_rng(1)
    imgs = rng.uniform(0, 1, (6, 8, 8, 1))
    rows = [(Vectors.dense(im.ravel().tolist()), i % 2) for i, im in enumerate(imgs)]
    df = spark.createDataFrame(rows, ["pixels", "label_in"])
    spec = FeatureSpec((Feature("pixels", "vector", (8, 8, 1)),), Label("label_in", "binary"))
    m = Preprocessor(spec).fit(df)
    assert m.signature.input_shape == (8, 8, 1) and m.signature.num_classes == 2
    out = m.transform(df).collect()
    assert len(out) == 6 and len(out[0]["features"]) == 64
    p = m.prepare_batch(pd.DataFrame({"pixels": [im.ravel() for im in imgs], "label_in": [0, 1] * 3}))
    assert p.features.shape == (6, 8, 8, 1)
    np.testing.assert_allclose(p.features, imgs.astype(np.float32))
    np.testing.assert_allclose(np.asarray([r["features"] for r in out]).reshape(6, 8, 8, 1), p.features)


def test_arrow_slices_and_imputation():
    spec = FeatureSpec((Feature("v", "vector", (3,), impute="constant", impute_value=-1.0),
                        Feature("c", "categorical", impute="constant", impute_value=2)), None)
    m = PreprocessorModel(spec, {"num_rows": 4, "features": {"v": {}, "c": {"vocabulary": ["1", "2"]}}, "label": None})
    table = pa.table({"v": pa.array([[9.0, 9.0, 9.0], [1.0, None, 3.0], None, [4.0, 5.0, 6.0], [7.0, 8.0]],
                                    type=pa.list_(pa.float32())),
                      "c": pa.array([5, 1, None, 2, 1])})
    p = m.prepare_batch(table.slice(1), with_label=False)         # sliced: offsets do not start at 0
    assert p.valid.tolist() == [True, True, True, False]
    assert "wrong length" in p.reasons[3]
    np.testing.assert_array_equal(p.features[:3, :3], [[1, -1, 3], [-1, -1, -1], [4, 5, 6]])
    np.testing.assert_array_equal(p.features[:3, 3:], [[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    assert m.input_shape == (6,)


def test_integer_labels_kept_and_regression(spark):
    df = spark.createDataFrame([(1.0, 0), (2.0, 4), (3.0, 2)], "x double, y int")
    m = Preprocessor(FeatureSpec((Feature("x"),), Label("y", "multiclass"))).fit(df)
    assert m.label_classes is None and m.signature.num_classes == 5
    assert [r["label"] for r in m.transform(df, keep_columns=["x"]).orderBy("x").collect()] == [0, 4, 2]
    r = Preprocessor(FeatureSpec((Feature("x"),), Label("y", "regression"))).fit(df.withColumn("y", df.y * 0.5))
    assert r.signature.num_classes is None
    half = df.withColumn("y", df.y * 0.5)
    assert [row["label"] for row in r.transform(half, keep_columns=["x"]).orderBy("x").collect()] == [0, 2, 1]


def test_errors_before_work(spark):
    df = spark.createDataFrame([(1.0,)], "x double")
    with pytest.raises(ValidationError, match="missing column"):
        Preprocessor(FeatureSpec((Feature("x"), Feature("nope")), None)).fit(df)
    with pytest.raises(ConfigError, match="median"):
        Preprocessor(FeatureSpec((Feature("v", "vector", (2,), impute="median"),), None))
    m = Preprocessor(FeatureSpec((Feature("x"),), None)).fit(df)
    with pytest.raises(ValidationError, match="missing column"):
        m.prepare_batch(pd.DataFrame({"y": [1.0]}), with_label=False)


def test_fit_is_one_aggregation_whatever_the_number_of_features(spark, df):
    import uuid

    def jobs(spec):
        sc = spark.sparkContext
        group = f"fit-{uuid.uuid4().hex}"
        sc.setJobGroup(group, "count jobs")
        try:
            Preprocessor(spec).fit(df)
        finally:
            sc.setLocalProperty("spark.jobGroup.id", None)
        return len(sc.statusTracker().getJobIdsForGroup(group))

    one = jobs(FeatureSpec((Feature("x", scale="standard"),), Label("y", "multiclass")))
    many = jobs(FeatureSpec((Feature("x", impute="median", scale="standard"), Feature("z", scale="minmax"),
                             Feature("v", "vector", (4,), scale="standard")), Label("y", "multiclass")))
    with_vocab = jobs(SPEC)
    assert many == one, "fitting must not run one job per feature"
    assert with_vocab > many   # the categorical vocabulary is the second, small job


@pytest.mark.parametrize("label_ddl, label_values, task", [
    ("string", ["cat", "dog", "eel"], "multiclass"),
    ("int", [0, 1, 2], "multiclass"),
    ("double", [0.5, -1.25, 3.0], "regression"),
])
def test_the_sql_preparation_of_cast_only_specs_equals_the_python_one(spark, label_ddl, label_values, task):
    rng = np.random.default_rng(3)
    rows = [(i, rng.normal(size=4).tolist(), rng.normal(size=(2, 3)).astype(np.float32).flatten().tolist(),
             label_values[i % 3]) for i in range(60)]
    df = spark.createDataFrame(rows, f"id long, a array<double>, b array<float>, y {label_ddl}")
    spec = FeatureSpec.from_dict({"features": [{"name": "a", "kind": "vector", "shape": [4]},
                                               {"name": "b", "kind": "vector", "shape": [2, 3]}],
                                  "label": {"name": "y", "task": task}})
    model = Preprocessor(spec).fit(df, validate=True)
    sql = model.transform_validated_sql(df, keep_columns=["id"])
    python = model.transform(df, keep_columns=["id"])
    assert sql.schema.simpleString() == python.schema.simpleString()  # the types (nullability aside)
    assert sql.orderBy("id").collect() == python.orderBy("id").collect()


def test_the_sql_preparation_of_imputed_scaled_and_one_hot_features_equals_the_python_one(spark):
    rng = np.random.default_rng(5)
    rows = []
    for i in range(80):
        v = rng.normal(3.0, 2.0, size=4).tolist()
        if i % 7 == 0:
            v[i % 4] = float("nan")
        w = None if i % 13 == 0 else rng.normal(size=130).tolist()  # longer than ELEMENTWISE_MAX: a lambda
        rows.append((i, None if i % 5 == 0 else float(rng.normal(10, 3)), float(rng.uniform(-2, 8)),
                     None if i % 11 == 0 else v, rng.normal(size=6).astype(np.float32).tolist(), w,
                     None if i % 9 == 0 else ["red", "green", "blue", "teal"][i % 4], i % 3, i % 2))
    ddl = "id long, n double, m double, v array<double>, q array<float>, w array<double>, c string, k int, y int"
    df = spark.createDataFrame(rows, ddl)
    spec = FeatureSpec.from_dict({"features": [
        {"name": "n", "impute": "median", "scale": "standard"}, {"name": "m", "scale": "minmax"},
        {"name": "v", "kind": "vector", "shape": [4], "impute": "mean", "scale": "standard"},
        {"name": "q", "kind": "sequence", "shape": [3, 2], "scale": "minmax"},
        {"name": "w", "kind": "vector", "shape": [130], "impute": "mean", "scale": "standard"},
        {"name": "c", "kind": "categorical", "impute": "constant", "impute_value": -1},
        {"name": "k", "kind": "categorical"}], "label": {"name": "y", "task": "binary"}})
    model = Preprocessor(spec).fit(df.where("id < 60"), validate=True)  # later rows: values the vocabulary lacks
    df = df.withColumn("c", F.when(F.col("id") == 70, "purple").otherwise(F.col("c")))
    sql = model.transform_validated_sql(df, keep_columns=["id"])
    python = model.transform(df, keep_columns=["id"])
    assert sql.schema.simpleString() == python.schema.simpleString()
    assert sql.orderBy("id").collect() == python.orderBy("id").collect()  # bit for bit
    text = FeatureSpec.from_dict({"features": [{"name": "c", "kind": "text"}],
                                  "label": {"name": "y", "task": "binary"}})
    assert Preprocessor(text).fit(df).transform_validated_sql(df) is None  # the tokenizer is Python's


def test_a_pii_column_is_hashed_and_no_raw_value_is_stored_with_the_model(spark, score_store):
    """`pii: true` on a categorical column: each value goes to a salted hash bucket, by the same rule in Spark SQL
    and in Python (bit for bit), and no email address is in any file of the saved model version; without `pii` the
    vocabulary would store them. `models show --data-values` lists what a version stores."""
    import zipfile

    from test_score_udf import train_and_save

    from sparkdl import cli
    from sparkdl.model_metadata import data_values

    domains = ["acme", "globex", "initech", "umbrella"]
    rows = [(i, f"person{i}@{domains[i % 4]}.example", float(i % 17), int(i % 4 == 0)) for i in range(400)]
    df = spark.createDataFrame(rows, "id long, email string, amount double, y int")
    spec = {"features": [{"name": "email", "kind": "categorical", "pii": True, "hash_buckets": 64},
                         {"name": "amount", "scale": "standard"}], "label": {"name": "y", "task": "binary"}}
    prep = Preprocessor(FeatureSpec.from_dict(spec)).fit(df)
    sql = prep.transform_validated_sql(df, keep_columns=["id"])
    assert sql.orderBy("id").collect() == prep.transform(df, keep_columns=["id"]).orderBy("id").collect()
    assert prep.input_shape == (64 + 1 + 1,)  # buckets, the null slot, amount

    version, _, _ = train_and_save(score_store, "pii_emails", spec, df, "mlp", {"hidden": (8,)}, epochs=1)
    blobs = []
    for path in version.path.rglob("*"):
        if path.is_file():
            blobs.append(path.read_bytes())
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as archive:
                    blobs += [archive.read(member) for member in archive.namelist()]
    assert blobs and not any(f"person{i}@".encode() in blob for blob in blobs for i in range(400))
    stored = data_values(score_store.metadata(version))
    assert stored["feature email"] == "hashed into 64 buckets (pii): no value stored"
    assert cli.main(["models", "show", str(version), "--data-values", "--store", str(score_store.root)]) == 0

    plain = Preprocessor(FeatureSpec.from_dict({**spec, "features": [{"name": "email", "kind": "categorical"}]})
                         ).fit(df)
    assert "person0@acme.example" in json.dumps(plain.to_dict())  # what pii keeps out of the artifact
    with pytest.raises(ConfigError, match="pii: true takes categorical and text features .* a vector feature"):
        Feature("embedding", kind="vector", shape=(4,), pii=True)


def test_a_pii_text_feature_hashes_its_tokens_and_stores_no_token(spark):
    """`pii: true` on a text column: no vocabulary job and no token in the fitted statistics; a token's id is
    2 + its salted hash bucket, the same token the same id in every row and batch, and two models' salts differ."""
    from sparkdl.data.hashing import hash_buckets
    from sparkdl.data.text import TOKEN_ID_OFFSET

    rows = [(i, f"ticket from Person{i % 7} about order {i % 5}", int(i % 2)) for i in range(60)]
    df = spark.createDataFrame(rows, "id long, note string, y int")
    spec = FeatureSpec.from_dict({"features": [{"name": "note", "kind": "text", "pii": True, "hash_buckets": 50,
                                                "max_length": 8}], "label": {"name": "y", "task": "binary"}})
    prep = Preprocessor(spec).fit(df)
    stored = json.dumps(prep.to_dict())
    assert "person3" not in stored and "ticket" not in stored and '"hash_buckets": 50' in stored
    assert prep.signature.vocabulary_size == 50 + TOKEN_ID_OFFSET
    batch = pa.RecordBatch.from_pydict({"note": ["Ticket from PERSON3", "person3 person3", "", None]})
    prepared = prep.prepare_batch(batch, with_label=False)
    x, reasons = prepared.features, prepared.reasons
    salt = prep.stats["features"]["note"]["salt"]
    expected = hash_buckets(["ticket", "from", "person3"], 50, salt) + TOKEN_ID_OFFSET
    assert x[0, :3].tolist() == expected.tolist() and x[0, 3:].tolist() == [0] * 5  # padded
    assert x[1, 0] == x[1, 1] == expected[2]  # a token's id is the same wherever it appears
    assert reasons[0] is None and reasons[2] and reasons[3]  # no token, null
    other = Preprocessor(spec).fit(df)
    assert other.stats["features"]["note"]["salt"] != salt  # salted per model
