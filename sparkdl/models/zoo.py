"""Model builders by name: `mlp`, `cnn`, `lstm`, `embedding`, `text_cnn`, `text_gru`, the forecasters
`lstm_forecaster`, `gru_forecaster` and `tcn_forecaster` (`data.forecast`), plus builders registered at run time.

A builder is `fn(signature: ModelSignature, **hparams) -> tf.keras.Model` (uncompiled). Its keyword arguments
(with defaults) are the hyper-parameters it accepts; `build` rejects any other one before building anything.
Default sizes are small: the zoo is meant to train quickly, scale them up with hparams.

Zoo builders build with the Keras flavour `build(..., keras=...)` asks for (`sparkdl.stack`): "tf_keras" (Keras 2,
the default, trained with Horovod's Keras wrappers) or "keras3" (Keras 3, current stack, trained by sparkdl's own
Horovod step). Builders of your own may ignore it and return a model of either flavour.
"""
from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparkdl import stack
from sparkdl.data.spec import ANOMALY, AUTOENCODER, TWO_TOWER, ModelSignature
from sparkdl.errors import ConfigError
from sparkdl.fileutil import is_safe_name
from sparkdl.log import get_logger
from sparkdl.models.layers import layer_classes
from sparkdl.models.losses import loss_classes

log = get_logger("models")

Builder = Callable[..., Any]
_FLAVOUR: contextvars.ContextVar[str] = contextvars.ContextVar("sparkdl_keras_flavour", default="tf_keras")
_AUGMENT: contextvars.ContextVar[Augmentation | None] = contextvars.ContextVar("sparkdl_augment", default=None)
_BUILDERS: dict[str, Builder] = {}
EMBEDDING = "embedding"


@dataclass(frozen=True)
class Augmentation:
    """Training-only image augmentation at the input of a zoo image model (Keras preprocessing layers, which are
    the identity at inference, so scoring and explanations never see it).

    Attributes:
        flip: random horizontal flips.
        zoom: random zoom in or out by up to this fraction of the height and width (0: none).
    """

    flip: bool = False
    zoom: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.flip or self.zoom)


# ---------------------------------------------------------------------------------------------------- helpers
def _k():
    """The Keras module of the flavour being built (see the module docstring)."""
    return stack.keras_module(_FLAVOUR.get())


def _check_classification(signature: ModelSignature, model: str) -> None:
    if signature.task == "multiclass" and (signature.num_classes is None or int(signature.num_classes) < 2):
        raise ConfigError(f"model {model!r}: a multiclass signature needs num_classes >= 2, "
                          f"got {signature.num_classes!r}")


def _sizes(name: str, value, model: str) -> tuple[int, ...]:
    values = (value,) if isinstance(value, int) else tuple(value or ())
    if any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in values):
        raise ConfigError(f"model {model!r}: hparam {name!r} must be a positive int or a list of them, got {value!r}")
    return tuple(int(v) for v in values)


def _positive(name: str, value, model: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"model {model!r}: hparam {name!r} must be a positive int, got {value!r}")
    return int(value)


def _rate(name: str, value, model: str) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"model {model!r}: hparam {name!r} must be in [0, 1), got {value!r}")
    return float(value)


def _activation(value, model: str):
    try:
        _k().activations.get(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model {model!r}: unknown activation {value!r} ({exc})") from None
    return value


def _head(x, signature: ModelSignature):
    """The output layer for the task: sigmoid(1), softmax(num_classes) or linear(`outputs`, default 1); float32 for
    mixed precision."""
    if signature.task == ANOMALY:
        raise ConfigError(f"this model predicts a label; an anomaly signature (no label, or task 'anomaly') is "
                          f"trained by model {AUTOENCODER!r}, which reconstructs its input")
    if signature.task == "binary":
        return _k().layers.Dense(1, activation="sigmoid", dtype="float32", name="output")(x)
    if signature.task == "multiclass":
        return _k().layers.Dense(int(signature.num_classes), activation="softmax", dtype="float32",
                                     name="output")(x)
    return _k().layers.Dense(int(signature.outputs or 1), activation=None, dtype="float32", name="output")(x)


def _dense_stack(x, hidden: tuple[int, ...], dropout: float, activation, prefix: str):
    for i, units in enumerate(hidden):
        x = _k().layers.Dense(units, activation=activation, name=f"{prefix}_dense_{i}")(x)
        if dropout:
            x = _k().layers.Dropout(dropout, name=f"{prefix}_dropout_{i}")(x)
    return x


def _conv_stack(x, filters: tuple[int, ...], kernel_size: int, activation, prefix: str):
    """Conv2D + max-pool blocks; pooling stops once the feature map is 1 pixel wide or high."""
    for i, n in enumerate(filters):
        x = _k().layers.Conv2D(n, kernel_size, padding="same", activation=activation, name=f"{prefix}_conv_{i}")(x)
        if x.shape[1] >= 2 and x.shape[2] >= 2:
            x = _k().layers.MaxPooling2D(2, name=f"{prefix}_pool_{i}")(x)
    return _k().layers.Flatten(name=f"{prefix}_flatten")(x)


def _image_input(signature: ModelSignature, model: str):
    shape = signature.input_shape
    if len(shape) not in (2, 3):
        raise ConfigError(f"model {model!r}: needs an image input (height, width, channels) or (height, width), "
                          f"got input_shape {list(shape)}")
    inputs = _k().Input(shape=shape, name="input")
    x = inputs if len(shape) == 3 else _k().layers.Reshape((*shape, 1), name="add_channel")(inputs)
    augment = _AUGMENT.get()
    if augment and augment.flip:
        x = _k().layers.RandomFlip("horizontal", name="augment_flip")(x)
    if augment and augment.zoom:
        x = _k().layers.RandomZoom((-augment.zoom, augment.zoom), fill_mode="nearest", name="augment_zoom")(x)
    return inputs, x


# ---------------------------------------------------------------------------------------------------- builders
def build_mlp(signature: ModelSignature, *, hidden: Sequence[int] = (64, 64), dropout: float = 0.0,
              activation: str = "relu"):
    """Dense layers for tabular input (any input shape is flattened first)."""
    hidden, dropout = _sizes("hidden", hidden, "mlp"), _rate("dropout", dropout, "mlp")
    _check_classification(signature, "mlp")
    inputs = _k().Input(shape=signature.input_shape, name="input")
    x = inputs if len(signature.input_shape) == 1 else _k().layers.Flatten(name="flatten")(inputs)
    x = _dense_stack(x, hidden, dropout, _activation(activation, "mlp"), "mlp")
    return _k().Model(inputs, _head(x, signature), name="sparkdl_mlp")


def build_cnn(signature: ModelSignature, *, filters: Sequence[int] = (16, 32), kernel_size: int = 3,
              dense: int = 64, dropout: float = 0.0, activation: str = "relu"):
    """Conv2D/max-pool blocks, then one dense layer, for images (H, W, C) — or (H, W), given one channel."""
    filters, dropout = _sizes("filters", filters, "cnn"), _rate("dropout", dropout, "cnn")
    kernel_size, dense = _positive("kernel_size", kernel_size, "cnn"), _positive("dense", dense, "cnn")
    activation = _activation(activation, "cnn")
    _check_classification(signature, "cnn")
    inputs, x = _image_input(signature, "cnn")
    x = _conv_stack(x, filters, kernel_size, activation, "cnn")
    x = _dense_stack(x, (dense,), dropout, activation, "cnn")
    return _k().Model(inputs, _head(x, signature), name="sparkdl_cnn")


def build_lstm(signature: ModelSignature, *, units: int = 32, dense: int = 0, dropout: float = 0.0,
               bidirectional: bool = False):
    """LSTM(units) over (timesteps, features) — or (timesteps,), given one feature — then an optional dense layer."""
    units, dropout = _positive("units", units, "lstm"), _rate("dropout", dropout, "lstm")
    if not isinstance(dense, int) or dense < 0:
        raise ConfigError(f"model 'lstm': hparam 'dense' must be an int >= 0 (0 = no dense layer), got {dense!r}")
    _check_classification(signature, "lstm")
    shape = signature.input_shape
    if len(shape) not in (1, 2):
        raise ConfigError(f"model 'lstm': needs a sequence input (timesteps, features) or (timesteps,), "
                          f"got input_shape {list(shape)}")
    inputs = _k().Input(shape=shape, name="input")
    x = inputs if len(shape) == 2 else _k().layers.Reshape((shape[0], 1), name="add_feature")(inputs)
    lstm = _k().layers.LSTM(units, name="lstm")
    x = _k().layers.Bidirectional(lstm, name="bidirectional")(x) if bidirectional else lstm(x)
    if dropout:
        x = _k().layers.Dropout(dropout, name="lstm_dropout")(x)
    if dense:
        x = _k().layers.Dense(dense, activation="relu", name="lstm_dense")(x)
    return _k().Model(inputs, _head(x, signature), name="sparkdl_lstm")


def _forecast_input(signature: ModelSignature, model: str, from_last):
    """The (lookback, channels) input of a forecaster, and what its layers read: with `from_last`, the window
    relative to its last step (each channel minus its last value), so the same shape of history looks the same at
    any level — a series past the level range of its training period included."""
    shape = signature.input_shape
    if signature.task != "regression" or len(shape) != 2:
        raise ConfigError(f"model {model!r}: a forecaster reads windows (lookback, channels) and forecasts the "
                          f"horizon (data.forecast); got input_shape {list(shape)} for task {signature.task!r}")
    if not isinstance(from_last, bool):
        raise ConfigError(f"model {model!r}: hparam 'from_last' must be true or false, got {from_last!r}")
    layers = _k().layers
    inputs = _k().Input(shape=shape, name="input")
    if not from_last:
        return inputs, inputs, None
    last = layers.Flatten(name="last_step")(layers.Cropping1D((int(shape[0]) - 1, 0), name="last_step_crop")(inputs))
    relative = layers.Subtract(name="relative")([inputs, layers.RepeatVector(int(shape[0]), name="repeat_last")(last)])
    return inputs, relative, last


def _forecast_model(inputs, x, last, signature: ModelSignature, model: str):
    """The forecaster: `horizon` linear outputs of the features `x`; with a `last` step (`from_last`), added to the
    window's last target value (the network forecasts the change from it). The last value is picked by a frozen
    Dense layer, not a Lambda, so the model loads safely."""
    layers = _k().layers
    horizon = int(signature.outputs or 1)
    if last is None:
        return _k().Model(inputs, _head(x, signature), name=f"sparkdl_{model}")
    change = layers.Dense(horizon, dtype="float32", name="change")(x)
    carry = layers.Dense(horizon, use_bias=False, trainable=False, dtype="float32", name="last_value")
    out = layers.Add(dtype="float32", name="output")([change, carry(last)])
    built = _k().Model(inputs, out, name=f"sparkdl_{model}")
    kernel = np.zeros((int(signature.input_shape[1]), horizon), np.float32)
    kernel[0] = 1.0  # channel 0 is the target
    carry.set_weights([kernel])
    return built


def _recurrent_forecaster(layer: str, signature: ModelSignature, units, layers, dropout, dense, from_last,
                          model: str):
    units, layers = _positive("units", units, model), _positive("layers", layers, model)
    dropout = _rate("dropout", dropout, model)
    if not isinstance(dense, int) or isinstance(dense, bool) or dense < 0:
        raise ConfigError(f"model {model!r}: hparam 'dense' must be an int >= 0 (0 = no dense layer), got {dense!r}")
    inputs, x, last = _forecast_input(signature, model, from_last)
    for i in range(layers):
        x = getattr(_k().layers, layer)(units, return_sequences=i < layers - 1, dropout=dropout,
                                        name=f"{layer.lower()}_{i}")(x)
    if dense:
        x = _k().layers.Dense(dense, activation="relu", name=f"{model}_dense")(x)
    return _forecast_model(inputs, x, last, signature, model)


def build_lstm_forecaster(signature: ModelSignature, *, units: int = 32, layers: int = 1, dropout: float = 0.0,
                          dense: int = 0, from_last: bool = True):
    """Stacked LSTMs over a window (lookback, channels), then `horizon` forecasts (of the change from the last
    value, with `from_last`: the default, see `_forecast_input`)."""
    return _recurrent_forecaster("LSTM", signature, units, layers, dropout, dense, from_last, "lstm_forecaster")


def build_gru_forecaster(signature: ModelSignature, *, units: int = 32, layers: int = 1, dropout: float = 0.0,
                         dense: int = 0, from_last: bool = True):
    """Stacked GRUs over a window (lookback, channels), then `horizon` forecasts (of the change from the last
    value, with `from_last`)."""
    return _recurrent_forecaster("GRU", signature, units, layers, dropout, dense, from_last, "gru_forecaster")


def build_tcn_forecaster(signature: ModelSignature, *, filters: int = 32, kernel_size: int = 3,
                         dilations: Sequence[int] = (1, 2, 4, 8), dropout: float = 0.0, from_last: bool = True):
    """A temporal convolutional network: residual blocks of dilated causal Conv1D (each step sees only the past),
    the last step's features, then `horizon` forecasts (of the change from the last value, with `from_last`)."""
    model = "tcn_forecaster"
    filters, kernel_size = _positive("filters", filters, model), _positive("kernel_size", kernel_size, model)
    dilations, dropout = _sizes("dilations", dilations, model), _rate("dropout", dropout, model)
    layers = _k().layers
    inputs, x, last = _forecast_input(signature, model, from_last)
    x = layers.Conv1D(filters, 1, name="tcn_project")(x)
    for i, rate in enumerate(dilations):
        h = layers.Conv1D(filters, kernel_size, padding="causal", dilation_rate=rate, activation="relu",
                          name=f"tcn_conv_{i}")(x)
        if dropout:
            h = layers.Dropout(dropout, name=f"tcn_dropout_{i}")(h)
        x = layers.Add(name=f"tcn_residual_{i}")([x, h])
    x = layers.Cropping1D((int(signature.input_shape[0]) - 1, 0), name="tcn_last_step")(x)  # no Lambda: loads safely
    x = layers.Flatten(name="tcn_flatten")(x)
    return _forecast_model(inputs, x, last, signature, model)


def build_embedding(signature: ModelSignature, *, embedding_dim: int = 32, hidden: Sequence[int] = (128,),
                    filters: Sequence[int] = (16, 32), dropout: float = 0.0,
                    activation: str = "relu"):
    """A feature extractor ending in Dense(embedding_dim) + L2 normalization; the output is the embedding.

    3-D inputs (H, W, C) go through Conv2D blocks (`filters`) then `hidden` dense layers; other inputs through
    `hidden` dense layers only. Train it with `TripletSemiHardLoss` on class-index labels (`default_loss`).
    """
    if signature.task == "regression":
        raise ConfigError("model 'embedding': triplet training needs class labels; the signature's task is "
                          "'regression' (use 'binary' or 'multiclass')")
    embedding_dim = _positive("embedding_dim", embedding_dim, EMBEDDING)
    hidden, dropout = _sizes("hidden", hidden, EMBEDDING), _rate("dropout", dropout, EMBEDDING)
    filters, activation = _sizes("filters", filters, EMBEDDING), _activation(activation, EMBEDDING)
    if len(signature.input_shape) == 3:
        inputs, x = _image_input(signature, EMBEDDING)
        x = _conv_stack(x, filters, 3, activation, "embedding")
    else:
        inputs = _k().Input(shape=signature.input_shape, name="input")
        x = inputs if len(signature.input_shape) == 1 else _k().layers.Flatten(name="embedding_flatten")(inputs)
    x = _dense_stack(x, hidden, dropout, activation, "embedding")
    x = _k().layers.Dense(embedding_dim, activation=None, dtype="float32", name="embedding_projection")(x)
    outputs = layer_classes(_FLAVOUR.get())["L2Normalize"](name="embedding", dtype="float32")(x)
    return _k().Model(inputs, outputs, name="sparkdl_embedding")


def build_autoencoder(signature: ModelSignature, *, hidden: Sequence[int] = (32,), code: int = 8,
                      dropout: float = 0.0, activation: str = "relu", units: int = 32):
    """An anomaly detector: encoder → a linear `code`-wide bottleneck → mirrored decoder → the input again (linear,
    float32).
    Its anomaly score is the reconstruction error. A (timesteps, features) sequence input gets an LSTM encoder of
    `units` and an LSTM decoder over the repeated code; any other input is flattened through Dense layers
    (`hidden`, mirrored in the decoder)."""
    name = AUTOENCODER
    if signature.task != ANOMALY:
        raise ConfigError(f"model {name!r} is an anomaly detector: it trains on a spec with no label or a label of "
                          f"task 'anomaly', not task {signature.task!r}")
    hidden, dropout = _sizes("hidden", hidden, name), _rate("dropout", dropout, name)
    code, activation = _positive("code", code, name), _activation(activation, name)
    shape = tuple(signature.input_shape)
    inputs = _k().Input(shape=shape, name="input")
    layers = _k().layers
    if len(shape) == 2:  # a sequence: (timesteps, features)
        units = _positive("units", units, name)
        x = layers.LSTM(units, name="encoder_lstm")(inputs)
        x = layers.Dense(code, name="code")(x)
        x = layers.RepeatVector(shape[0], name="repeat_code")(x)
        x = layers.LSTM(units, return_sequences=True, name="decoder_lstm")(x)
        out = layers.TimeDistributed(layers.Dense(shape[1], dtype="float32"), name="output")(x)
        return _k().Model(inputs, out, name="sparkdl_autoencoder")
    width = int(np.prod(shape))
    x = inputs if len(shape) == 1 else layers.Flatten(name="flatten")(inputs)
    x = _dense_stack(x, hidden, dropout, activation, "encoder")
    x = layers.Dense(code, name="code")(x)  # linear: a ReLU here can silence code units for good
    x = _dense_stack(x, tuple(reversed(hidden)), dropout, activation, "decoder")
    out = layers.Dense(width, activation=None, dtype="float32", name="output")(x)
    if len(shape) != 1:
        out = layers.Reshape(shape, name="unflatten")(out)
    return _k().Model(inputs, out, name="sparkdl_autoencoder")


def build_two_tower(signature: ModelSignature, *, query_features: Sequence[str] = (), embedding_dim: int = 32,
                    hidden: Sequence[int] = (64,), activation: str = "relu"):
    """A two-tower retrieval model: the `query_features` of a row go through the query tower, the other features
    through the item tower (Dense `hidden` layers, then `embedding_dim`, L2-normalized). The output is both
    embeddings side by side, `query_embedding` then `item_embedding` (the layers of those names). The label is
    the item's index (a multiclass label, one class per item); train it with `InBatchSoftmaxLoss`
    (`default_loss`), which takes the rest of the global batch's items as negatives."""
    name = TWO_TOWER
    if signature.task != "multiclass":
        raise ConfigError(f"model {name!r}: the label is the item's index (task 'multiclass', one class per item), "
                          f"got task {signature.task!r}")
    embedding_dim = _positive("embedding_dim", embedding_dim, name)
    hidden, activation = _sizes("hidden", hidden, name), _activation(activation, name)
    if len(signature.input_shape) != 1 or not signature.layout:
        raise ConfigError(f"model {name!r}: needs a flat row of features with a known layout (numeric, vector, "
                          f"categorical or text features), got input_shape {list(signature.input_shape)}")
    names = [slot[0] for slot in signature.layout]
    wanted = [query_features] if isinstance(query_features, str) else list(query_features or ())
    unknown = [f for f in wanted if f not in names]
    if not wanted or unknown or len(wanted) == len(names):
        raise ConfigError(f"model {name!r}: hparam query_features must name some, not all, of the features "
                          f"{names}; got {wanted}" + (f" (unknown: {unknown})" if unknown else ""))
    columns = {n: list(range(start, start + width)) for n, start, width in signature.layout}
    select, normalize = layer_classes(_FLAVOUR.get())["SelectColumns"], layer_classes(_FLAVOUR.get())["L2Normalize"]
    inputs = _k().Input(shape=signature.input_shape, name="input")
    towers = []
    for tower, features in (("query", wanted), ("item", [n for n in names if n not in wanted])):
        x = select([c for f in features for c in columns[f]], name=f"{tower}_features")(inputs)
        x = _dense_stack(x, hidden, 0.0, activation, tower)
        x = _k().layers.Dense(embedding_dim, dtype="float32", name=f"{tower}_projection")(x)
        towers.append(normalize(name=f"{tower}_embedding", dtype="float32")(x))
    out = _k().layers.Concatenate(name="output", dtype="float32")(towers)
    return _k().Model(inputs, out, name="sparkdl_two_tower")


def _token_input(signature: ModelSignature, model: str):
    """The token-id input of a text model and its embedded sequence (ids are floats in the prepared rows)."""
    shape = signature.input_shape
    if signature.vocabulary_size is None or len(shape) != 1:
        raise ConfigError(f"model {model!r}: needs one text feature alone (token ids of shape (max_length,)); "
                          f"got input_shape {list(shape)} without a text vocabulary")
    return _k().Input(shape=shape, name="input")


def build_text_cnn(signature: ModelSignature, *, embedding_dim: int = 64, filters: int = 128,
                   kernel_sizes: Sequence[int] = (2, 3, 4), dropout: float = 0.3):
    """Token embedding, 1-D convolutions of several widths with global max pooling, then the head (Kim, 2014)."""
    embedding_dim = _positive("embedding_dim", embedding_dim, "text_cnn")
    filters, dropout = _positive("filters", filters, "text_cnn"), _rate("dropout", dropout, "text_cnn")
    kernel_sizes = _sizes("kernel_sizes", kernel_sizes, "text_cnn")
    _check_classification(signature, "text_cnn")
    inputs = _token_input(signature, "text_cnn")
    x = _k().layers.Embedding(int(signature.vocabulary_size), embedding_dim, name="token_embedding")(inputs)
    pooled = [_k().layers.GlobalMaxPooling1D(name=f"text_pool_{k}")(
        _k().layers.Conv1D(filters, k, padding="same", activation="relu", name=f"text_conv_{k}")(x))
        for k in kernel_sizes]
    x = pooled[0] if len(pooled) == 1 else _k().layers.Concatenate(name="text_concat")(pooled)
    if dropout:
        x = _k().layers.Dropout(dropout, name="text_dropout")(x)
    return _k().Model(inputs, _head(x, signature), name="sparkdl_text_cnn")


def build_text_gru(signature: ModelSignature, *, embedding_dim: int = 64, units: int = 64,
                   bidirectional: bool = True, dropout: float = 0.2):
    """Token embedding (padding masked), a GRU — bidirectional by default — then the head."""
    embedding_dim = _positive("embedding_dim", embedding_dim, "text_gru")
    units, dropout = _positive("units", units, "text_gru"), _rate("dropout", dropout, "text_gru")
    _check_classification(signature, "text_gru")
    inputs = _token_input(signature, "text_gru")
    x = _k().layers.Embedding(int(signature.vocabulary_size), embedding_dim, mask_zero=True,
                              name="token_embedding")(inputs)
    gru = _k().layers.GRU(units, name="gru")
    x = _k().layers.Bidirectional(gru, name="bidirectional")(x) if bidirectional else gru(x)
    if dropout:
        x = _k().layers.Dropout(dropout, name="text_dropout")(x)
    return _k().Model(inputs, _head(x, signature), name="sparkdl_text_gru")


# ---------------------------------------------------------------------------------------------------- registry
def register_builder(name: str, fn: Builder, *, overwrite: bool = False) -> None:
    """Make `fn(signature, **hparams) -> tf.keras.Model` buildable as `build(name, ...)`.

    Raises:
        ConfigError: `name` is not [A-Za-z0-9_.-]+, `fn` is not callable, or `name` exists and not `overwrite`.
    """
    if not is_safe_name(name):
        raise ConfigError(f"register_builder: model name must match [A-Za-z0-9_.-]+, got {name!r}")
    if not callable(fn):
        raise ConfigError(f"register_builder: builder for {name!r} must be callable, got {type(fn).__name__}")
    if name in _BUILDERS and not overwrite:
        raise ConfigError(f"register_builder: a builder named {name!r} already exists (pass overwrite=True)")
    _BUILDERS[name] = fn


def available() -> list[str]:
    """The names `build` accepts, sorted."""
    return sorted(_BUILDERS)


def accepted_hparams(builder: Builder) -> dict[str, object] | None:
    """Keyword hparams of a builder and their defaults; None when it takes **kwargs (anything goes)."""
    params = list(inspect.signature(builder).parameters.values())[1:]  # the first one is the signature
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name: (None if p.default is p.empty else p.default) for p in params
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def check_choice(name_or_model: str | Any | Builder, hparams: dict | None = None) -> None:
    """Check a model choice before anything is built: a known zoo name, a builder function or a ready Keras model,
    and hparams the builder accepts (none with a ready model).

    Raises:
        ConfigError: unknown name (lists the known ones), unknown hparam (lists the accepted ones), hparams given
            with a ready model, or a choice of another type.
    """
    _checked_builder(name_or_model, hparams or {})


def _checked_builder(name_or_model, hparams: dict) -> tuple[str, Builder] | None:
    """(label for messages, builder) of a checked zoo name or builder function; None for a ready Keras model."""
    if stack.is_keras_model(name_or_model):
        if hparams:
            raise ConfigError(f"build: hparams {sorted(hparams)} were given with a ready-made model "
                              f"{name_or_model.name!r}; they would be ignored (pass a builder function instead)")
        return None
    if isinstance(name_or_model, str):
        if name_or_model not in _BUILDERS:
            raise ConfigError(f"unknown model {name_or_model!r}; known models: {available()} "
                              f"(or pass a Keras model or a builder function)")
        label, builder = repr(name_or_model), _BUILDERS[name_or_model]
    elif callable(name_or_model):
        label, builder = repr(getattr(name_or_model, "__name__", "builder")), name_or_model
    else:
        raise ConfigError(f"build: expected a model name, a Keras model or a builder function, "
                          f"got {type(name_or_model).__name__}")
    accepted = accepted_hparams(builder)
    unknown = sorted(set(hparams) - set(accepted)) if accepted is not None else []
    if unknown:
        raise ConfigError(f"model {label}: unknown hparam(s) {unknown}; accepted: {sorted(accepted)}")
    return label, builder


def _check_input_shape(model, signature: ModelSignature, label: str) -> None:
    if stack.flavour_of(model) is None or not hasattr(model, "inputs"):
        raise ConfigError(f"model {label}: the builder returned {type(model).__name__}, not a Keras model")
    if len(model.inputs or []) != 1:
        raise ConfigError(f"model {label}: must have exactly one input, it has {len(model.inputs or [])}")
    got = tuple(model.inputs[0].shape[1:])
    want = tuple(signature.input_shape)
    if len(got) != len(want) or any(g is not None and int(g) != w for g, w in zip(got, want)):
        raise ConfigError(f"model {label}: its input shape {list(got)} does not match the signature's "
                          f"input_shape {list(want)}")


def build(name_or_model: str | Any | Builder, signature: ModelSignature, *, keras: str = "tf_keras",
          augment: Augmentation | None = None, **hparams):
    """Build an uncompiled Keras model for `signature`.

    Args:
        name_or_model: a zoo name (`available()`: mlp, cnn, lstm, embedding, ...), a ready Keras model of either
            flavour (returned as is once its input shape is checked), or a builder `fn(signature, **hparams)`.
        signature: input shape of one prepared example, task and number of classes.
        keras: the Keras flavour zoo builders build with: "tf_keras" (default) or "keras3" (current stack).
        augment: training-only image augmentation for the zoo's image models (`cnn`, `embedding`).
        **hparams: the builder's hyper-parameters (e.g. `hidden=(64, 64)`, `dropout=0.1` for mlp).

    Raises:
        ConfigError: unknown name (lists the known ones), unknown or invalid hparam (lists the accepted ones),
            input shape not suited to the model, a given model whose input shape differs from the signature's,
            or a Keras flavour that is not installed.
    """
    if not isinstance(signature, ModelSignature):
        raise ConfigError(f"build: signature must be a ModelSignature, got {type(signature).__name__}")
    stack.check_flavour(keras)
    if augment and not (isinstance(name_or_model, str) and name_or_model in ("cnn", EMBEDDING)):
        raise ConfigError(f"build: image augmentation ({augment}) is built into the zoo's image models (cnn, "
                          f"embedding); for {getattr(name_or_model, 'name', name_or_model)!r} add Keras "
                          f"RandomFlip/RandomZoom layers to the model itself")
    checked = _checked_builder(name_or_model, hparams)
    if checked is None:  # a ready Keras model
        _check_input_shape(name_or_model, signature, repr(name_or_model.name))
        return name_or_model
    label, builder = checked
    token, augment_token = _FLAVOUR.set(keras), _AUGMENT.set(augment)
    try:
        model = builder(signature, **hparams)
    finally:
        _FLAVOUR.reset(token)
        _AUGMENT.reset(augment_token)
    _check_input_shape(model, signature, label)
    log.debug("built model %s for %s: %d parameters", label, signature, model.count_params())
    return model


def default_loss(signature: ModelSignature, model_name: str | None = None, keras: str = "tf_keras",
                 item_counts: Sequence[float] | None = None):
    """The loss to compile with: binary_crossentropy / sparse_categorical_crossentropy / mse by task, a
    `TripletSemiHardLoss` (of the Keras flavour `keras`) for the `embedding` model, an `InBatchSoftmaxLoss` with
    negatives shared across ranks for `two_tower` (`item_counts`: training rows per item index, for its log-Q
    correction)."""
    if model_name == EMBEDDING:
        return loss_classes(keras)["TripletSemiHardLoss"]()
    if model_name == TWO_TOWER:
        return loss_classes(keras)["InBatchSoftmaxLoss"](item_counts=item_counts)
    return {"binary": "binary_crossentropy", "multiclass": "sparse_categorical_crossentropy",
            "regression": "mse", ANOMALY: "mse"}[signature.task]


def default_metrics(signature: ModelSignature, model_name: str | None = None) -> list[str]:
    """Metrics to compile with: accuracy for classification, mae for regression, none for embeddings."""
    if model_name in (EMBEDDING, TWO_TOWER):
        return []
    return ["mae"] if signature.task in ("regression", ANOMALY) else ["accuracy"]


for _name, _fn in (("mlp", build_mlp), ("cnn", build_cnn), ("lstm", build_lstm), (EMBEDDING, build_embedding),
                   (AUTOENCODER, build_autoencoder), (TWO_TOWER, build_two_tower),
                   ("text_cnn", build_text_cnn), ("text_gru", build_text_gru),
                   ("lstm_forecaster", build_lstm_forecaster), ("gru_forecaster", build_gru_forecaster),
                   ("tcn_forecaster", build_tcn_forecaster)):
    register_builder(_name, _fn)
