"""Explainability: why a model predicts what it does, per row and per model, computed by Spark.

    >>> from sparkdl.explain import Attribution, explain_model, explain_table
    >>> score_dataframe(df, "cancer@1", output="attributions")          # prediction + integrated gradients
    >>> report = explain_table("cancer@1", "/lake/patients", "/lake/patient_explanations")
    >>> explanation = explain_model("cancer@1", "/lake/patients_test")  # mean |attribution|, permutation importance
    >>> explanation.top(5)

Per-row attributions are integrated gradients (`sparkdl.explain.integrated_gradients`) computed in the scoring path
(Arrow batches, one model per Python worker); per-model explanations aggregate them in Spark and add a
model-agnostic permutation importance (`sparkdl.explain.model`).
"""
from sparkdl.explain.integrated_gradients import BASELINES, DEFAULT_STEPS, Attribution

__all__ = ["Attribution", "BASELINES", "DEFAULT_STEPS", "FeatureImportance", "ModelExplanation", "explain_model",
           "explain_table", "load_explanation"]


def __getattr__(name):  # the Spark side imports sparkdl.score and sparkdl.lake lazily
    if name in ("explain_model", "ModelExplanation", "FeatureImportance", "load_explanation"):
        from sparkdl.explain import model

        return getattr(model, name)
    if name == "explain_table":
        from sparkdl.explain.table import explain_table

        return explain_table
    raise AttributeError(f"module 'sparkdl.explain' has no attribute {name!r}")
