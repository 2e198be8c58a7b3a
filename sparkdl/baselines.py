"""Simple baselines trained on the same split as a model, so its accuracy has something to beat.

`baseline_accuracy(spec, train_df, test_df)` fits a scikit-learn logistic regression on the driver:

* one ``text`` feature: TF-IDF of word 1- and 2-grams (sublinear term frequency) on the raw strings;
* one ``image`` feature: the decoded pixels (`sparkdl.data.images`, as the model decodes them), standardized;
* otherwise ``numeric`` and ``vector``/``sequence`` features, standardized, as raw values (pixels as pixels);
  nulls are filled with the training column's mean.

It is meant for demo- and evaluation-sized tables: at most `max_rows` rows of each side are collected to the
driver (a sample beyond that, with a fixed seed).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparkdl.data.images import decode_images
from sparkdl.data.spec import FeatureSpec
from sparkdl.errors import ConfigError
from sparkdl.log import get_logger

log = get_logger("baselines")
MAX_ROWS = 200_000


@dataclass(frozen=True)
class Baseline:
    """A baseline's test accuracy and what it was trained on."""

    method: str
    accuracy: float
    train_rows: int
    test_rows: int

    def to_dict(self) -> dict:
        return {"method": self.method, "accuracy": self.accuracy, "train_rows": self.train_rows,
                "test_rows": self.test_rows}


def _collect(df, columns: list[str], max_rows: int, seed: int):
    count = df.count()
    if count > max_rows:
        df = df.sample(fraction=min(1.0, 1.1 * max_rows / count), seed=seed).limit(max_rows)
    return df.select(*columns).toPandas()


def _matrix(spec: FeatureSpec, frame) -> np.ndarray:
    blocks = []
    for f in spec.features:
        if f.kind == "numeric":
            blocks.append(frame[f.name].astype("float64").to_numpy()[:, None])
        else:
            blocks.append(np.stack([np.full(f.size, np.nan) if v is None else np.asarray(v, dtype=np.float64)
                                    for v in frame[f.name]]))
    return np.concatenate(blocks, axis=1)


def _pixels(spec: FeatureSpec, frame):
    """(decoded pixels (n, h*w*c) as floats, the rows of `frame` they come from): the decodable images only,
    decoded as the model's preprocessing decodes them."""
    import pyarrow as pa

    f = spec.features[0]
    pixels, reasons = decode_images(pa.array(list(frame[f.name])), f.shape, f.resize, f.name)
    good = np.equal(reasons, None)
    if not good.all():
        log.warning("baseline: %d undecodable image(s) left out", int((~good).sum()))
    return pixels[good].reshape(int(good.sum()), -1).astype(np.float32), frame[good]


def baseline_accuracy(spec: FeatureSpec, train_df, test_df, max_rows: int = MAX_ROWS, seed: int = 0) -> Baseline:
    """Fit the baseline for `spec` on `train_df`, return its accuracy on `test_df` (Spark DataFrames).

    Raises:
        ConfigError: a regression label, no label, or features the baseline cannot take (categoricals, or a
            text feature beside others).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    label = spec.label
    if label is None or label.task == "regression":
        raise ConfigError("baseline: needs a binary or multiclass label (it reports accuracy)")
    kinds = {f.kind for f in spec.features}
    columns = spec.feature_names + [label.name]
    train = _collect(train_df.dropna(subset=[label.name]), columns, max_rows, seed)
    test = _collect(test_df.dropna(subset=[label.name]), columns, max_rows, seed)
    if "text" in kinds:
        if len(spec.features) != 1:
            raise ConfigError(f"baseline: a text feature is taken alone; the spec has {spec.feature_names}")
        name = spec.features[0].name
        method = "tfidf_logistic_regression"
        model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                              LogisticRegression(max_iter=2000, C=10.0))
        x_train, x_test = train[name].fillna(""), test[name].fillna("")
    elif kinds == {"image"}:
        method = "logistic_regression_pixels"
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        (x_train, train), (x_test, test) = _pixels(spec, train), _pixels(spec, test)
    elif kinds <= {"numeric", "vector", "sequence"}:
        method = "logistic_regression"
        model = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=2000))
        x_train, x_test = _matrix(spec, train), _matrix(spec, test)
    else:
        raise ConfigError(f"baseline: takes numeric, vector, sequence, one text or one image feature, not "
                          f"{sorted(kinds)}")
    y_train, y_test = train[label.name].astype(str), test[label.name].astype(str)
    model.fit(x_train, y_train)
    accuracy = float((model.predict(x_test) == y_test.to_numpy()).mean())
    log.info("baseline %s: accuracy %.4f on %d test rows (trained on %d)", method, accuracy, len(test), len(train))
    return Baseline(method, accuracy, len(train), len(test))


__all__ = ["Baseline", "baseline_accuracy"]
