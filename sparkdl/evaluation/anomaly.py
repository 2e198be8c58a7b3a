"""An anomaly detector judged against known anomalies, beside an IsolationForest baseline on the same rows.

    >>> from sparkdl.evaluation.anomaly import evaluate_anomalies
    >>> report = evaluate_anomalies("cards@1", test_df)          # the label: the detector's anomaly.label
    >>> report.roc_auc, report.pr_auc, report.precision, report.isolation_forest.roc_auc

Every metric is computed in Spark over the scored rows: ROC AUC exactly (`sparkdl.evaluation.auc`, equal to
scikit-learn's), PR AUC as average precision (scikit-learn's `average_precision_score`: Σ (Rₖ − Rₖ₋₁)·Pₖ over the
distinct scores, from a window over the per-score counts), and precision, recall and the flagged share at the
detector's fitted thresholds (`sparkdl.score.anomaly`).

The baseline is scikit-learn's IsolationForest (as Databricks Labs DQX uses), fitted on the driver on a sample of
`baseline_rows` rows prepared by the detector's own preprocessor, then scored in Spark (`mapInArrow`, the fitted
forest in the closure): the same features, the same rows, so the two AUCs compare the models only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from pyspark import StorageLevel

from sparkdl.errors import ConfigError, Problem, ValidationError
from sparkdl.evaluation.auc import auc_by_group
from sparkdl.log import get_logger
from sparkdl.score.frame import score_dataframe
from sparkdl.score.model_ref import resolve_model
from sparkdl.score.thresholds import check_detector, required_thresholds

log = get_logger("evaluation.anomaly")

BASELINE_ROWS = 10_000  # rows the IsolationForest is fitted on (a sample beyond that)
_LABEL, _SCORE, _FLAG = "__label", "__score", "__flag"


@dataclass(frozen=True)
class RankingMetrics:
    """How well one score ranks the known anomalies first: ROC AUC and PR AUC (average precision)."""

    roc_auc: float | None
    pr_auc: float | None


@dataclass(frozen=True)
class AnomalyEvaluation:
    """A detector's metrics on labelled rows, and the IsolationForest baseline's on the same rows (None when
    not asked for)."""

    model: str
    label: str
    rows: int
    anomalies: int
    roc_auc: float | None
    pr_auc: float | None
    precision: float | None     # of the flagged rows, the share that are anomalies (None: nothing flagged)
    recall: float | None        # of the anomalies, the share flagged
    flagged_rate: float
    isolation_forest: RankingMetrics | None = None  # the baseline on the same rows

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_anomalies(model_ref, df, label: str | None = None, baseline: bool = True,
                       baseline_rows: int = BASELINE_ROWS, seed: int = 0, store=None) -> AnomalyEvaluation:
    """Score `df` with the detector, flag it at its thresholds, and compare with the known anomalies.

    Args:
        model_ref: the detector (store name, "name@version", `ModelVersion` or `SparkDLModel`).
        df: labelled rows holding the features, the label and the segment columns.
        label: the column of known anomalies (1/true = anomaly); default the detector's `anomaly.label`.
        baseline: also fit and score an IsolationForest on the same prepared features.
        baseline_rows, seed: the baseline's fitting sample.
        store: model store or its root.

    Raises:
        ConfigError: not a detector; no label given or recorded; no thresholds fitted. ValidationError: a missing
            column, or a label that is not 0/1 or boolean (from the schema, before any Spark job).
    """
    from pyspark.sql import functions as F

    ref, metadata = resolve_model(model_ref, store)
    where = f"evaluate_anomalies({ref})"
    check_detector(metadata, where)
    thresholds = required_thresholds(ref, where)
    label = label or thresholds.options.label
    if not label:
        raise ConfigError(f"{where}: no label column: pass label= (the column of known anomalies); the detector "
                          f"records none")
    _check_label(df, label, where)
    df = df.where(F.col(f"`{label}`").isNotNull())
    segments = list(thresholds.options.segment_by)
    scored = score_dataframe(df, ref, output="anomaly", keep_columns=list(dict.fromkeys([label, *segments])),
                             output_col="anomaly", store=store)
    flagged = scored.where(F.col("anomaly").isNotNull()).select(
        F.col(f"`{label}`").cast("int").alias(_LABEL), F.col("anomaly.score").alias(_SCORE),
        F.col("anomaly.is_anomaly").alias(_FLAG)).persist(StorageLevel.MEMORY_AND_DISK)  # scored once, read thrice
    try:
        totals = flagged.agg(F.count("*").alias("n"), F.sum(_LABEL).alias("p"),
                             F.sum(F.col(_FLAG).cast("int")).alias("f"),
                             F.sum(F.when(F.col(_FLAG), F.col(_LABEL)).otherwise(0)).alias("tp")).first()
        ranking = ranking_metrics(flagged, _SCORE)
    finally:
        flagged.unpersist()
    n, positives, flags, tp = (int(totals[k] or 0) for k in ("n", "p", "f", "tp"))
    base = None
    if baseline:
        forest = isolation_forest_scores(ref, df, label, baseline_rows, seed).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            base = ranking_metrics(forest, _SCORE)
        finally:
            forest.unpersist()
    report = AnomalyEvaluation(str(ref), label, n, positives, ranking.roc_auc, ranking.pr_auc,
                               tp / flags if flags else None, tp / positives if positives else None,
                               flags / n if n else 0.0, base)
    log.info("%s: %d rows, %d anomalies: ROC AUC %s, PR AUC %s%s", where, n, positives, _fmt(report.roc_auc),
             _fmt(report.pr_auc), f" (IsolationForest {_fmt(base.roc_auc)}, {_fmt(base.pr_auc)})" if base else "")
    return report


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _check_label(df, label: str, where: str) -> None:
    from pyspark.sql.types import BooleanType, IntegralType

    if label not in df.columns:
        raise ValidationError(f"{where}: label column {label!r} is not in the table; it has {df.columns}",
                              [Problem(label, "missing column", "known anomalies, 0/1 or boolean")])
    dtype = df.schema[label].dataType
    if not isinstance(dtype, (BooleanType, IntegralType)):
        raise ValidationError(f"{where}: label column {label!r} must be 0/1 or boolean, got {dtype.simpleString()}",
                              [Problem(label, "wrong type", "0/1 or boolean", dtype.simpleString())])


def ranking_metrics(df, score_col: str) -> RankingMetrics:
    """ROC AUC and average precision of `score_col` (larger = more anomalous) against `__label` (0/1), over the
    per-score counts. None where the rows hold no anomaly or no normal row."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    counts = (df.groupBy(F.col(score_col).cast("double").alias("v"))
              .agg(F.sum(1 - F.col(_LABEL)).cast("long").alias("a"), F.sum(_LABEL).cast("long").alias("b"))
              .withColumn("g", F.lit(0)))
    roc = auc_by_group(counts).get(0)
    # average precision: distinct scores from the highest down; tp, flagged = running sums of b and a + b
    down = Window.orderBy(F.col("v").desc()).rowsBetween(Window.unboundedPreceding, Window.currentRow)
    ap = (counts.withColumn("tp", F.sum("b").over(down)).withColumn("k", F.sum(F.col("a") + F.col("b")).over(down))
          .agg(F.sum(F.col("b") * F.col("tp") / F.col("k")).alias("num"), F.sum("b").alias("p"),
               F.sum("a").alias("q")).first())
    pr = float(ap["num"]) / ap["p"] if ap["p"] and ap["q"] else None
    return RankingMetrics(roc, pr)


def isolation_forest_scores(ref, df, label: str, sample_rows: int = BASELINE_ROWS, seed: int = 0):
    """A DataFrame of (`__label`, `__score`): scikit-learn's IsolationForest fitted on a sample of `df`'s rows
    prepared by the detector's preprocessor, scoring every row in Spark (rows that cannot be prepared are left
    out, as the detector leaves them unscored). The score is the negated `score_samples`: larger = more
    anomalous."""
    import pyarrow as pa
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, IntegerType, StructField, StructType
    from sklearn.ensemble import IsolationForest

    _, metadata = resolve_model(ref)
    prep = metadata.preprocessor()
    features = metadata.spec.feature_names
    total = df.count()
    if total == 0:
        raise ConfigError(f"IsolationForest baseline of {ref}: the table has no rows")
    sample = df.select(*features)
    if total > sample_rows:
        sample = sample.sample(fraction=min(1.0, 1.2 * sample_rows / total), seed=seed).limit(sample_rows)
    batch = sample.toArrow()
    prepared = prep.prepare_batch(batch, with_label=False)
    x = prepared.features[prepared.valid].reshape(int(prepared.valid.sum()), -1)
    if len(x) == 0:
        raise ValidationError(f"IsolationForest baseline of {ref}: no sampled row could be prepared", [])
    forest = IsolationForest(random_state=seed).fit(x)

    def score(batches):
        for b in batches:
            ready = prep.prepare_batch(b, with_label=False)
            valid = ready.valid
            rows = ready.features[valid].reshape(int(valid.sum()), -1)
            s = -forest.score_samples(rows) if len(rows) else np.zeros(0)
            y = np.asarray(b.column(label).to_numpy(zero_copy_only=False), dtype=np.int32)[valid]
            yield pa.RecordBatch.from_arrays([pa.array(y, pa.int32()), pa.array(s, pa.float64())],
                                             names=[_LABEL, _SCORE])

    schema = StructType([StructField(_LABEL, IntegerType()), StructField(_SCORE, DoubleType())])
    return df.select(*features, F.col(f"`{label}`").cast("int").alias(label)).mapInArrow(score, schema)


__all__ = ["AnomalyEvaluation", "RankingMetrics", "evaluate_anomalies", "isolation_forest_scores",
           "ranking_metrics"]
