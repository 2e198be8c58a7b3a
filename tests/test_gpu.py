"""GPU code paths: device pinning per Horovod local rank (runs anywhere) and real GPU runs (skipped without one)."""
import json
import os
import shutil
import subprocess
import sys

import pytest


def _apply_in_subprocess(use_gpu: bool, env: dict, gpus: tuple = ()) -> dict:
    """WorkerSetup.apply in a fresh interpreter: it writes os.environ and may configure TensorFlow's threads."""
    code = ("import json, os; from sparkdl.train.resources import WorkerSetup; "
            f"applied = WorkerSetup(threads=3, use_gpu={use_gpu}, gpus={gpus!r}).apply(); "
            "print(json.dumps({k: os.environ.get(k) for k in ('CUDA_VISIBLE_DEVICES', 'TF_FORCE_GPU_ALLOW_GROWTH', "
            "'TF_NUM_INTRAOP_THREADS', 'OMP_NUM_THREADS')}))")
    base = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH")}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_gpu_worker_is_pinned_to_its_local_rank_with_memory_growth():
    seen = _apply_in_subprocess(True, {"HOROVOD_LOCAL_RANK": "1"})
    assert seen == {"CUDA_VISIBLE_DEVICES": "1", "TF_FORCE_GPU_ALLOW_GROWTH": "true", "TF_NUM_INTRAOP_THREADS": "3",
                    "OMP_NUM_THREADS": "3"}


def test_gpu_worker_takes_the_gpus_spark_gave_its_task():
    seen = _apply_in_subprocess(True, {"HOROVOD_LOCAL_RANK": "0"}, gpus=("3",))
    assert seen["CUDA_VISIBLE_DEVICES"] == "3" and seen["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"


def test_cpu_worker_hides_gpus():
    assert _apply_in_subprocess(False, {"CUDA_VISIBLE_DEVICES": "0,1"})["CUDA_VISIBLE_DEVICES"] == ""


def _gpus() -> int:
    """CUDA GPUs this machine has (nvidia-smi), 0 without one."""
    if not shutil.which("nvidia-smi"):
        return 0
    done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in done.stdout.splitlines()) if done.returncode == 0 else 0


def _tensorflow_has_cuda() -> bool:
    """The installed TensorFlow is a CUDA build (`tensorflow[and-cuda]`), not `tensorflow-cpu`; asked in a fresh
    interpreter so collecting this file imports no TensorFlow."""
    code = "import tensorflow as tf; print(tf.test.is_built_with_cuda())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip().endswith("True")


def visible_gpus():
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()
    gpus = tf.config.list_physical_devices("GPU")
    mine = {"rank": hvd.rank(), "gpus": len(gpus), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "growth": bool(gpus) and tf.config.experimental.get_memory_growth(gpus[0])}
    return hvd.allgather_object(mine)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(_gpus() == 0 or not _tensorflow_has_cuda(),
                    reason="needs a CUDA GPU (nvidia-smi) and TensorFlow's CUDA build (SPARKDL_TENSORFLOW=gpu)")
def test_horovod_ranks_each_see_one_gpu(spark):
    """One rank per GPU (up to 2), each pinned to its own GPU with memory growth on."""
    from sparkdl.train import HorovodRunner

    ranks = min(2, _gpus())
    seen = HorovodRunner(num_proc=ranks, use_gpu=True, spark=spark).run(visible_gpus)
    assert sorted(r["rank"] for r in seen) == list(range(ranks))
    assert all(r["gpus"] == 1 and r["growth"] for r in seen), seen
    assert len({r["cuda"] for r in seen}) == ranks, seen
