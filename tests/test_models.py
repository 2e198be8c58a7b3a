"""The model zoo: every model builds for its signature, trains on tiny real data and round-trips through the store."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits

from sparkdl import models
from sparkdl.data.spec import ModelSignature
from sparkdl.errors import ConfigError
from sparkdl.registry import ModelStore


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    return (x[order] / 16.0).astype("float32"), y[order].astype("int64")


@pytest.fixture(scope="module")
def cancer():
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x.astype("float32"), y.astype("float32")


@pytest.fixture(scope="module")
def diabetes():
    x, y = load_diabetes(return_X_y=True)
    return ((x - x.mean(axis=0)) / x.std(axis=0)).astype("float32"), ((y - y.mean()) / y.std()).astype("float32")


def _case(name, digits, cancer, diabetes):
    """(model name, signature, x, y, hparams) for each zoo model on data shaped the way it expects."""
    xd, yd = digits
    return {
        "mlp-binary": ("mlp", ModelSignature((30,), "binary"), *cancer, {}),
        "mlp-regression": ("mlp", ModelSignature((10,), "regression"), *diabetes, {"hidden": [32], "dropout": 0.1}),
        "mlp-multiclass": ("mlp", ModelSignature((64,), "multiclass", 10), xd, yd, {}),
        "cnn": ("cnn", ModelSignature((8, 8, 1), "multiclass", 10), xd.reshape(-1, 8, 8, 1), yd, {}),
        "cnn-2d-input": ("cnn", ModelSignature((8, 8), "binary"), xd.reshape(-1, 8, 8),
                         (yd % 2).astype("float32"), {"filters": [8], "dense": 16}),
        "lstm": ("lstm", ModelSignature((8, 8), "multiclass", 10), xd.reshape(-1, 8, 8), yd, {}),
        "lstm-regression": ("lstm", ModelSignature((10,), "regression"), *diabetes, {"units": 8, "dense": 8}),
        "embedding-cnn": ("embedding", ModelSignature((8, 8, 1), "multiclass", 10), xd.reshape(-1, 8, 8, 1), yd, {}),
        "embedding-mlp": ("embedding", ModelSignature((64,), "multiclass", 10), xd, yd, {"embedding_dim": 16}),
    }[name]


CASES = ["mlp-binary", "mlp-regression", "mlp-multiclass", "cnn", "cnn-2d-input", "lstm", "lstm-regression",
         "embedding-cnn", "embedding-mlp"]


@pytest.mark.parametrize("case", CASES)
def test_zoo_model_trains_and_round_trips(case, digits, cancer, diabetes, tmp_path):
    name, signature, x, y, hparams = _case(case, digits, cancer, diabetes)
    tf.keras.utils.set_random_seed(1)
    model = models.build(name, signature, **hparams)
    assert tuple(model.input_shape[1:]) == signature.input_shape
    assert model.optimizer is None  # uncompiled
    model.compile(tf.keras.optimizers.Adam(3e-3), models.default_loss(signature, name),
                  models.default_metrics(signature, name))
    x, y = x[:600], y[:600]
    history = model.fit(x, y, epochs=2, batch_size=64, verbose=0).history
    assert all(np.isfinite(history["loss"]))
    if name != "embedding":
        assert history["loss"][-1] < history["loss"][0]

    preds = model.predict(x[:50], verbose=0)
    if name == "embedding":
        assert preds.shape == (50, hparams.get("embedding_dim", 32))
        np.testing.assert_allclose(np.linalg.norm(preds, axis=1), 1.0, atol=1e-5)
    elif signature.task == "multiclass":
        assert preds.shape == (50, signature.num_classes)
        np.testing.assert_allclose(preds.sum(axis=1), 1.0, atol=1e-5)
    elif signature.task == "binary":
        assert preds.shape == (50, 1) and preds.min() >= 0 and preds.max() <= 1
    else:
        assert preds.shape == (50, 1) and model.layers[-1].activation is tf.keras.activations.linear

    # plain Keras v3 round trip with safe_mode
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = tf.keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(x[:50], verbose=0), preds, atol=1e-6)

    # and through the model store
    store = ModelStore(tmp_path / "store")
    ref = store.save(case, model, {"model_name": name, "signature": signature.to_dict(), "hparams": hparams})
    loaded = store.load(ref)
    np.testing.assert_allclose(loaded.model.predict(x[:50], verbose=0), preds, atol=1e-6)
    assert ModelSignature.from_dict(loaded.metadata["signature"]) == signature


def test_triplet_loss_learns_embeddings_that_beat_raw_pixels(digits):
    x, y = digits
    x = x.reshape(-1, 8, 8, 1)
    x_train, y_train, x_test, y_test = x[:1000], y[:1000], x[1000:], y[1000:]
    signature = ModelSignature((8, 8, 1), "multiclass", 10)
    tf.keras.utils.set_random_seed(0)
    model = models.build("embedding", signature)
    loss = models.default_loss(signature, "embedding")
    assert isinstance(loss, models.TripletSemiHardLoss)
    model.compile(tf.keras.optimizers.Adam(3e-3), loss)

    def knn(m):
        return models.knn_accuracy(m.predict(x_train, verbose=0), y_train, m.predict(x_test, verbose=0), y_test)

    untrained = knn(model)
    history = model.fit(x_train, y_train, epochs=15, batch_size=128, verbose=0).history["loss"]
    trained = knn(model)
    raw = models.knn_accuracy(x_train, y_train, x_test, y_test)
    assert history[-1] < 0.5 * history[0], history
    assert trained > untrained, (trained, untrained)
    assert trained > raw, (trained, raw)


def _numpy_semi_hard(labels, emb, margin):
    """Brute-force reference of semi-hard triplet mining (FaceNet)."""
    dist = np.sqrt(np.maximum(((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1), 0))
    total, count = 0.0, 0
    for a in range(len(labels)):
        negatives = [n for n in range(len(labels)) if labels[n] != labels[a]]
        if not negatives:
            continue
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            semi = [dist[a, n] for n in negatives if dist[a, n] > dist[a, p]]
            d_neg = min(semi) if semi else max(dist[a, n] for n in negatives)
            total += max(dist[a, p] - d_neg + margin, 0.0)
            count += 1
    return total / max(count, 1)


def _numpy_batch_hard(labels, emb, margin):
    dist = np.sqrt(((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1))
    losses = []
    for a in range(len(labels)):
        pos = [dist[a, p] for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        neg = [dist[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        if pos and neg:
            losses.append(max(max(pos) - min(neg) + margin, 0.0))
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_losses_match_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=24)
    emb = rng.normal(size=(24, 5)).astype("float32")
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    for margin in (0.2, 1.0):
        semi = models.TripletSemiHardLoss(margin=margin)(labels.reshape(-1, 1), tf.constant(emb))
        np.testing.assert_allclose(float(semi), _numpy_semi_hard(labels, emb, margin), rtol=1e-4, atol=1e-5)
        hard = models.TripletHardLoss(margin=margin)(labels, tf.constant(emb))
        np.testing.assert_allclose(float(hard), _numpy_batch_hard(labels, emb, margin), rtol=1e-4, atol=1e-5)


def test_triplet_loss_gradient_is_finite_with_duplicate_embeddings():
    emb = tf.Variable(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype="float32"))
    with tf.GradientTape() as tape:
        loss = models.TripletSemiHardLoss(margin=0.5)(np.array([0, 0, 1, 1]), emb)
    grad = tape.gradient(loss, emb)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(grad.numpy()))


def test_compiled_embedding_model_restores_its_triplet_loss(digits, tmp_path):
    x, y = digits
    signature = ModelSignature((64,), "multiclass", 10)
    model = models.build("embedding", signature, hidden=[32], embedding_dim=8)
    model.compile("adam", models.TripletSemiHardLoss(margin=0.3))
    model.fit(x[:256], y[:256], epochs=1, batch_size=128, verbose=0)
    store = ModelStore(tmp_path)
    loaded = store.load(store.save("emb", model, {}), compile=True)
    assert isinstance(loaded.model.loss, models.TripletSemiHardLoss) and loaded.model.loss.margin == 0.3
    assert any(isinstance(layer, models.L2Normalize) for layer in loaded.model.layers)
    np.testing.assert_allclose(loaded.model.evaluate(x[:256], y[:256], batch_size=256, verbose=0),
                               model.evaluate(x[:256], y[:256], batch_size=256, verbose=0), rtol=1e-5)


def test_defaults_by_task():
    binary, multi, reg = (ModelSignature((4,), "binary"), ModelSignature((4,), "multiclass", 3),
                          ModelSignature((4,), "regression"))
    assert models.default_loss(binary, "mlp") == "binary_crossentropy"
    assert models.default_loss(multi, "cnn") == "sparse_categorical_crossentropy"
    assert models.default_loss(reg, "lstm") == "mse"
    assert models.default_metrics(binary, "mlp") == ["accuracy"] == models.default_metrics(multi, None)
    assert models.default_metrics(reg, "mlp") == ["mae"]
    assert models.default_metrics(multi, "embedding") == []
    assert isinstance(models.default_loss(multi, "embedding"), models.TripletSemiHardLoss)


def test_hparams_shape_the_model():
    model = models.build("mlp", ModelSignature((5,), "binary"), hidden=[7, 3], activation="tanh")
    dense = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Dense)]
    assert [d.units for d in dense] == [7, 3, 1]
    assert dense[0].activation is tf.keras.activations.tanh
    lstm = models.build("lstm", ModelSignature((6, 2), "multiclass", 4), units=5, bidirectional=True)
    assert lstm.output_shape == (None, 4)
    assert any(isinstance(layer, tf.keras.layers.Bidirectional) for layer in lstm.layers)


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown model 'resnet'.*cnn.*embedding.*lstm.*mlp"):
        models.build("resnet", ModelSignature((4,), "binary"))
    assert {"mlp", "cnn", "lstm", "embedding"} <= set(models.available())


def test_unknown_hparam_names_it_and_the_accepted_ones():
    with pytest.raises(ConfigError, match=r"unknown hparam\(s\) \['hiden'\]; accepted: \['activation', 'dropout', "
                                          r"'hidden'\]"):
        models.build("mlp", ModelSignature((4,), "binary"), hiden=(3,))


def test_check_choice_fails_as_build_would_with_nothing_built():
    def tiny(signature, *, units=2):
        raise AssertionError("check_choice must not call the builder")

    inputs = tf.keras.Input((4,))
    ready = tf.keras.Model(inputs, tf.keras.layers.Dense(1)(inputs))
    models.check_choice("mlp", {"hidden": (3,)})
    models.check_choice(tiny, {"units": 3})
    models.check_choice(ready)
    for choice, hparams, message in [
        ("resnet", {}, "unknown model 'resnet'"),
        ("mlp", {"hiden": (3,)}, r"model 'mlp': unknown hparam\(s\) \['hiden'\]"),
        (tiny, {"width": 4}, r"model 'tiny': unknown hparam\(s\) \['width'\]; accepted: \['units'\]"),
        (ready, {"hidden": (3,)}, "ready-made model"),
        (42, {}, "expected a model name, a Keras model or a builder function, got int"),
    ]:
        with pytest.raises(ConfigError, match=message):
            models.check_choice(choice, hparams)


@pytest.mark.parametrize("name, hparams, message", [
    ("mlp", {"hidden": [8, -1]}, "'hidden' must be a positive int"),
    ("mlp", {"dropout": 1.5}, r"'dropout' must be in \[0, 1\)"),
    ("mlp", {"activation": "nope"}, "unknown activation 'nope'"),
    ("cnn", {"dense": 0}, "'dense' must be a positive int"),
])
def test_invalid_hparam_values(name, hparams, message):
    with pytest.raises(ConfigError, match=message):
        models.build(name, ModelSignature((8, 8, 1), "binary"), **hparams)


@pytest.mark.parametrize("name, signature, message", [
    ("cnn", ModelSignature((64,), "binary"), r"needs an image input.*\[64\]"),
    ("lstm", ModelSignature((8, 8, 1), "binary"), r"needs a sequence input.*\[8, 8, 1\]"),
    ("embedding", ModelSignature((64,), "regression"), "needs class labels"),
    ("mlp", ModelSignature((64,), "multiclass"), "needs num_classes >= 2"),
])
def test_input_not_suited_to_the_model(name, signature, message):
    with pytest.raises(ConfigError, match=message):
        models.build(name, signature)


def test_ready_model_is_checked_against_the_signature():
    inputs = tf.keras.Input((4,))
    ready = tf.keras.Model(inputs, tf.keras.layers.Dense(1)(inputs))
    assert models.build(ready, ModelSignature((4,), "regression")) is ready
    with pytest.raises(ConfigError, match=r"input shape \[4\] does not match the signature's input_shape \[5\]"):
        models.build(ready, ModelSignature((5,), "regression"))
    with pytest.raises(ConfigError, match="hparams"):
        models.build(ready, ModelSignature((4,), "regression"), hidden=(3,))


def test_callable_and_registered_builders():
    def tiny(signature, *, units=2):
        inputs = tf.keras.Input(signature.input_shape)
        return tf.keras.Model(inputs, tf.keras.layers.Dense(units)(inputs))

    signature = ModelSignature((3,), "regression")
    assert models.build(tiny, signature, units=4).output_shape == (None, 4)
    with pytest.raises(ConfigError, match=r"'tiny': unknown hparam\(s\) \['width'\]; accepted: \['units'\]"):
        models.build(tiny, signature, width=4)
    models.register_builder("tiny-test", tiny)
    assert "tiny-test" in models.available()
    assert models.build("tiny-test", signature).output_shape == (None, 2)
    with pytest.raises(ConfigError, match="already exists"):
        models.register_builder("tiny-test", tiny)
    with pytest.raises(ConfigError, match="must match"):
        models.register_builder("bad name", tiny)
    with pytest.raises(ConfigError, match=r"input shape \[3\] does not match the signature's input_shape \[4\]"):
        models.build(lambda sig: tiny(signature), ModelSignature((4,), "regression"))


def test_knn_accuracy_checks_its_inputs(digits):
    x, y = digits
    assert models.knn_accuracy(x[:500], y[:500], x[500:700], y[500:700], k=1) > 0.9
    with pytest.raises(ConfigError, match="k must be between 1 and 5"):
        models.knn_accuracy(x[:5], y[:5], x[5:10], y[5:10], k=6)
    with pytest.raises(ConfigError, match="10 train embeddings vs 9 labels"):
        models.knn_accuracy(x[:10], y[:9], x[10:12], y[10:12])


@pytest.mark.parametrize("name, hparams", [("lstm_forecaster", {"units": 8}), ("gru_forecaster", {"layers": 2}),
                                           ("tcn_forecaster", {"filters": 8, "dilations": [1, 2]}),
                                           ("lstm_forecaster", {"from_last": False})])
def test_forecasters_learn_windows_and_load_safely(name, hparams, tmp_path):
    signature = ModelSignature((12, 2), "regression", outputs=4)
    t = np.arange(3000, dtype="float32")
    series = np.stack([np.sin(2 * np.pi * t / 12), np.cos(2 * np.pi * t / 12)], axis=1)
    starts = np.arange(0, 3000 - 16)
    x = np.stack([series[s:s + 12] for s in starts]) + 5.0  # a level the network must carry, not learn
    y = np.stack([series[s + 12:s + 16, 0] for s in starts]) + 5.0
    tf.keras.utils.set_random_seed(0)
    model = models.build(name, signature, **hparams)
    assert model.output_shape == (None, 4)
    if hparams.get("from_last", True):  # the change head at zero: the forecast is the window's last target value
        change = model.get_layer("change")
        saved = change.get_weights()
        change.set_weights([np.zeros_like(w) for w in saved])
        np.testing.assert_allclose(model.predict(x[:5], verbose=0), np.repeat(x[:5, -1:, 0], 4, axis=1), atol=1e-6)
        change.set_weights(saved)
    model.compile(tf.keras.optimizers.Adam(1e-2), "mse")
    history = model.fit(x, y, epochs=3, batch_size=64, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    path = tmp_path / "forecaster.keras"
    model.save(path)
    reloaded = tf.keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(x[:20], verbose=0), model.predict(x[:20], verbose=0), atol=1e-5)
    with pytest.raises(ConfigError, match="a forecaster reads windows"):
        models.build(name, ModelSignature((12,), "regression"))


def _rewrite_config(source, target, edit) -> None:
    """Copy the `.keras` archive `source` to `target` with `edit(config)` applied to its config.json."""
    import json
    import zipfile

    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for item in archive.infolist():
            data = archive.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            out.writestr(item, data)


def _layers(config) -> list:
    return config["config"]["layers"]


def _dense(config) -> dict:
    return next(layer for layer in _layers(config) if layer["class_name"] == "Dense")


PROBE = "sparkdl_import_probe"  # a module whose import leaves a file behind


@pytest.mark.parametrize("place", ["layer", "activation", "initializer", "regularizer", "nested model"])
def test_a_model_whose_config_names_a_foreign_module_is_refused_before_anything_is_imported(place, tmp_path,
                                                                                           monkeypatch):
    import sys

    from sparkdl.errors import SparkDLError
    from sparkdl.models.saving import load_keras_file

    marker = tmp_path / "imported"
    (tmp_path / f"{PROBE}.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Dense: pass\n"
                                          f"def relu(x): return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    inputs = tf.keras.Input((4,))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(2, activation="relu")(inputs))
    source, crafted = tmp_path / "model.keras", tmp_path / "crafted.keras"
    model.save(source)

    foreign = {"module": PROBE, "class_name": "Dense", "config": {}, "registered_name": None}
    edits = {
        "layer": lambda c: _dense(c).update(module=PROBE),
        "activation": lambda c: _dense(c)["config"].update(
            activation={"module": PROBE, "class_name": "function", "config": "relu", "registered_name": "function"}),
        "initializer": lambda c: _dense(c)["config"].update(kernel_initializer=foreign),
        "regularizer": lambda c: _dense(c)["config"].update(kernel_regularizer=foreign),
        "nested model": lambda c: c.update(module=PROBE),
    }
    _rewrite_config(source, crafted, edits[place])
    with pytest.raises(SparkDLError, match=f"from module '{PROBE}'"):
        load_keras_file(crafted)
    assert not marker.exists() and PROBE not in sys.modules
    load_keras_file(source)  # the untouched archive loads
