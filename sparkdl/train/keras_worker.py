"""What every Horovod rank runs for `KerasEstimator.fit`: the Keras training loop and its callbacks.

All ranks start from the same state: the model bytes built on the driver (or a checkpoint's model and optimizer
state, on resume), and rank 0's variables broadcast after the first call of the train function on top. Rank 0
reports each epoch to the driver and sends the checkpoint of each epoch through the progress channel (acknowledged
once written on the driver), so checkpoints land in the driver's work folder on a real cluster too.
"""
from __future__ import annotations

import time

from sparkdl import stack
from sparkdl.tf_runtime import configure_tensorflow
from sparkdl.train import heartbeat, progress
from sparkdl.train.dp_worker import train_dp_on_rank
from sparkdl.train.keras3_worker import train_keras3_on_rank
from sparkdl.train.rank_job import (
    EarlyStop,
    StepCheckpoints,
    TrainJob,
    broadcast_variables,
    examples_per_epoch,
    horovod_compression,
    job_datasets,
    make_optimizer,
    report_checkpoint,
    report_epoch,
    report_first_step,
    trace_allreduce_without_autograph,
    warmup_learning_rate,
)
from sparkdl.train.serialization import (
    model_from_bytes,
    model_to_bytes,
    restore_optimizer,
)


def _callbacks_base():
    return stack.keras_module("tf_keras").callbacks.Callback


class EpochReporter(_callbacks_base()):
    """Rank 0: sends one `epoch` message per epoch (averaged logs, examples/s) and the first-step event."""

    def __init__(self, job, examples_per_epoch: int):
        super().__init__()
        self.job, self.examples_per_epoch = job, examples_per_epoch
        self._start = None
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self._first:
            self._first = False
            report_first_step()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - (self._start or time.perf_counter())
        report_epoch(self.job, epoch, logs, seconds, self.examples_per_epoch)


class LearningRateWarmup(_callbacks_base()):
    """Every rank: the learning rate of `warmup_learning_rate`, set at the start of every epoch and before every
    call of the train function; logs `learning_rate` at each epoch's end. Unlike Horovod's
    `LearningRateWarmupCallback` it stays exact with `steps_per_execution` > 1 (Keras then calls batch hooks once
    per k steps) and in resumed runs: after warm-up the rate is `scaled_lr` in every epoch."""

    def __init__(self, scaled_lr: float, size: int, warmup_epochs: int, steps_per_epoch: int,
                 skipped: tuple[int, int] = (0, 0)):
        super().__init__()
        self.scaled_lr, self.size, self.warmup_epochs = scaled_lr, size, warmup_epochs
        self.steps_per_epoch, self._epoch = steps_per_epoch, 0
        self.skipped = skipped  # (epoch, steps): a resumed epoch's batches count from its first untaken step
        self._backend = stack.keras_module("tf_keras").backend  # looked up once: _set runs every k steps

    def _set(self, step: int) -> None:
        step += self.skipped[1] if self._epoch == self.skipped[0] else 0
        rate = warmup_learning_rate(self.scaled_lr, self.size, self.warmup_epochs, self._epoch, step,
                                    self.steps_per_epoch)
        self._backend.set_value(self.model.optimizer.learning_rate, rate)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._set(0)

    def on_train_batch_begin(self, batch, logs=None):
        self._set(batch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self._backend.get_value(self.model.optimizer.learning_rate))


class Heartbeat(_callbacks_base()):
    """Every rank: a heartbeat (`sparkdl.train.heartbeat`) after every training and validation call and epoch."""

    def on_train_batch_end(self, batch, logs=None):
        heartbeat.beat()

    def on_test_batch_end(self, batch, logs=None):
        heartbeat.beat()

    def on_epoch_end(self, epoch, logs=None):
        heartbeat.beat()


class BroadcastInitialState(_callbacks_base()):
    """Every rank: after the first call of the train function, the model's and the optimizer's variables become
    `root_rank`'s, as with Horovod's `BroadcastGlobalVariablesCallback` (after the first call, because the
    optimizer's slots may only exist then), in one broadcast without AutoGraph (`rank_job.broadcast_variables`)."""

    def __init__(self, root_rank: int = 0):
        super().__init__()
        self.root_rank = root_rank
        self.done = False

    def on_train_batch_end(self, batch, logs=None):
        if self.done:
            return
        optimizer = self.model.optimizer
        slots = optimizer.variables() if callable(optimizer.variables) else optimizer.variables
        broadcast_variables(list(self.model.variables) + list(slots), self.root_rank)
        self.done = True


class EarlyStopping(_callbacks_base()):
    """Every rank: `rank_job.EarlyStop` (the rule the Keras 3 loop applies too) on the epoch's averaged logs. After
    Horovod's `MetricAverageCallback` in the list, so the logs it sees are the same on every rank."""

    def __init__(self, monitor: str, patience: int):
        super().__init__()
        self.rule = EarlyStop(monitor, patience)

    def on_epoch_end(self, epoch, logs=None):
        if self.rule.should_stop(dict(logs or {})):
            self.model.stop_training = True


class RunCheckpoint(_callbacks_base()):
    """Rank 0: after every `checkpoint_every`-th epoch, write the model and optimizer state into the run's folder."""

    def __init__(self, job):
        super().__init__()
        self.job = job

    def on_epoch_end(self, epoch, logs=None):
        report_checkpoint(self.job, epoch, logs, self.model, self.model.optimizer)


class StepCheckpoint(_callbacks_base()):
    """Rank 0: a checkpoint every `checkpoint_every_steps` steps within an epoch (`rank_job.StepCheckpoints`); the
    steps of a resumed epoch count from the checkpoint it resumed from."""

    def __init__(self, job):
        super().__init__()
        self.job, self.steps, self._epoch = job, StepCheckpoints(job), 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        skipped = self.job.initial_step if self._epoch == self.job.initial_epoch else 0
        self.steps.after(self._epoch, batch + 1 + skipped, self.model, self.model.optimizer)


def build_before_first_trace(model, element_spec) -> None:
    """Create the optimizer's slots and the compiled loss's and metrics' variables of a compiled tf_keras `model`
    before `fit` traces its training step. Keras creates them inside the first trace, and a `tf.function` whose
    first trace creates variables is traced again: the step was traced four times instead of two (AutoGraph's
    `steps_per_execution` loop traces its body twice), about 0.45 s of a one-thread rank's first call.

    `element_spec` is the training dataset's `(features, label)` spec. The loss and metrics are built from a
    batch of two zero rows: Keras picks a metric's class (e.g. sparse or binary accuracy) from the ranks and last
    dimensions of labels and predictions, and two rows compare with every last dimension as the unknown batch
    dimension of the first step would (one row would look binary). Nothing trains and no random number is drawn.
    A failure leaves the rest to Keras's own build in the first step."""
    import tensorflow as tf

    build = getattr(model.optimizer, "build", None)  # a legacy optimizer has none: it builds in the first step
    try:
        if callable(build):
            build(model.trainable_variables)
        x_spec, y_spec = element_spec
        x = tf.zeros([2] + x_spec.shape.as_list()[1:], x_spec.dtype)
        y = tf.zeros([2] + y_spec.shape.as_list()[1:], y_spec.dtype)
        y_pred = model(x, training=False)
        model.compiled_loss.build(y_pred)
        model.compiled_metrics.build(y_pred, y)
    except Exception:  # noqa: BLE001 - an optimisation only: what is not built here is built in the first step
        pass


def train_on_rank(job: TrainJob) -> dict:
    """The Horovod function of `KerasEstimator.fit`. Returns (on rank 0) the trained model bytes and history.

    A tf_keras model trains with `model.fit` and Horovod's Keras wrappers; a Keras 3 model with sparkdl's own
    step (`keras3_worker`)."""
    configure_tensorflow()
    progress.mark("tensorflow_imported")
    if job.dp is not None:
        return train_dp_on_rank(job)
    if job.flavour == "keras3":
        import horovod.tensorflow

        horovod.tensorflow.init()
        progress.mark("horovod_initialized")
        return train_keras3_on_rank(job)
    stack.require_legacy_tf_keras()
    import horovod.tensorflow.keras as hvd

    hvd.init()
    progress.mark("horovod_initialized")
    rank, size = hvd.rank(), hvd.size()
    keras = stack.keras_module("tf_keras")
    keras.utils.set_random_seed(job.seed + rank)

    model = model_from_bytes(job.model)
    optimizer, scaled_lr = make_optimizer(job.optimizer, job.learning_rate, size)
    # The allreduce runs inside each step's gradient computation, so several steps per tf.function call
    # (steps_per_execution) keep one allreduce per step: synchronous SGD as with 1. The broadcast callback runs
    # after the first call (N steps), which is safe because every rank starts from the same model bytes and
    # optimizer state (checked: identical weights on both ranks after training with N=8).
    # backward_passes_per_step > 1: Horovod's local aggregation helper sums N batches' gradients per rank, then one
    # allreduce (averaged over the N passes too) and one optimizer update; the other N-1 steps only accumulate.
    distributed = hvd.DistributedOptimizer(optimizer, compression=horovod_compression(job.compression),
                                           backward_passes_per_step=max(1, int(job.backward_passes_per_step)),
                                           average_aggregated_gradients=True)
    trace_allreduce_without_autograph(distributed)
    model.compile(optimizer=distributed, loss=job.loss, metrics=list(job.metrics),
                  steps_per_execution=max(1, int(job.steps_per_execution)))
    if job.optimizer_state is not None:
        restore_optimizer(model.optimizer, model.trainable_variables, job.optimizer_state)

    progress.mark("model_ready")
    skipped = int(job.initial_step or 0)  # resumed from a step checkpoint: the rest of that epoch comes first
    train, val = job_datasets(job, rank, size, epochs=1 if skipped else None, skip=skipped)
    build_before_first_trace(model, train.element_spec)
    progress.mark("data_ready")

    callbacks = [Heartbeat(), BroadcastInitialState(0), hvd.callbacks.MetricAverageCallback()]
    callbacks.append(LearningRateWarmup(scaled_lr, size, job.warmup_epochs, job.steps_per_epoch,
                                        skipped=(job.initial_epoch, skipped)))
    if job.early_stopping:
        callbacks.append(EarlyStopping(job.monitor, int(job.early_stopping)))
    callbacks += list(job.callbacks)
    if rank == 0:
        examples = examples_per_epoch(job, size)
        callbacks += [EpochReporter(job, examples), RunCheckpoint(job), StepCheckpoint(job)]

    def fit(train, val, first: int, last: int, steps: int):
        return model.fit(train, epochs=last, initial_epoch=first, steps_per_epoch=steps, validation_data=val,
                         validation_steps=job.validation_steps if val is not None else None, callbacks=callbacks,
                         verbose=0)

    if not skipped:
        histories = [fit(train, val, job.initial_epoch, job.epochs, job.steps_per_epoch)]
    else:  # the resumed epoch's remaining steps (its logs average those), then the epochs after it
        histories = [fit(train, val, job.initial_epoch, job.initial_epoch + 1, job.steps_per_epoch - skipped)]
        if job.initial_epoch + 1 < job.epochs and not model.stop_training:
            train, val = job_datasets(job, rank, size, first_epoch=job.initial_epoch + 1)
            histories.append(fit(train, val, job.initial_epoch + 1, job.epochs, job.steps_per_epoch))
    if rank != 0:
        return {}
    progress.report("event", name="train_end")
    merged: dict[str, list[float]] = {}
    for history in histories:
        for key, values in history.history.items():
            merged.setdefault(key, []).extend(float(x) for x in values)
    return {"model": model_to_bytes(model), "history": merged,
            "epochs": [int(e) for history in histories for e in history.epoch], "scaled_learning_rate": scaled_lr,
            "size": size}

