"""What every Horovod rank of `KerasEstimator.fit` shares, whatever its Keras: the job record, the optimizer with its
learning rate scaled by the number of ranks, the warm-up schedule, the rank's shards of the data and rank 0's
reports of epochs and checkpoints to the driver."""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import Any

from sparkdl import stack
from sparkdl.data.dataset import tf_dataset
from sparkdl.data.windows import SeriesWindows, windows_tf_dataset
from sparkdl.metrics import larger_is_better
from sparkdl.train import progress
from sparkdl.train.checkpoints import RankCheckpointing
from sparkdl.train.serialization import model_to_bytes, optimizer_to_bytes


@dataclass
class TrainJob:
    """Everything a rank needs (pickled to the workers once)."""

    model: bytes                      # Keras v3 bytes of the initial (or checkpointed) model
    optimizer: Any                    # a name ("adam") or a Keras optimizer config dict (tf.keras.optimizers.serialize)
    learning_rate: float | None       # base LR for one process (None: the optimizer config's own)
    loss: Any
    metrics: list
    batch_size: int
    epochs: int
    initial_epoch: int
    steps_per_epoch: int
    train_data: Any                   # a sparkdl.data.petastorm_io dataset handle (SeriesWindows: a forecaster's)
    input_shape: tuple
    val_data: Any = None
    validation_steps: int | None = None
    optimizer_state: bytes | None = None   # npz of the optimizer variables (resume)
    seed: int = 0
    warmup_epochs: int = 0
    early_stopping: int | None = None
    monitor: str = "loss"
    callbacks: list = field(default_factory=list)
    checkpointing: RankCheckpointing | None = None  # rank 0 writes the run's checkpoints and epochs log
    steps_per_execution: int = 1      # steps per tf.function call (Keras compile); same SGD steps either way
    flavour: str = "tf_keras"         # the Keras flavour of `model` (sparkdl.stack); keras3 trains in keras3_worker
    backward_passes_per_step: int = 1  # local gradient aggregation: one allreduce per N batches
    compression: str = "none"         # "none" or "fp16": the gradients' dtype on the wire
    initial_step: int = 0             # steps of initial_epoch already taken (resumed from a step checkpoint)
    dp: dict | None = None            # a differentially private fit's plan (sparkdl.train.dp.DPPlan as a dict)
    dp_secret: int = 0                # its sampling key, drawn per fit and never stored (see dp_worker)


def horovod_compression(name: str):
    """Horovod's `Compression` class for a `TrainJob.compression` name."""
    import horovod.tensorflow as hvd

    return {"none": hvd.Compression.none, "fp16": hvd.Compression.fp16}[name]


def trace_allreduce_without_autograph(distributed) -> None:
    """Make the gradient allreduce of Horovod's Keras `DistributedOptimizer` a `tf.function` without AutoGraph.

    Horovod wraps it in a `tf.function` with AutoGraph on, which re-writes Horovod's own Python (plain graph code:
    its branches test Python values, never tensors) on every rank's first trace: about 0.9 s of a one-thread
    rank's first training step. The traced graph is the same. The local-aggregation helper
    (`backward_passes_per_step` > 1) holds the same function and gets the new one too."""
    import tensorflow as tf

    reduce = getattr(distributed, "_allreduce_grads", None)
    if not callable(getattr(reduce, "python_function", None)):  # not a tf.function (built in graph mode)
        return
    plain = tf.function(reduce.python_function, autograph=False)
    distributed._allreduce_grads = plain
    helper = getattr(distributed, "_agg_helper", None)
    for attr in ("_allreduce_grads", "allreduce_grads"):  # graph and eager helper
        if getattr(helper, attr, None) is reduce:
            setattr(helper, attr, plain)


def broadcast_variables(variables, root_rank: int = 0) -> None:
    """Set the `tf.Variable`s `variables` on every rank to `root_rank`'s values, in one collective call.

    Horovod's `broadcast_variables`, as a `tf.function` traced without AutoGraph: Horovod's own is traced with
    AutoGraph, which re-writes Horovod's broadcast on every rank's first call; its Keras callback calls it twice
    (model, then optimizer), about 0.5 s of a one-thread rank's first step in all. Every rank must call it with
    the same variables in the same order."""
    variables = list(variables)
    if variables:
        _broadcast_function()(variables, root_rank)


@functools.cache
def _broadcast_function():
    import tensorflow as tf
    from horovod.tensorflow import broadcast

    def assign_all(values, root):
        for var in values:
            var.assign(broadcast(var, root))

    return tf.function(assign_all, autograph=False)


def make_optimizer(spec, learning_rate: float | None, size: int, flavour: str = "tf_keras"):
    """A Keras optimizer (of `flavour`) from a name or config, its learning rate scaled by `size` (the ranks)."""
    keras = stack.keras_module(flavour)
    if isinstance(spec, str):
        config = {"class_name": spec, "config": {}}
    else:
        config = {"class_name": spec["class_name"], "config": dict(spec.get("config") or {})}
        for key in ("module", "registered_name"):
            if key in spec:
                config[key] = spec[key]
    optimizer = keras.optimizers.get(config)
    base = float(learning_rate) if learning_rate is not None else float(
        keras.ops.convert_to_numpy(optimizer.learning_rate) if flavour == "keras3"
        else keras.backend.get_value(optimizer.learning_rate))
    optimizer.learning_rate = base * size
    return optimizer, base * size


def warmup_learning_rate(scaled_lr: float, size: int, warmup_epochs: int, epoch: int, step: int,
                         steps_per_epoch: int) -> float:
    """Horovod's `LearningRateWarmupCallback` schedule: from `scaled_lr / size` to `scaled_lr` linearly over
    `warmup_epochs` epochs (`epoch` counted from 0, `step` within it), then `scaled_lr`."""
    if warmup_epochs <= 0 or size <= 1:
        return scaled_lr
    progress_epochs = epoch + step / max(1, steps_per_epoch)
    if progress_epochs >= warmup_epochs:
        return scaled_lr
    return scaled_lr / size * (progress_epochs * (size - 1) / warmup_epochs + 1)


def examples_per_epoch(job: TrainJob, size: int) -> int:
    """Examples all ranks train on per epoch (every rank runs the same steps)."""
    return job.steps_per_epoch * job.batch_size * size


def report_first_step() -> None:
    """Rank 0: the `first_step` event, sent from a thread (the first connection must not slow the step down)."""
    threading.Thread(target=progress.report, args=("event",), kwargs={"name": "first_step"}, daemon=True).start()


class EarlyStop:
    """The early-stopping rule of both Keras flavours, on the epoch's averaged logs (so every rank decides the
    same): stop after `patience` epochs without improvement of `name` (its direction from `sparkdl.metrics`); no
    patience, or no such value in the logs, never stops."""

    def __init__(self, name: str, patience: int | None):
        self.name, self.patience = name, patience
        self.mode = max if larger_is_better(name) else min
        self.best, self.wait = None, 0

    def should_stop(self, logs: dict) -> bool:
        if not self.patience or self.name not in logs:
            return False
        value = logs[self.name]
        if self.best is None or self.mode(value, self.best) != self.best:
            self.best, self.wait = value, 0
            return False
        self.wait += 1
        return self.wait >= self.patience


# Rank 0's logs of this job's epochs (a rank process runs one job).
_epoch_logs: dict[int, dict] = {}


def report_epoch(job: TrainJob, epoch: int, logs, seconds: float, examples: int) -> None:
    """Rank 0: an epoch's logs (the numbers among them), its time and examples/s: into the run's epochs log, and
    to the driver (or the executor's log when the driver cannot be reached)."""
    floats = _floats(logs)
    rate = examples / max(seconds, 1e-9)
    _epoch_logs[int(epoch)] = floats
    if job.checkpointing is not None:
        job.checkpointing.log_epoch(epoch, floats, examples_per_s=rate, seconds=seconds)
    progress.report("epoch", epoch=epoch, epochs=job.epochs, logs=floats, seconds=seconds, examples_per_s=rate)


class StepCheckpoints:
    """Rank 0: a checkpoint every `checkpoint_every_steps` steps within an epoch (`RankCheckpointing.every_steps`):
    `after(epoch, step, model, optimizer)` is called with the steps of the epoch taken so far, and writes one each
    time that count passes a multiple (Keras may report steps in groups of `steps_per_execution`). None at an
    epoch's end: the end-of-epoch checkpoint covers it."""

    def __init__(self, job: TrainJob):
        self.job = job
        self.every = (job.checkpointing.every_steps or 0) if job.checkpointing is not None else 0
        self._written = (-1, 0)  # (epoch, step) of the last one

    def after(self, epoch: int, step: int, model, optimizer) -> None:
        if not self.every or step >= self.job.steps_per_epoch:
            return
        last = self._written[1] if self._written[0] == epoch else (self.job.initial_step
                                                                   if epoch == self.job.initial_epoch else 0)
        if step // self.every <= last // self.every:
            return
        self._written = (epoch, step)
        self.job.checkpointing.write_step(epoch, step, model_to_bytes(model), optimizer_to_bytes(optimizer),
                                          _epoch_logs)
        progress.report("event", name="step_checkpoint", epoch=epoch, step=step)


def report_checkpoint(job: TrainJob, epoch: int, logs, model, optimizer) -> None:
    """Rank 0: write the model and optimizer state after `epoch` into the run's folder when a checkpoint is due."""
    if job.checkpointing is None or (epoch + 1) % max(1, int(job.checkpointing.every)):
        return
    _epoch_logs[int(epoch)] = _floats(logs)
    job.checkpointing.write(epoch, model_to_bytes(model), optimizer_to_bytes(optimizer), _epoch_logs)


def _floats(logs) -> dict:
    return {k: float(v) for k, v in (logs or {}).items() if _is_number(v)}


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def job_datasets(job: TrainJob, rank: int, size: int, first_epoch: int | None = None, epochs: int | None = None,
                 skip: int = 0):
    """This rank's shard of the training data (shuffled) and of the validation data (None without one), for
    `epochs` epochs from `first_epoch` (default: the job's remaining ones), the training data without its first
    `skip` batches (the steps a step checkpoint had taken). Each epoch reads what it would have read in an
    uninterrupted run."""
    first = job.initial_epoch if first_epoch is None else first_epoch
    count = job.epochs - first if epochs is None else epochs
    if isinstance(job.train_data, SeriesWindows):  # a forecaster's
        reader = windows_tf_dataset
    else:
        reader = functools.partial(_features_and_targets, with_label=job.train_data.label_column is not None)
    train = reader(job.train_data, rank, size, job.batch_size, job.input_shape, shuffle=True, seed=job.seed,
                   epochs=count, first_epoch=first)
    if skip:
        train = train.skip(skip)
    val = None
    if job.val_data is not None and job.validation_steps:
        val = reader(job.val_data, rank, size, job.batch_size, job.input_shape, shuffle=False, seed=job.seed,
                     epochs=count)
    return train, val


def _features_and_targets(data, *args, with_label: bool, **kwargs):
    """`tf_dataset` of (features, label) batches; without a label column (an anomaly detector's cache) the target is
    the features themselves: the model learns to reconstruct its input."""
    dataset = tf_dataset(data, *args, with_label=with_label, **kwargs)
    return dataset if with_label else dataset.map(lambda x: (x, x))
