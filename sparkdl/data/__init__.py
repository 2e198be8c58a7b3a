"""Feature specs and validation, preprocessing, Petastorm conversion and tf.data per Horovod rank.

Typical flow (driver)::

    validate(spec, df)                                  # one pass, one ValidationError listing every problem
    train_df, val_df = split(df, 0.2, seed=0)
    prep = Preprocessor(spec).fit(train_df)             # one aggregation (+ a small vocabulary job)
    train = to_petastorm(train_df, prep, snapshot, key={"split": "train", "validation": 0.2, "seed": 0})

and on every Horovod worker::

    ds = tf_dataset(train, hvd.rank(), hvd.size(), batch_size, prep.signature.input_shape, epochs=epochs)
    model.fit(ds, epochs=epochs, steps_per_epoch=steps_per_epoch(train, hvd.size(), batch_size))
"""
from sparkdl.data.dataset import iterate_batches, shard_plan, split, steps_per_epoch, tf_dataset
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
)
from sparkdl.data.preprocess import FeatureSlots, PreparedBatch, Preprocessor, PreprocessorModel
from sparkdl.data.spec import Feature, FeatureSpec, Label, ModelSignature
from sparkdl.data.validation import validate

__all__ = [
    "Feature", "FeatureSpec", "Label", "ModelSignature", "validate",
    "Preprocessor", "PreprocessorModel", "PreparedBatch", "FeatureSlots",
    "PetastormDataset", "CacheInfo", "to_petastorm", "convert", "from_snapshot", "cache_key", "cleanup",
    "list_caches", "parent_cache_dir",
    "tf_dataset", "steps_per_epoch", "split", "shard_plan", "iterate_batches",
]
