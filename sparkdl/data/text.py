"""Text features: one tokenizer, a vocabulary fitted in Spark, token ids for the model.

The tokenizer is written once with pyarrow compute kernels and runs everywhere text is read: on the executors
when the vocabulary is fitted (inside `mapInArrow`), in `PreprocessorModel.prepare_batch` at training time and in
every scoring path. So a token counted at fit time is the token looked up at scoring time. Steps:

1. Unicode NFKD normalization with the combining marks removed (accents stripped: "Ünïcode" is "unicode";
   NFKD because PyArrow 14's NFKC decomposes like NFKD, and both stacks must tokenize alike), then lower case;
2. tokens are the maximal runs of letters, digits and apostrophes (``[\\p{L}\\p{N}']+``); everything else
   separates tokens and is dropped. Apostrophes at the start or end of a token are removed ("'quoted'" is
   "quoted", "don't" stays one token).

Token ids: 0 pads a text shorter than ``max_length``, 1 is a token outside the vocabulary, and the vocabulary's
tokens (the ``vocabulary_size`` most frequent in the training data, ties broken by the token) are 2, 3, ... in
order of frequency. A `pii` text feature has no vocabulary: a token's id is 2 + its salted hash bucket
(`sparkdl.data.hashing`), so no token of the data is stored with the model. A text longer than ``max_length``
tokens keeps its first ``max_length``. A text with no token at all (empty, or punctuation only) cannot be
prepared: the row is reported with a reason, never silently dropped.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sparkdl.data.hashing import hash_buckets

PAD_ID = 0
OOV_ID = 1
TOKEN_ID_OFFSET = 2  # the first vocabulary token's id
_SEPARATOR = r"[^\p{L}\p{N}']+"
_EDGE_APOSTROPHES = r"^'+|'+$"
_MARKS = r"\p{M}+"


def tokenize(texts: pa.Array) -> pa.ListArray:
    """Each string of `texts` as its list of tokens (null stays null; see the module docstring for the rules)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not pa.types.is_string(texts.type):
        texts = texts.cast(pa.string())
    decomposed = pc.utf8_normalize(texts, form="NFKD")
    normalized = pc.utf8_lower(pc.replace_substring_regex(decomposed, _MARKS, ""))
    pieces = pc.split_pattern_regex(normalized, _SEPARATOR)
    words = pc.replace_substring_regex(pieces.flatten(), _EDGE_APOSTROPHES, "")
    keep = pc.not_equal(words, "")
    # rebuild the lists without the empty pieces: the kept count per list gives the new offsets
    lengths = pc.list_value_length(pieces).fill_null(0).to_numpy(zero_copy_only=False)
    parent = np.repeat(np.arange(len(pieces)), lengths)
    kept = np.asarray(keep, dtype=bool)
    counts = np.bincount(parent[kept], minlength=len(pieces))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), words.filter(keep), mask=texts.is_null())


def token_ids(tokens: pa.ListArray, vocabulary: list[str] | pa.Array,
              max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids float32 (n, max_length), number of tokens per row int64) for lists of tokens; nulls give no tokens.

    `vocabulary` may be given as a pyarrow string array, built once for many batches."""
    flat = tokens.flatten()
    value_set = vocabulary if isinstance(vocabulary, pa.Array) else pa.array(vocabulary, type=pa.string())
    index = pc.index_in(flat, value_set=value_set)
    return _laid_out(tokens, pc.add(index, TOKEN_ID_OFFSET).fill_null(OOV_ID).to_numpy(zero_copy_only=False),
                     max_length)


def hashed_token_ids(tokens: pa.ListArray, buckets: int, salt: str, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """As `token_ids`, each token's id being TOKEN_ID_OFFSET + its salted hash bucket (a `pii` text feature); each
    distinct token of the batch is hashed once."""
    flat = tokens.flatten()
    distinct = pc.unique(flat)
    buckets_of = hash_buckets(distinct.to_pylist(), buckets, salt) + TOKEN_ID_OFFSET
    index = pc.index_in(flat, value_set=distinct).to_numpy(zero_copy_only=False)
    return _laid_out(tokens, buckets_of[index] if len(flat) else np.zeros(0, np.int64), max_length)


def _laid_out(tokens: pa.ListArray, ids: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids float32 (n, max_length) padded with PAD_ID, tokens per row) from the flat ids of `tokens`' values."""
    n = len(tokens)
    flat = tokens.flatten()
    lengths = pc.list_value_length(tokens).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    row = np.repeat(np.arange(n), lengths)
    position = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    inside = position < max_length
    out = np.full((n, max_length), PAD_ID, dtype=np.float32)
    out[row[inside], position[inside]] = ids[inside]
    return out, lengths


def fit_vocabularies(df, features: list) -> dict[str, list[str]]:
    """The vocabulary of each text feature of `features` on Spark DataFrame `df`, in one Spark job.

    The executors tokenize their Arrow batches with `tokenize` and count tokens per batch; Spark adds the counts
    by (feature, token) and keeps each feature's `vocabulary_size` most frequent tokens (ties by token).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    names = [f.name for f in features]

    def count_tokens(batches):
        for batch in batches:
            for name in names:
                tokens = tokenize(batch.column(name)).flatten()
                if len(tokens) == 0:
                    continue
                counts = pc.value_counts(tokens)
                yield pa.RecordBatch.from_arrays(
                    [pa.array([name] * len(counts), pa.string()), counts.field("values"),
                     counts.field("counts").cast(pa.int64())], names=["feature", "token", "n"])

    counted = (df.select(*names).mapInArrow(count_tokens, "feature string, token string, n long")
               .groupBy("feature", "token").agg(F.sum("n").alias("n")))
    caps = F.create_map(*[x for f in features for x in (F.lit(f.name), F.lit(int(f.vocabulary_size)))])
    ranked = (counted.withColumn("rank", F.row_number().over(
        Window.partitionBy("feature").orderBy(F.col("n").desc(), F.col("token").asc())))
        .where(F.col("rank") <= caps[F.col("feature")]))
    out: dict[str, list[tuple[int, str]]] = {name: [] for name in names}
    for r in ranked.collect():
        out[r["feature"]].append((r["rank"], r["token"]))
    return {name: [token for _, token in sorted(items)] for name, items in out.items()}


__all__ = ["tokenize", "token_ids", "hashed_token_ids", "fit_vocabularies", "PAD_ID", "OOV_ID", "TOKEN_ID_OFFSET"]
