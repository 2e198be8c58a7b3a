"""`ModelMetadata`: a model version's metadata.json as a typed record, read once on the driver.

Every module that scores, explains or evaluates a stored model reads what it needs from here — the feature spec
(one copy: the fitted preprocessing's), the task, the classes — instead of reaching into the nested dict.

    >>> meta = ModelMetadata.from_dict(store.metadata("digits@1"))
    >>> meta.spec.feature_names, meta.task, meta.num_classes, meta.label_classes
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sparkdl.data.forecast_fit import ForecastPreparation
from sparkdl.data.preprocess import PreprocessorModel
from sparkdl.data.spec import FeatureSpec
from sparkdl.errors import ConfigError, ModelStoreError

if TYPE_CHECKING:
    from sparkdl.data.preprocess import PreprocessorModel
    from sparkdl.data.spec import FeatureSpec


@dataclass(frozen=True)
class ModelMetadata:
    """What scoring needs of a model version.

    Attributes:
        name, version: the version in its store.
        spec: the feature spec the preprocessing was fitted with (None for a forecaster).
        preprocessing: the fitted `PreprocessorModel.to_dict()` (a forecaster's `ForecastPreparation.to_dict()`).
        model_name: the zoo builder ("mlp", "cnn", "lstm", "embedding") or None for a custom model.
        task, num_classes: from the signature, else the spec's label (None when neither says).
        label_classes: the label values by class index, or None (class indices are the labels).
        raw: the whole metadata.json (history, metrics, lineage, ...).
        forecast: a forecaster's fitted preparation (its task, grid and per-series scaling), else None.
    """

    name: str | None
    version: int | None
    spec: "FeatureSpec | None"
    preprocessing: dict
    model_name: str | None
    task: str | None
    num_classes: int | None
    label_classes: tuple | None
    raw: dict = field(repr=False, compare=False, default_factory=dict)
    forecast: ForecastPreparation | None = None

    @classmethod
    def from_dict(cls, metadata: dict) -> "ModelMetadata":
        """Raises ModelStoreError: the metadata records no fitted preprocessing (not saved through sparkdl)."""
        where = f"model {metadata.get('name')}@{metadata.get('version')}"
        preprocessing = metadata.get("preprocessing")
        if not isinstance(preprocessing, dict) or not ("spec" in preprocessing
                                                       or ForecastPreparation.is_forecast(preprocessing)):
            raise ModelStoreError(f"{where}: its metadata records no 'preprocessing'; sparkdl scoring needs the "
                                  f"fitted PreprocessorModel (save models through sparkdl.train or pass "
                                  f"metadata={{'preprocessing': preprocessor.to_dict(), ...}} to ModelStore.save)")
        if ForecastPreparation.is_forecast(preprocessing):
            return cls(metadata.get("name"), metadata.get("version"), None, preprocessing, metadata.get("model_name"),
                       "regression", None, None, metadata, ForecastPreparation.from_dict(preprocessing))
        spec = FeatureSpec.from_dict(preprocessing["spec"])
        stats_label = (preprocessing.get("stats") or {}).get("label") or {}
        signature = metadata.get("signature") or {}
        task, num_classes = signature.get("task"), signature.get("num_classes")
        if not task and spec.label is not None:
            task, num_classes = spec.label.task, spec.label.num_classes or stats_label.get("num_classes")
        classes = metadata.get("label_classes")
        if classes is None:
            classes = stats_label.get("classes")
        return cls(metadata.get("name"), metadata.get("version"), spec, preprocessing, metadata.get("model_name"),
                   task, num_classes, _classes(classes, where), metadata)

    @property
    def where(self) -> str:
        return f"model {self.name}@{self.version}"

    def preprocessor(self) -> "PreprocessorModel":
        """The fitted preprocessing. Raises ModelStoreError for a forecaster (it has `forecast` instead)."""
        if self.forecast is not None:
            raise ModelStoreError(f"{self.where} is a forecaster: it scores windows of a long table "
                                  f"(sparkdl.score.forecast), not rows of features")
        return PreprocessorModel.from_dict(self.preprocessing)


def data_values(metadata: dict) -> dict[str, Any]:
    """Every raw value of the training data a model version's metadata stores, by where it comes from:
    categorical and text vocabularies per feature (a `pii` feature: "hashed into N buckets", no value), the label's
    classes, a forecaster's entity keys. Numeric statistics (means, deviations, ranges) are aggregates, not listed.
    What `sparkdl models show --data-values` prints."""
    preprocessing = metadata.get("preprocessing") or {}
    out: dict[str, Any] = {}
    if ForecastPreparation.is_forecast(preprocessing):
        keys = sorted((preprocessing.get("series") or {}).keys())
        out["forecast entities"] = (f"{len(keys)} series keyed by a salted hash (entity_pii): no value stored"
                                    if preprocessing.get("entity_salt") else keys)
    for name, entry in ((preprocessing.get("stats") or {}).get("features") or {}).items():
        if not isinstance(entry, dict):
            continue
        if entry.get("hash_buckets") is not None:
            out[f"feature {name}"] = f"hashed into {entry['hash_buckets']} buckets (pii): no value stored"
        elif entry.get("vocabulary"):
            out[f"feature {name}"] = list(entry["vocabulary"])
    if metadata.get("label_classes"):
        out["label classes"] = list(metadata["label_classes"])
    return out


def _classes(classes, where: str) -> tuple | None:
    if classes is None:
        return None
    if isinstance(classes, dict):  # {"0": "cat", "1": "dog"}: index -> label
        try:
            classes = [classes[k] for k in sorted(classes, key=lambda k: int(k))]
        except (TypeError, ValueError):
            raise ConfigError(f"{where} metadata: label_classes must be a list or an index -> label mapping, "
                              f"got keys {sorted(classes)[:5]}") from None
    return tuple(classes)
