"""Feature specs: what a model reads from a table, declared once and serialized with the model.

A `FeatureSpec` lists the input columns and the label. Each `Feature` has a kind:

* ``numeric``     – a scalar numeric column (optionally imputed and scaled);
* ``vector``      – a fixed-length ``array<float>`` (or Spark ML vector) column; ``shape`` gives its tensor shape,
                    e.g. ``(64,)`` or ``(8, 8, 1)`` for an 8×8 grey image stored flat in row-major order;
* ``categorical`` – a string or integer column, indexed with an out-of-vocabulary bucket and one-hot encoded;
                    with ``pii: true`` (personal data) no vocabulary is kept: each value goes to one of
                    ``hash_buckets`` (1024) buckets by a hash salted per model;
* ``sequence``    – an ``array<float>`` of ``timesteps × features`` values, ``shape=(timesteps, features)``;
* ``text``        – a string column, tokenized (`sparkdl.data.text`) into ``max_length`` token ids with a
                    vocabulary of the ``vocabulary_size`` most frequent tokens fitted in Spark; 0 pads, 1 is
                    out-of-vocabulary. Its prepared shape is ``(max_length,)``. With ``pii: true`` no
                    vocabulary is kept: a token's id is 2 + its salted hash bucket (``hash_buckets``, default
                    ``vocabulary_size``);
* ``image``       – a binary column of encoded images (PNG, JPEG...) or a string column of paths/URIs, decoded by
                    `sparkdl.data.images` to ``shape=(height, width, channels)`` (channels 1, 3 or 4), resized
                    unless ``resize: false``, scaled by ``scale`` (none: 0..255, ``minmax``: ÷255, ``standard``:
                    fitted per channel). ``flip`` (random horizontal flips) and ``zoom`` (random zoom by up to
                    that fraction) augment training only. An image feature is the model's only input.

The `Label` says the task: ``binary`` (0/1), ``multiclass`` (class index 0..n-1, or strings mapped to indices by
the preprocessor), ``regression`` or ``anomaly``. An ``anomaly`` label names a column of known anomalies (0/1) that
only evaluation reads: the detector (the zoo's ``autoencoder``) learns to reconstruct its inputs, never from labels.
A spec with no label trains the same detector.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field

from sparkdl.data.kinds import kind_names
from sparkdl.errors import ConfigError

TASKS = ("binary", "multiclass", "regression", "anomaly")
ANOMALY = "anomaly"  # the task of an unsupervised detector: its output is a reconstruction of its input
AUTOENCODER = "autoencoder"  # the zoo's detector, trained on a spec with no label
TWO_TOWER = "two_tower"      # the zoo's retrieval model: its label is the item's index
IMPUTE = (None, "mean", "median", "constant")
SCALE = (None, "standard", "minmax")
DEFAULT_MAX_LENGTH = 64
DEFAULT_VOCABULARY_SIZE = 20000
DEFAULT_HASH_BUCKETS = 1024
IMAGE_SETTINGS = ("resize", "flip", "zoom")


@dataclass(frozen=True)
class Feature:
    """One input column. See the module docstring for the kinds."""

    name: str
    kind: str = "numeric"
    shape: tuple[int, ...] = ()
    impute: str | None = None
    impute_value: float | None = None
    scale: str | None = None
    max_length: int | None = None
    vocabulary_size: int | None = None
    resize: bool | None = None
    flip: bool | None = None
    zoom: float | None = None
    pii: bool = False                 # personal data: no raw value of it is stored with the model
    hash_buckets: int | None = None   # a pii categorical's buckets (salted hash instead of a vocabulary)

    def __post_init__(self):
        where = f"feature {self.name!r}"
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"{where}: name must be a non-empty string")
        self._pii_settings(where)
        object.__setattr__(self, "shape", _shape(f"{where}: shape", self.shape))
        if self.kind == "text":
            self._text_settings(where)
        elif self.max_length is not None or self.vocabulary_size is not None:
            raise ConfigError(f"{where}: max_length and vocabulary_size are settings of a text feature, "
                              f"not of a {self.kind} feature")
        if self.kind == "image":
            self._image_settings(where)
        elif any(getattr(self, k) is not None for k in IMAGE_SETTINGS):
            raise ConfigError(f"{where}: {list(IMAGE_SETTINGS)} are settings of an image feature, "
                              f"not of a {self.kind} feature")
        if self.impute_value is not None and not _is_number(self.impute_value):
            raise ConfigError(f"{where}: impute_value must be a number, got {self.impute_value!r}")
        if self.kind not in kind_names():
            raise ConfigError(f"{where}: kind must be one of {kind_names()} (sparkdl.data.kinds), got {self.kind!r}")
        if self.kind in ("vector", "sequence") and (not self.shape or any(d <= 0 for d in self.shape)):
            raise ConfigError(f"{where}: a {self.kind} feature needs a positive shape, e.g. [64] or [8, 8, 1]")
        if self.kind == "sequence" and len(self.shape) != 2:
            raise ConfigError(f"{where}: a sequence feature has shape [timesteps, features], got {list(self.shape)}")
        if self.kind in ("numeric", "categorical") and self.shape:
            raise ConfigError(f"{where}: a {self.kind} feature is a scalar column; remove shape {list(self.shape)}")
        if self.impute not in IMPUTE:
            raise ConfigError(f"{where}: impute must be one of {IMPUTE}, got {self.impute!r}")
        if self.impute == "constant" and self.impute_value is None:
            raise ConfigError(f"{where}: impute='constant' needs impute_value")
        if self.scale not in SCALE:
            raise ConfigError(f"{where}: scale must be one of {SCALE}, got {self.scale!r}")
        if self.kind == "categorical" and (self.scale or self.impute in ("mean", "median")):
            raise ConfigError(f"{where}: a categorical feature takes no scaling and no mean/median imputation")

    def _pii_settings(self, where: str) -> None:
        if not isinstance(self.pii, bool):
            raise ConfigError(f"{where}: pii must be true or false, got {self.pii!r}")
        if self.pii and self.kind not in ("categorical", "text", "numeric"):
            raise ConfigError(f"{where}: pii: true takes categorical and text features (hashed, no vocabulary is "
                              f"stored) and numeric ones (only statistics are stored); a {self.kind} feature cannot "
                              f"be hashed: hash or drop the column upstream")
        if self.hash_buckets is not None and not (self.pii and self.kind in ("categorical", "text")):
            raise ConfigError(f"{where}: hash_buckets is a setting of a categorical or text feature with pii: true")
        if self.pii and self.kind in ("categorical", "text"):
            default = DEFAULT_HASH_BUCKETS if self.kind == "categorical" else \
                (self.vocabulary_size or DEFAULT_VOCABULARY_SIZE)
            buckets = default if self.hash_buckets is None else self.hash_buckets
            if isinstance(buckets, bool) or not isinstance(buckets, numbers.Integral) or buckets < 2:
                raise ConfigError(f"{where}: hash_buckets must be an integer >= 2, got {self.hash_buckets!r}")
            object.__setattr__(self, "hash_buckets", int(buckets))

    def _text_settings(self, where: str) -> None:
        for key, default in (("max_length", DEFAULT_MAX_LENGTH), ("vocabulary_size", DEFAULT_VOCABULARY_SIZE)):
            value = getattr(self, key)
            if value is None:
                object.__setattr__(self, key, default)
            elif isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}")
        if self.shape and self.shape != (self.max_length,):
            raise ConfigError(f"{where}: a text feature's shape is (max_length,); set max_length instead of "
                              f"shape {list(self.shape)}")
        if self.impute or self.impute_value is not None or self.scale:
            raise ConfigError(f"{where}: a text feature takes no imputation and no scaling")
        object.__setattr__(self, "shape", (int(self.max_length),))

    def _image_settings(self, where: str) -> None:
        if len(self.shape) != 3 or self.shape[-1] not in (1, 3, 4) or min(self.shape) < 1:
            raise ConfigError(f"{where}: an image feature needs shape [height, width, channels] with 1, 3 or 4 "
                              f"channels, got {list(self.shape)}")
        if self.impute or self.impute_value is not None:
            raise ConfigError(f"{where}: an image feature takes no imputation (undecodable images are reported)")
        for key in ("resize", "flip"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
        object.__setattr__(self, "resize", True if self.resize is None else self.resize)
        object.__setattr__(self, "flip", bool(self.flip))
        zoom = 0.0 if self.zoom is None else self.zoom
        if not _is_number(zoom) or not 0.0 <= zoom < 1.0:
            raise ConfigError(f"{where}: zoom is a fraction in [0, 1), got {self.zoom!r}")
        object.__setattr__(self, "zoom", float(zoom))

    @property
    def size(self) -> int:
        """Number of scalar values per row (1 for numeric and categorical before encoding)."""
        return math.prod(self.shape) if self.shape else 1

    def to_dict(self) -> dict:
        out = {"name": self.name, "kind": self.kind}
        if self.shape and self.kind != "text":
            out["shape"] = list(self.shape)
        for key in ("impute", "impute_value", "scale", "max_length", "vocabulary_size") + IMAGE_SETTINGS:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.pii:
            out["pii"] = True
            if self.hash_buckets is not None:
                out["hash_buckets"] = self.hash_buckets
        return out


@dataclass(frozen=True)
class Label:
    """The target column and its task (`binary`, `multiclass`, `regression`, `anomaly`: known anomalies, 0/1,
    read by evaluation only)."""

    name: str
    task: str = "multiclass"
    num_classes: int | None = None

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ConfigError("label: name must be a non-empty string")
        if self.task not in TASKS:
            raise ConfigError(f"label {self.name!r}: task must be one of {TASKS}, got {self.task!r}")
        if self.task == "binary":
            object.__setattr__(self, "num_classes", 2)
        if self.num_classes is not None and (isinstance(self.num_classes, bool)
                                             or not isinstance(self.num_classes, numbers.Integral)):
            raise ConfigError(f"label {self.name!r}: num_classes must be an integer, got {self.num_classes!r}")
        if self.task in ("regression", ANOMALY) and self.num_classes is not None:
            raise ConfigError(f"label {self.name!r}: a {self.task} label has no num_classes")
        if self.num_classes is not None and int(self.num_classes) < 2:
            raise ConfigError(f"label {self.name!r}: num_classes must be >= 2, got {self.num_classes}")

    def to_dict(self) -> dict:
        out = {"name": self.name, "task": self.task}
        if self.num_classes is not None:
            out["num_classes"] = int(self.num_classes)
        return out


@dataclass(frozen=True)
class FeatureSpec:
    """The input features and the label of a model; JSON-serializable.

    Example:
        >>> FeatureSpec.from_dict({"features": [{"name": "pixels", "kind": "vector", "shape": [8, 8, 1]}],
        ...                        "label": {"name": "digit", "task": "multiclass", "num_classes": 10}})
    """

    features: tuple[Feature, ...]
    label: Label | None = None
    id_columns: tuple[str, ...] = field(default=())

    def __post_init__(self):
        object.__setattr__(self, "features", tuple(self.features))
        if isinstance(self.id_columns, str) or not all(isinstance(c, str) and c for c in self.id_columns):
            raise ConfigError(f"feature spec: id_columns must be a list of column names, got {self.id_columns!r}")
        object.__setattr__(self, "id_columns", tuple(self.id_columns))
        if not self.features:
            raise ConfigError("feature spec: at least one feature is required")
        names = [f.name for f in self.features] + ([self.label.name] if self.label else [])
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"feature spec: columns listed more than once: {dupes}")
        images = [f.name for f in self.features if f.kind == "image"]
        if images and len(self.features) > 1:
            raise ConfigError(f"feature spec: image feature {images[0]!r} must be the only feature (the model's "
                              f"input is the image tensor), got features {self.feature_names}")

    @property
    def image_feature(self) -> Feature | None:
        """The image feature, when the model reads images (it is then the only feature)."""
        return next((f for f in self.features if f.kind == "image"), None)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict:
        out = {"features": [f.to_dict() for f in self.features]}
        if self.label:
            out["label"] = self.label.to_dict()
        if self.id_columns:
            out["id_columns"] = list(self.id_columns)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        """Build from a dict (YAML/JSON). Raises ConfigError naming any unknown or missing key."""
        if not isinstance(data, dict):
            raise ConfigError(f"feature spec: expected a mapping, got {type(data).__name__}")
        _check_keys("feature spec", data, {"features", "label", "id_columns"}, {"features"})
        features = []
        for i, item in enumerate(data["features"] or []):
            if isinstance(item, str):
                item = {"name": item}
            _check_keys(f"features[{i}]", item, {"name", "kind", "shape", "impute", "impute_value", "scale",
                                                 "max_length", "vocabulary_size", "pii", "hash_buckets",
                                                 *IMAGE_SETTINGS}, {"name"})
            features.append(Feature(**{**item, "shape": item.get("shape") or ()}))
        label = data.get("label")
        if isinstance(label, str):
            label = {"name": label}
        if label is not None:
            _check_keys("label", label, {"name", "task", "num_classes"}, {"name"})
            label = Label(**label)
        return cls(tuple(features), label, data.get("id_columns") or ())

    @classmethod
    def from_json(cls, text: str) -> "FeatureSpec":
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class ModelSignature:
    """What a model builder needs: the prepared input tensor shape, the output (task, classes; `outputs`: values per
    row of a regression, e.g. a forecaster's horizon, default 1), for a text feature the number of token ids
    (`vocabulary_size`: its vocabulary plus the padding and out-of-vocabulary ids), and where each feature sits in
    the flat prepared row (`layout`, when the preprocessor knows it: a builder can route features to towers)."""

    input_shape: tuple[int, ...]
    task: str
    num_classes: int | None = None
    vocabulary_size: int | None = None
    resize: bool | None = None
    flip: bool | None = None
    zoom: float | None = None
    outputs: int | None = None
    layout: tuple[tuple[str, int, int], ...] = ()  # (feature, first column, columns) in the flat prepared row

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "layout", tuple((str(n), int(a), int(w)) for n, a, w in self.layout))
        if self.task not in TASKS:
            raise ConfigError(f"model signature: task must be one of {TASKS}, got {self.task!r}")
        if self.outputs is not None and (self.task != "regression" or int(self.outputs) < 1):
            raise ConfigError(f"model signature: outputs (values per row) is a positive count of a regression, "
                              f"got {self.outputs!r} for task {self.task!r}")

    def to_dict(self) -> dict:
        out = {"input_shape": list(self.input_shape), "task": self.task, "num_classes": self.num_classes}
        if self.vocabulary_size is not None:
            out["vocabulary_size"] = int(self.vocabulary_size)
        if self.outputs is not None:
            out["outputs"] = int(self.outputs)
        if self.layout:
            out["layout"] = [list(slot) for slot in self.layout]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSignature":
        return cls(tuple(data["input_shape"]), data["task"], data.get("num_classes"), data.get("vocabulary_size"),
                   outputs=data.get("outputs"), layout=tuple(tuple(s) for s in data.get("layout") or ()))


def _check_keys(where: str, data: dict, allowed: set, required: set) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing}")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _shape(where: str, value) -> tuple[int, ...]:
    """A shape as a tuple of ints: a list/tuple of integers, or one integer (`64` is `(64,)`)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool)
                                                       for d in value):
        raise ConfigError(f"{where} must be a list of integers such as [64] or [8, 8, 1], got {value!r}")
    return tuple(int(d) for d in value)
