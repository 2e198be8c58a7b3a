"""`explain_table`: per-row attributions of a Delta table snapshot written to a Delta table, like `score_table`.

    >>> report = explain_table("cancer@1", "/lake/patients", "/lake/patient_explanations")
    >>> spark.read.format("delta").load("/lake/patient_explanations").select("id", "attributions.features.age")

It is `score_table` with output "attributions": the same single scoring pass, the same quarantine of rows that
cannot be prepared (with the reason), the same atomic commits and lineage columns; each commit's metadata says
`sparkdl.operation = explain` and records the attribution settings.
"""
from __future__ import annotations

from sparkdl.explain.integrated_gradients import Attribution
from sparkdl.score.core import ScoreReport
from sparkdl.score.table import score_table


def explain_table(model_ref, source, target, attribution: Attribution | None = None, mode: str = "append",
                  keep_columns: list[str] | None = None, source_version: int | None = None,
                  quarantine: str | None = None, output_col: str = "attributions", batch_size: int | None = None,
                  store=None, spark=None) -> ScoreReport:
    """Write the integrated-gradients attributions of every row of `source` (one snapshot) to the Delta `target`.

    Each written row has the kept columns, `output_col` — struct<prediction, explained_class, output,
    baseline_output, delta, features> (see `sparkdl.score.outputs`) — and the lineage columns `_model`,
    `_model_version`, `_source_version`, `_scored_at`. Rows that cannot be prepared go to the quarantine table
    (default `<target>_quarantine`) with their raw feature values and a `_reason`.

    Args:
        model_ref: store name, `"name@version"`, `ModelVersion` or `SparkDLModel` (a differentiable Keras model;
            not an embedding model).
        source: the source Delta table (path or URI); `source_version` pins it (default: the latest).
        target: the target Delta table (created when missing).
        attribution: steps, baseline and target class (default `Attribution()`: 64 steps from zeros, the
            predicted class).
        mode, keep_columns, quarantine, batch_size, store, spark: as `score_table`.
        output_col: the name of the attribution column.

    Returns:
        the `ScoreReport` (versions written, row counts, quarantine reasons).

    Raises:
        ConfigError / ModelStoreError / ValidationError / TableError / ScoringError: as `score_table`, all before
            anything is written.
    """
    return score_table(model_ref, source, target, mode=mode, keep_columns=keep_columns,
                       source_version=source_version, output="attributions", quarantine=quarantine,
                       output_col=output_col, batch_size=batch_size, store=store, spark=spark,
                       attribution=attribution or Attribution())
