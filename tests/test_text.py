"""Text features (sparkdl.data.text): the tokenizer, the vocabulary fitted in Spark, text models scored on every
path, bad texts quarantined with a reason, and the text demo's corpus."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from sparkdl.errors import ConfigError, ValidationError

TEXT_SPEC = {"features": [{"name": "text", "kind": "text", "max_length": 32, "vocabulary_size": 500}],
             "label": {"name": "topic", "task": "multiclass"}}


@pytest.fixture(scope="module")
def fortunes(spark):
    """600 rows of the text demo's corpus (id, text, topic) as a cached DataFrame."""
    from sparkdl.datasets import fortunes_frame

    frame = fortunes_frame()
    frame = frame.sample(n=600, random_state=0).reset_index(drop=True)
    return spark.createDataFrame(frame).cache()


@pytest.fixture(scope="module")
def text_model(score_store, fortunes):
    from test_score_udf import train_and_save

    return train_and_save(score_store, "fortunes_text_cnn", TEXT_SPEC, fortunes, "text_cnn",
                          {"embedding_dim": 16, "filters": 16, "kernel_sizes": (2, 3)}, epochs=2)


def test_tokenizer_rules():
    from sparkdl.data.text import OOV_ID, PAD_ID, token_ids, tokenize

    tokens = tokenize(pa.array(["Don't PANIC!! 'quoted' Ünïcode café 42", None, "", "...", "a b c d e f"]))
    assert tokens.to_pylist() == [["don't", "panic", "quoted", "unicode", "cafe", "42"], None, [], [],
                                  ["a", "b", "c", "d", "e", "f"]]
    ids, lengths = token_ids(tokens, ["a", "b", "panic"], 4)
    assert lengths.tolist() == [6, 0, 0, 0, 6]
    assert ids.tolist()[0] == [OOV_ID, 4, OOV_ID, OOV_ID]  # "panic" is the third vocabulary token: id 2 + 2
    assert ids.tolist()[1] == [PAD_ID] * 4
    assert ids.tolist()[4] == [2, 3, OOV_ID, OOV_ID]  # truncated to max_length


def test_vocabulary_fitted_in_spark_equals_a_python_count_and_survives_reload(fortunes):
    from sparkdl.data.preprocess import Preprocessor, PreprocessorModel
    from sparkdl.data.spec import FeatureSpec
    from sparkdl.data.text import tokenize

    prep = Preprocessor(FeatureSpec.from_dict(TEXT_SPEC)).fit(fortunes)
    pdf = fortunes.toPandas()
    counts = Counter(t for row in tokenize(pa.array(pdf["text"].tolist())).to_pylist() for t in row)
    expected = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:500]
    assert prep.stats["features"]["text"]["vocabulary"] == expected
    assert prep.signature.vocabulary_size == 502 and prep.signature.input_shape == (32,)

    reloaded = PreprocessorModel.from_json(prep.to_json())
    table = pa.Table.from_pandas(pdf, preserve_index=False)
    a, b = prep.prepare_batch(table), reloaded.prepare_batch(table)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert reloaded.fingerprint == prep.fingerprint and a.valid.all()


def test_text_model_scores_like_in_process_predict_in_every_path_and_quarantines_bad_texts(
        spark, fortunes, text_model, score_store, lake):
    from test_score_udf import check_probabilities, check_sql_and_table_scoring, expected_outputs


    version, prep, model = text_model
    bad = spark.createDataFrame([(10_001, "", "zippy"), (10_002, "?! ...", "murphy"), (10_003, None, "zippy")],
                                "id long, text string, topic string")
    df = fortunes.limit(80).unionByName(bad)
    pdf = df.orderBy("id").toPandas()
    want, valid = expected_outputs(prep, model, pdf, ["text"])
    assert valid.sum() == 80

    check_probabilities(df, version, "id", want, valid)

    reasons, report = check_sql_and_table_scoring(spark, score_store, lake, version, df, "id", "text", prep, want,
                                                  valid, "texts")
    assert report.reasons == {"feature 'text': no tokens (empty or punctuation-only text)": 2,
                              "feature 'text': null (no imputation)": 1}
    assert reasons == {10_001: "feature 'text': no tokens (empty or punctuation-only text)",
                       10_002: "feature 'text': no tokens (empty or punctuation-only text)",
                       10_003: "feature 'text': null (no imputation)"}


def test_text_settings_and_misuse_fail_early(spark, text_model):
    from sparkdl.data.spec import Feature, FeatureSpec, ModelSignature
    from sparkdl.data.validation import validate
    from sparkdl.models import build
    from sparkdl.score import score_dataframe

    assert Feature("t", kind="text").shape == (64,)  # the default max_length
    assert FeatureSpec.from_dict(TEXT_SPEC).to_dict() == TEXT_SPEC
    with pytest.raises(ConfigError, match="max_length must be a positive integer"):
        Feature("t", kind="text", max_length=0)
    with pytest.raises(ConfigError, match="no imputation and no scaling"):
        Feature("t", kind="text", scale="standard")
    with pytest.raises(ConfigError, match="settings of a text feature"):
        Feature("x", kind="numeric", max_length=8)
    with pytest.raises(ConfigError, match="without a text vocabulary"):
        build("text_cnn", ModelSignature((10,), "binary"))
    ints = spark.createDataFrame([(1, 0)], "text int, topic int")
    with pytest.raises(ValidationError, match="text: wrong type"):
        validate(FeatureSpec.from_dict(TEXT_SPEC), ints)
    empty = spark.createDataFrame([("", "a"), ("hello", "b")], "text string, topic string")
    with pytest.raises(ValidationError, match="empty text") as err:
        validate(FeatureSpec.from_dict(TEXT_SPEC), empty)
    assert err.value.problems[0].count == 1
    version = text_model[0]
    with pytest.raises(ConfigError, match="text feature"):
        score_dataframe(empty, version, output="attributions")


def test_fortunes_corpus_and_tfidf_baseline(spark, fortunes):
    from sparkdl.baselines import baseline_accuracy
    from sparkdl.data.spec import FeatureSpec
    from sparkdl.datasets import FORTUNE_TOPICS, fortunes_frame

    frame = fortunes_frame()
    assert set(frame["topic"]) == set(FORTUNE_TOPICS) and len(frame) > 2000
    assert not frame["text"].str.contains(r"^%", regex=True).any()
    train, test = fortunes.randomSplit([0.8, 0.2], seed=1)
    result = baseline_accuracy(FeatureSpec.from_dict(TEXT_SPEC), train, test)
    assert result.method == "tfidf_logistic_regression" and result.accuracy > 0.6
    assert result.train_rows + result.test_rows == 600
