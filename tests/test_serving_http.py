"""`sparkdl serve` against hostile and careless clients (issue 40): a real uvicorn server on a free loopback port,
raw sockets for what a well-behaved HTTP client would never send, and a real `sparkdl serve` process for SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("prometheus_client", reason="the serve extra (prometheus-client) is not installed")

from test_serving import _call  # noqa: E402

from sparkdl.serving import ModelServer, ServingLimits  # noqa: E402

LIMITS = ServingLimits(read_timeout_s=2.0, keep_alive_s=2.0, scoring_timeout_s=2.0, max_rows=1000,
                       max_body_bytes=1024 * 1024)


@pytest.fixture(scope="module")
def server(cancer, score_store):
    df, names, version, prep, model = cancer
    server = ModelServer(str(version), store=score_store, port=0, reload_s=0, limits=LIMITS).start()
    yield server, names
    server.stop()


def raw(server, data: bytes, wait_s: float = 1.0) -> bytes:
    """Send `data` on a new connection and read what comes back within `wait_s` (or until the server closes)."""
    with socket.create_connection(server.address, timeout=wait_s) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except socket.timeout:
            pass
    return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def server_errors(server) -> float:
    metrics = _call(server, "/metrics")[1]
    return float(next(line.split()[-1] for line in metrics.splitlines()
                      if line.startswith('sparkdl_serving_errors_total{kind="server"}')))


def test_client_mistakes_are_4xx_naming_the_problem_and_never_server_errors(server):
    server, names = server
    good = {n: 1.0 for n in names}
    cases = [
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested deeper"),
        (json.dumps({"inputs": {n: [json.loads("[" * 33 + "1.0" + "]" * 33)] for n in names}}).encode(), 400,
         "max_json_depth=32"),
        (json.dumps({"dataframe_split": {"columns": [["a"], *names], "data": []}}).encode(), 400,
         "column names must be strings"),
        (json.dumps({"dataframe_records": [good] * 1001}).encode(), 413, "max_rows=1000"),
        (json.dumps({"instances": "nope"}).encode(), 400, "expected a list"),
        (b"\xff\xfe", 400, "malformed JSON"),
    ]
    for body, status, text in cases:
        got, answer = _call(server, "/invocations", raw=body)
        assert got == status and text in answer["message"], (body[:40], got, answer)
    assert server_errors(server) == 0.0
    assert _call(server, "/invocations", {"dataframe_records": [good]})[0] == 200


def test_parsing_is_linear_in_the_body_even_with_many_distinct_keys(server):
    import psutil

    server, names = server
    rss = psutil.Process().memory_info().rss
    body = json.dumps({"dataframe_records": [{f"k{i}": 1.0} for i in range(20_000)]}).encode()  # ~300 kB
    started = time.monotonic()
    status, answer = _call(server, "/invocations", raw=body)
    assert 400 <= status < 500 and time.monotonic() - started < 2.0, answer
    assert psutil.Process().memory_info().rss - rss < 200 * 1024 * 1024
    body = json.dumps({"dataframe_records": [{**{n: 1.0 for n in names}, f"k{i}": 1.0} for i in range(900)]})
    started = time.monotonic()
    assert _call(server, "/invocations", raw=body.encode())[0] == 200 and time.monotonic() - started < 2.0


def test_oversized_and_malformed_lengths_are_refused_at_once(server):
    server, _ = server
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    started = time.monotonic()
    answer = raw(server, head + b"Content-Length: 1099511627776\r\n\r\n{", wait_s=5)
    assert status_of(answer) == 413 and b"max_body_bytes" in answer and time.monotonic() - started < 2
    answer = raw(server, head + b"Content-Length: -1\r\n\r\n", wait_s=5)
    assert status_of(answer) == 400 and time.monotonic() - started < 4
    # a 200 MB body: refused on its length, the connection closed while the client is still sending
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(head + f"Content-Length: {200 * 1024 * 1024}\r\n\r\n".encode() + b"x" * 65536)
        answer = sock.recv(65536)
    assert status_of(answer) == 413
    # the same without a length (chunked): refused once it passes the limit, while the client still sends
    chunk = b"x" * 65536
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        answer = b""
        for _ in range(64):  # 4 MiB at most, four times the limit
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.settimeout(0.05)
            try:
                answer = sock.recv(65536)
            except socket.timeout:
                continue
            finally:
                sock.settimeout(10)
            break
    assert status_of(answer) == 413
    assert server_errors(server) == 0.0


def test_slow_clients_are_cut_off_and_do_not_hold_up_the_others(server):
    server, names = server
    threads = threading.active_count()
    sockets = []
    for _ in range(300):
        sock = socket.create_connection(server.address, timeout=10)
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
        sockets.append(sock)
    started = time.monotonic()
    status, _ = _call(server, "/invocations", {"inputs": {n: [1.0] for n in names}})
    assert status == 200 and time.monotonic() - started < 1.0
    time.sleep(LIMITS.read_timeout_s + 1.5)
    closed = 0
    for sock in sockets:
        sock.settimeout(2)
        try:
            closed += sock.recv(1024) == b""
        except OSError:
            closed += 1
        sock.close()
    assert closed == 300  # each closed by the server within its read timeout
    assert threading.active_count() <= threads + 2  # no thread per connection


def test_an_unread_body_is_never_read_as_a_second_request(server):
    server, _ = server
    body = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n"
    request = (b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    answer = raw(server, request, wait_s=LIMITS.keep_alive_s + 1)
    assert answer.count(b"HTTP/1.1 ") == 1 and status_of(answer) == 404


def test_a_wedged_model_answers_503_after_the_scoring_timeout_and_health_says_so(server):
    server, names = server
    batcher = server.loaded.batchers["prediction"]
    score = batcher.score

    def wedged(table):
        time.sleep(LIMITS.scoring_timeout_s + 2)
        return score(table)

    batcher.score = wedged
    try:
        answers = {}
        thread = threading.Thread(target=lambda: answers.update(
            first=_call(server, "/invocations", {"inputs": {n: [1.0] for n in names}})))
        thread.start()
        time.sleep(LIMITS.scoring_timeout_s + 0.5)
        assert _call(server, "/health")[0] == 503
        thread.join()
        assert answers["first"][0] == 503 and "scoring_timeout_s" in answers["first"][1]["message"]
    finally:
        batcher.score = score
    time.sleep(2)
    assert _call(server, "/health")[0] == 200


def test_a_token_is_required_when_the_server_has_one(cancer, score_store, tmp_path):
    from sparkdl.errors import ConfigError
    from sparkdl.serving import read_token

    df, names, version, prep, model = cancer
    path = tmp_path / "token"
    path.write_text("s3cret-token\n")
    server = ModelServer(str(version), store=score_store, port=0, reload_s=0, token=read_token(str(path))).start()
    try:
        payload = json.dumps({"inputs": {n: [1.0] for n in names}}).encode()
        for header in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            assert _post_with(server, payload, header) == 401
        assert _post_with(server, payload, {"Authorization": "Bearer s3cret-token"}) == 200
        assert _call(server, "/health")[0] == 200  # probes need no token
    finally:
        server.stop()
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ConfigError, match="expected one token"):
        read_token(str(tmp_path / "empty"))


def _post_with(server, body: bytes, headers: dict) -> int:
    import urllib.error
    import urllib.request

    host, port = server.address
    request = urllib.request.Request(f"http://{host}:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_reloading_new_versions_keeps_one_model_in_memory_and_a_broken_version_is_counted_once(
        cancer, score_store, tmp_path):
    import shutil

    from sparkdl.score import runtime

    df, names, version, prep, model = cancer
    store = type(score_store)(tmp_path / "store")
    shutil.copytree(version.path, store.root / "cancer" / "1")
    server = ModelServer("cancer", store=store, port=0, reload_s=0.2).start()
    try:
        for number in range(2, 12):
            shutil.copytree(version.path, store.root / "cancer" / str(number))
            deadline = time.monotonic() + 30
            while _call(server, "/version")[1]["version"] != number:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        time.sleep(1)  # the last retirement
        assert [key[1:] for key in runtime.loaded_models() if key[0] == str(store.root)] == [("cancer", 11)]
        broken = store.root / "cancer" / "12"
        shutil.copytree(version.path, broken)
        (broken / "model.keras").write_bytes(b"not a keras file")
        time.sleep(3)  # about 15 reload checks, with back-off
        metrics = _call(server, "/metrics")[1]
        assert "sparkdl_serving_reload_failures_total 1.0" in metrics
        assert _call(server, "/version")[1]["version"] == 11
    finally:
        server.stop()


SERVE_AND_LOG = """
import sys
from sparkdl.cli import main
sys.exit(main(["serve", sys.argv[1], "--store", sys.argv[2], "--port", sys.argv[3], "--log-table", sys.argv[4],
               "--reload-s", "0", "--max-wait-ms", "1"]))
"""


@pytest.mark.slow
def test_sigterm_answers_the_requests_in_flight_and_flushes_the_inference_log(cancer, score_store, tmp_path):
    from deltalake import DeltaTable

    df, names, version, prep, model = cancer
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    table = tmp_path / "inference_log"
    proc = subprocess.Popen([sys.executable, "-c", SERVE_AND_LOG, str(version), str(score_store.root), str(port),
                             str(table)], env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        body = json.dumps({"inputs": {n: [1.0, 2.0, 3.0] for n in names}}).encode()
        head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        clients = []
        for _ in range(20):  # 20 requests in flight: each has sent half its body
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(head % len(body) + body[:len(body) // 2])
            clients.append(sock)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):  # no new connection once stopping
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        statuses = []
        for sock in clients:
            sock.sendall(body[len(body) // 2:])
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            statuses.append(status_of(answer))
            sock.close()
        assert statuses == [200] * 20
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    logged = DeltaTable(str(table)).to_pyarrow_table()
    assert logged.num_rows == 20 * 3  # every answered row, no more, no less
    assert "Traceback" not in proc.stderr.read()


def test_the_cli_declares_every_limit_once():
    from sparkdl.cli import build_parser

    args = build_parser().parse_args(["serve", "m"])
    for name in ("max_body_bytes", "max_rows", "max_json_depth", "read_timeout_s", "keep_alive_s",
                 "max_connections", "scoring_timeout_s", "drain_timeout_s"):
        assert getattr(args, name) == getattr(ServingLimits(), name)
    with pytest.raises(Exception, match="max_rows must be a positive number"):
        ServingLimits(max_rows=0)
