"""HorovodRunner on local[2]: real Spark tasks, real Horovod (Gloo) processes."""
from __future__ import annotations

import sys
import time

import cloudpickle
import pytest

from sparkdl.errors import ConfigError, TrainingError
from sparkdl.train import HorovodRunner

# The functions below travel to the workers by value (the tests folder is not on the workers' path).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def allreduce_rank_ids():
    import os

    import horovod.tensorflow as hvd
    import tensorflow as tf

    from sparkdl.tf_runtime import configure_tensorflow

    configure_tensorflow()
    hvd.init()
    total = hvd.allreduce(tf.constant(hvd.rank(), dtype=tf.int32), op=hvd.Sum)
    return {"sum": int(total.numpy()), "size": hvd.size(), "rank": hvd.rank(),
            "omp": os.environ.get("OMP_NUM_THREADS"), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "tf_env": os.environ.get("TF_NUM_INTRAOP_THREADS"),
            "intra": tf.config.threading.get_intra_op_parallelism_threads(),
            "gpus": tf.config.list_physical_devices("GPU")}


def explode_on_rank_one(message: str):
    import os

    if os.environ["HOROVOD_RANK"] == "1":
        raise ValueError(message)
    return "rank 0 finished"


def explode_then_others_block(message: str):
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()
    if hvd.rank() == 1:
        raise RuntimeError(message)
    hvd.allreduce(tf.constant(1.0))  # rank 1 never joins
    return "unreachable"


@pytest.mark.slow
def test_allreduce_of_rank_ids(spark):
    runner = HorovodRunner(num_proc=2, spark=spark)
    result = runner.run(allreduce_rank_ids)
    assert result["sum"] == 0 + 1
    assert result["size"] == 2 and result["rank"] == 0
    # local[2] shared by 2 processes: one thread each, no GPU on the CPU path
    assert result["omp"] == "1" and result["tf_env"] == "1" and result["intra"] == 1
    assert result["cuda"] == "" and result["gpus"] == []
    assert runner.last_run.launch_s is not None and runner.last_run.launch_s < runner.last_run.total_s
    # where the launch's seconds went: the Spark job until every barrier task runs, the host exchange, the hand-off
    breakdown = runner.last_run.launch_breakdown()
    assert list(breakdown)[:3] == ["spark_job_and_barrier_scheduling", "host_exchange", "rank_process_handoff"]
    assert all(v >= 0 for v in breakdown.values())
    assert sum(breakdown.values()) == pytest.approx(runner.last_run.events["fn_start"], abs=1e-3)


def rank_and_pid(**_ignored):
    import os

    return {"rank": int(os.environ["HOROVOD_RANK"]), "pid": os.getpid(), "payload": list(range(1000))}


def exit_slowly_after_the_result(seconds: float):
    """Rank 0's result, then a process exit that takes `seconds` (as Horovod's and TensorFlow's tear-down can)."""
    import atexit
    import os

    atexit.register(time.sleep, seconds)
    return {"rank": int(os.environ["HOROVOD_RANK"]), "pid": os.getpid(), "payload": list(range(300_000))}


@pytest.mark.slow
@pytest.mark.both_sessions
def test_run_returns_once_the_ranks_wrote_their_results_and_the_exit_runs_in_the_background(spark):
    """The result (several chunks of the stage's output) comes back as soon as every rank wrote it; the rank
    processes' slow exit runs on in the tasks' Python workers, and the next run waits for it there."""
    runner = HorovodRunner(num_proc=2, spark=spark)
    started = time.monotonic()
    first = runner.run(exit_slowly_after_the_result, seconds=8.0)
    took = time.monotonic() - started
    assert first["rank"] == 0 and first["payload"] == list(range(300_000))  # rank 0's result, whole
    assert took < 8.0 + runner.last_run.launch_s, f"run() waited for the processes' exit ({took:.1f}s)"
    second = runner.run(rank_and_pid)  # its tasks wait for the last ranks' exit, then get both task slots
    assert second["rank"] == 0 and second["pid"] != first["pid"]


@pytest.mark.slow
def test_worker_exception_reaches_driver_with_its_traceback(spark):
    runner = HorovodRunner(num_proc=2, spark=spark)
    with pytest.raises(TrainingError) as info:
        runner.run(explode_on_rank_one, message="the rank-one kaboom")
    text = str(info.value)
    assert "explode_on_rank_one" in text
    assert "the rank-one kaboom" in text
    assert "ValueError" in text
    assert info.value.rank == 1


@pytest.mark.slow
def test_failure_while_other_ranks_wait_in_a_collective_does_not_hang(spark):
    runner = HorovodRunner(num_proc=2, spark=spark)
    started = time.time()
    with pytest.raises(TrainingError) as info:
        runner.run(explode_then_others_block, message="rank one gave up")
    assert "explode_then_others_block" in str(info.value)
    assert "rank one gave up" in str(info.value)
    assert info.value.rank == 1
    assert time.time() - started < 120


def exit_on_rank_one(code: int):
    import os

    if os.environ["HOROVOD_RANK"] == "1":
        os._exit(code)  # as a crash in native code or the OOM killer would end it: no traceback, no result
    return "rank 0 finished"


@pytest.mark.slow
def test_rank_process_that_dies_without_a_result_is_reported_with_its_exit_status(spark):
    runner = HorovodRunner(num_proc=2, spark=spark)
    with pytest.raises(TrainingError, match=r"rank 1 .*exited with status 9") as info:
        runner.run(exit_on_rank_one, code=9)
    assert info.value.rank == 1 and info.value.error_type == "RankProcessExit"


def sleep_then(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


class SlowToUnpickle:
    """An argument whose unpickling in the rank process takes `seconds` (the function cannot start before)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __reduce__(self):
        return sleep_then, (self.seconds,)


def process_facts():
    """How many ranks run in a standby process (as the rank process itself knows it), and what they see."""
    import os

    import horovod.tensorflow as hvd
    import tensorflow as tf

    from sparkdl.train import launch as rank_module

    hvd.init()
    early = tf.constant(int(rank_module._in_standby), dtype=tf.int32)
    return {"standby_ranks": int(hvd.allreduce(early, op=hvd.Sum).numpy()), "size": hvd.size(),
            "cycle_time": os.environ.get("HOROVOD_CYCLE_TIME"), "mark": os.environ.get("SPARKDL_TEST_MARK"),
            "omp": os.environ.get("OMP_NUM_THREADS")}


@pytest.mark.slow
def test_ranks_report_whether_they_ran_in_a_standby_and_take_their_jobs_environment(spark):
    # Whether a rank lands in a standby depends on which idle Python worker Spark hands its task (oldest first);
    # what must hold every time: the driver's count is the ranks' own, the job's own variables reach the rank, and
    # a rank never runs in a standby of another environment or when standbys are off.
    HorovodRunner(num_proc=2, spark=spark).run(process_facts)
    runner = HorovodRunner(num_proc=2, spark=spark, env={"HOROVOD_CYCLE_TIME": "3"})
    facts = runner.run(process_facts)
    assert runner.last_run.standby_ranks == facts["standby_ranks"] and facts["size"] == 2
    assert facts["cycle_time"] == "3" and facts["omp"] == "1"

    other_env = HorovodRunner(num_proc=2, spark=spark, env={"SPARKDL_TEST_MARK": "x"})
    facts = other_env.run(process_facts)
    assert facts["standby_ranks"] == 0 and other_env.last_run.standby_ranks == 0 and facts["mark"] == "x"

    off = HorovodRunner(num_proc=2, spark=spark, standby=False)
    facts = off.run(process_facts)
    assert facts["standby_ranks"] == 0 and off.last_run.standby_ranks == 0


def rank_process_facts() -> dict:
    """The rank process's pid and environment; and the priorities: of the thread that imported TensorFlow, of the
    function's thread and of every thread alive after TensorFlow computed (its compute threads made)."""
    import glob
    import os
    import threading

    import tensorflow as tf

    from sparkdl.train import launch as rank_module

    tf.reduce_sum(tf.matmul(tf.ones((64, 64)), tf.ones((64, 64)))).numpy()
    threads = set()
    for stat in glob.glob("/proc/self/task/*/stat"):
        with open(stat) as f:
            threads.add(int(f.read().rsplit(")", 1)[1].split()[16]))  # field 19, nice
    return {"pid": os.getpid(), "cycle_time": os.environ.get("HOROVOD_CYCLE_TIME"),
            "mark": os.environ.get("SPARKDL_TEST_MARK"), "import_nice": rank_module._standby_import_nice,
            "nice": os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), "threads_nice": threads}


def test_the_process_a_rank_leaves_as_standby_runs_the_next_rank_of_the_same_environment():
    import os

    from sparkdl.train import launch
    from sparkdl.train.resources import WorkerSetup

    # no progress channel in the environment: each rank's result comes back in its record
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARKDL_PROGRESS")}
    env.update({"PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""})
    job = launch.RankJob(cloudpickle.dumps((rank_process_facts, {})), WorkerSetup(threads=1, use_gpu=False))
    launch._standby.clear()

    first = launch.run_rank(job, env, 0, launch.rank_process(env), standby=True)
    assert first["ok"] and len(launch._standby) == 1
    standby_pid = launch._standby[0].process.pid
    assert first["result"]["pid"] != standby_pid
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    assert first["result"]["import_nice"] is None and first["result"]["threads_nice"] == {nice}

    job_env = {**env, "HOROVOD_CYCLE_TIME": "3"}  # one job's own variable: the standby serves it
    second = launch.run_rank(job, job_env, 0, launch.rank_process(job_env), standby=True)
    facts = {k: second["result"][k] for k in ("pid", "cycle_time", "mark")}
    assert facts == {"pid": standby_pid, "cycle_time": "3", "mark": None}
    # The standby imported at the lowest priority where it may restore the normal one, at which the function and
    # TensorFlow's threads run.
    assert second["result"]["import_nice"] == (19 if launch._may_restore_priority(nice) else None)
    assert second["result"]["nice"] == nice and second["result"]["threads_nice"] == {nice}

    other = {**env, "SPARKDL_TEST_MARK": "x"}  # another environment: a new process, the unused standby stopped
    left = launch._standby[0].process
    third = launch.run_rank(job, other, 0, launch.rank_process(other), standby=False)
    assert third["result"]["pid"] != left.pid and third["result"]["mark"] == "x"
    assert left.poll() is not None and not launch._standby  # standby=False leaves none


def test_a_standby_serves_rank_environments_that_differ_only_in_one_jobs_variables():
    from sparkdl.train.launch import rendezvous_env, standby_env, standby_key
    from sparkdl.train.progress import ADDR_ENV, TOKEN_ENV

    base = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin"}
    job_a = {**base, "HOROVOD_RANK": "0", "HOROVOD_FUSION_THRESHOLD": "1", ADDR_ENV: "h:1", TOKEN_ENV: "a",
             **rendezvous_env("127.0.0.1", 1234, "lo")}
    job_b = {**base, "HOROVOD_RANK": "1", ADDR_ENV: "h:2", TOKEN_ENV: "b"}
    assert standby_env(job_a) == base
    assert standby_key(job_a) == standby_key(job_b)
    assert standby_key(job_a) != standby_key({**job_a, "OMP_NUM_THREADS": "2"})
    assert standby_key(job_a) != standby_key({**job_a, "CUDA_VISIBLE_DEVICES": "0"})


@pytest.mark.slow
def test_ranks_that_do_not_start_within_start_timeout_are_cancelled_and_free_their_slots(spark):
    runner = HorovodRunner(num_proc=2, spark=spark, start_timeout=8)
    started = time.time()
    with pytest.raises(TrainingError, match=r"only 0 of 2 Horovod process\(es\) started within start_timeout=8s"):
        runner.run(rank_and_pid, _slow=SlowToUnpickle(600))
    assert time.time() - started < 60
    # the cancelled tasks took their rank processes with them: both slots are free for the next job
    assert HorovodRunner(num_proc=2, spark=spark).run(rank_and_pid)["rank"] == 0


def test_slots_follow_horovods_host_assignment_with_partition_zero_as_rank_zero():
    from sparkdl.train.launch import slot_for

    hosts = ["host-a", "host-b", "host-a"]  # the host of each barrier task, in partition order
    slots = [slot_for(hosts, p) for p in range(3)]
    assert [(s.hostname, s.rank, s.local_rank, s.local_size) for s in slots] == [
        ("host-a", 0, 0, 2), ("host-b", 2, 0, 1), ("host-a", 1, 1, 2)]
    assert [(s.cross_rank, s.cross_size) for s in slots] == [(0, 2), (1, 2), (0, 1)]
    assert {s.size for s in slots} == {3}


def test_num_proc_larger_than_task_slots_fails_before_launch(spark):
    runner = HorovodRunner(num_proc=3, spark=spark)
    with pytest.raises(ConfigError, match=r"num_proc=3 .* 2 Spark task slot"):
        runner.run(allreduce_rank_ids)
    assert runner.last_run is None  # nothing was launched


def test_num_proc_must_be_positive():
    with pytest.raises(ConfigError, match="num_proc"):
        HorovodRunner(num_proc=0)


def test_gloo_interface_is_the_one_that_routes_to_the_driver():
    from sparkdl.train.resources import interface_towards

    assert interface_towards("127.0.0.1") == "lo"


def report_epochs_then_allreduce():
    """Rank 0 reports two epochs over the progress channel, then the ranks allreduce (the job's real work)."""
    import os

    from sparkdl.train import progress

    if os.environ["HOROVOD_RANK"] == "0":
        for epoch in range(2):
            progress.report("epoch", epoch=epoch, epochs=2, logs={"loss": 1.0 / (epoch + 1)})
    return allreduce_rank_ids()


@pytest.mark.slow
@pytest.mark.both_sessions
@pytest.mark.parametrize("reachable", [True, False], ids=["channel-reachable", "channel-unreachable"])
def test_progress_reaches_the_client_when_it_can_and_training_goes_on_when_it_cannot(spark, reachable):
    """Under Spark Connect the client may sit where executors cannot reach it: the rendezvous lives in the stage
    and the result comes through the stage's output, so only the progress is missing then."""
    from sparkdl.train.progress import HOST_CONF

    if not reachable:  # advertised under a name no executor can resolve
        spark.conf.set(HOST_CONF, "sparkdl-client-unreachable.invalid")
    try:
        runner = HorovodRunner(num_proc=2, spark=spark, total_epochs=2)
        result = runner.run(report_epochs_then_allreduce)
    finally:
        spark.conf.unset(HOST_CONF)
    assert result["sum"] == 1 and result["size"] == 2
    if reachable:
        assert {"fn_start"} <= set(runner.last_run.events) and runner.last_run.launch_s is not None
    else:
        assert runner.last_run.events == {} and runner.last_run.launch_s is None


def test_the_progress_channel_takes_only_messages_signed_with_the_jobs_secret():
    import socket

    from sparkdl.train.progress import ProgressClient, ProgressServer, signed_line

    with ProgressServer(advertised_host="127.0.0.1") as server:
        host, port = server.address.rsplit(":", 1)
        forged = ProgressClient(server.address, "not-the-secret")
        forged.send({"type": "event", "name": "forged"})
        with socket.create_connection((host, int(port))) as raw:  # an unsigned line, as the old protocol sent
            raw.sendall(b'{"type": "event", "name": "unsigned"}\n')
        ProgressClient(server.address, server.token).send({"type": "event", "name": "signed"}, required=True)
        assert set(server.events) == {"signed"} and server.connected
        assert signed_line(server.token, {"a": 1}).split(b" ", 1)[1] == b'{"a": 1}\n'
    assert server._server is None


def test_the_progress_channel_caps_lines_before_checking_them_and_refuses_replayed_ones():
    import socket

    import psutil

    from sparkdl.train import progress
    from sparkdl.train.progress import ProgressClient, ProgressServer, signed_line

    with ProgressServer(advertised_host="127.0.0.1") as server:
        host, port = server.address.rsplit(":", 1)
        rss = psutil.Process().memory_info().rss
        with socket.create_connection((host, int(port))) as raw:  # 64 MiB without a newline, unauthenticated
            chunk = b"x" * (1 << 20)
            try:
                for _ in range(64):
                    raw.sendall(chunk)
            except OSError:
                pass  # closed by the driver once the line passed the cap
            raw.settimeout(10)
            assert raw.recv(1) == b""
        assert psutil.Process().memory_info().rss - rss < 3 * progress.MAX_LINE_BYTES + (32 << 20)

        client = ProgressClient(server.address, server.token)
        client.send({"type": "event", "name": "first"}, required=True)
        replay = signed_line(server.token, {"type": "event", "name": "replayed", "conn": client._conn, "seq": 1,
                                            "rank": 0, "ack": False})
        unnumbered = signed_line(server.token, {"type": "event", "name": "unnumbered", "rank": 0})
        for line in (replay, unnumbered):
            with socket.create_connection((host, int(port))) as raw:
                raw.sendall(line)
                raw.settimeout(10)
                assert raw.recv(1) == b""  # closed
        client.send({"type": "event", "name": "second"}, required=True)
        client.close()  # the server drains its connections when it closes
        assert set(server.events) == {"first", "second"}


def test_the_cluster_check_names_what_a_barrier_stage_needs():
    from sparkdl.train.resources import cluster_problem

    assert cluster_problem("HorovodRunner", 2, "local[2]", slots=2, parallelism=2, dynamic=False) is None
    too_many = cluster_problem("HorovodRunner", 3, "local[2]", slots=2, parallelism=2, dynamic=False)
    assert "num_proc=3" in too_many and "2 Spark task slot(s)" in too_many
    dynamic = cluster_problem("HorovodRunner", 2, "yarn", slots=None, parallelism=None, dynamic=True)
    assert "spark.dynamicAllocation.enabled=true" in dynamic and "barrier" in dynamic
