"""Image features (sparkdl.data.images): decoding against reference decoders, the ImageFolder ingest, channel
statistics fitted in Spark, a training cache of encoded bytes read back as the scoring path prepares them, image
models scored on every path with bad images quarantined, similar-image retrieval, and augmentation off at
inference."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from sparkdl.errors import ConfigError, TableError, ValidationError

IMAGE_SPEC = {"features": [{"name": "content", "kind": "image", "shape": [8, 8, 1], "scale": "minmax"}],
              "label": {"name": "label", "task": "multiclass"}, "id_columns": ["path"]}


def _png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """The digits as PNG files in the ImageFolder layout (<digit>/<id>.png), as the image demo writes them."""
    from sparkdl.datasets import digits_frame, write_image_folder

    folder = tmp_path_factory.mktemp("digit-images")
    assert write_image_folder(digits_frame(), folder) == 1797
    return folder


@pytest.fixture(scope="module")
def images(spark, image_folder, tmp_path_factory):
    """(Delta table path, cached DataFrame) of the ingested digit images."""
    from sparkdl.lake import read_table
    from sparkdl.lake.ingest import image_folder_to_delta

    table = str(tmp_path_factory.mktemp("image-lake") / "digit_images")
    image_folder_to_delta(image_folder, table, spark=spark)
    return table, read_table(table, spark=spark)[0].cache()


@pytest.fixture(scope="module")
def image_cnn(score_store, images):
    from test_score_udf import train_and_save

    return train_and_save(score_store, "digit_images_cnn", IMAGE_SPEC, images[1], "cnn",
                          {"filters": (8,), "dense": 16}, epochs=3)


def test_decode_equals_reference_decoders_and_flags_bad_images(tmp_path):
    import tensorflow as tf

    from sparkdl.data.images import decode_images

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (4, 6), dtype=np.uint8)
    smooth = np.repeat(np.repeat(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), 8, 0), 8, 1)  # 32x48
    column = pa.array([_png(rgb), _png(grey), _jpeg(smooth), b"not an image", None, _png(rgb[:3])], pa.binary())
    pixels, reasons = decode_images(column, (4, 6, 3), resize=False)
    np.testing.assert_array_equal(pixels[0], tf.io.decode_png(_png(rgb), channels=3).numpy())
    np.testing.assert_array_equal(pixels[1], tf.io.decode_png(_png(grey), channels=3).numpy())  # grey → RGB
    assert reasons[:2].tolist() == [None, None]
    assert reasons[2] == "feature 'image': image is 32×48, expected 4×6 (resize: false)"
    assert reasons[3].startswith("feature 'image': undecodable image: cannot identify image file")
    assert reasons[4] == "feature 'image': null"
    assert reasons[5] == "feature 'image': image is 3×6, expected 4×6 (resize: false)"
    assert not pixels[2:].any()  # bad rows are zeros

    # JPEG: Pillow's decode agrees with TensorFlow's (both libjpeg), up to rounding in the colour conversion
    full, _ = decode_images(pa.array([_jpeg(smooth)]), (32, 48, 3))
    assert np.abs(full[0].astype(float) - tf.io.decode_jpeg(_jpeg(smooth), channels=3).numpy()).mean() < 1.0
    # resize: bilinear with antialiasing, as TensorFlow's tf.image.resize(..., antialias=True) computes it
    resized, reasons = decode_images(pa.array([_png(smooth)]), (4, 6, 3), resize=True)
    reference = tf.image.resize(tf.io.decode_png(_png(smooth), channels=3), (4, 6), antialias=True).numpy()
    assert reasons[0] is None
    assert np.abs(resized[0].astype(float) - reference).mean() < 1.5

    # a path column decodes the files; one missing file is a reason, not a crash
    (tmp_path / "a.png").write_bytes(_png(grey))
    paths, reasons = decode_images(pa.array([str(tmp_path / "a.png"), str(tmp_path / "missing.png")]), (4, 6, 1))
    np.testing.assert_array_equal(paths[0, :, :, 0], grey)
    assert reasons[0] is None and reasons[1].startswith("feature 'image': unreadable file")

    # many rows go through the thread pool: the same pixels as one by one
    many = pa.array([_png(rng.integers(0, 256, (4, 6), dtype=np.uint8)) for _ in range(300)])
    pooled, _ = decode_images(many, (4, 6, 1), threads=4)
    single, _ = decode_images(many, (4, 6, 1), threads=1)
    np.testing.assert_array_equal(pooled, single)


def test_image_folder_ingest_through_binary_file(spark, image_folder, images, tmp_path):
    from sparkdl.lake import history
    from sparkdl.lake.ingest import image_folder_to_delta

    table, df = images
    assert df.columns == ["path", "label", "content", "length", "modificationTime"]
    rows = df.where("path like '%/3/0003.png'").collect()
    assert len(rows) == 1 and rows[0]["label"] == "3"
    assert bytes(rows[0]["content"]) == (image_folder / "3" / "0003.png").read_bytes()
    assert df.count() == 1797 and sorted(r["label"] for r in df.select("label").distinct().collect()) == \
        [str(d) for d in range(10)]
    assert any("image_folder" in str(commit) for commit in history(table))

    (tmp_path / "cats" / "deep").mkdir(parents=True)
    (tmp_path / "cats" / "deep" / "a.PNG").write_bytes(_png(np.zeros((2, 2), np.uint8)))
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    (tmp_path / "loose.png").write_bytes(_png(np.zeros((2, 2), np.uint8)))  # not in a class folder: left out
    snap = image_folder_to_delta(tmp_path, str(tmp_path / "_lake" / "t"), spark=spark)
    from sparkdl.lake import read_table

    got = read_table(snap.table, spark=spark)[0].select("label").collect()
    assert [r["label"] for r in got] == ["cats"]
    with pytest.raises(TableError, match="not found or not a folder"):
        image_folder_to_delta(tmp_path / "nowhere", str(tmp_path / "_lake" / "u"), spark=spark)
    (tmp_path / "empty" / "dogs").mkdir(parents=True)
    with pytest.raises(TableError, match="no image file"):
        image_folder_to_delta(tmp_path / "empty", str(tmp_path / "_lake" / "v"), spark=spark)
    with pytest.raises(TableError, match="no class sub-folders"):
        image_folder_to_delta(tmp_path / "cats" / "deep", str(tmp_path / "_lake" / "w"), spark=spark)


def test_channel_statistics_and_a_cache_of_encoded_bytes_read_as_scoring_prepares(spark, images, tmp_path):
    from sparkdl.data.dataset import iterate_batches
    from sparkdl.data.petastorm_io import to_petastorm
    from sparkdl.data.preprocess import Preprocessor
    from sparkdl.data.spec import FeatureSpec

    _, df = images
    spec = dict(IMAGE_SPEC, features=[{"name": "content", "kind": "image", "shape": [8, 8, 1],
                                       "scale": "standard"}])
    bad = spark.createDataFrame([("bad-1", "3", b"\x89PNG broken", 11), ("bad-2", "4", None, 0)],
                                "path string, label string, content binary, length long")
    data = df.select("path", "label", "content", "length").unionByName(bad)
    prep = Preprocessor(FeatureSpec.from_dict(spec)).fit(data)
    pdf = df.toPandas()
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(b)), dtype=np.float64) for b in pdf["content"]])
    stats = prep.stats["features"]["content"]
    assert stats["count"] == 1797
    np.testing.assert_allclose(stats["channel_mean"], [pixels.mean()], rtol=1e-9)
    np.testing.assert_allclose(stats["channel_std"], [pixels.std()], rtol=1e-6)

    cache = to_petastorm(data, prep, parent=tmp_path.as_uri())
    assert cache.image == prep.image_input and cache.num_rows == 1797
    assert cache.invalid_rows == {"feature 'content': null": 1,
                                  "feature 'content': undecodable image: cannot identify image file": 1}
    import pyarrow.parquet as pq

    from sparkdl.uri import local_path

    files = sorted(Path(local_path(cache.url)).rglob("*.parquet"))
    assert pq.read_schema(files[0]).field("features").type == pa.binary()
    on_disk = sum(f.stat().st_size for f in files)
    encoded = int(pdf["length"].sum())
    assert on_disk < 1.5 * encoded + 64_000 < 1797 * 8 * 8 * 4  # the PNG bytes, not 4-byte floats per pixel

    read = np.concatenate([x for x, _ in iterate_batches(cache, 0, 1, 256, (8, 8, 1), shuffle=False)])
    want = prep.prepare_batch(pa.Table.from_pandas(pdf, preserve_index=False)).features
    order = lambda a: a[np.lexsort(a.reshape(len(a), -1).T)]  # noqa: E731 - the rows, in one canonical order
    np.testing.assert_array_equal(order(read), order(want))


def test_validation_names_the_column_and_a_sample_row_id(spark):
    from sparkdl.data.spec import Feature, FeatureSpec
    from sparkdl.data.validation import validate

    spec = FeatureSpec.from_dict(IMAGE_SPEC)
    df = spark.createDataFrame([("a.png", _png(np.zeros((8, 8), np.uint8)), "1"), ("b.png", b"junk", "2"),
                                ("c.png", None, "1")], "path string, content binary, label string")
    with pytest.raises(ValidationError) as err:
        validate(spec, df)
    problems = {p.problem: p for p in err.value.problems}
    assert set(problems) == {"null", "undecodable image"}
    assert problems["undecodable image"].column == "content" and problems["undecodable image"].count == 1
    assert problems["undecodable image"].samples[0].startswith("path=b.png, value=undecodable image")
    with pytest.raises(ValidationError, match="content: wrong type"):
        validate(spec, spark.createDataFrame([(1, "1", "p")], "content int, label string, path string"))

    with pytest.raises(ConfigError, match="shape \\[height, width, channels\\] with 1, 3 or 4 channels"):
        Feature("img", kind="image", shape=(8, 8, 2))
    with pytest.raises(ConfigError, match="zoom is a fraction"):
        Feature("img", kind="image", shape=(8, 8, 1), zoom=1.5)
    with pytest.raises(ConfigError, match="settings of an image feature"):
        Feature("x", kind="vector", shape=(4,), flip=True)
    with pytest.raises(ConfigError, match="must be the only feature"):
        FeatureSpec.from_dict({"features": [IMAGE_SPEC["features"][0], {"name": "age"}]})
    assert FeatureSpec.from_dict(IMAGE_SPEC).features[0].resize is True


def test_image_model_scores_like_in_process_predict_in_every_path_and_quarantines_bad_images(
        spark, images, image_cnn, score_store, lake):
    from test_score_udf import check_probabilities, check_sql_and_table_scoring, expected_outputs

    from sparkdl.score import score_dataframe

    version, prep, model = image_cnn
    _, df = images
    bad = spark.createDataFrame([("bad/junk.png", "3", b"junk"), ("bad/none.png", "4", None)],
                                "path string, label string, content binary")
    sample = df.select("path", "label", "content").orderBy("path").limit(60).unionByName(bad)
    pdf = sample.orderBy("path").toPandas()
    want, valid = expected_outputs(prep, model, pdf, ["content"])
    assert valid.sum() == 60

    check_probabilities(sample, version, "path", want, valid)

    # the same model scores a column of file URIs (binaryFile's `path`): the files are read in the tasks
    by_path = (sample.where("content is not null and path not like 'bad/%'")
               .select("path", sample["path"].alias("content")))
    from_files = score_dataframe(by_path, version, output="probabilities", keep_columns=["path"]) \
        .orderBy("path").toPandas()
    np.testing.assert_allclose(np.stack(from_files["probabilities"]), want[valid], rtol=1e-5, atol=1e-6)

    reasons, _ = check_sql_and_table_scoring(spark, score_store, lake, version, sample, "path", "content", prep,
                                             want, valid, "images")
    assert reasons["bad/none.png"] == "feature 'content': null"
    assert reasons["bad/junk.png"].startswith("feature 'content': undecodable image")


def test_similar_images_share_the_query_class(spark, images, score_store):
    from test_score_udf import train_and_save

    from sparkdl.score import similar

    _, df = images
    version, _, _ = train_and_save(score_store, "digit_images_emb", IMAGE_SPEC, df, "embedding",
                                   {"embedding_dim": 16, "filters": (16,), "hidden": (32,)}, epochs=4)
    queries = df.orderBy("path").limit(40)
    table = df.repartition(3)
    found = similar(version, queries, table, k=6, keep_columns=["path", "label"],
                    query_columns=["path", "label"]).toPandas()
    assert len(found) == 40 * 6 and found.groupby("query")["rank"].apply(list).map(
        lambda r: r == [1, 2, 3, 4, 5, 6]).all()
    assert (found["distance"].diff()[found["rank"] > 1] >= -1e-6).all()  # nearest first
    # the nearest row of each query is the query itself (distance 0); its next 5 mostly share its class
    first = found[found["rank"] == 1]
    assert (first["path"].to_numpy() == first["query_path"].to_numpy()).all()
    assert first["distance"].max() < 1e-3
    neighbours = found[found["rank"] > 1]
    share = float((neighbours["label"] == neighbours["query_label"]).mean())
    assert share > 0.8, share
    with pytest.raises(ConfigError, match="k must be a positive int"):
        similar(version, queries, table, k=0)


def test_augmentation_is_training_only(spark):
    import tensorflow as tf

    from sparkdl.data.spec import ModelSignature
    from sparkdl.models import Augmentation, build

    signature = ModelSignature((8, 8, 1), "multiclass", 10)
    model = build("cnn", signature, augment=Augmentation(flip=True, zoom=0.2), filters=(4,), dense=8)
    names = [layer.name for layer in model.layers]
    assert "augment_flip" in names and "augment_zoom" in names
    x = tf.random.uniform((16, 8, 8, 1), seed=1)
    np.testing.assert_array_equal(model(x, training=False).numpy(), model(x, training=False).numpy())
    augmented = model.get_layer("augment_zoom")(model.get_layer("augment_flip")(x, training=True), training=True)
    assert not np.allclose(augmented.numpy(), x.numpy())
    with pytest.raises(ConfigError, match="augmentation"):
        build("mlp", signature, augment=Augmentation(flip=True))
