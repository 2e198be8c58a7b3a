"""One side of scripts/gpu_check.sh: train the digits CNN with KerasEstimator and score a table, on GPU or CPU.

`--device gpu` trains with `use_gpu=True` (the Horovod process is pinned to GPU 0 with memory growth) and scores
in Spark Python workers that see the GPU; `--device cpu` is run with CUDA_VISIBLE_DEVICES="" (set by the shell
script) and `use_gpu=False`. Writes a JSON of figures; `--compare gpu.json cpu.json` prints them side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DIGITS_SPEC = {"features": [{"name": "pixels", "kind": "vector", "shape": [8, 8, 1], "scale": "minmax"}],
               "label": {"name": "digit", "task": "multiclass", "num_classes": 10}}


def run(device: str, epochs: int, rows: int, batch_size: int) -> dict:
    from pyspark.sql import functions as F

    from sparkdl.data.spec import FeatureSpec
    from sparkdl.datasets import create_demo_tables
    from sparkdl.lake import read_table
    from sparkdl.registry import ModelStore
    from sparkdl.score import score_dataframe
    from sparkdl.session import get_spark
    from sparkdl.train import KerasEstimator
    from sparkdl.train.checkpoints import RunFolder

    work = Path(tempfile.mkdtemp(prefix=f"sparkdl-gpu-check-{device}-"))
    spark = get_spark(master="local[4]", app_name=f"sparkdl-gpu-check-{device}", work=work)
    tables = create_demo_tables(spark, work / "lake")
    store = ModelStore(work / "models")
    run_name = f"gpu-check-{device}"
    est = KerasEstimator(model="cnn", feature_spec=FeatureSpec.from_dict(DIGITS_SPEC), epochs=epochs,
                         batch_size=batch_size, learning_rate=3e-3, num_proc=1, use_gpu=(device == "gpu"),
                         model_store=store, model_name="digits_cnn", run_name=run_name, work_dir=str(work),
                         hparams={"filters": [32, 64], "dense": 128})
    started = time.perf_counter()
    fitted = est.fit(tables["digits_train"])
    fit_s = time.perf_counter() - started
    rates = [e["examples_per_s"] for e in RunFolder(str(work), run_name).epochs_log()]

    test_df, _ = read_table(tables["digits_test"])
    n = test_df.count()
    big = test_df.crossJoin(spark.range((rows + n - 1) // n).withColumnRenamed("id", "copy")) \
        .withColumn("id", F.col("id") * 1_000_000 + F.col("copy")).drop("copy").repartition(4).cache()
    total = big.count()
    scored = score_dataframe(big, str(fitted.getModelVersion()), store=store, output="prediction",
                             keep_columns=["id"])
    scored.write.format("noop").mode("overwrite").save()  # cold: model load and trace in each worker
    started = time.perf_counter()
    scored.write.format("noop").mode("overwrite").save()
    score_s = time.perf_counter() - started
    accuracy = fitted.getMetrics().get("val_accuracy")
    spark.stop()
    return {"device": device, "train_examples_per_s": statistics.median(rates[1:] or rates),
            "epoch_rates": rates, "fit_s": fit_s, "val_accuracy": accuracy, "score_rows": total,
            "score_rows_per_s": total / score_s, "score_s": score_s}


def compare(gpu_file: str, cpu_file: str) -> None:
    gpu, cpu = json.loads(Path(gpu_file).read_text()), json.loads(Path(cpu_file).read_text())
    print(f"{'':28}{'GPU':>14}{'CPU':>14}{'GPU/CPU':>10}")
    for key, label in (("train_examples_per_s", "training examples/s"), ("score_rows_per_s", "scoring rows/s")):
        print(f"{label:28}{gpu[key]:>14,.0f}{cpu[key]:>14,.0f}{gpu[key] / cpu[key]:>9.1f}x")
    print(f"{'whole fit (s)':28}{gpu['fit_s']:>14.1f}{cpu['fit_s']:>14.1f}")
    print(f"{'val_accuracy':28}{gpu['val_accuracy'] or 0:>14.3f}{cpu['val_accuracy'] or 0:>14.3f}")
    print(f"scored {gpu['score_rows']:,} rows each side")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("gpu", "cpu"))
    parser.add_argument("--out")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--compare", nargs=2, metavar=("GPU_JSON", "CPU_JSON"))
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    if not args.device or not args.out:
        parser.error("--device and --out are required (or --compare)")
    result = run(args.device, args.epochs, args.rows, args.batch_size)
    Path(args.out).write_text(json.dumps(result))
    print(json.dumps(result), file=sys.stderr)


if __name__ == "__main__":
    main()
