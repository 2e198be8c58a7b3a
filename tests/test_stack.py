"""Each stack works together: Horovod on Spark with Gloo, its Keras, and the versions of its constraints file."""
import pytest


@pytest.mark.slow
def test_horovod_spark_run_two_ranks_allreduce(spark):
    import horovod.spark

    def _rank_allreduce():  # nested: cloudpickle ships it by value (the test module is not importable on workers)
        import horovod.tensorflow as hvd
        import tensorflow as tf

        hvd.init()
        total = hvd.allreduce(tf.constant(hvd.rank(), dtype=tf.int64), op=hvd.Sum)
        return {"rank": hvd.rank(), "size": hvd.size(), "sum": int(total.numpy())}

    results = horovod.spark.run(_rank_allreduce, num_proc=2, use_gloo=True, verbose=0)
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert all(r["size"] == 2 and r["sum"] == 1 for r in results)


def _constraints() -> dict[str, str]:
    from pathlib import Path

    from sparkdl import stack

    name = "constraints.txt" if stack.stack_name() == "pinned" else "constraints-current.txt"
    pins = {}
    for line in (Path(__file__).resolve().parents[1] / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            package, version = line.split("==")
            pins[package.strip()] = version.strip()
    return pins


def test_installed_versions_are_this_stacks_pins():
    import importlib.metadata

    pins = _constraints()
    assert {"tensorflow-cpu", "numpy", "pyarrow", "pyspark", "horovod", "deltalake"} <= set(pins)
    optional = {"delta-spark"}  # a pin for users who add the extra; set-up does not install it
    wrong, missing = {}, []
    for package, version in pins.items():
        try:
            installed = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            if package not in optional:
                missing.append(package)
            continue
        if installed != version:
            wrong[package] = (installed, version)
    assert not missing, f"pinned but not installed: {missing}"
    assert not wrong, f"installed != pinned: {wrong}"


def test_horovod_built_with_gloo_against_this_tensorflow():
    import horovod.tensorflow as hvd
    import tensorflow as tf

    assert hvd.gloo_built()
    assert tf.__version__ == _constraints()["tensorflow-cpu"]


def test_tf_keras_is_keras_2_for_horovod_and_the_zoo():
    import horovod.tensorflow.keras as hvd_keras  # the patched backend import on TF >= 2.16
    import tensorflow as tf

    from sparkdl import stack

    keras2 = stack.keras_module("tf_keras")
    assert stack.keras_version("tf_keras").startswith("2.")
    assert tf.keras.Model is keras2.Model  # TF_USE_LEGACY_KERAS=1 set by sparkdl routes tf.keras to Keras 2
    assert hvd_keras.DistributedOptimizer is not None
    assert stack.check() == []


def test_petastorm_usable_exactly_on_the_pinned_stack(tmp_path):
    from sparkdl import stack
    from sparkdl.data.petastorm_io import PetastormDataset
    from sparkdl.errors import SparkDLError

    if stack.stack_name() == "pinned":
        import petastorm

        assert stack.petastorm_available() and petastorm.__version__ == "0.13.1"
    else:
        assert not stack.petastorm_available()
        data = PetastormDataset(files=(str(tmp_path / "part-0.parquet"),), num_rows=1, columns=("features",))
        with pytest.raises(SparkDLError, match="petastorm==0.13.1"):
            data.converter()
