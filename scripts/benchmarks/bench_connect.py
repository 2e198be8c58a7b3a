#!/usr/bin/env python
"""Spark Connect beside classic Spark, in one run: `score_dataframe` throughput and `KerasEstimator.fit` wall time.

One process can hold only one kind of session, so each measurement runs in a child process of its own, the kinds
alternating (`--rounds` rounds of classic then Connect; best of the rounds kept), on the same data: N rows x 32
float32 features in Parquet files (scored by the reference MLP of bench_score.py, saved once) and the demo's
breast_cancer Delta table (fitted by a 2-process MLP, `--epochs` epochs; launch included). The Connect session is a
local server (`remote("local[2]")`, as `SPARKDL_REMOTE=local[2]`), classic is `local[2]`; both run this interpreter.

Targets (issue 28): Connect >= 0.9x classic for both. Prints the figures, the ratios and the load average.

    .venv-current/bin/python scripts/benchmarks/bench_connect.py --rows 1000000 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def child(kind: str, work: str, rows: int, epochs: int, passes: int) -> dict:
    """Runs in the child process: the measurements on one session kind."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_score import noop_write, save_model, timed, write_data

    from sparkdl.data.spec import FeatureSpec
    from sparkdl.datasets import create_demo_tables
    from sparkdl.lake import read_table
    from sparkdl.registry import ModelStore
    from sparkdl.score import score_dataframe
    from sparkdl.session import get_spark
    from sparkdl.train import KerasEstimator

    conf = {"spark.sql.shuffle.partitions": "4", "spark.driver.memory": "6g"}
    started = time.perf_counter()
    spark = (get_spark(remote="local[2]", conf=conf) if kind == "connect"
             else get_spark(master="local[2]", conf=conf))
    session_s = time.perf_counter() - started
    data = os.path.join(work, "data")
    if not os.path.isdir(data):
        write_data(data, rows, files=8)
    store = os.path.join(work, "models")
    version = (ModelStore(store).resolve("bench_mlp") if os.path.isdir(os.path.join(store, "bench_mlp"))
               else save_model(spark, store, data)[0])
    df = spark.read.parquet(data)
    noop_write(score_dataframe(df, version, keep_columns=["id"], store=store))  # cold: model load per worker
    score_s = min(timed(lambda: noop_write(score_dataframe(df, version, keep_columns=["id"], store=store)))
                  for _ in range(passes))

    tables = create_demo_tables(spark, os.path.join(work, f"lake-{kind}"))
    columns = read_table(tables["breast_cancer_train"])[0].columns
    spec = FeatureSpec.from_dict({
        "features": [{"name": c, "kind": "numeric", "scale": "standard"} for c in columns
                     if c not in ("id", "malignant")],
        "label": {"name": "malignant", "task": "binary"}})
    est = KerasEstimator(model="mlp", feature_spec=spec, epochs=epochs, batch_size=32, num_proc=2,
                         model_store=os.path.join(work, f"fit-models-{kind}"), model_name="bench_connect",
                         run_name=f"bench-connect-{kind}-{time.time_ns()}", hparams={"hidden": [32, 16]})
    fit_s = timed(lambda: est.fit(tables["breast_cancer_train"]))
    return {"kind": kind, "session_s": session_s, "score_rows_s": rows / score_s, "fit_s": fit_s,
            "launch_s": est.last_run.launch_s}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--passes", type=int, default=2, help="warm scoring passes per child (best kept)")
    parser.add_argument("--rounds", type=int, default=2, help="classic/Connect rounds (best of each kept)")
    parser.add_argument("--child", choices=["classic", "connect"], help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.work, args.rows, args.epochs, args.passes)))
        return 0
    from sparkdl.session_kind import connect_client_problem

    problem = connect_client_problem()
    if problem:
        print(f"Spark Connect cannot run in this environment: {problem}", file=sys.stderr)
        return 2
    results: dict[str, list[dict]] = {"classic": [], "connect": []}
    with tempfile.TemporaryDirectory(prefix="sparkdl-bench-connect-") as work:
        env = {**os.environ, "SPARKDL_WORK_DIR": os.path.join(work, "sparkdl"), "SPARKDL_LOG_LEVEL": "WARNING"}
        for _ in range(args.rounds):
            for kind in ("classic", "connect"):
                done = subprocess.run([sys.executable, __file__, "--child", kind, "--work", work, "--rows",
                                       str(args.rows), "--epochs", str(args.epochs), "--passes", str(args.passes)],
                                      capture_output=True, text=True, env=env)
                line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
                if done.returncode != 0 or line is None:
                    print(done.stderr[-4000:], file=sys.stderr)
                    return 1
                results[kind].append(json.loads(line[7:]))
    best = {k: {"score_rows_s": max(r["score_rows_s"] for r in v), "fit_s": min(r["fit_s"] for r in v),
                "launch_s": min(r["launch_s"] or float("nan") for r in v),
                "session_s": min(r["session_s"] for r in v)} for k, v in results.items()}
    for kind, b in best.items():
        print(f"{kind:8s} session {b['session_s']:5.1f} s | score_dataframe {b['score_rows_s']:>12,.0f} rows/s | "
              f"fit {b['fit_s']:5.1f} s (launch {b['launch_s']:.1f} s)")
    score_ratio = best["connect"]["score_rows_s"] / best["classic"]["score_rows_s"]
    fit_ratio = best["classic"]["fit_s"] / best["connect"]["fit_s"]
    print(f"Connect/classic: score_dataframe throughput {score_ratio:.2f}x (target >= 0.9), fit speed "
          f"{fit_ratio:.2f}x (classic time / Connect time, target >= 0.9); rows {args.rows:,}, epochs "
          f"{args.epochs}, rounds {args.rounds}; load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
