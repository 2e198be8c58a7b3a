"""Feature specs and validation, preprocessing, Petastorm conversion and tf.data per Horovod rank.

Typical flow (driver)::

    is_val = validation_rows(df, 0.2, seed=0)           # the split as a column (a hash of each row and the seed)
    prep = Preprocessor(spec).fit(df, validate=True, rows=~is_val)   # ONE pass: every row checked, statistics of
                                                        # the training rows (+ a small vocabulary job)
    train, val = to_petastorm_split(df, prep, snapshot, is_val, key={"validation": 0.2, "seed": 0})  # ONE write

and on every Horovod worker::

    ds = tf_dataset(train, hvd.rank(), hvd.size(), batch_size, prep.signature.input_shape, epochs=epochs)
    model.fit(ds, epochs=epochs, steps_per_epoch=steps_per_epoch(train, hvd.size(), batch_size))

A forecaster's data is a long table: `build_series` writes each entity's series once to a series cache (one Spark
job), and `windows_tf_dataset` slices the windows of a `SeriesWindows` period out of it on every rank.
"""
from sparkdl.data.dataset import iterate_batches, shard_plan, split, steps_per_epoch, tf_dataset, validation_rows
from sparkdl.data.forecast import ForecastSpec, Frequency
from sparkdl.data.forecast_fit import ForecastPreparation
from sparkdl.data.kinds import FeatureKind, feature_kind, register_kind
from sparkdl.data.petastorm_io import (
                                       CacheInfo,
                                       PetastormDataset,
                                       cache_key,
                                       cleanup,
                                       convert,
                                       from_snapshot,
                                       list_caches,
                                       parent_cache_dir,
                                       to_petastorm,
                                       to_petastorm_split,
)
from sparkdl.data.preprocess import FeatureSlots, PreparedBatch, Preprocessor, PreprocessorModel
from sparkdl.data.series import SeriesInfo, build_series
from sparkdl.data.spec import Feature, FeatureSpec, Label, ModelSignature
from sparkdl.data.validation import validate, validation_plan
from sparkdl.data.windows import SeriesWindows, windows_tf_dataset

__all__ = [
    "Feature", "FeatureSpec", "Label", "ModelSignature", "validate", "validation_plan",
    "Preprocessor", "PreprocessorModel", "PreparedBatch", "FeatureSlots",
    "PetastormDataset", "CacheInfo", "to_petastorm", "to_petastorm_split", "convert", "from_snapshot", "cache_key",
    "cleanup", "list_caches", "parent_cache_dir",
    "tf_dataset", "steps_per_epoch", "split", "validation_rows", "shard_plan", "iterate_batches",
    "ForecastSpec", "Frequency", "ForecastPreparation", "SeriesInfo", "build_series", "SeriesWindows",
    "windows_tf_dataset", "FeatureKind", "feature_kind", "register_kind",
]
