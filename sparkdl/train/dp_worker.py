"""What every Horovod rank runs for a differentially private fit (`KerasEstimator(dp=...)`), in either Keras flavour.

The rank reads its shard of the training data once into memory, then for each of the plan's steps: the rows of the
shard that step t's Poisson sample holds (`dp.poisson_mask`), and one graph (`private_step`): their per-example
gradients each clipped to `clip_norm` and summed (`sparkdl.train.dp_clipping`: ghost clipping for Dense-only
models, else the per-example Jacobian); rank 0 adds the Gaussian noise; one sum-allreduce; division by the expected
global batch; one optimizer update (the learning rate is that of the expected global batch, not scaled by the
number of ranks). Every rank applies the same update to the same starting model, so they stay identical without
broadcasts. An "epoch" is a 1/epochs share of the steps; each epoch reports the mean training loss of the rows
sampled.
"""
from __future__ import annotations

import secrets
import time

import numpy as np

from sparkdl import stack
from sparkdl.train import dp, heartbeat, progress
from sparkdl.train.dp_clipping import clipped_sum_function
from sparkdl.train.rank_job import TrainJob, job_datasets, make_optimizer, report_epoch, report_first_step
from sparkdl.train.serialization import model_from_bytes, model_to_bytes

PAD_TO = 32  # a step's sampled rows are padded (with weight 0) to a multiple of this


def noisy_sum(sums: list, noise_std: float, rank: int, generator) -> list:
    """Rank 0's clipped-gradient sums plus N(0, noise_std²) per coordinate (noise_std = σ·C); other ranks' sums
    unchanged: the noise is added once across all ranks, before the sum-allreduce. TensorFlow ops (`generator`:
    a `tf.random.Generator`), so it runs inside the step's graph."""
    import tensorflow as tf

    if rank != 0:
        return sums
    return [s + generator.normal(tf.shape(s), stddev=noise_std, dtype=s.dtype) for s in sums]


def read_shard(job: TrainJob, rank: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's shard of the training data as (features, labels) arrays, in storage order."""
    train, _ = job_datasets(job, rank, size, first_epoch=0, epochs=1)  # shuffled batches: order does not matter
    xs, ys = [], []
    for x, y in train.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def train_dp_on_rank(job: TrainJob) -> dict:
    """The Horovod function of a DP fit (see the module docstring). Returns (on rank 0) the model bytes, the
    history and the privacy report."""
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()
    progress.mark("horovod_initialized")
    rank, size = hvd.rank(), hvd.size()
    keras = stack.keras_module(job.flavour)
    keras.utils.set_random_seed(job.seed)
    model = model_from_bytes(job.model)
    optimizer, lr = make_optimizer(job.optimizer, job.learning_rate, 1, job.flavour)
    loss_fn = keras.losses.get(job.loss)
    if isinstance(loss_fn, keras.losses.Loss):
        loss_fn = loss_fn.__class__.from_config({**loss_fn.get_config(), "reduction": "none"})
    variables = model.trainable_variables
    progress.mark("model_ready")

    x_all, y_all = read_shard(job, rank, size)
    plan = dp.DPPlan(**job.dp)
    row_ids = np.arange(len(x_all), dtype=np.uint64) + np.uint64(rank) * np.uint64(1 << 40)
    progress.mark("data_ready")
    clip = float(plan.clip_norm)

    def per_example_loss(model, x, y):
        pred = model(x, training=True)
        if pred.shape.rank == y.shape.rank + 1 and pred.shape[-1] == 1:  # one output unit: labels as a column
            y = tf.cast(tf.expand_dims(y, -1), pred.dtype)
        return tf.reshape(loss_fn(y, pred), [-1])  # one loss per example

    # rows of weight 0 pad a step's batch to a multiple of PAD_TO: a few static shapes keep the graphs fast
    clipped_sum = clipped_sum_function(model, variables, per_example_loss, clip)

    # The noise and the sample must be unknown to anyone holding the model or its settings: the noise comes from
    # the OS's entropy, the sample from a secret the driver drew for this fit (never stored with the model)
    noise = tf.random.Generator.from_seed(secrets.randbits(63))
    noise_std = float(plan.noise_multiplier) * clip

    @tf.function
    def private_step(x, y, weight):
        """One step in one graph: clipped sums, rank 0's noise, one sum-allreduce (with the loss and the row
        count), the update by the sum over the expected global batch."""
        sums, loss = clipped_sum(x, y, weight)
        sums = noisy_sum(sums, noise_std, rank, noise)
        totals = hvd.grouped_allreduce(sums + [tf.stack([loss, tf.reduce_sum(weight)])], op=hvd.Sum,
                                       name="sparkdl_dp_step")  # one name on every rank: their graphs differ
        optimizer.apply_gradients(zip([t / plan.expected_batch for t in totals[:-1]], variables))
        return totals[-1]

    sampling_key = int(job.dp_secret)
    epochs = max(1, int(round(plan.steps_requested * plan.q)))  # the plan's steps are round(epochs / q)
    steps_per_epoch = -(-plan.steps_requested // epochs)  # so the last epoch is never a stub of a step or two
    history: dict[str, list[float]] = {"loss": []}
    epochs_done: list[int] = []
    step, epoch = 0, 0
    epoch_started, loss_sum, rows_seen = time.perf_counter(), 0.0, 0
    while step < plan.steps:
        mask = dp.poisson_mask(row_ids, step, sampling_key, plan.q)
        rows = np.flatnonzero(mask)
        padded = np.zeros(max(1, -(-len(rows) // PAD_TO)) * PAD_TO, np.int64)  # an empty sample: weight-0 rows
        padded[:len(rows)] = rows
        weight = (np.arange(len(padded)) < len(rows)).astype(np.float32)
        loss, rows_in_step = private_step(tf.constant(x_all[padded]), tf.constant(y_all[padded]),
                                          tf.constant(weight)).numpy()
        loss_sum += float(loss)
        rows_seen += int(rows_in_step)
        step += 1
        heartbeat.beat()
        if step == 1 and rank == 0:
            report_first_step()
        if step % steps_per_epoch == 0 or step == plan.steps:
            logs = {"loss": loss_sum / max(rows_seen, 1)}
            history["loss"].append(logs["loss"])
            epochs_done.append(epoch)
            if rank == 0:
                report_epoch(job, epoch, logs, time.perf_counter() - epoch_started, rows_seen)
            epoch += 1
            epoch_started, loss_sum, rows_seen = time.perf_counter(), 0.0, 0
    if rank != 0:
        return {}
    progress.report("event", name="train_end")
    return {"model": model_to_bytes(model), "history": history, "epochs": epochs_done, "scaled_learning_rate": lr,
            "size": size, "privacy": dp.with_steps(plan, step).to_dict()}
