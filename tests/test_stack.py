"""The pinned stack works together: Horovod on Spark with Gloo, Petastorm on pyarrow 14."""
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


def test_horovod_built_with_gloo_against_this_tensorflow():
    import horovod.tensorflow as hvd
    import tensorflow as tf

    assert hvd.gloo_built()
    assert tf.__version__ == "2.15.1"


def test_pinned_versions():
    import numpy
    import petastorm
    import pyarrow
    import pyspark

    assert pyarrow.__version__ == "14.0.2"
    assert numpy.__version__.startswith("1.26")
    assert pyspark.__version__.startswith("4.0")
    assert petastorm.__version__ == "0.13.1"
