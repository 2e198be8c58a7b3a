#!/usr/bin/env python
"""Real-time serving: `sparkdl serve` against `mlflow models serve` on the same model, same machine, same client.

The model is the demo's breast-cancer MLP (30 numeric features, sparkdl's fitted preprocessing), trained
in-process once and saved in a ModelStore; MLflow serves the same version through sparkdl's pyfunc flavour
(`sparkdl.mlflow.log_model`, `--env-manager local`). Both servers run as their own processes on loopback and get
the same requests (`dataframe_split`, raw feature columns) from the same client (threads of this process):

* single-row requests at concurrency 1 and 16 for `--seconds` each: requests/s, p50 and p99 latency;
* 1,000-row requests at concurrency 4: rows/s;
* the same again with `--workers N` processes for each server (`sparkdl serve --workers`, `mlflow models serve -w`).

Targets (issue 30): >= 3x MLflow's requests/s at concurrency 16, p99 no worse than MLflow's, p50 <= 5 ms at
concurrency 1. Prints the figures, the ratios and the load average.

    .venv/bin/python scripts/benchmarks/bench_serve.py --seconds 10

`--hostile-minutes M` measures `sparkdl serve` alone under M minutes of mixed load instead (issue 40): 4 threads
of valid requests beside slow clients (a request's headers, then nothing), oversize bodies (a length over the
limit, and a 2 MB body over a 1 MB limit), malformed JSON and 20,000-key bodies; it samples the server's RSS every
second and prints it at the start, its peak and its end, the requests by status, and the server errors (target: RSS
flat, no 5xx).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(work: Path) -> tuple[str, str, list[str], list[list[float]], str]:
    """(store root, model ref, feature names, rows, MLflow model URI): the model trained and saved once (its
    preprocessing fitted in a local Spark session), and logged to MLflow."""
    import mlflow
    import numpy as np

    from sparkdl.data.preprocess import Preprocessor
    from sparkdl.data.spec import FeatureSpec
    from sparkdl.datasets import breast_cancer_frame
    from sparkdl.models import build
    from sparkdl.registry import ModelStore

    frame = breast_cancer_frame()
    names = [c for c in frame.columns if c not in ("id", "malignant")]
    spec = FeatureSpec.from_dict({"features": [{"name": n, "scale": "standard"} for n in names],
                                  "label": {"name": "malignant", "task": "binary"}})
    import pyarrow as pa

    from sparkdl.session import get_spark

    table = pa.Table.from_pandas(frame, preserve_index=False)
    spark = get_spark(master="local[1]")
    prep = Preprocessor(spec).fit(spark.createDataFrame(frame))
    spark.stop()
    prepared = prep.prepare_batch(table)
    model = build("mlp", prep.signature, hidden=(64, 32))
    model.compile("adam", "binary_crossentropy")
    model.fit(prepared.features, prepared.labels, epochs=5, batch_size=64, verbose=0)
    store = ModelStore(work / "models")
    version = store.save("cancer_serve", model, {"preprocessing": prep.to_dict(), "signature": prep.signature.to_dict(),
                                                 "feature_spec": spec.to_dict(), "model_name": "mlp",
                                                 "label_classes": prep.label_classes})
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    mlflow.set_tracking_uri((work / "mlruns").as_uri())
    import sparkdl.mlflow

    info = sparkdl.mlflow.log_model(version, store=store)
    rows = np.asarray(frame[names], dtype=np.float64).tolist()
    return str(store.root), str(version), names, rows, info.model_uri


def wait_ready(port: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"no server answered on port {port} within {timeout:.0f}s")


def load(port: int, body: bytes, concurrency: int, seconds: float) -> tuple[int, list[float]]:
    """(requests answered 200, latencies in s) of `concurrency` threads posting `body` for `seconds`."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    failures = []

    def worker():
        mine = []
        while time.monotonic() < stop:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    answer.read()
                    if answer.status != 200:
                        failures.append(answer.status)
                        continue
            except OSError as exc:
                failures.append(str(exc))
                continue
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        print(f"  port {port}: {len(failures)} failed request(s), e.g. {failures[0]}", file=sys.stderr)
    return len(latencies), latencies


def hostile(port: int, pid: int, names: list[str], rows: list[list[float]], minutes: float) -> None:
    """Mixed valid and hostile load on `sparkdl serve` for `minutes`; prints RSS and statuses (see the docstring)."""
    import psutil

    server = psutil.Process(pid)
    stop = time.monotonic() + minutes * 60
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    valid = json.dumps({"dataframe_split": {"columns": names, "data": rows[:4]}}).encode()
    bad_bodies = [b"{not json", json.dumps({"dataframe_records": [{f"k{i}": 1.0} for i in range(20_000)]}).encode(),
                  b"[" * 50_000 + b"]" * 50_000, b"x" * (2 * 1024 * 1024)]

    def count(key) -> None:
        with lock:
            statuses[str(key)] = statuses.get(str(key), 0) + 1

    def post(body: bytes) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                answer.read()
                count(answer.status)
        except urllib.error.HTTPError as exc:
            count(exc.code)
        except OSError as exc:
            count(type(exc).__name__)

    def valid_load():
        while time.monotonic() < stop:
            post(valid)

    def hostile_load():
        i = 0
        while time.monotonic() < stop:
            i += 1
            if i % 3 == 0:  # a slow client: headers started, never finished
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                    sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
                    threading.Timer(15, sock.close).start()
                    count("slow-client")
                except OSError as exc:
                    count(type(exc).__name__)
            elif i % 3 == 1:  # a length far over the limit
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1099511627776\r\n\r\n")
                        count(int(sock.recv(64).split(b" ")[1]))
                except (OSError, IndexError, ValueError) as exc:
                    count(type(exc).__name__)
            else:
                post(bad_bodies[(i // 3) % len(bad_bodies)])
            time.sleep(0.05)

    samples = []
    threads = [threading.Thread(target=valid_load) for _ in range(4)] + [threading.Thread(target=hostile_load)
                                                                         for _ in range(2)]
    for t in threads:
        t.start()
    while time.monotonic() < stop:
        samples.append(server.memory_info().rss)
        time.sleep(1.0)
    for t in threads:
        t.join()
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    server_errors = next((line.split()[-1] for line in metrics.splitlines()
                          if line.startswith('sparkdl_serving_errors_total{kind="server"}')), "?")
    first, peak, last = samples[0], max(samples), samples[-1]
    minute = samples[min(len(samples) - 1, 60)]
    print(f"sparkdl serve under {minutes:g} min of mixed load: RSS {first / 1e6:.0f} MB at the start, "
          f"{minute / 1e6:.0f} MB after a minute, peak {peak / 1e6:.0f} MB, {last / 1e6:.0f} MB at the end "
          f"(end - one minute in: {(last - minute) / 1e6:+.0f} MB); statuses {dict(sorted(statuses.items()))}; "
          f"server errors {server_errors}; load average {os.getloadavg()[0]:.2f}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="load per measurement (default 10)")
    parser.add_argument("--workers", type=int, default=2,
                        help="also measure both servers with this many worker processes (default 2; 1: skip)")
    parser.add_argument("--hostile-minutes", type=float, default=None,
                        help="measure sparkdl serve's RSS under this many minutes of mixed valid and hostile load")
    args = parser.parse_args(argv)
    if args.hostile_minutes:
        with tempfile.TemporaryDirectory(prefix="sparkdl-bench-serve-") as tmp:
            store, ref, names, rows, _ = prepare(Path(tmp))
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-m", "sparkdl.cli", "serve", ref, "--store", store, "--port",
                                     str(port), "--reload-s", "0", "--max-body-bytes", str(1024 * 1024),
                                     "--read-timeout-s", "5"], env={**os.environ, "SPARKDL_LOG_LEVEL": "WARNING"},
                                    stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "serve.log", "w"))
            try:
                wait_ready(port)
                hostile(port, proc.pid, names, rows, args.hostile_minutes)
            finally:
                proc.terminate()
                proc.wait(60)
        return 0
    with tempfile.TemporaryDirectory(prefix="sparkdl-bench-serve-") as tmp:
        work = Path(tmp)
        store, ref, names, rows, model_uri = prepare(work)
        env = {**os.environ, "MLFLOW_TRACKING_URI": (work / "mlruns").as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true",
               "SPARKDL_LOG_LEVEL": "WARNING",  # MLflow starts `uvicorn` from PATH: this venv's
               "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
        server_names = ["sparkdl", "mlflow"] + ([f"sparkdl-w{args.workers}", f"mlflow-w{args.workers}"]
                                          if args.workers > 1 else [])
        ports = {name: free_port() for name in server_names}
        servers = {}
        for name, port in ports.items():
            workers = ["--workers", str(args.workers)] if "-w" in name else []
            if name.startswith("sparkdl"):
                command = [sys.executable, "-m", "sparkdl.cli", "serve", ref, "--store", store, "--port", str(port),
                           "--reload-s", "0", *workers]
            else:
                command = [os.path.join(os.path.dirname(sys.executable), "mlflow"), "models", "serve", "-m",
                           model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
                           *(["-w", str(args.workers)] if workers else [])]
            servers[name] = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                             stderr=open(work / f"{name}.log", "w"))
        try:
            for name, port in ports.items():
                try:
                    wait_ready(port)
                except RuntimeError:
                    print((work / f"{name}.log").read_text()[-3000:], file=sys.stderr)
                    raise
            one = json.dumps({"dataframe_split": {"columns": names, "data": [rows[0]]}}).encode()
            thousand = json.dumps({"dataframe_split": {"columns": names,
                                                       "data": (rows * 2)[:1000]}}).encode()
            results: dict[str, dict] = {}
            for name, port in ports.items():  # warm-up, then each measurement
                load(port, one, 1, 1.0)
            for name, port in ports.items():
                figures = {}
                for concurrency in (1, 16):
                    count, lat = load(port, one, concurrency, args.seconds)
                    figures[concurrency] = (count / args.seconds, percentile(lat, 0.5), percentile(lat, 0.99))
                count, _ = load(port, thousand, 4, args.seconds)
                figures["rows"] = count * 1000 / args.seconds
                results[name] = figures
        finally:
            for server in servers.values():
                server.terminate()
                server.wait(30)
    for name, f in results.items():
        print(f"{name:11s} c=1: {f[1][0]:8,.0f} req/s p50 {f[1][1] * 1e3:6.1f} ms p99 {f[1][2] * 1e3:6.1f} ms | "
              f"c=16: {f[16][0]:8,.0f} req/s p50 {f[16][1] * 1e3:6.1f} ms p99 {f[16][2] * 1e3:6.1f} ms | "
              f"1000-row requests: {f['rows']:10,.0f} rows/s")
    s, m = results["sparkdl"], results["mlflow"]
    print(f"sparkdl/mlflow: req/s at c=16 {s[16][0] / m[16][0]:.2f}x (target >= 3), p99 at c=16 "
          f"{s[16][2] * 1e3:.1f} vs {m[16][2] * 1e3:.1f} ms (target <=), p50 at c=1 {s[1][1] * 1e3:.1f} ms "
          f"(target <= 5), 1000-row rows/s {s['rows'] / m['rows']:.2f}x; load average {os.getloadavg()[0]:.2f}")
    if args.workers > 1:
        s, m = results[f"sparkdl-w{args.workers}"], results[f"mlflow-w{args.workers}"]
        print(f"with {args.workers} workers each: req/s at c=16 {s[16][0] / m[16][0]:.2f}x, 1000-row rows/s "
              f"{s['rows'] / m['rows']:.2f}x; sparkdl {args.workers} workers / 1 worker at c=16: "
              f"{s[16][0] / results['sparkdl'][16][0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
