"""What every Horovod rank runs for a Keras 3 model: sparkdl's own synchronous data-parallel training step.

Keras 3 cannot go through Horovod's Keras wrappers (`'Variable' object has no attribute 'ref'`, horovod#4290) nor
through `tf.distribute` in `model.fit` (keras-team/keras#20585). What works, unpatched, is a custom step over the
*underlying* `tf.Variable`s (`v.value`): `hvd.DistributedGradientTape` averages the gradients of those variables
across ranks and one broadcast (`rank_job.broadcast_variables`) gives every rank rank 0's starting state. On top of
that step this module keeps the contract of `keras_worker.train_on_rank` (the tf_keras path): the same `TrainJob`,
learning rate scaled by the number of ranks with Horovod's warm-up formula, metrics averaged across ranks every
epoch, early stopping on the averaged monitor, per-epoch checkpoints through the progress channel, resume from a
checkpoint's model and optimizer state, and the same returned history. User callbacks (Keras 3
`keras.callbacks.Callback`) get `on_train_begin`, `on_epoch_begin`, `on_epoch_end` (with the averaged logs) and
`on_train_end`, and may set `model.stop_training`; batch-level hooks are not called.

`broadcast_state` and `make_train_step` are the two pieces for a `HorovodRunner` function of one's own:

    >>> def train(epochs):
    ...     import horovod.tensorflow as hvd, keras
    ...     from sparkdl.train.keras3_worker import broadcast_state, make_train_step
    ...     hvd.init()
    ...     model, optimizer = build_model(), keras.optimizers.Adam(1e-3 * hvd.size())
    ...     step = make_train_step(model, optimizer, keras.losses.BinaryCrossentropy())
    ...     broadcast_state(model, optimizer)
    ...     for x, y in shard_of_the_data(hvd.rank(), hvd.size()):
    ...         step(x, y)
    >>> HorovodRunner(num_proc=2).run(train, epochs=3)
"""
from __future__ import annotations

import time

from sparkdl.train import heartbeat, progress
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
    warmup_learning_rate,
)
from sparkdl.train.serialization import model_from_bytes, model_to_bytes, restore_optimizer

__all__ = ["broadcast_state", "make_train_step", "train_keras3_on_rank"]


def broadcast_state(model, optimizer=None, root_rank: int = 0) -> None:
    """Give every rank `root_rank`'s variables of a Keras 3 `model` (and of a built `optimizer`), through their
    underlying `tf.Variable`s. Call it after `make_train_step` (which builds the optimizer) and before training."""
    optimizer_variables = list(optimizer.variables) if optimizer is not None else []
    broadcast_variables([v.value for v in list(model.variables) + optimizer_variables], root_rank=root_rank)


def labels_like(y, pred):
    """`y` shaped for a Keras 3 loss against `pred`: (batch,) labels become (batch, 1) for a one-unit output
    (tf_keras losses do this themselves; Keras 3 refuses the rank mismatch, or for mse broadcasts it silently
    to (batch, batch))."""
    import tensorflow as tf

    return tf.expand_dims(y, -1) if y.shape.rank == 1 and pred.shape.rank == 2 and pred.shape[-1] == 1 else y


def make_train_step(model, optimizer, loss_fn, metrics=(), loss_mean=None, backward_passes_per_step: int = 1,
                    compression: str = "none"):
    """A `tf.function` `step(x, y) -> loss` of synchronous data-parallel SGD for a Keras 3 `model`: forward pass,
    `loss_fn(y, pred)` plus the model's own losses, gradients of the underlying variables averaged across ranks by
    `hvd.DistributedGradientTape`, applied by `optimizer` (built here when it is not yet). `metrics` (Keras 3
    metric objects) and `loss_mean` (a `keras.metrics.Mean`) are updated with this rank's batch.

    `backward_passes_per_step` N > 1 aggregates locally as Horovod's optimizer does: each call adds its gradients
    to per-variable accumulators, and every Nth call averages them over the N passes and the ranks (one grouped
    allreduce), applies them and clears the accumulators. `compression` ("none" or "fp16") is the allreduce's
    wire dtype."""
    import horovod.tensorflow as hvd
    import tensorflow as tf

    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    trainable = [v.value for v in model.trainable_variables]  # the tf.Variables Horovod can reduce
    wire = horovod_compression(compression)
    passes = max(1, int(backward_passes_per_step))
    if passes > 1:
        sums = [tf.Variable(tf.zeros_like(v), trainable=False) for v in trainable]
        counter = tf.Variable(0, dtype=tf.int64, trainable=False)

    def forward(x, y):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            y = labels_like(y, pred)
            loss = loss_fn(y, pred)
            if model.losses:
                loss = loss + tf.add_n(model.losses)
        return tape, loss, y, pred

    def track(loss, y, pred):
        if loss_mean is not None:
            loss_mean.update_state(loss)
        for metric in metrics:
            metric.update_state(y, pred)

    # Horovod's Python is plain graph code (no branch on a tensor): AutoGraph re-writing it would only slow down
    # the first trace of every rank, so the calls into Horovod are not converted.
    @tf.autograph.experimental.do_not_convert
    def reduced_gradients(tape, loss):
        return hvd.DistributedGradientTape(tape, compression=wire).gradient(loss, trainable)

    @tf.autograph.experimental.do_not_convert
    def averaged_sums():
        return hvd.grouped_allreduce([s / passes for s in sums], op=hvd.Average, compression=wire)

    @tf.function
    def step(x, y):
        tape, loss, y, pred = forward(x, y)
        grads = reduced_gradients(tape, loss)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        track(loss, y, pred)
        return loss

    def apply_sums():
        optimizer.apply_gradients(zip(averaged_sums(), model.trainable_variables))
        for total in sums:
            total.assign(tf.zeros_like(total))
        return tf.constant(True)

    @tf.function
    def aggregating_step(x, y):
        tape, loss, y, pred = forward(x, y)
        for total, grad in zip(sums, tape.gradient(loss, trainable)):
            if grad is not None:
                total.assign_add(tf.convert_to_tensor(grad))
        counter.assign_add(1)
        tf.cond(counter % passes == 0, apply_sums, lambda: tf.constant(False))  # every rank: the same steps
        track(loss, y, pred)
        return loss

    return aggregating_step if passes > 1 else step


def _metrics(keras, names, output_dim: int, integer_labels: bool) -> list:
    """Keras 3 metric objects for compile-style names ("accuracy" picks the variant the task needs)."""
    out = []
    for item in names:
        if not isinstance(item, str):
            out.append(item)
        elif item in ("accuracy", "acc"):
            if output_dim == 1:
                out.append(keras.metrics.BinaryAccuracy(name="accuracy"))
            elif integer_labels:
                out.append(keras.metrics.SparseCategoricalAccuracy(name="accuracy"))
            else:
                out.append(keras.metrics.CategoricalAccuracy(name="accuracy"))
        else:
            metric = keras.metrics.get(item)
            out.append(metric if isinstance(metric, keras.metrics.Metric)
                       else keras.metrics.MeanMetricWrapper(metric, name=item))
    return out


def train_keras3_on_rank(job: TrainJob) -> dict:
    """The Horovod function for a Keras 3 model (called by `keras_worker.train_on_rank`)."""
    import horovod.tensorflow as hvd
    import keras
    import tensorflow as tf

    rank, size = hvd.rank(), hvd.size()
    keras.utils.set_random_seed(job.seed + rank)
    model = model_from_bytes(job.model)
    optimizer, scaled_lr = make_optimizer(job.optimizer, job.learning_rate, size, "keras3")
    if job.optimizer_state is not None:
        restore_optimizer(optimizer, model.trainable_variables, job.optimizer_state)  # builds the optimizer
    loss_fn = keras.losses.get(job.loss)
    progress.mark("model_ready")
    train, val = job_datasets(job, rank, size, skip=job.initial_step)
    progress.mark("data_ready")
    integer_labels = train.element_spec[1].dtype.is_integer
    output_dim = int(model.outputs[0].shape[-1] or 1)
    metrics = _metrics(keras, job.metrics, output_dim, integer_labels)
    val_metrics = _metrics(keras, job.metrics, output_dim, integer_labels)
    loss_mean, val_loss_mean = keras.metrics.Mean(name="loss"), keras.metrics.Mean(name="loss")
    train_step = make_train_step(model, optimizer, loss_fn, metrics, loss_mean, job.backward_passes_per_step,
                                 job.compression)

    @tf.function
    def val_step(x, y):
        pred = model(x, training=False)
        y = labels_like(y, pred)
        val_loss_mean.update_state(loss_fn(y, pred))
        for metric in val_metrics:
            metric.update_state(y, pred)

    def averaged(tracked, prefix: str = "") -> dict:
        values = tf.stack([tf.cast(m.result(), tf.float32) for m in tracked])
        values = hvd.allreduce(values, op=hvd.Average, name=f"sparkdl_epoch_metrics_{prefix}")
        return {prefix + m.name: float(v) for m, v in zip(tracked, values.numpy())}

    broadcast_state(model, optimizer)
    monitor = EarlyStop(job.monitor, job.early_stopping)
    callbacks = list(job.callbacks)
    model.stop_training = False
    for callback in callbacks:
        callback.set_model(model)
        callback.on_train_begin({})
    history: dict[str, list[float]] = {}
    epochs_done: list[int] = []
    train_iter = iter(train)
    val_iter = iter(val) if val is not None else None
    examples = examples_per_epoch(job, size)
    step_checkpoints = StepCheckpoints(job)
    for epoch in range(job.initial_epoch, job.epochs):
        started = time.perf_counter()
        for callback in callbacks:
            callback.on_epoch_begin(epoch, {})
        for tracked in (loss_mean, *metrics, val_loss_mean, *val_metrics):
            tracked.reset_state()
        first = job.initial_step if epoch == job.initial_epoch else 0  # a step checkpoint's epoch: its rest
        for step in range(first, job.steps_per_epoch):
            if job.warmup_epochs and size > 1:
                optimizer.learning_rate = warmup_learning_rate(
                    scaled_lr, size, job.warmup_epochs, epoch, step, job.steps_per_epoch)
            x, y = next(train_iter)
            train_step(x, y)
            heartbeat.beat()
            if rank == 0:
                if epoch == job.initial_epoch and step == first:
                    report_first_step()
                step_checkpoints.after(epoch, step + 1, model, optimizer)
        logs = averaged([loss_mean, *metrics])
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        if val_iter is not None:
            for _ in range(job.validation_steps):
                x, y = next(val_iter)
                val_step(x, y)
                heartbeat.beat()
            logs.update(averaged([val_loss_mean, *val_metrics], "val_"))
        seconds = time.perf_counter() - started
        for callback in callbacks:  # before the epoch is reported and checkpointed, as in model.fit
            callback.on_epoch_end(epoch, dict(logs))
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        epochs_done.append(epoch)
        if rank == 0:
            report_epoch(job, epoch, logs, seconds, examples)
            report_checkpoint(job, epoch, logs, model, optimizer)
        if monitor.should_stop(logs) or model.stop_training:  # averaged logs: every rank decides the same
            break
    for callback in callbacks:
        callback.on_train_end(dict(history and {k: v[-1] for k, v in history.items()}))
    if rank != 0:
        return {}
    progress.report("event", name="train_end")
    return {"model": model_to_bytes(model), "history": history, "epochs": epochs_done,
            "scaled_learning_rate": scaled_lr, "size": size}
