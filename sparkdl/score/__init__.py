"""Scoring over the lakehouse: a model from the store as a Spark column function, a SQL function, a Delta table
job and a Delta stream — all sharing one Arrow-native scoring path and one model load per Python worker.

    >>> from sparkdl.score import model_udf, register_sql_function, score_dataframe, score_table, score_stream
    >>> df.select(model_udf("digits@1")("pixels"))
    >>> score_dataframe(df, "digits@1", keep_columns=["id"])      # the fast path: Arrow batches, no pandas
    >>> report = score_table("digits@1", "/lake/images", "/lake/predictions")
    >>> similar("digits_emb@1", queries, "/lake/images", k=5)   # nearest rows by the model's embedding
    >>> build_index("digits_emb@1", "/lake/images")             # an approximate index stored with the model
    >>> similar("digits_emb@1", queries, approximate=True, k=5)
"""
from sparkdl.score.ann_index import IndexInfo, build_index, read_index_info
from sparkdl.score.core import ScoreReport
from sparkdl.score.frame import score_dataframe
from sparkdl.score.model_ref import ModelRef, resolve_model
from sparkdl.score.outputs import OUTPUTS, OutputPlan, plan_output
from sparkdl.score.runtime import load_count, loaded_models
from sparkdl.score.similar import similar
from sparkdl.score.stream import score_stream, stream_reports
from sparkdl.score.table import score_table
from sparkdl.score.udf import ModelUDF, model_udf, register_sql_function, transform_with_model

__all__ = [
    "IndexInfo", "OUTPUTS", "ModelRef", "ModelUDF", "OutputPlan", "ScoreReport", "build_index", "load_count",
    "loaded_models", "model_udf", "plan_output", "read_index_info", "register_sql_function", "resolve_model",
    "score_dataframe", "score_stream", "score_table", "similar", "stream_reports", "transform_with_model",
]
