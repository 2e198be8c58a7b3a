"""Fitting a detector's anomaly thresholds: per segment, on scored rows, in one aggregation.

    >>> thresholds = fit_thresholds("cards@1", train_df, AnomalyOptions(segment_by=("country",), rate=0.01))
    >>> score_dataframe(df, "cards@1", output="anomaly")   # struct<score, is_anomaly, threshold, contributions>

See `sparkdl.score.thresholds` for what is stored and how a row is flagged.
"""
from __future__ import annotations

import datetime as dt

from sparkdl.errors import ConfigError
from sparkdl.log import get_logger
from sparkdl.score.frame import score_dataframe
from sparkdl.score.model_ref import resolve_model
from sparkdl.score.thresholds import (
    QUANTILE_ACCURACY,
    AnomalyOptions,
    Thresholds,
    check_detector,
    check_segment_columns,
    save_thresholds,
    segment_key,
)

log = get_logger("score.anomaly")


def fit_thresholds(model_ref, df, options: AnomalyOptions | dict | None = None, store=None,
                   score_col: str = "prediction") -> Thresholds:
    """Score `df` with the detector and store its thresholds with the model version (``anomaly.json``).

    Args:
        model_ref: the detector (store name, "name@version", `ModelVersion`, `SparkDLModel` or a `ModelRef`).
        df: rows of normal traffic, typically the training table; holds the features and the segment columns.
            A DataFrame that already holds the score in `score_col` is not scored again.
        options: `AnomalyOptions` (or its dict); default one threshold at rate 0.01.
        store: model store or its root.

    Returns:
        the `Thresholds` written.

    Raises:
        ConfigError: not an anomaly detector; bad options. ValidationError: missing feature or segment columns
            (before any Spark job). ScoringError-like Spark errors from scoring.
    """
    from pyspark.sql import functions as F

    options = AnomalyOptions.of(options) or AnomalyOptions()
    ref, metadata = resolve_model(model_ref, store)
    check_detector(metadata, f"fit_thresholds({ref})")
    check_segment_columns(df, options, f"fit_thresholds({ref})")
    scored = df if score_col in df.columns else score_dataframe(
        df, ref, keep_columns=list(options.segment_by), output_col=score_col)
    key = segment_key(options.segment_by) if options.segment_by else F.lit("")
    q = 1.0 - options.rate
    rows = (scored.where(F.col(score_col).isNotNull()).select(key.alias("k"), F.col(score_col).alias("s"))
            .rollup("k").agg(F.percentile_approx("s", q, QUANTILE_ACCURACY).alias("t"), F.count("*").alias("n"))
            .collect())
    overall = next((r for r in rows if r["k"] is None), None)
    if overall is None or overall["n"] == 0 or overall["t"] is None:
        raise ConfigError(f"fit_thresholds({ref}): no row of the table could be scored; thresholds need scored rows")
    by_segment = {r["k"]: float(r["t"]) for r in rows
                  if r["k"] is not None and options.segment_by and r["n"] >= options.min_segment_rows}
    counts = {("" if r["k"] is None else r["k"]): int(r["n"]) for r in rows}  # "": all rows
    thresholds = Thresholds(options, float(overall["t"]), by_segment, counts,
                            dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat())
    save_thresholds(ref, thresholds)
    small = len([k for k, n in counts.items() if k and n < options.min_segment_rows])
    log.info("%s: anomaly threshold %.6g over %d rows (rate %g)%s", ref, thresholds.overall, overall["n"],
             options.rate, f", {len(by_segment)} segment(s) of {options.segment_by}"
                           + (f", {small} below min_segment_rows use the overall one" if small else "")
             if options.segment_by else "")
    return thresholds



__all__ = ["fit_thresholds"]
