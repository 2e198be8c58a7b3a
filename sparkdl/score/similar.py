"""Nearest neighbours by a model's embedding, computed in Spark: "find the images most like these".

    >>> from sparkdl.score.similar import similar
    >>> similar("digits_emb@1", queries_df, "/lake/digits_images", k=5, keep_columns=["path", "label"]).show()

`similar(model_ref, queries, table, k)` embeds the queries (a small DataFrame, collected to the driver) and every
row of `table` with the model's ``embedding`` output (an embedding model's own output, e.g. the zoo's triplet
`embedding`; for any other model the input of its output layer), through the same scoring path as
`score_dataframe`. Each executor task then computes the exact squared Euclidean distances of its rows to all
queries with one matrix product per Arrow batch and keeps each query's `k` nearest; a final ranking over those
partial lists (at most `k` rows per query and task) gives the global top `k`.

With `approximate=True` the table is not embedded again: the queries are searched in the index `build_index`
stored with the model version (`sparkdl.score.ann_index`), one Spark task per index part, and the per-part top
`k` lists are ranked the same way. On 1M rows it answers in a fraction of the exact scan's time at ≥ 0.95 of its
recall (`scripts/benchmarks/bench_similar.py`); `nprobe` trades recall for speed.

How the exact search scales: the work is exact, O(table rows × queries × embedding size), spread over the
executors, and only ``k × tasks`` candidates per query are shuffled, so it suits up to a few thousand queries
against tables of millions of rows. For many more queries than that,
`pyspark.ml.feature.BucketedRandomProjectionLSH` on the embedding column (`approxSimilarityJoin`) hashes both
sides and compares only rows that share a bucket.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from sparkdl.errors import ConfigError
from sparkdl.lake import read_table
from sparkdl.log import get_logger
from sparkdl.score import ann_index
from sparkdl.score.ann_index import EMBEDDING_COLUMN, default_keep
from sparkdl.score.frame import score_dataframe
from sparkdl.score.model_ref import resolve_model

log = get_logger("score.similar")

MAX_QUERIES = 10_000


def similar(model_ref, queries, table=None, k: int = 5, keep_columns: list[str] | None = None,
            query_columns: list[str] | None = None, store=None, spark=None, approximate: bool = False,
            index: str = "default", nprobe: int | None = None):
    """The `k` rows of `table` nearest to each query by the model's embedding (exact, in Spark), or, with
    `approximate`, the `k` nearest rows of the model's stored index.

    Args:
        model_ref: the model (as for `score_dataframe`): an embedding model, or any model (its penultimate
            layer is used).
        queries: a DataFrame with the model's feature columns (at most 10,000 rows).
        table: a DataFrame, or a Delta table path/URI (read at its latest version), with the feature columns
            (exact search only: an approximate search answers from the index).
        k: neighbours per query.
        keep_columns: columns of `table` to return for each neighbour (default: its id columns from the model's
            feature spec, else every column that is not a feature; approximate: the columns the index kept).
        query_columns: columns of `queries` to return beside each neighbour (default: the same rule).
        store: the model store (default: the reference's own).
        spark: the session (to read `table` by path).
        approximate: search the index `build_index` stored with the model version instead of scanning `table`.
        index: the index's name (approximate only).
        nprobe: inverted lists searched per query and index part (approximate only; default
            `ann_index.DEFAULT_NPROBE`): more is slower and closer to exact.

    Returns:
        A DataFrame: ``query`` (the query's position in `queries`, from 0), the `query_columns` prefixed
        ``query_``, ``rank`` (1 = nearest), ``distance`` (Euclidean) and the `keep_columns` — `k` rows per query
        (fewer when the table has fewer rows).

    Raises:
        ConfigError: `k` < 1, too many queries, an empty query set, no `table` for an exact search.
        ModelStoreError: `approximate` and the model version has no index `index`.
        ValidationError: missing or mistyped feature or keep columns (before any Spark job but the query scoring).
    """
    from pyspark.sql import DataFrame

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"similar: k must be a positive int, got {k!r}")
    ann_index.check_nprobe(nprobe)
    _, metadata = resolve_model(model_ref, store)
    if approximate:
        info = ann_index.read_index_info(model_ref, index, store)
        unknown = [c for c in keep_columns or () if c not in info.keep_columns]
        if unknown:
            raise ConfigError(f"similar: index {index!r} of {info.model} keeps {list(info.keep_columns)}, not "
                              f"{unknown}; rebuild it with build_index(..., keep_columns=[...])")
    elif table is None:
        raise ConfigError("similar: an exact search needs the table to search (or approximate=True and an index)")
    elif not isinstance(table, DataFrame):
        table, _ = read_table(table, spark=spark)
    qkeep = list(query_columns) if query_columns is not None else default_keep(queries, metadata.spec)
    query_rows = (score_dataframe(queries, model_ref, output="embedding", output_col=EMBEDDING_COLUMN,
                                  keep_columns=qkeep, store=store, on_invalid="error")
                  .limit(MAX_QUERIES + 1).collect())
    if not query_rows:
        raise ConfigError("similar: the query DataFrame has no rows")
    if len(query_rows) > MAX_QUERIES:
        raise ConfigError(f"similar: at most {MAX_QUERIES} queries per call (they are held on every executor); "
                          f"for more, use pyspark.ml.feature.BucketedRandomProjectionLSH.approxSimilarityJoin")
    q = np.asarray([r[EMBEDDING_COLUMN] for r in query_rows], dtype=np.float32)
    if approximate:
        keep = list(keep_columns) if keep_columns is not None else list(info.keep_columns)
        candidates = _index_candidates(queries.sparkSession, info, q, k, nprobe, keep)
    else:
        keep = list(keep_columns) if keep_columns is not None else default_keep(table, metadata.spec)
        candidates = _scan_candidates(table, model_ref, store, q, k, keep)
    log.info("similar: %d queries, k=%d, embedding size %d%s", len(q), k, q.shape[1],
             f", index {index!r}" if approximate else "")
    return _ranked(candidates, queries, query_rows, qkeep, keep, k)


def _scan_candidates(table, model_ref, store, q: np.ndarray, k: int, keep: list[str]):
    """Each task's `k` nearest rows per query, by an exact scan of `table` embedded by the model."""
    from pyspark.sql.types import DoubleType, IntegerType, StructField, StructType

    q_norms = np.square(q).sum(axis=1)
    embedded = score_dataframe(table, model_ref, output="embedding", output_col=EMBEDDING_COLUMN,
                               keep_columns=keep, store=store)
    schema = StructType([StructField("query", IntegerType(), False), StructField("distance", DoubleType(), False)]
                        + [embedded.schema[c] for c in keep])

    def nearest(batches):
        for batch in batches:
            column = batch.column(EMBEDDING_COLUMN)
            good = np.asarray(column.is_valid(), dtype=bool)
            if not good.any():
                continue
            rows = np.flatnonzero(good)
            x = np.asarray(column.filter(pa.array(good)).flatten().to_numpy(zero_copy_only=False),
                           dtype=np.float32).reshape(len(rows), q.shape[1])
            d2 = np.maximum(np.square(x).sum(axis=1)[:, None] - 2.0 * (x @ q.T) + q_norms[None, :], 0.0)
            top = min(k, len(rows))
            best = np.argpartition(d2, top - 1, axis=0)[:top] if top < len(rows) else np.tile(
                np.arange(len(rows))[:, None], (1, q.shape[0]))
            query = np.repeat(np.arange(q.shape[0], dtype=np.int32)[None, :], top, axis=0).ravel()
            picked = best.ravel()
            distance = np.sqrt(d2[picked, query]).astype(np.float64)
            take = pa.array(rows[picked])
            yield pa.RecordBatch.from_arrays(
                [pa.array(query), pa.array(distance)] + [batch.column(c).take(take) for c in keep],
                names=["query", "distance"] + keep)

    return embedded.mapInArrow(nearest, schema)


def _index_candidates(spark, info, q: np.ndarray, k: int, nprobe: int | None, keep: list[str]):
    """Each index part's `k` nearest rows per query: one Spark task per part, reading it from the index folder."""
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import from_arrow_schema
    from pyspark.sql.types import DoubleType, IntegerType, StructField, StructType

    if q.shape[1] != info.dimension:
        raise ConfigError(f"similar: index {info.name!r} holds {info.dimension}-dim embeddings, the model gives "
                          f"{q.shape[1]}; rebuild the index")
    items_schema = pq.read_schema(Path(info.path) / info.parts[0].items_file)
    fields = {f.name: f for f in from_arrow_schema(items_schema.remove_metadata()).fields}
    schema = StructType([StructField("query", IntegerType(), False), StructField("distance", DoubleType(), False)]
                        + [fields[c] for c in keep])
    parts = info.parts

    def nearest(batches):
        for batch in batches:
            for position in batch.column(0).to_pylist():
                index, items = ann_index.open_part(info, parts[position])
                distance, rows = ann_index.search_part(index, q, k, nprobe)
                found = rows >= 0
                query = np.broadcast_to(np.arange(len(q), dtype=np.int32)[:, None], rows.shape)[found]
                take = pa.array(rows[found])
                yield pa.RecordBatch.from_arrays(
                    [pa.array(query), pa.array(distance[found].astype(np.float64))]
                    + [items.column(c).take(take).combine_chunks() for c in keep],
                    names=["query", "distance"] + keep)

    return spark.range(0, len(parts), 1, len(parts)).mapInArrow(nearest, schema)


def _ranked(candidates, queries, query_rows, qkeep: list[str], keep: list[str], k: int):
    """The global top `k` per query from the candidates, with the queries' kept columns beside them."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.types import IntegerType, StructField, StructType

    ranked = (candidates.withColumn("rank", F.row_number().over(
        Window.partitionBy("query").orderBy("distance")))
        .where(F.col("rank") <= k))
    queries_df = candidates.sparkSession.createDataFrame(
        [(i, *[r[c] for c in qkeep]) for i, r in enumerate(query_rows)],
        StructType([StructField("query", IntegerType(), False)]
                   + [StructField("query_" + c, queries.schema[c].dataType, True) for c in qkeep]))
    return (ranked.join(F.broadcast(queries_df), "query") if qkeep else ranked).select(
        "query", *["query_" + c for c in qkeep], "rank", "distance", *keep).orderBy("query", "rank")


__all__ = ["similar"]
