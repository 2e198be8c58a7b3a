"""Approximate nearest-neighbour indexes of a model's embeddings, one per Spark partition, stored with the model.

    >>> from sparkdl.score import build_index, similar
    >>> info = build_index("items_emb@1", "/lake/items", keep_columns=["item_id"], partitions=8)
    >>> similar("items_emb@1", queries_df, approximate=True, k=10).show()

`build_index(model_ref, items)` embeds every row of `items` with the model's ``embedding`` output (the same path
as `similar` and `score_dataframe`) and, in each Spark task, builds a faiss index of its rows: an inverted file of
exact vectors (``IndexIVFFlat``, `nlist` ≈ 4·√rows, trained on a sample of the task's rows) or, below
`FLAT_BELOW` rows, an exact ``IndexFlatL2``. Each part is two files in the model version's folder,
``indexes/<name>/part-NNNNN.faiss`` and ``part-NNNNN.parquet`` (the kept columns, in index order), written by the
task; ``manifest.json`` (an `IndexInfo`) is written last by the driver, and the folder is renamed into place only
then, so a failed build leaves no index and an earlier index of the name untouched until the new one is whole.

faiss was chosen by measurement (`scripts/benchmarks/bench_ann_libraries.py`): on 500k rows × 32 dims, its
IVF-Flat builds in 5 s where HNSW graphs (faiss's or usearch's) take 47–48 s, at the same recall and query time.

The model folder must be reachable from the executors under the same path (a local folder in local mode, a shared
mount on a cluster), as the training cache and the model itself are.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from sparkdl.errors import ConfigError, ModelStoreError
from sparkdl.fileutil import is_safe_name, write_atomic
from sparkdl.lake import read_table
from sparkdl.log import get_logger
from sparkdl.registry import ModelStore
from sparkdl.score.frame import score_dataframe
from sparkdl.score.model_ref import ModelRef, resolve_model
from sparkdl.score.outputs import retrieval_outputs

log = get_logger("score.ann_index")

INDEX_DIR = "indexes"
MANIFEST_FILE = "manifest.json"
EMBEDDING_COLUMN = "_sparkdl_embedding"
FLAT_BELOW = 20_000     # parts with fewer rows get an exact flat index (IVF training wants ≥ 39 rows per list)
DEFAULT_NPROBE = 32     # inverted lists searched per query and part (see the benchmark for the recall it gives)
_TRAIN_ROWS_PER_LIST = 64


@dataclass(frozen=True)
class IndexPart:
    """One part of an index: the rows of one Spark task."""

    part: int
    rows: int
    kind: str       # "ivf_flat" or "flat"
    nlist: int      # inverted lists (0 for "flat")
    sha256: str     # of the index file then the items file (checked before faiss reads a byte of it)

    @property
    def index_file(self) -> str:
        return f"part-{self.part:05d}.faiss"

    @property
    def items_file(self) -> str:
        return f"part-{self.part:05d}.parquet"


@dataclass(frozen=True)
class IndexInfo:
    """An index's manifest: what was indexed, with which model, and where its parts are."""

    name: str
    model: str                # "name@version"
    path: str                 # the index folder
    dimension: int
    rows: int
    skipped_rows: int         # rows the model's preprocessing could not prepare (not indexed)
    keep_columns: tuple[str, ...]
    parts: tuple[IndexPart, ...]
    source: dict | None       # {"table", "version"} when the items came from a Delta table
    built_at: str
    library: str              # "faiss <version>"

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("path")
        return out

    @classmethod
    def from_json(cls, data: dict, path: Path) -> "IndexInfo":
        """Raises ModelStoreError naming the manifest when it is not one sparkdl wrote."""
        try:
            return cls(str(data["name"]), str(data["model"]), str(path), int(data["dimension"]),
                       int(data["rows"]), int(data["skipped_rows"]), tuple(map(str, data["keep_columns"])),
                       tuple(IndexPart(int(p["part"]), int(p["rows"]), str(p["kind"]), int(p["nlist"]),
                                       str(p["sha256"])) for p in data["parts"]),
                       data.get("source"), str(data["built_at"]), str(data["library"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelStoreError(f"{path / MANIFEST_FILE} is not an index manifest ({type(exc).__name__}: "
                                  f"{exc}); rebuild the index with build_index(..., overwrite=True)") from None


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is in both stacks
        raise ConfigError("approximate search needs faiss: pip install 'sparkdl-lakehouse[ann]' (faiss-cpu)") from exc
    return faiss


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not is_safe_name(name):
        raise ConfigError(f"index name must be a plain file name (letters, digits, '.', '_', '-'), got {name!r}")
    return name


def index_folder(model_ref, name: str = "default", store=None) -> tuple[Path, str]:
    """(the index folder of `name` in the model version's folder, "name@version"); a `ModelRef` is taken as
    resolved."""
    ref = model_ref if isinstance(model_ref, ModelRef) else resolve_model(model_ref, store)[0]
    version = ModelStore(ref.root).resolve(str(ref))
    return version.path / INDEX_DIR / _check_name(name), str(ref)


def read_index_info(model_ref, name: str = "default", store=None) -> IndexInfo:
    """The manifest of index `name` of a model version.

    Raises:
        ModelStoreError: the version has no index of that name (the message lists those it has).
    """
    folder, model = index_folder(model_ref, name, store)
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        have = sorted(p.name for p in folder.parent.iterdir() if (p / MANIFEST_FILE).is_file()) \
            if folder.parent.is_dir() else []
        raise ModelStoreError(f"model {model} has no index {name!r} (indexes: {have or 'none'}); "
                              f"build one with sparkdl.score.build_index({model!r}, items_table)")
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise ModelStoreError(f"{manifest} cannot be read as JSON ({exc})") from None
    return IndexInfo.from_json(data if isinstance(data, dict) else {}, folder)


def build_index(model_ref, items, name: str = "default", keep_columns: list[str] | None = None,
                partitions: int | None = None, overwrite: bool = False, store=None, spark=None) -> IndexInfo:
    """Embed `items` with the model and store an approximate index of them with the model version.

    Args:
        model_ref: the model (as for `score_dataframe`): an embedding model, or any model (the input of its output
            layer is used).
        items: a DataFrame with the model's feature columns, or a Delta table path/URI (its latest version; the
            version is recorded in the manifest).
        name: the index's name (several indexes of one model: e.g. one per catalogue).
        keep_columns: columns stored beside each vector and returned by searches (default: the feature spec's id
            columns, else every column that is not a feature).
        partitions: index parts (the items are repartitioned to this many tasks first); default: one part per
            task of `items` as it is partitioned.
        overwrite: replace an existing index of this name (it stays usable until the new one is complete).
        store: the model store (default: the reference's own).
        spark: the session (to read `items` by path).

    Returns:
        the new index's `IndexInfo`.

    Raises:
        ConfigError: a bad name or `partitions`, an existing index without `overwrite`, no rows to index.
        ValidationError: missing or mistyped feature or keep columns (before any Spark job).
    """
    from pyspark.sql import DataFrame
    from pyspark.sql.pandas.types import from_arrow_schema

    if partitions is not None and (isinstance(partitions, bool) or not isinstance(partitions, int)
                                   or partitions < 1):
        raise ConfigError(f"build_index: partitions must be a positive int, got {partitions!r}")
    ref, metadata = resolve_model(model_ref, store)
    folder, model = index_folder(ref, name)
    if (folder / MANIFEST_FILE).is_file() and not overwrite:
        raise ConfigError(f"model {model} already has an index {name!r} at {folder}; pass overwrite=True to "
                          f"replace it")
    source = None
    if not isinstance(items, DataFrame):
        items, snapshot = read_table(items, spark=spark)
        source = {"table": snapshot.uri, "version": snapshot.version}
    keep = list(keep_columns) if keep_columns is not None else default_keep(items, metadata.spec)
    if partitions is not None:
        items = items.repartition(partitions)
    embedded = score_dataframe(items, ref, output=retrieval_outputs(metadata)[1], output_col=EMBEDDING_COLUMN,
                               keep_columns=keep)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".tmp-{uuid.uuid4().hex}-{name}"
    staging.mkdir()
    target = str(staging)

    def build_parts(batches):
        from pyspark import TaskContext

        embeddings, kept, skipped = [], [], 0
        for batch in batches:
            column = batch.column(EMBEDDING_COLUMN)
            good = np.asarray(column.is_valid(), dtype=bool)
            skipped += int((~good).sum())
            if good.any():
                mask = pa.array(good)
                embeddings.append(matrix(column.filter(mask)))
                kept.append(pa.Table.from_batches([batch.filter(mask)]).select(keep))
        part = TaskContext.get().partitionId()
        if embeddings:
            x = np.concatenate(embeddings)
            info = _write_part(Path(target), part, x, pa.concat_tables(kept))
            yield pa.RecordBatch.from_pylist(
                [{"part": part, "rows": info.rows, "kind": info.kind, "nlist": info.nlist, "skipped": skipped,
                  "dimension": int(x.shape[1]), "sha256": info.sha256}], schema=_PART_SCHEMA)
        elif skipped:
            yield pa.RecordBatch.from_pylist([{"part": part, "rows": 0, "kind": "", "nlist": 0, "skipped": skipped,
                                               "dimension": 0, "sha256": ""}], schema=_PART_SCHEMA)

    try:
        rows = embedded.mapInArrow(build_parts, from_arrow_schema(_PART_SCHEMA)).collect()
        parts = tuple(sorted((IndexPart(int(r["part"]), int(r["rows"]), r["kind"], int(r["nlist"]), r["sha256"])
                              for r in rows if r["rows"]), key=lambda p: p.part))
        if not parts:
            raise ConfigError(f"build_index: no rows of the items could be embedded by {model} "
                              f"({sum(int(r['skipped']) for r in rows)} rows failed its preprocessing)")
        info = IndexInfo(name, model, str(folder), max(int(r["dimension"]) for r in rows),
                         sum(p.rows for p in parts), sum(int(r["skipped"]) for r in rows), tuple(keep), parts,
                         source, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         f"faiss {_faiss().__version__}")
        _remove_unlisted(staging, parts)
        write_atomic(staging / MANIFEST_FILE, json.dumps(info.to_json(), indent=2).encode())
        _swap_into_place(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("index %r of %s: %d rows in %d parts (%d skipped) at %s", name, model, info.rows, len(parts),
             info.skipped_rows, folder)
    return info


_PART_SCHEMA = pa.schema([("part", pa.int32()), ("rows", pa.int64()), ("kind", pa.string()),
                          ("nlist", pa.int32()), ("skipped", pa.int64()), ("dimension", pa.int32()),
                          ("sha256", pa.string())])


def matrix(column: pa.Array) -> np.ndarray:
    """A list<float> Arrow column without nulls as a float32 matrix."""
    flat = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return flat.reshape(len(column), -1) if len(column) else flat.reshape(0, 0)


def _write_part(folder: Path, part: int, x: np.ndarray, kept: pa.Table) -> IndexPart:
    """Build one part's faiss index of `x` and write it with its kept columns (atomically, so a retried task's
    files replace a failed attempt's)."""
    import pyarrow.parquet as pq

    faiss = _faiss()
    faiss.omp_set_num_threads(1)  # one task per core: faiss's own threads would oversubscribe the executor
    n, d = x.shape
    x = np.ascontiguousarray(x)
    nlist = min(int(4 * math.sqrt(n)), n // 39)
    if n < FLAT_BELOW or nlist < 2:
        index, kind, nlist = faiss.IndexFlatL2(d), "flat", 0
    else:
        index, kind = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist), "ivf_flat"
        sample = np.random.default_rng(part).choice(n, size=min(n, nlist * _TRAIN_ROWS_PER_LIST), replace=False)
        index.train(x[np.sort(sample)])
    index.add(x)
    index_bytes = faiss.serialize_index(index).tobytes()
    sink = pa.BufferOutputStream()
    pq.write_table(kept, sink)
    items_bytes = sink.getvalue().to_pybytes()
    info = IndexPart(part, n, kind, nlist, _digest(index_bytes, items_bytes))
    write_atomic(folder / info.index_file, index_bytes)
    write_atomic(folder / info.items_file, items_bytes)
    return info


def _digest(*contents: bytes) -> str:
    digest = hashlib.sha256()
    for content in contents:
        digest.update(content)
    return digest.hexdigest()


def _remove_unlisted(staging: Path, parts: tuple[IndexPart, ...]) -> None:
    """Drop files of task attempts whose results were not kept (a speculative or retried attempt's part)."""
    listed = {f for p in parts for f in (p.index_file, p.items_file)}
    for path in staging.iterdir():
        if path.name not in listed:
            path.unlink()


def _swap_into_place(staging: Path, folder: Path) -> None:
    if folder.exists():
        old = folder.with_name(f".tmp-{uuid.uuid4().hex}-old-{folder.name}")
        os.rename(folder, old)
        os.rename(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, folder)


def default_keep(df, spec) -> list[str]:
    """The columns kept beside each neighbour by default: the spec's id columns, else the non-feature ones."""
    features = set(spec.feature_names)
    ids = [c for c in spec.id_columns if c in df.columns]
    return ids or [c for c in df.columns if c not in features]


_opened: dict[tuple[str, str, int], tuple] = {}  # the parts of the last index this process searched


def open_part(info: IndexInfo, part: IndexPart):
    """(faiss index, kept columns as an Arrow table) of one part, read from the index folder; kept in this process
    (a reused Python worker, the server) while it searches the same build of the same index.

    Raises:
        ModelStoreError: the part's files are missing or not the bytes the manifest records (faiss never parses
            a file that was changed or replaced).
    """
    import pyarrow.parquet as pq

    key = (info.path, info.built_at, part.part)
    if key not in _opened:
        for stale in [k for k in _opened if k[:2] != key[:2]]:
            del _opened[stale]
        folder = Path(info.path)
        try:
            index_bytes = (folder / part.index_file).read_bytes()
            items_bytes = (folder / part.items_file).read_bytes()
        except OSError as exc:
            raise ModelStoreError(f"index {info.name!r} of {info.model}: part {part.part} cannot be read ({exc}); "
                                  f"rebuild it") from None
        if _digest(index_bytes, items_bytes) != part.sha256:
            raise ModelStoreError(f"index {info.name!r} of {info.model}: {folder / part.index_file} or "
                                  f"{part.items_file} is not what build_index wrote (sha256 differs); refused, "
                                  f"rebuild the index")
        index = _faiss().deserialize_index(np.frombuffer(index_bytes, dtype=np.uint8))
        _opened[key] = (index, pq.read_table(pa.BufferReader(items_bytes)))
    return _opened[key]


def search_part(index, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Euclidean distances, row positions) of each query's `k` nearest rows in one part: arrays of shape
    (queries, k'), k' = min(k, rows), nearest first."""
    faiss = _faiss()
    faiss.omp_set_num_threads(1)
    if hasattr(index, "nprobe"):
        index.nprobe = min(int(nprobe or DEFAULT_NPROBE), index.nlist)
    top = min(int(k), index.ntotal)
    d2, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), top)
    return np.sqrt(np.maximum(d2, 0.0)), rows


def check_nprobe(nprobe) -> int | None:
    if nprobe is not None and (isinstance(nprobe, bool) or not isinstance(nprobe, int) or nprobe < 1):
        raise ConfigError(f"nprobe must be a positive int, got {nprobe!r}")
    return nprobe


__all__ = ["IndexInfo", "IndexPart", "build_index", "open_part", "read_index_info", "search_part"]
