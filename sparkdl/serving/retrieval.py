"""Top-k retrieval for `sparkdl serve`: a model version's stored index (`sparkdl.score.build_index`), all parts in
memory, searched for the embeddings of a request's rows (`POST /similar`)."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sparkdl.errors import ModelStoreError, RequestError
from sparkdl.fileutil import is_safe_name
from sparkdl.score import ann_index

MAX_K = 1000
RETRIEVAL = "retrieval"  # the output a /similar query is embedded with: the server's `Loaded.retrieval_output`


@dataclass(frozen=True)
class SimilarQuery:
    """The parameters of one `/similar` request (from its query string)."""

    k: int = 10
    index: str = "default"
    nprobe: int | None = None

    @classmethod
    def from_params(cls, params) -> "SimilarQuery":
        """Raises RequestError (400) naming a malformed or out-of-range parameter."""
        k = _positive_int(params, "k", 10, MAX_K)
        nprobe = _positive_int(params, "nprobe", None, 1 << 20)
        index = params.get("index", "default")
        if not is_safe_name(index):
            raise RequestError(f"parameter 'index': a plain name is expected, got {index!r}")
        return cls(k, index, nprobe)


def _positive_int(params, key: str, default, most: int):
    text = params.get(key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise RequestError(f"parameter {key!r}: an integer is expected, got {text!r}") from None
    if not 1 <= value <= most:
        raise RequestError(f"parameter {key!r}: must be between 1 and {most}, got {value}")
    return value


class LoadedIndexes:
    """The indexes of one model version, each opened on its first request (and kept while the version serves)."""

    def __init__(self, model_ref):
        self.model_ref = model_ref
        self._lock = threading.Lock()
        self._open: dict[str, tuple] = {}

    def get(self, name: str):
        """(IndexInfo, [(faiss index, kept columns)]) of index `name`.

        Raises:
            RequestError (404): the model version has no index of that name.
        """
        with self._lock:
            if name not in self._open:
                try:
                    info = ann_index.read_index_info(self.model_ref, name)
                except ModelStoreError as exc:
                    raise RequestError(str(exc), status=404) from None
                self._open[name] = (info, [ann_index.open_part(info, part) for part in info.parts])
            return self._open[name]

    def search(self, embeddings: np.ndarray, query: SimilarQuery) -> list[list[dict]]:
        """Each embedding's `k` nearest indexed rows, nearest first: {"rank", "distance", kept columns...}."""
        info, parts = self.get(query.index)
        if embeddings.shape[1] != info.dimension:
            raise RequestError(f"index {query.index!r} holds {info.dimension}-dim embeddings, the model gives "
                               f"{embeddings.shape[1]}: rebuild it", status=409)
        distances, where = [], []
        for position, (index, _) in enumerate(parts):
            distance, rows = ann_index.search_part(index, embeddings, query.k, query.nprobe)
            distances.append(np.where(rows >= 0, distance, np.inf))
            where.append(np.stack([np.full_like(rows, position), rows], axis=-1))
        distance = np.concatenate(distances, axis=1)
        found = np.concatenate(where, axis=1)
        order = np.argsort(distance, axis=1, kind="stable")[:, :query.k]
        answers = []
        for q, picks in enumerate(order):
            neighbours = []
            for rank, pick in enumerate(picks, start=1):
                if not np.isfinite(distance[q, pick]):
                    break
                position, row = found[q, pick]
                items: pa.Table = parts[position][1]
                neighbours.append({"rank": rank, "distance": float(distance[q, pick]),
                                   **{c: items.column(c)[int(row)].as_py() for c in info.keep_columns}})
            answers.append(neighbours)
        return answers


__all__ = ["RETRIEVAL", "LoadedIndexes", "SimilarQuery"]
