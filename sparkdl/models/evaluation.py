"""Evaluating embeddings without TensorFlow: k-nearest-neighbour accuracy."""
from __future__ import annotations

import numpy as np

from sparkdl.errors import ConfigError


def knn_accuracy(train_emb, train_y, test_emb, test_y, k: int = 5) -> float:
    """Accuracy of a k-NN classifier (Euclidean) fit on `train_emb`/`train_y` and scored on `test_emb`/`test_y`.

    Works on embeddings or on raw features (flattened to 2-D), so the two can be compared.

    Raises:
        ConfigError: mismatched lengths, empty inputs, or `k` not in 1..len(train).
    """
    from sklearn.neighbors import KNeighborsClassifier

    train_emb = np.asarray(train_emb, dtype=np.float64)
    test_emb = np.asarray(test_emb, dtype=np.float64)
    train_y = np.asarray(train_y).reshape(-1)
    test_y = np.asarray(test_y).reshape(-1)
    if len(train_emb) == 0 or len(test_emb) == 0:
        raise ConfigError("knn_accuracy: train and test embeddings must not be empty")
    if len(train_emb) != len(train_y) or len(test_emb) != len(test_y):
        raise ConfigError(f"knn_accuracy: {len(train_emb)} train embeddings vs {len(train_y)} labels, "
                          f"{len(test_emb)} test embeddings vs {len(test_y)} labels")
    if not 1 <= int(k) <= len(train_emb):
        raise ConfigError(f"knn_accuracy: k must be between 1 and {len(train_emb)}, got {k}")
    clf = KNeighborsClassifier(n_neighbors=int(k))
    clf.fit(train_emb.reshape(len(train_emb), -1), train_y)
    return float(np.mean(clf.predict(test_emb.reshape(len(test_emb), -1)) == test_y))
