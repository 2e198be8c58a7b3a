"""sparkdl serve: a real HTTP server on a free loopback port, real models from a real ModelStore, answers compared
with `score_dataframe` on the same rows."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("prometheus_client", reason="the serve extra (prometheus-client) is not installed")

from sparkdl.serving import ModelServer  # noqa: E402


def _call(server, path: str, payload=None, raw: bytes | None = None):
    """(status, parsed JSON or text) of one request."""
    host, port = server.address
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    request = urllib.request.Request(f"http://{host}:{port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            body, status, kind = answer.read(), answer.status, answer.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        body, status, kind = exc.read(), exc.code, exc.headers.get("Content-Type", "")
    return status, json.loads(body) if "json" in kind else body.decode()


@pytest.fixture
def cancer_server(cancer, score_store):
    df, names, version, prep, model = cancer
    server = ModelServer(str(version), store=score_store, port=0, max_batch_size=64, max_wait_ms=20,
                         reload_s=0).start()
    yield server, df, names, version
    server.stop()


def test_every_request_format_answers_what_score_dataframe_gives(cancer_server):
    from sparkdl.score import score_dataframe

    server, df, names, version = cancer_server
    rows = df.orderBy("id").limit(12).toPandas()
    want = score_dataframe(df.orderBy("id").limit(12), version, keep_columns=["id"]).orderBy("id").toPandas()
    want_probabilities = score_dataframe(df.orderBy("id").limit(12), version, output="probabilities",
                                         keep_columns=["id"]).orderBy("id").toPandas()
    records = rows[names].to_dict(orient="records")
    requests = {
        "dataframe_split": {"dataframe_split": {"columns": names, "data": rows[names].values.tolist()}},
        "dataframe_records": {"dataframe_records": records},
        "instances": {"instances": records},
        "inputs": {"inputs": {n: rows[n].tolist() for n in names}},
    }
    for kind, payload in requests.items():
        status, answer = _call(server, "/invocations", payload)
        assert status == 200, (kind, answer)
        assert answer["predictions"] == want["prediction"].tolist(), kind
    status, answer = _call(server, "/invocations?output=probabilities", requests["inputs"])
    assert status == 200
    np.testing.assert_allclose(np.asarray(answer["predictions"], dtype=np.float64),
                               np.stack(want_probabilities["probabilities"]), atol=1e-5)
    assert _call(server, "/ping")[0] == 200 and _call(server, "/health")[1] == {"status": "ready"}
    status, info = _call(server, "/version")
    assert status == 200 and info["model"] == str(version) and info["version"] == version.version


def test_client_mistakes_get_a_4xx_naming_the_column_and_the_server_goes_on(cancer_server):
    server, df, names, version = cancer_server
    good = {"inputs": {n: [1.0] for n in names}}
    cases = [
        (b"{not json", 400, "malformed JSON"),
        (json.dumps({"rows": []}).encode(), 400, "unknown request format"),
        (json.dumps({"inputs": {n: [1.0] for n in names[1:]}}).encode(), 400, f"missing column(s) ['{names[0]}']"),
        (json.dumps({"inputs": {**good["inputs"], names[2]: ["abc"]}}).encode(), 400,
         f"column '{names[2]}', row 0: expected a number, got 'abc'"),
        (json.dumps({"inputs": {**good["inputs"], names[1]: [None]}}).encode(), 422, "row 0:"),
        (json.dumps({"dataframe_split": {"columns": names, "data": [[1.0]]}}).encode(), 400, "row 0 has 1 values"),
    ]
    for raw, status, text in cases:
        got, answer = _call(server, "/invocations", raw=raw)
        assert got == status and text in answer["message"], (raw[:60], got, answer)
    status, embedded = _call(server, "/invocations?output=embedding", good)  # the penultimate layer: 8 units
    assert status == 200 and len(embedded["predictions"]) == 1 and len(embedded["predictions"][0]) == 8
    assert _call(server, "/invocations?output=nonsense", good)[0] == 400
    assert _call(server, "/nowhere")[0] == 404
    assert _call(server, "/invocations", good)[0] == 200  # still serving
    metrics = _call(server, "/metrics")[1]
    assert 'sparkdl_serving_requests_total{status="400"} 6.0' in metrics
    assert 'sparkdl_serving_requests_total{status="422"} 1.0' in metrics
    assert "sparkdl_serving_request_seconds_bucket" in metrics and "sparkdl_serving_model_version" in metrics


def test_concurrent_requests_are_scored_together(cancer_server):
    server, df, names, version = cancer_server
    rows = df.orderBy("id").limit(16).toPandas()
    answers = {}

    def one(i):
        answers[i] = _call(server, "/invocations", {"inputs": {n: [float(rows[n][i])] for n in names}})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(status == 200 and len(a["predictions"]) == 1 for status, a in answers.values())
    metrics = _call(server, "/metrics")[1]
    calls = float(next(line.split()[-1] for line in metrics.splitlines()
                       if line.startswith("sparkdl_serving_batch_rows_count")))
    assert calls < 16  # fewer model calls than requests: batched


def _metric_sum(metrics: str, name: str, **labels) -> float:
    """The sum of one metric's samples (over every worker process's series) with these labels."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith(name) and (line[len(name)] in " {") and all(w in line for w in wanted))


def test_a_pool_of_worker_processes_shares_one_port_sums_metrics_and_restarts_a_dead_worker(cancer, score_store):
    import os
    import signal

    from sparkdl.score import score_dataframe
    from sparkdl.serving import ServerPool, WorkerOptions

    df, names, version, prep, model = cancer
    rows = df.orderBy("id").limit(8).toPandas()
    want = score_dataframe(df.orderBy("id").limit(8), version, keep_columns=["id"]).orderBy("id")
    want = want.toPandas()["prediction"].tolist()
    pool = ServerPool(WorkerOptions(str(version), store=str(score_store.root), reload_s=0), workers=2,
                      port=0).start()
    try:
        payload = {"inputs": {n: rows[n].tolist() for n in names}}
        answers = [_call(pool, "/invocations", payload) for _ in range(12)]
        assert all(status == 200 and a["predictions"] == want for status, a in answers)
        first, second = pool.processes
        for paused, other in ((first, second), (second, first)):  # each worker accepts on its own
            os.kill(paused.pid, signal.SIGSTOP)  # the kernel hands a free worker every connection
            try:
                assert {_call(pool, "/version")[1]["pid"] for _ in range(5)} == {other.pid}
            finally:
                os.kill(paused.pid, signal.SIGCONT)
        metrics = _call(pool, "/metrics")[1]
        assert _metric_sum(metrics, "sparkdl_serving_requests_total", status="200") == 12  # over both workers

        victim = pool.processes[0]
        os.kill(victim.pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while pool.restarts == 0 and time.monotonic() < deadline:
            status, answer = _call(pool, "/invocations", payload)  # the other worker keeps serving
            assert status == 200 and answer["predictions"] == want
            time.sleep(0.2)
        assert pool.restarts == 1 and pool.processes[0].pid != victim.pid
        while _call(pool, "/health")[0] == 200 and len({_call(pool, "/version")[1]["pid"]
                                                        for _ in range(20)}) < 2:
            assert time.monotonic() < deadline, "the restarted worker never accepted a connection"
            time.sleep(0.5)
        metrics = _call(pool, "/metrics")[1]  # the dead worker's counts are kept
        assert _metric_sum(metrics, "sparkdl_serving_requests_total", status="200") >= 13
    finally:
        pool.stop()
    assert all(p.poll() is not None for p in pool.processes)


def test_a_server_on_an_alias_follows_it_and_keeps_serving_when_a_version_fails_to_load(cancer, score_store,
                                                                                     tmp_path):
    import shutil

    df, names, version, prep, model = cancer
    store = type(score_store)(tmp_path / "store")
    for _ in range(2):  # versions 1 and 2 of the same model
        shutil.copytree(version.path, store.root / "cancer" / str(_ + 1))
    store.set_alias("cancer@1", "champion")
    assert str(store.resolve("cancer@champion")) == "cancer@1"
    server = ModelServer("cancer@champion", store=store, port=0, reload_s=0.2).start()
    try:
        payload = {"inputs": {n: [1.0] for n in names}}
        assert _call(server, "/version")[1]["version"] == 1
        store.set_alias("cancer@2", "champion")
        deadline = time.monotonic() + 30
        while _call(server, "/version")[1]["version"] != 2 and time.monotonic() < deadline:
            assert _call(server, "/invocations", payload)[0] == 200  # no request dropped meanwhile
        assert _call(server, "/version")[1]["version"] == 2

        broken = store.root / "cancer" / "3"
        shutil.copytree(version.path, broken)
        (broken / "model.keras").write_bytes(b"not a keras file")
        store.set_alias("cancer@3", "champion")
        deadline = time.monotonic() + 30
        while "sparkdl_serving_reload_failures_total 0.0" in _call(server, "/metrics")[1] and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        assert "sparkdl_serving_reload_failures_total 0.0" not in _call(server, "/metrics")[1]
        assert _call(server, "/version")[1]["version"] == 2 and _call(server, "/invocations", payload)[0] == 200
    finally:
        server.stop()


def test_aliases_are_checked(tmp_path):
    from sparkdl.errors import ConfigError, ModelStoreError
    from sparkdl.registry import ModelStore

    store = ModelStore(tmp_path / "store")
    with pytest.raises(ConfigError, match="shadow a version reference"):
        store.set_alias("m@1", "latest")
    with pytest.raises(ModelStoreError, match=r"an alias of 'm' \(aliases: none\)"):
        store.resolve("m@champion")


def test_a_saved_model_export_takes_raw_columns_and_answers_like_score_dataframe(cancer, score_store, tmp_path,
                                                                                 digits_mlp):
    import tensorflow as tf

    from sparkdl.errors import ConfigError
    from sparkdl.score import score_dataframe
    from sparkdl.serving.export import export_saved_model

    df, names, version, prep, model = cancer
    folder = export_saved_model(str(version), tmp_path / "saved", store=score_store)
    rows = df.orderBy("id").limit(50).toPandas()
    want = score_dataframe(df.orderBy("id").limit(50), version, output="probabilities",
                           keep_columns=["id"]).orderBy("id").toPandas()
    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
    got = serve(**{n: tf.constant(rows[n].to_numpy(dtype=np.float64)) for n in names})
    np.testing.assert_allclose(got["probabilities"].numpy(), np.stack(want["probabilities"]), atol=1e-5)
    with pytest.raises(ConfigError, match="already exists"):
        export_saved_model(str(version), folder, store=score_store)

    digits_version = digits_mlp[0]  # a vector feature: exportable too
    assert export_saved_model(str(digits_version), tmp_path / "digits", store=score_store).is_dir()


def test_the_inference_log_appends_requests_and_predictions_to_a_delta_table(cancer, score_store, spark, tmp_path):
    from sparkdl.lake import read_table

    df, names, version, prep, model = cancer
    table = str(tmp_path / "served")
    server = ModelServer(str(version), store=score_store, port=0, reload_s=0, log_table=table).start()
    rows = df.orderBy("id").limit(5).toPandas()
    try:
        for i in range(5):
            status, answer = _call(server, "/invocations", {"inputs": {n: [float(rows[n][i])] for n in names}})
            assert status == 200
    finally:
        server.stop()  # appends what is buffered
    logged, _ = read_table(table, spark=spark)
    pdf = logged.toPandas()
    assert len(pdf) == 5 and set(names) <= set(pdf.columns)
    assert {"prediction", "_model", "_model_version", "_served_at"} <= set(pdf.columns)
    assert set(pdf["_model_version"]) == {version.version} and server.inference_log.failed_rows == 0


def test_live_drift_gauges_follow_shifted_traffic(cancer, score_store, tmp_path):
    """--drift-window: the last N requested rows of each feature against the reference, as Prometheus gauges;
    traffic like the training data reads low, a shifted feature reads high, the others stay low; the PSI equals
    the one computed here from the reference's quantile bins."""
    from sparkdl.lake import write_table
    from sparkdl.monitor import psi_value

    df, names, version, _, _ = cancer
    reference = str(tmp_path / "reference")
    write_table(df, reference)
    server = ModelServer(str(version), store=score_store, port=0, reload_s=0, drift_window=200,
                         drift_reference=reference).start()
    rows = df.toPandas().sample(frac=1.0, random_state=0).reset_index(drop=True)

    def send(frame):
        for start in range(0, len(frame), 50):
            part = frame.iloc[start:start + 50]
            status, _ = _call(server, "/invocations", {"inputs": {n: part[n].tolist() for n in names}})
            assert status == 200

    def gauge(feature, statistic="psi"):
        _, text = _call(server, "/metrics")
        return _metric_sum(text, "sparkdl_serving_drift", feature=feature, statistic=statistic)

    try:
        send(rows.iloc[:200])
        assert gauge("mean_radius") < 0.1 and gauge("mean_texture") < 0.1
        shifted = rows.iloc[200:400].copy()
        shifted["mean_radius"] *= 1.6
        send(shifted)
        assert gauge("mean_radius") > 0.5 and gauge("mean_texture") < 0.1
        assert gauge("mean_radius", "null_rate") == 0.0
        values = df.toPandas()["mean_radius"].to_numpy()
        edges = np.unique(np.quantile(values, [i / 10 for i in range(1, 10)]))
        ref = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1).tolist() + [0]
        cur = np.bincount(np.searchsorted(edges, shifted["mean_radius"].to_numpy(), side="right"),
                          minlength=len(edges) + 1).tolist() + [0]
        assert gauge("mean_radius") == pytest.approx(psi_value(ref, cur, 1e-4), rel=1e-9)
    finally:
        server.stop()
