"""The salted hash of personal data (`pii: true`): a value (a category, a text's token) goes to one of B buckets by
sha256(salt + value), the salt drawn per model, so no raw value is stored and the buckets of one model say nothing
about another's. The Spark SQL preparation of categoricals writes the same rule with `sha2` and `conv`."""
from __future__ import annotations

import hashlib

import numpy as np


def hash_buckets(values: list, buckets: int, salt: str) -> np.ndarray:
    """Each value's bucket: the first 60 bits of sha256(salt + value) modulo `buckets` (nulls: the slot after the
    buckets). The same rule as the Spark SQL preparation's (`sha2`, `conv`), so both paths agree bit for bit."""
    out = np.full(len(values), buckets, dtype=np.int64)
    for i, v in enumerate(values):
        if v is not None:
            out[i] = int(hashlib.sha256((salt + v).encode("utf-8")).hexdigest()[:15], 16) % buckets
    return out


__all__ = ["hash_buckets"]
