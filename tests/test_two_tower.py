"""Two-tower retrieval (sparkdl.models.build_two_tower, InBatchSoftmaxLoss): the in-batch softmax with negatives
shared across Horovod ranks equals one rank's on the whole batch, and a 2-rank fit retrieves."""
from __future__ import annotations

import sys

import cloudpickle
import numpy as np
import pandas as pd
import pytest

cloudpickle.register_pickle_by_value(sys.modules[__name__])

DIM = 6


def interactions(rows: int = 6000, items: int = 200, users: int = 400, seed: int = 0
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions, items): users and items with hidden tastes; a user picks an item by taste and popularity
    (Zipf, so the log-Q correction matters). `user` and `item` are noisy views of the tastes (vector features),
    `item_id` the label. The items frame holds each item's clean features once."""
    rng = np.random.default_rng(seed)
    taste_u, taste_i = rng.normal(size=(users, DIM)), rng.normal(size=(items, DIM))
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    who = rng.integers(0, users, rows)
    logits = 2.0 * taste_u[who] @ taste_i.T + np.log(popularity)[None, :]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    item = np.array([rng.choice(items, p=row) for row in p])
    frame = pd.DataFrame({"id": np.arange(rows), "item_id": item,
                          "user": list((taste_u[who] + 0.1 * rng.normal(size=(rows, DIM))).astype(np.float32)),
                          "item": list(taste_i[item].astype(np.float32))})
    catalogue = pd.DataFrame({"item_id": np.arange(items), "item": list(taste_i.astype(np.float32))})
    return frame, catalogue


def recall_at(model, frame: pd.DataFrame, catalogue: pd.DataFrame, k: int = 10) -> float:
    """Share of rows whose item is among the k items nearest (dot product) to the row's query embedding."""
    import tensorflow as tf

    def tower(name, x):
        return tf.keras.Model(model.inputs, model.get_layer(name).output)(x, training=False).numpy()

    users = np.stack(frame["user"].to_numpy())
    items = np.stack(catalogue["item"].to_numpy())
    q = tower("query_embedding", np.concatenate([users, np.zeros_like(users)], axis=1))
    e = tower("item_embedding", np.concatenate([np.zeros_like(items), items], axis=1))
    top = np.argsort(-(q @ e.T), axis=1)[:, :k]
    return float((top == frame["item_id"].to_numpy()[:, None]).any(axis=1).mean())


def shared_loss_on_rank(y_pred, items, counts, share):
    """This rank's half of a batch: the ranks' mean loss, and every rank's gradient of its own loss w.r.t. its rows
    (in rank order)."""
    import horovod.tensorflow as hvd
    import tensorflow as tf

    from sparkdl.models import InBatchSoftmaxLoss
    from sparkdl.tf_runtime import configure_tensorflow

    configure_tensorflow()
    hvd.init()
    half = len(items) // 2
    rows = slice(hvd.rank() * half, (hvd.rank() + 1) * half)
    x = tf.Variable(y_pred[rows])
    with tf.GradientTape() as tape:
        loss = InBatchSoftmaxLoss(item_counts=counts, share_negatives=share)(tf.constant(items[rows]), x)
    grad = tape.gradient(loss, x)
    return {"loss": float(hvd.allreduce(loss, op=hvd.Average).numpy()), "grad": hvd.allgather(grad).numpy()}


def test_negatives_shared_across_two_ranks_give_the_loss_and_gradients_of_one_rank_on_the_whole_batch(spark):
    import tensorflow as tf

    from sparkdl.models import InBatchSoftmaxLoss
    from sparkdl.train.runner import HorovodRunner

    rng = np.random.default_rng(3)
    query, item = rng.normal(size=(16, 4)), rng.normal(size=(16, 4))
    y_pred = np.concatenate([query / np.linalg.norm(query, axis=1, keepdims=True),
                             item / np.linalg.norm(item, axis=1, keepdims=True)], axis=1).astype(np.float32)
    items = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 2, 9, 10, 11, 12, 13, 14], dtype=np.int64)  # item 2 twice
    counts = [float(c) for c in rng.integers(1, 50, 15)]

    x = tf.Variable(y_pred)
    with tf.GradientTape() as tape:  # one rank, the whole batch
        whole = InBatchSoftmaxLoss(item_counts=counts)(tf.constant(items), x)
    whole_grad = tape.gradient(whole, x).numpy()
    runner = HorovodRunner(num_proc=2, spark=spark)
    shared = runner.run(shared_loss_on_rank, y_pred=y_pred, items=items, counts=counts, share=True)
    assert shared["loss"] == pytest.approx(float(whole.numpy()), rel=1e-5)
    # the whole batch's loss is the mean of the ranks' losses, and Horovod's optimizer averages their gradients:
    # each rank's gradient is twice the whole batch's on its rows, item rows included (the allgather's gradient
    # brings the other rank's loss back to the items it gathered)
    np.testing.assert_allclose(shared["grad"], 2 * whole_grad, rtol=1e-4, atol=1e-6)
    alone = runner.run(shared_loss_on_rank, y_pred=y_pred, items=items, counts=counts, share=False)
    assert alone["loss"] < shared["loss"] - 0.3  # 8 candidates per query instead of 16: an easier, other loss


@pytest.mark.both_sessions
def test_a_two_tower_model_trained_on_two_ranks_retrieves_through_its_index_and_refuses_a_bad_split(spark,
                                                                                                   tmp_path):
    pytest.importorskip("faiss", reason="the ann extra (faiss-cpu) is not installed")
    from sparkdl.errors import ConfigError
    from sparkdl.score import build_index, score_dataframe, similar
    from sparkdl.train import KerasEstimator

    frame, catalogue = interactions()
    train, test = frame.iloc[:5000], frame.iloc[5000:]
    df = spark.createDataFrame(train)
    spec = {"features": [{"name": "user", "kind": "vector", "shape": [DIM]},
                         {"name": "item", "kind": "vector", "shape": [DIM]}],
            "label": {"name": "item_id", "task": "multiclass", "num_classes": 200}}
    model = KerasEstimator(model="two_tower", feature_spec=spec, hparams={"query_features": ["user"],
                                                                          "embedding_dim": 16, "hidden": [32]},
                           epochs=6, batch_size=64, num_proc=2, validation=0.0, learning_rate=3e-3,
                           model_store=str(tmp_path / "store")).fit(df)
    recall = recall_at(model.getModel(), test, catalogue)
    assert recall > 0.3  # chance: 10 of 200 items = 0.05

    # each tower scores alone: the catalogue has no user column, the queries no item column
    version, store = model.getModelVersion(), str(tmp_path / "store")
    build_index(version, spark.createDataFrame(catalogue), keep_columns=["item_id"], store=store)
    queries = test.head(200)
    found = similar(version, spark.createDataFrame(queries[["id", "user"]]), approximate=True, k=10,
                    query_columns=["id"], store=store).toPandas()
    truth = dict(zip(queries["id"], queries["item_id"]))
    hits = found.groupby("query_id")["item_id"].apply(lambda items: truth[items.name] in set(items))
    assert len(hits) == 200 and hits.mean() == pytest.approx(recall_at(model.getModel(), queries, catalogue),
                                                             abs=0.01)
    pytest.importorskip("prometheus_client", reason="the serve extra (prometheus-client) is not installed")
    from test_serving import _call

    from sparkdl.serving import ModelServer

    server = ModelServer(str(version), store=store, port=0, reload_s=0).start()
    try:  # the server embeds a query with the query tower: the user's features are the whole request
        body = {"dataframe_records": [{"user": [float(v) for v in u]} for u in queries["user"].head(3)]}
        status, answer = _call(server, "/similar?k=10", body)
        assert status == 200, answer
        want = found[found["query_id"].isin(queries["id"].head(3))].groupby("query_id")["item_id"].apply(list)
        assert [[n["item_id"] for n in near] for near in answer["neighbors"]] == want.tolist()
    finally:
        server.stop()
    with pytest.raises(ConfigError, match="is a two-tower model: it scores \\['query_embedding', "
                                          "'item_embedding'\\], not 'prediction'"):
        score_dataframe(spark.createDataFrame(queries), version, store=store)
    with pytest.raises(ConfigError, match="query_features must name some, not all, of the features"):
        KerasEstimator(model="two_tower", feature_spec=spec, hparams={"query_features": ["user", "item"]}).fit(df)
