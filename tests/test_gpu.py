"""GPU code paths: device pinning per Horovod local rank (runs anywhere) and real GPU runs (skipped without one)."""
import os
import shutil
import subprocess

import pytest

from sparkdl.train.resources import WorkerSetup


def _has_gpu() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


WORKER_ENV = ("CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


@pytest.fixture(autouse=True)
def restore_worker_env(monkeypatch):
    """WorkerSetup.apply writes os.environ: register every key so monkeypatch restores it."""
    for key in WORKER_ENV:
        monkeypatch.delenv(key, raising=False)


def test_gpu_worker_is_pinned_to_its_local_rank_with_memory_growth(monkeypatch):
    monkeypatch.setenv("HOROVOD_LOCAL_RANK", "1")
    applied = WorkerSetup(threads=3, use_gpu=True).apply()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1" and applied["CUDA_VISIBLE_DEVICES"] == "1"
    assert os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert os.environ["TF_NUM_INTRAOP_THREADS"] == "3" and os.environ["OMP_NUM_THREADS"] == "3"


def test_cpu_worker_hides_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    WorkerSetup(threads=1, use_gpu=False).apply()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


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
