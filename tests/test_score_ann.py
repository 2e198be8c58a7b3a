"""Approximate nearest neighbours (sparkdl.score.ann_index): faiss indexes built per Spark task, stored with the
model version, searched by `similar(..., approximate=True)` against the exact scan of the same rows."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sparkdl.errors import ConfigError, ModelStoreError, ValidationError

pytest.importorskip("faiss", reason="the ann extra (faiss-cpu) is not installed")


def recall_by_distance(approx, exact, k: int) -> float:
    """The share of the exact top-k matched by the approximate one, ties included: an approximate neighbour counts
    when it is no farther than the exact k-th."""
    kth = exact.groupby("query")["distance"].max()
    hits = (approx["distance"].to_numpy() <= kth.loc[approx["query"]].to_numpy() + 1e-5).sum()
    return hits / (k * exact["query"].nunique())


@pytest.mark.both_sessions
def test_approximate_similar_finds_what_the_exact_scan_finds(spark, digits_index, digits_items):
    from sparkdl.score import similar

    version, info = digits_index
    assert info.rows == 1797 * 24 and info.skipped_rows == 0 and info.keep_columns == ("id", "digit")
    assert len(info.parts) == 2 and {p.kind for p in info.parts} == {"ivf_flat"}
    assert sum(p.rows for p in info.parts) == info.rows and all(p.nlist > 100 for p in info.parts)
    manifest = json.loads((version.path / "indexes" / "default" / "manifest.json").read_text())
    assert manifest["model"] == str(version) and manifest["library"].startswith("faiss ")

    k = 10
    queries = spark.createDataFrame(digits_items.where("id % 100 = 7").orderBy("id").limit(30).toPandas())
    exact = similar(version, queries, digits_items, k=k, keep_columns=["id", "digit"],
                    query_columns=["id"]).toPandas()
    approx = similar(version, queries, approximate=True, k=k, query_columns=["id"]).toPandas()
    assert list(approx.columns) == ["query", "query_id", "rank", "distance", "id", "digit"]
    assert len(approx) == 30 * k
    assert all(ranks == list(range(1, k + 1)) for ranks in approx.groupby("query")["rank"].apply(list))
    assert (approx["distance"].diff()[approx["rank"] > 1] >= -1e-6).all()
    first = approx[approx["rank"] == 1]
    assert (first["id"].to_numpy() == first["query_id"].to_numpy()).all() and first["distance"].max() < 1e-3
    assert recall_by_distance(approx, exact, k) >= 0.95
    # every list probed: the inverted file gives the exact distances (to float32 rounding near 0)
    full = similar(version, queries, approximate=True, k=k, nprobe=100_000, keep_columns=["digit"]).toPandas()
    np.testing.assert_allclose(full["distance"].to_numpy(), exact["distance"].to_numpy(), rtol=1e-3, atol=5e-3)
    assert full["digit"].dtype == exact["digit"].dtype


def test_index_mistakes_are_named_and_an_index_is_replaced_whole(spark, digits_index, digits_items, score_store):
    from sparkdl.score import build_index, read_index_info, similar

    version, info = digits_index
    queries = digits_items.limit(3)
    with pytest.raises(ModelStoreError, match=r"has no index 'other' \(indexes: \['default'\]\).*build_index"):
        similar(version, queries, approximate=True, index="other")
    with pytest.raises(ConfigError, match="keeps \\['id', 'digit'\\], not \\['pixels'\\]"):
        similar(version, queries, approximate=True, keep_columns=["pixels"])
    with pytest.raises(ConfigError, match="nprobe must be a positive int"):
        similar(version, queries, approximate=True, nprobe=0)
    with pytest.raises(ConfigError, match="exact search needs the table"):
        similar(version, queries)
    with pytest.raises(ConfigError, match="already has an index 'default'"):
        build_index(version, digits_items)
    with pytest.raises(ConfigError, match="index name must be a plain file name"):
        build_index(version, digits_items, name="../x")
    with pytest.raises(ValidationError, match="nope"):
        build_index(version, digits_items, name="small", keep_columns=["nope"])
    folder = version.path / "indexes"
    assert sorted(p.name for p in folder.iterdir()) == ["default"]  # the refused builds left nothing behind

    small = build_index(version, digits_items.where("id % 100 = 0"), name="small", keep_columns=["id"],
                        partitions=3)
    assert small.rows == 1797 and {p.kind for p in small.parts} == {"flat"} and len(small.parts) == 3
    replaced = build_index(version, digits_items.where("id % 100 < 2"), name="small", partitions=1,
                           overwrite=True)
    assert replaced.rows == 2 * 1797 and replaced.keep_columns == ("id",)
    assert read_index_info(version, "small") == replaced
    assert sorted(p.name for p in folder.iterdir()) == ["default", "small"]
    assert sorted(p.name for p in (folder / "small").iterdir()) == [
        "manifest.json", "part-00000.faiss", "part-00000.parquet"]
    found = similar(version, queries, approximate=True, index="small", k=2).toPandas()
    assert len(found) == 6 and (found["distance"] >= 0).all()

    # a part changed after the build is refused before faiss parses it; a manifest that is not one, by its path
    part = folder / "small" / "part-00000.faiss"
    part.write_bytes(part.read_bytes()[:-64] + b"\xff" * 64)
    with pytest.raises(Exception, match="is not what build_index wrote"):
        similar(version, queries, approximate=True, index="small", k=2).collect()
    (folder / "small" / "manifest.json").write_text('{"name": "small", "parts": "nonsense"}')
    with pytest.raises(ModelStoreError, match=r"small/manifest.json is not an index manifest"):
        read_index_info(version, "small")
