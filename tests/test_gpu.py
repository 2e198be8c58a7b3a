"""GPU code paths: device pinning per Horovod local rank (runs anywhere) and real GPU runs (skipped without one)."""
import json
import os
import shutil
import subprocess
import sys

import pytest


def _has_gpu() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


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


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not _has_gpu(), reason="needs a CUDA GPU (nvidia-smi) and tensorflow[and-cuda]")
def test_horovod_ranks_each_see_one_gpu(spark):
    from sparkdl.train import HorovodRunner

    def visible():
        import horovod.tensorflow as hvd
        import tensorflow as tf

        hvd.init()
        gpus = tf.config.list_physical_devices("GPU")
        return {"rank": hvd.rank(), "gpus": len(gpus), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "growth": bool(gpus) and tf.config.experimental.get_memory_growth(gpus[0])}

    result = HorovodRunner(num_proc=1, use_gpu=True).run(visible)
    assert result["gpus"] == 1 and result["growth"], result
