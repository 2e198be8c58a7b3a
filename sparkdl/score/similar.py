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
stored with the model version (`sparkdl.score.ann_index`) in one Spark job, one task per index part (each embeds
the collected queries itself and searches its part), and the driver merges the per-part top `k` lists. On 1M
rows it answers in a fraction of the exact scan's time at ≥ 0.95 of its recall
(`scripts/benchmarks/bench_similar.py`); `nprobe` trades recall for speed.

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

from sparkdl.data.validation import array_column, is_vector_udt
from sparkdl.errors import ConfigError
from sparkdl.lake import read_table
from sparkdl.log import get_logger
from sparkdl.score import ann_index
from sparkdl.score.ann_index import EMBEDDING_COLUMN, default_keep
from sparkdl.score.core import check_columns
from sparkdl.score.frame import score_dataframe
from sparkdl.score.model_ref import resolve_model
from sparkdl.score.outputs import plan_output, retrieval_outputs, scoring_spec
from sparkdl.score.runtime import get_scorer, raise_if_invalid

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
        (fewer when the table has fewer rows), ordered by query and rank. Exact: a lazy DataFrame; approximate: the
        search has run, and the DataFrame holds its answer.

    Raises:
        ConfigError: `k` < 1, too many queries, an empty query set, no `table` for an exact search.
        ModelStoreError: `approximate` and the model version has no index `index`.
        ValidationError: missing or mistyped feature or keep columns (before any Spark job but the query scoring).
    """
    from pyspark.sql import DataFrame

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"similar: k must be a positive int, got {k!r}")
    ann_index.check_nprobe(nprobe)
    ref, metadata = resolve_model(model_ref, store)
    qkeep = list(query_columns) if query_columns is not None else default_keep(queries, metadata.spec)
    if approximate:
        info = ann_index.read_index_info(ref, index)
        unknown = [c for c in keep_columns or () if c not in info.keep_columns]
        if unknown:
            raise ConfigError(f"similar: index {index!r} of {info.model} keeps {list(info.keep_columns)}, not "
                              f"{unknown}; rebuild it with build_index(..., keep_columns=[...])")
        keep = list(keep_columns) if keep_columns is not None else list(info.keep_columns)
        return _approximate(ref, metadata, info, queries, qkeep, keep, k, nprobe)
    if table is None:
        raise ConfigError("similar: an exact search needs the table to search (or approximate=True and an index)")
    if not isinstance(table, DataFrame):
        table, _ = read_table(table, spark=spark)
    # the limit before scoring: one job (a limit on the scored rows would take partitions in rounds of jobs)
    query_output, item_output = retrieval_outputs(metadata)
    query_rows = score_dataframe(queries.limit(MAX_QUERIES + 1), model_ref, output=query_output,
                                 output_col=EMBEDDING_COLUMN, keep_columns=qkeep, store=store,
                                 on_invalid="error").collect()
    _check_query_count(len(query_rows))
    q = np.asarray([r[EMBEDDING_COLUMN] for r in query_rows], dtype=np.float32)
    keep = list(keep_columns) if keep_columns is not None else default_keep(table, metadata.spec)
    log.info("similar: %d queries, k=%d, embedding size %d", len(q), k, q.shape[1])
    return _ranked(_scan_candidates(table, model_ref, store, q, k, keep, item_output), queries, query_rows, qkeep,
                   keep, k)


def _check_query_count(rows: int) -> None:
    if not rows:
        raise ConfigError("similar: the query DataFrame has no rows")
    if rows > MAX_QUERIES:
        raise ConfigError(f"similar: at most {MAX_QUERIES} queries per call (they are held on every executor); "
                          f"for more, use pyspark.ml.feature.BucketedRandomProjectionLSH.approxSimilarityJoin")


def _scan_candidates(table, model_ref, store, q: np.ndarray, k: int, keep: list[str], output: str):
    """Each task's `k` nearest rows per query, by an exact scan of `table` embedded by the model (`output`)."""
    from pyspark.sql.types import DoubleType, IntegerType, StructField, StructType

    q_norms = np.square(q).sum(axis=1)
    embedded = score_dataframe(table, model_ref, output=output, output_col=EMBEDDING_COLUMN,
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
            x = ann_index.matrix(column.filter(pa.array(good)))
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


def _approximate(ref, metadata, info, queries, qkeep: list[str], keep: list[str], k: int, nprobe: int | None):
    """The approximate answer, in one Spark job: the raw queries (collected) travel to one task per index part,
    which embeds them with the model and searches its part; the driver merges the parts' top `k` lists. The
    DataFrame returned holds the answer (a local relation)."""
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import from_arrow_schema
    from pyspark.sql.types import DoubleType, IntegerType, StructField, StructType

    where = f"similar({ref})"
    plan = plan_output(retrieval_outputs(metadata)[0], metadata)
    spec = scoring_spec(metadata, plan)
    check_columns(queries, spec, qkeep, where)
    features = spec.feature_names
    columns = list(dict.fromkeys([*features, *qkeep]))
    raw = queries.select(*[array_column(queries, c).alias(c) if is_vector_udt(queries.schema[c].dataType)
                           else queries[c] for c in columns]).limit(MAX_QUERIES + 1).toArrow()
    _check_query_count(raw.num_rows)
    feature_batch = raw.select(features).combine_chunks().to_batches()[0]
    parts, dimension = info.parts, info.dimension
    spark = queries.sparkSession

    def search(batches):
        out, valid, reasons = get_scorer(ref, plan).score(feature_batch)
        raise_if_invalid(where, valid, reasons)
        q = ann_index.matrix(out)
        if q.shape[1] != dimension:
            raise ConfigError(f"{where}: index {info.name!r} holds {dimension}-dim embeddings, the model gives "
                              f"{q.shape[1]}; rebuild the index")
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

    items_fields = {f.name: f for f in from_arrow_schema(
        pq.read_schema(Path(info.path) / parts[0].items_file).remove_metadata()).fields}
    query_fields = [StructField("query", IntegerType(), False)] + [
        StructField("query_" + c, queries.schema[c].dataType, True) for c in qkeep]
    found = StructType([StructField("query", IntegerType(), False), StructField("distance", DoubleType(), False)]
                       + [items_fields[c] for c in keep])
    candidates = spark.range(0, len(parts), 1, len(parts)).mapInArrow(search, found).toArrow()
    order = np.lexsort((candidates.column("distance").to_numpy(), candidates.column("query").to_numpy()))
    query = candidates.column("query").to_numpy()[order]
    starts = np.r_[0, np.flatnonzero(np.diff(query)) + 1]
    rank = np.arange(len(query)) - np.repeat(starts, np.diff(np.r_[starts, len(query)])) + 1
    best = order[rank <= k]
    top = candidates.take(pa.array(best))
    query = top.column("query").combine_chunks()
    answer = pa.Table.from_arrays(
        [query] + [raw.column(c).combine_chunks().take(query) for c in qkeep]
        + [pa.array(rank[rank <= k].astype(np.int32)), top.column("distance")] + [top.column(c) for c in keep],
        names=["query", *["query_" + c for c in qkeep], "rank", "distance", *keep])
    log.info("similar: %d queries, k=%d, index %r of %s (%d parts)", raw.num_rows, k, info.name, ref, len(parts))
    schema = StructType(query_fields[:1] + query_fields[1:] + [StructField("rank", IntegerType(), False)]
                        + list(found.fields[1:]))
    return spark.createDataFrame(answer.select(schema.fieldNames()), schema)


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
        "query", *["query_" + c for c in qkeep], "rank", "distance", *keep).repartition(1).sortWithinPartitions(
        "query", "rank")  # at most k rows per query: one partition, sorted without orderBy's sampling job


__all__ = ["similar"]
