"""`POST /similar` of `sparkdl serve` (sparkdl.serving.retrieval): a real server on a free loopback port answers
each row's nearest rows of the model's stored index, as `similar(..., approximate=True)` does in Spark."""
from __future__ import annotations

import pytest

pytest.importorskip("prometheus_client", reason="the serve extra (prometheus-client) is not installed")
pytest.importorskip("faiss", reason="the ann extra (faiss-cpu) is not installed")

from test_serving import _call  # noqa: E402

from sparkdl.serving import ModelServer  # noqa: E402


def test_the_server_answers_top_k_as_similar_does(spark, digits_index, digits_items, score_store):
    from sparkdl.score import similar

    version, _ = digits_index
    rows = digits_items.where("id % 100 = 3").orderBy("id").limit(5).toPandas()
    body = {"dataframe_records": [{"pixels": [float(v) for v in p]} for p in rows["pixels"]]}
    want = similar(version, spark.createDataFrame(rows), approximate=True, k=4).toPandas()
    server = ModelServer(str(version), store=score_store, port=0, reload_s=0).start()
    try:
        status, answer = _call(server, "/similar?k=4", body)
        assert status == 200, answer
        neighbours = answer["neighbors"]
        assert len(neighbours) == 5 and all(len(n) == 4 for n in neighbours)
        assert [[n["id"] for n in found] for found in neighbours] == \
            want.groupby("query")["id"].apply(list).tolist()
        assert [n["rank"] for n in neighbours[0]] == [1, 2, 3, 4] and neighbours[0][0]["id"] == rows["id"][0]
        assert set(neighbours[0][0]) == {"rank", "distance", "id", "digit"}

        status, answer = _call(server, "/similar?index=nope", body)
        assert status == 404 and "has no index 'nope'" in answer["message"], answer
        for query, named in [("k=0", "'k': must be between 1 and 1000"), ("k=ten", "'k': an integer"),
                             ("nprobe=-1", "'nprobe'"), ("index=../x", "'index': a plain name")]:
            status, answer = _call(server, f"/similar?{query}", body)
            assert status == 400 and named in answer["message"], (query, answer)
        status, answer = _call(server, "/similar", {"dataframe_records": [{"pixel": [1.0]}]})
        assert status == 400 and "pixels" in answer["message"], answer
    finally:
        server.stop()
