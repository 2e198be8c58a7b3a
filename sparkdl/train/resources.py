"""What a Horovod job may use: task slots, cores per process, GPUs, and the network interface.

Driver side: `check_cluster`, `task_slots`, `cores_per_task`, `wants_gpu` read the Spark configuration before a
launch. Task side: `interface_towards` picks the interface Gloo binds to. Rank side: `WorkerSetup.apply` runs first
in every Horovod process and pins threads and devices before the training function touches TensorFlow
(`sparkdl.tf_runtime`, shared with scoring, applies them to TensorFlow).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from sparkdl.errors import ConfigError, TrainingError
from sparkdl.log import get_logger
from sparkdl.session_kind import conf_get, default_parallelism, dynamic_allocation, local_cores, master
from sparkdl.tf_runtime import configure_tensorflow, thread_env

log = get_logger("train")



def task_slots(spark) -> int | None:
    """How many Spark tasks can run at once: in local mode `local[N]`'s N, else the default parallelism divided by
    `spark.task.cpus`; None when a Spark Connect session's settings do not say (`session_kind.default_parallelism`).

    Horovod needs one concurrently running Spark task per process; asking for more makes the launch wait for
    slots that never come.
    """
    cores = local_cores(master(spark))
    if cores is not None:
        return cores
    parallelism = default_parallelism(spark)
    if parallelism is None:
        return None
    task_cpus = max(1, int(float(conf_get(spark, "spark.task.cpus", "1"))))
    return max(1, parallelism // task_cpus)


def check_cluster(spark, num_proc: int, who: str = "HorovodRunner") -> int | None:
    """Fail fast when the cluster cannot run `num_proc` barrier tasks at once; returns the task slots (None when
    the session does not tell them).

    Raises:
        ConfigError: dynamic allocation is on (Spark refuses barrier stages there), or `num_proc` is more than the
            task slots (Spark would retry the barrier stage for minutes before giving up).
    """
    slots = task_slots(spark)
    problem = cluster_problem(who, num_proc, master(spark), slots, default_parallelism(spark),
                              dynamic_allocation(spark), conf_get(spark, "spark.task.cpus", "1"))
    if problem:
        raise ConfigError(problem)
    if slots is None:
        log.warning("%s: the session does not tell its task slots (master %s); launching %d process(es) and "
                    "trusting the cluster to have them", who, master(spark), num_proc)
    return slots


def cluster_problem(who: str, num_proc: int, master_url: str, slots: int | None, parallelism: int | None,
                    dynamic: bool, task_cpus: str | None = "1") -> str | None:
    """What keeps a cluster of these settings from running `num_proc` barrier tasks at once (None: nothing)."""
    if dynamic:
        return (f"{who}: num_proc={num_proc} Horovod processes need a barrier stage, which Spark refuses while "
                f"dynamic allocation is on (spark.dynamicAllocation.enabled=true on master {master_url}); turn it "
                f"off for this cluster or job, with a fixed number of executors")
    if slots is not None and num_proc > slots:
        return (f"{who}: num_proc={num_proc} is more than the {slots} Spark task slot(s) available (master "
                f"{master_url}, default parallelism {parallelism}, spark.task.cpus {task_cpus}); every Horovod "
                f"process needs its own concurrently running task. Lower num_proc or give Spark more cores.")
    return None


def cores_per_task(spark, num_proc: int) -> int:
    """Threads one Horovod process may use without oversubscribing its host.

    Local mode: the host's cores (bounded by local[N]) shared by `num_proc` processes. Cluster: `spark.task.cpus`.
    """
    cores = local_cores(master(spark))
    if cores is not None:
        return max(1, min(cores, os.cpu_count() or cores) // max(1, num_proc))
    return max(1, int(float(conf_get(spark, "spark.task.cpus", "1"))))


def wants_gpu(spark) -> bool:
    """True when Spark tasks are given GPUs (`spark.task.resource.gpu.amount` > 0)."""
    amount = conf_get(spark, "spark.task.resource.gpu.amount")
    try:
        return amount is not None and float(amount) > 0
    except ValueError:
        return False


def interface_towards(host: str) -> str:
    """The name of this host's network interface that routes to `host` (where Gloo's rendezvous server runs).

    Raises:
        TrainingError: no interface of this host carries the address of that route.
    """
    import socket

    import psutil

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 9))  # UDP: no packet is sent, the kernel only picks the route
        address = probe.getsockname()[0]
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == address for a in addresses):
            return name
    raise TrainingError(f"no network interface of {socket.gethostname()} has the address {address} that routes "
                        f"to the driver {host}; set HOROVOD_GLOO_IFACE in the runner's env")


@dataclass(frozen=True)
class WorkerSetup:
    """Settings applied in each Horovod process before the user function runs.

    Attributes:
        threads: intra/inter-op threads (and OMP threads) of the process.
        use_gpu: pin the process to its GPU (`gpus`, else the local rank); otherwise hide all GPUs.
        gpus: the GPU addresses Spark gave the rank's task (set in the task).
    """

    threads: int
    use_gpu: bool
    gpus: tuple[str, ...] = ()

    def apply(self) -> dict:
        """Pin threads and devices through the environment (TensorFlow reads TF_NUM_INTRAOP_THREADS,
        TF_NUM_INTEROP_THREADS and TF_FORCE_GPU_ALLOW_GROWTH when it starts), without importing TensorFlow:
        a function that does not use it does not pay for its import. Returns what was set."""
        os.environ.update(thread_env(self.threads))
        local_rank = int(os.environ.get("HOROVOD_LOCAL_RANK", "0"))
        if self.use_gpu:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus) if self.gpus else str(local_rank)
            os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        applied = {"threads": self.threads, "CUDA_VISIBLE_DEVICES": os.environ["CUDA_VISIBLE_DEVICES"]}
        if "tensorflow" in sys.modules:  # already imported (e.g. by unpickling the function): configure it now
            applied.update(configure_tensorflow())
        return applied
