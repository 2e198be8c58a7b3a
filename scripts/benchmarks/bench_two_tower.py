#!/usr/bin/env python
"""Two-tower retrieval (issue 47, item 2): recall@10 of the zoo's `two_tower` trained on 2 Horovod ranks with the
negatives shared across ranks, against 1 rank at the same global batch, and against 2 ranks whose negatives stay on
their own rank, in one run.

Data: `tests/test_two_tower.py`'s interactions (users and items with hidden tastes, Zipf popularity), `--rows`
training rows over `--items` items; recall@10 on 1,000 held-out rows against the whole catalogue. Each set-up is
fitted with `--seeds` seeds; medians are printed. The global batch (`--global-batch`, default 32: 1 × 32, 2 × 16)
and the learning rate are the same everywhere (sparkdl multiplies a rank's learning rate by the number of ranks).
The fewer negatives a rank's own rows give, the more sharing matters.

Target: 2 ranks within 1 % (relative) of 1 rank; without sharing, short of it.

    .venv/bin/python scripts/benchmarks/bench_two_tower.py --rows 20000 --items 1000 --global-batch 32
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from timing import load_line  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--global-batch", type=int, default=32, help="rows per step over all ranks")
    args = parser.parse_args()

    from test_two_tower import DIM, interactions, recall_at

    from sparkdl.models import InBatchSoftmaxLoss
    from sparkdl.session import get_spark
    from sparkdl.train import KerasEstimator

    spark = get_spark(master="local[2]", conf={"spark.sql.shuffle.partitions": "4"})
    frame, catalogue = interactions(rows=args.rows + 1000, items=args.items, users=max(400, args.items // 2))
    train, test = frame.iloc[:args.rows], frame.iloc[args.rows:]
    df = spark.createDataFrame(train).cache()
    df.count()
    counts = np.bincount(train["item_id"], minlength=args.items).astype(float).tolist()
    spec = {"features": [{"name": "user", "kind": "vector", "shape": [DIM]},
                         {"name": "item", "kind": "vector", "shape": [DIM]}],
            "label": {"name": "item_id", "task": "multiclass", "num_classes": args.items}}
    store = tempfile.mkdtemp(prefix="bench-two-tower-")
    g = args.global_batch
    setups = {f"1 rank x {g}": (1, g, True), f"2 ranks x {g // 2}, shared": (2, g // 2, True),
              f"2 ranks x {g // 2}, own rank": (2, g // 2, False)}
    results = {}
    for name, (num_proc, batch, share) in setups.items():
        recalls = []
        for seed in range(args.seeds):
            model = KerasEstimator(
                model="two_tower", feature_spec=spec, hparams={"query_features": ["user"], "embedding_dim": 16,
                                                               "hidden": [32]},
                loss=InBatchSoftmaxLoss(item_counts=counts, share_negatives=share), epochs=args.epochs,
                batch_size=batch, num_proc=num_proc, validation=0.0, learning_rate=6e-3 / num_proc, seed=seed,
                model_store=store).fit(df)
            recalls.append(recall_at(model.getModel(), test, catalogue))
        results[name] = float(np.median(recalls))
        print(f"{name:<24} recall@10 {results[name]:.4f}   per seed {[round(r, 4) for r in recalls]}", flush=True)
    one, shared, own = (results[n] for n in setups)
    print(f"2 ranks shared / 1 rank: {shared / one:.3f} (target >= 0.99); own-rank negatives / 1 rank: "
          f"{own / one:.3f}; chance {10 / args.items:.3f}")
    print(load_line())


if __name__ == "__main__":
    main()
