"""TensorFlow sized to the process it runs in: the one set-up used by Horovod training ranks and scoring workers.

Training (`sparkdl.train.resources.WorkerSetup`) decides threads and devices on the driver and puts them in the
environment of each Horovod process (`thread_env`, `CUDA_VISIBLE_DEVICES` from the task's GPUs or the local rank);
scoring runs in Spark's Python workers, where the running task says it (`spark.task.cpus`, the task's GPUs).
`configure_tensorflow()` applies either through TensorFlow's API, once per process, before the first op:

* intra-op threads: `TF_NUM_INTRAOP_THREADS` when set, else the task's `spark.task.cpus` ($SPARKDL_SCORE_THREADS
  overrides it); inter-op threads: `TF_NUM_INTEROP_THREADS` when set, else min(2, intra-op);
* GPUs: when TensorFlow is not imported yet and the running Spark task was given GPUs, `CUDA_VISIBLE_DEVICES` =
  their addresses; memory growth on every visible GPU, so processes sharing a GPU do not each reserve all of it.

A reused worker keeps the threads and devices of its first call. Nothing here imports TensorFlow until
`configure_tensorflow` runs.
"""
from __future__ import annotations

import os
import sys
import threading

from sparkdl.log import get_logger

log = get_logger("tf_runtime")

_LOCK = threading.Lock()
_APPLIED: dict | None = None


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that cap the math libraries and TensorFlow at `threads` threads."""
    value = str(int(threads))
    return {"OMP_NUM_THREADS": value, "MKL_NUM_THREADS": value, "OPENBLAS_NUM_THREADS": value,
            "TF_NUM_INTRAOP_THREADS": value, "TF_NUM_INTEROP_THREADS": value}


def task_cpus(default: int = 1) -> int:
    """$SPARKDL_SCORE_THREADS, else `spark.task.cpus` of the running Spark task, else `default`."""
    env = os.environ.get("SPARKDL_SCORE_THREADS")
    if env:
        return max(1, int(env))
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None:
            return max(1, int(ctx.cpus()))
    except Exception:  # noqa: BLE001 - outside a task
        pass
    return default


def task_gpus() -> list[str]:
    """GPU addresses Spark gave the running task; empty outside a task or without GPU scheduling."""
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        info = ctx.resources().get("gpu") if ctx is not None else None
        return [str(a) for a in info.addresses] if info is not None else []
    except Exception:  # noqa: BLE001
        return []


def configure_tensorflow() -> dict:
    """Apply threads and GPU settings to TensorFlow (see the module docstring); returns what was applied. The first
    call in a process does the work; later calls return the same record."""
    global _APPLIED
    with _LOCK:
        if _APPLIED is not None:
            return dict(_APPLIED)
        if "tensorflow" not in sys.modules:  # a Spark task's own GPUs (Horovod ranks have no TaskContext)
            gpus = task_gpus()
            if gpus:
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        intra = int(os.environ.get("TF_NUM_INTRAOP_THREADS") or task_cpus())
        inter = int(os.environ.get("TF_NUM_INTEROP_THREADS") or min(2, intra))
        applied: dict = {}
        try:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
            tf.config.threading.set_inter_op_parallelism_threads(inter)
            applied["tf_threads"] = intra
        except RuntimeError as exc:  # the TF runtime is already initialized: its pools stay
            log.debug("TensorFlow thread counts not set through the API (%s); the environment applies", exc)
        if os.environ.get("CUDA_VISIBLE_DEVICES", None) != "":
            gpus = tf.config.list_physical_devices("GPU")
            for gpu in gpus:
                try:
                    tf.config.experimental.set_memory_growth(gpu, True)
                except RuntimeError as exc:
                    log.warning("could not enable memory growth on %s: %s", gpu.name, exc)
            if gpus:
                applied["gpus"] = [g.name for g in gpus]
        _APPLIED = applied
        return dict(applied)
