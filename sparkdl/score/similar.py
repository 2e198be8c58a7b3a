"""Nearest neighbours by a model's embedding, computed in Spark: "find the images most like these".

    >>> from sparkdl.score.similar import similar
    >>> similar("digits_emb@1", queries_df, "/lake/digits_images", k=5, keep_columns=["path", "label"]).show()

`similar(model_ref, queries, table, k)` embeds the queries (a small DataFrame, collected to the driver) and every
row of `table` with the model's ``embedding`` output (an embedding model's own output, e.g. the zoo's triplet
`embedding`; for any other model the input of its output layer), through the same scoring path as
`score_dataframe`. Each executor task then computes the exact squared Euclidean distances of its rows to all
queries with one matrix product per Arrow batch and keeps each query's `k` nearest; a final ranking over those
partial lists (at most `k` rows per query and task) gives the global top `k`.

How it scales: the work is exact, O(table rows × queries × embedding size), spread over the executors, and only
``k × tasks`` candidates per query are shuffled, so it suits up to a few thousand queries against tables of
millions of rows. For more queries, or where approximate is enough, `pyspark.ml.feature.BucketedRandomProjectionLSH`
on the embedding column (`approxSimilarityJoin`) hashes both sides and compares only rows that share a bucket —
sub-quadratic, at the price of recall.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from sparkdl.errors import ConfigError
from sparkdl.lake import read_table
from sparkdl.log import get_logger
from sparkdl.score.frame import score_dataframe
from sparkdl.score.model_ref import resolve_model

log = get_logger("score.similar")

EMBEDDING_COLUMN = "_sparkdl_embedding"
MAX_QUERIES = 10_000


def similar(model_ref, queries, table, k: int = 5, keep_columns: list[str] | None = None,
            query_columns: list[str] | None = None, store=None, spark=None):
    """The `k` rows of `table` nearest to each query by the model's embedding (exact, in Spark).

    Args:
        model_ref: the model (as for `score_dataframe`): an embedding model, or any model (its penultimate
            layer is used).
        queries: a DataFrame with the model's feature columns (at most 10,000 rows).
        table: a DataFrame, or a Delta table path/URI (read at its latest version), with the feature columns.
        k: neighbours per query.
        keep_columns: columns of `table` to return for each neighbour (default: its id columns from the model's
            feature spec, else every column that is not a feature).
        query_columns: columns of `queries` to return beside each neighbour (default: the same rule).
        store: the model store (default: the reference's own).
        spark: the session (to read `table` by path).

    Returns:
        A DataFrame: ``query`` (the query's position in `queries`, from 0), the `query_columns` prefixed
        ``query_``, ``rank`` (1 = nearest), ``distance`` (Euclidean) and the `keep_columns` — `k` rows per query
        (fewer when the table has fewer rows).

    Raises:
        ConfigError: `k` < 1, too many queries, an empty query set.
        ValidationError: missing or mistyped feature or keep columns (before any Spark job but the query scoring).
    """
    from pyspark.sql import DataFrame, Window
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, IntegerType, StructField, StructType

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"similar: k must be a positive int, got {k!r}")
    if not isinstance(table, DataFrame):
        table, _ = read_table(table, spark=spark)
    _, metadata = resolve_model(model_ref, store)
    features = set(metadata.spec.feature_names)
    keep = list(keep_columns) if keep_columns is not None else _default_keep(table, metadata.spec, features)
    qkeep = list(query_columns) if query_columns is not None else _default_keep(queries, metadata.spec, features)
    query_rows = (score_dataframe(queries, model_ref, output="embedding", output_col=EMBEDDING_COLUMN,
                                  keep_columns=qkeep, store=store, on_invalid="error")
                  .limit(MAX_QUERIES + 1).collect())
    if not query_rows:
        raise ConfigError("similar: the query DataFrame has no rows")
    if len(query_rows) > MAX_QUERIES:
        raise ConfigError(f"similar: at most {MAX_QUERIES} queries per call (they are held on every executor); "
                          f"for more, use pyspark.ml.feature.BucketedRandomProjectionLSH.approxSimilarityJoin")
    q = np.asarray([r[EMBEDDING_COLUMN] for r in query_rows], dtype=np.float32)
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

    candidates = embedded.mapInArrow(nearest, schema)
    ranked = (candidates.withColumn("rank", F.row_number().over(
        Window.partitionBy("query").orderBy("distance")))
        .where(F.col("rank") <= k))
    queries_df = embedded.sparkSession.createDataFrame(
        [(i, *[r[c] for c in qkeep]) for i, r in enumerate(query_rows)],
        StructType([StructField("query", IntegerType(), False)]
                   + [StructField("query_" + c, queries.schema[c].dataType, True) for c in qkeep]))
    log.info("similar: %d queries, k=%d, embedding size %d", len(q), k, q.shape[1])
    return (ranked.join(F.broadcast(queries_df), "query") if qkeep else ranked).select(
        "query", *["query_" + c for c in qkeep], "rank", "distance", *keep).orderBy("query", "rank")


def _default_keep(df, spec, features: set) -> list[str]:
    ids = [c for c in spec.id_columns if c in df.columns]
    return ids or [c for c in df.columns if c not in features]


__all__ = ["similar"]
