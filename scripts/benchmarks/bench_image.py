#!/usr/bin/env python
"""Image input and image scoring throughput: sparkdl against Petastorm's reader, a plain decode loop and
`predict_batch_udf`, on the same encoded images in one run.

Data: `--rows` JPEG (or PNG) images of `--size`² RGB pixels (scikit-learn's digits, upscaled and tinted, so the
codec has real content), labelled, in a Spark DataFrame; the preprocessing is fitted (``scale: minmax``) and
sparkdl's training cache is written once (it keeps the encoded bytes). Then, interleaved over `--repeat` rounds:

Input (images/s to decoded float32 batches of `--batch-size`, one rank):
* sparkdl    – `sparkdl.data.tf_dataset` on the cache: Arrow reads + `ImageInput.prepare` (Pillow on a thread pool)
               in the reader thread, unshuffled;
* petastorm  – `SparkDatasetConverter.make_tf_dataset` on the same files (Petastorm's `make_batch_reader`, its
               worker pool) with a `TransformSpec` decoding each row group with the same `ImageInput.prepare`
               (single-threaded inside each Petastorm worker, the pool parallelizes);
* ceiling    – a plain in-process loop: pyarrow reads the files, `ImageInput.prepare` decodes every batch with one
               thread per core (no tf.data, no batching): the most this machine decodes.
Targets: sparkdl ≥ 3× Petastorm and ≥ 60% of the ceiling.

Scoring (images/s from the encoded column to predictions, `local[2]`, the same trained CNN):
* sparkdl    – `score_dataframe(df, model, output="probabilities")` (Arrow batches, the model once per worker);
* predict_batch_udf – `pyspark.ml.functions.predict_batch_udf` whose predict function decodes with the same
                      `ImageInput.prepare` and calls the Keras model.

    .venv/bin/python scripts/benchmarks/bench_image.py --rows 20000 --size 64
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", category=FutureWarning)  # Petastorm 0.13 on PyArrow 14: legacy dataset API

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


def make_images(rows: int, size: int, fmt: str) -> tuple[list[bytes], np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    base = [Image.fromarray((img * 15).astype(np.uint8)).resize((size, size), Image.BILINEAR)
            for img in digits.images]
    out, labels = [], np.empty(rows, np.int64)
    for i in range(rows):
        j = i % len(base)
        tint = rng.uniform(0.5, 1.0, 3)
        grey = np.asarray(base[j], dtype=np.float32)[..., None]
        pixels = np.clip(grey * tint[None, None, :] + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt.upper(), **({"quality": 90} if fmt == "jpeg" else {}))
        out.append(buffer.getvalue())
        labels[i] = digits.target[j]
    return out, labels


def run_sparkdl(data, shape, batch_size: int) -> int:
    from sparkdl.data.dataset import tf_dataset

    rows = 0
    for x, _ in tf_dataset(data, 0, 1, batch_size, shape, shuffle=False, epochs=1):
        rows += int(x.shape[0])
    return rows


def run_petastorm(data, shape, batch_size: int) -> int:
    from petastorm.transform import TransformSpec

    image = data.image
    width = int(np.prod(shape))

    def decode(frame):
        pixels, _ = image.prepare(pa.array(frame["features"].tolist(), pa.binary()), threads=1)
        frame["features"] = list(pixels.reshape(len(frame), width))
        return frame

    spec = TransformSpec(decode, edit_fields=[("features", np.float32, (width,), False)])
    rows = 0
    with data.converter().make_tf_dataset(batch_size=batch_size, num_epochs=1, transform_spec=spec) as ds:
        for batch in ds:
            _ = np.reshape(batch.features.numpy(), (-1, *shape))
            rows += int(batch.features.shape[0])
    return rows


def run_ceiling(data, shape, batch_size: int) -> int:
    from sparkdl.uri import filesystem

    rows = 0
    for f in data.files:
        fs, path = filesystem(f)
        with fs.open_input_file(path) as handle:
            for b in pq.ParquetFile(handle).iter_batches(batch_size=65_536, columns=["features", "label"]):
                x, _ = data.image.prepare(b.column(0))
                rows += len(x)
    return rows


def run_score_sparkdl(df, version) -> int:
    from sparkdl.score import score_dataframe

    out = score_dataframe(df, version, output="probabilities", keep_columns=[])
    return out.where("probabilities is not null").count()


def run_score_predict_batch_udf(df, fn) -> int:
    return df.select(fn("content").alias("p")).where("p is not null").count()


def predict_batch_udf_for(model_path: str, image, num_classes: int):
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import ArrayType, FloatType

    def make_predict_fn():
        import tensorflow as tf

        model = tf.keras.models.load_model(model_path, compile=False)

        def predict(encoded: np.ndarray) -> np.ndarray:
            pixels, _ = image.prepare(pa.array(list(encoded), pa.binary()))
            return model.predict(pixels, verbose=0, batch_size=len(pixels))

        return predict

    return predict_batch_udf(make_predict_fn, return_type=ArrayType(FloatType()), batch_size=10_000)


def timed(fn, *args) -> tuple[float, int]:
    start = time.perf_counter()
    rows = fn(*args)
    return time.perf_counter() - start, rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=64, help="image height and width")
    parser.add_argument("--format", choices=("jpeg", "png"), default="jpeg")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds over all paths (best one counts)")
    args = parser.parse_args(argv)

    from sparkdl.data.petastorm_io import to_petastorm
    from sparkdl.data.preprocess import Preprocessor
    from sparkdl.data.spec import FeatureSpec
    from sparkdl.models import build, default_loss
    from sparkdl.registry import MODEL_FILE, ModelStore
    from sparkdl.session import get_spark

    spark = get_spark(master="local[2]", app_name="bench-image")
    folder = tempfile.mkdtemp(prefix="sparkdl-bench-image-")
    try:
        encoded, labels = make_images(args.rows, args.size, args.format)
        shape = (args.size, args.size, 3)
        df = spark.createDataFrame(pa.table({"content": pa.array(encoded, pa.binary()),
                                             "label": pa.array(labels)}).to_pandas()).repartition(2).cache()
        df.count()
        spec = FeatureSpec.from_dict({"features": [{"name": "content", "kind": "image", "shape": list(shape),
                                                    "scale": "minmax"}],
                                      "label": {"name": "label", "task": "multiclass", "num_classes": 10}})
        prep = Preprocessor(spec).fit(df)
        data = to_petastorm(df, prep, parent="file://" + folder)
        encoded_mb = sum(len(b) for b in encoded) / 1e6
        print(f"data: {data.num_rows} {args.format.upper()} images of {shape}, {encoded_mb:.1f} MB encoded "
              f"({encoded_mb * 1e6 / args.rows:.0f} B each, {4 * np.prod(shape)} B decoded as float32); "
              f"{len(data.files)} files, {len(data.row_groups)} row groups; batch {args.batch_size}; "
              f"{os.cpu_count()} cores")

        paths = {"ceiling (in-process decode loop)": run_ceiling, "sparkdl tf_dataset": run_sparkdl,
                 "petastorm make_tf_dataset + TransformSpec": run_petastorm}
        run_sparkdl(data, shape, args.batch_size)  # warm-up: TensorFlow import, graph tracing
        best: dict[str, float] = {}
        for _ in range(args.repeat):
            for name, fn in paths.items():
                seconds, rows = timed(fn, data, shape, args.batch_size)
                assert rows == data.num_rows, f"{name} read {rows} rows, expected {data.num_rows}"
                best[name] = min(best.get(name, seconds), seconds)
        rates = {name: data.num_rows / s for name, s in best.items()}
        for name, rate in rates.items():
            print(f"input  {name:44s} {rate:>10,.0f} images/s  ({best[name]:.2f}s)")
        ours, pet = rates["sparkdl tf_dataset"], rates["petastorm make_tf_dataset + TransformSpec"]
        ceiling = rates["ceiling (in-process decode loop)"]
        print(f"input: sparkdl {ours / pet:.1f}x petastorm (target >= 3x), {100 * ours / ceiling:.0f}% of the "
              f"ceiling (target >= 60%)")

        # scoring: one small CNN, trained briefly in-process, saved in a temporary store
        table = pa.Table.from_pandas(df.limit(2000).toPandas(), preserve_index=False)
        prepared = prep.prepare_batch(table)
        model = build("cnn", prep.signature, filters=(16, 32), dense=64)
        model.compile("adam", default_loss(prep.signature, "cnn"))
        model.fit(prepared.features, prepared.labels, epochs=1, batch_size=64, verbose=0)
        store = ModelStore(os.path.join(folder, "models"))
        version = store.save("bench_image_cnn", model, {
            "preprocessing": prep.to_dict(), "signature": prep.signature.to_dict(),
            "feature_spec": spec.to_dict(), "label_classes": prep.label_classes, "model_name": "cnn"})
        model_path = os.path.join(version.path, store.metadata(version).get("model_file", MODEL_FILE))
        udf = predict_batch_udf_for(model_path, prep.image_input, 10)
        scoring = {"sparkdl score_dataframe": lambda: run_score_sparkdl(df, version),
                   "predict_batch_udf": lambda: run_score_predict_batch_udf(df, udf)}
        for fn in scoring.values():  # warm-up: a model load per Python worker
            fn()
        best = {}
        for _ in range(args.repeat):
            for name, fn in scoring.items():
                seconds, rows = timed(fn)
                assert rows == data.num_rows, f"{name} scored {rows} rows, expected {data.num_rows}"
                best[name] = min(best.get(name, seconds), seconds)
        for name, seconds in best.items():
            print(f"score  {name:44s} {data.num_rows / seconds:>10,.0f} images/s  ({seconds:.2f}s)")
        print(f"scoring: sparkdl {best['predict_batch_udf'] / best['sparkdl score_dataframe']:.1f}x "
              f"predict_batch_udf")
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
