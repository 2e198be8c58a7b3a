"""The `sparkdl` command: train, score, evaluate, explain, tune, monitor, serve, export, demo, models, cache, lake.

Every verb that runs a job takes `--config FILE` (YAML, see conf/) and `--set key=value` overrides, and exits with
status 1 and a one-line reason on failure (`--debug` shows the traceback).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from sparkdl import workflows
from sparkdl.config import load_config
from sparkdl.data import petastorm_io
from sparkdl.errors import SparkDLError, one_line_reason
from sparkdl.explain.model import EXPLANATION_FILE, load_explanation
from sparkdl.lake import clean_staging
from sparkdl.log import configure_logging, get_logger
from sparkdl.model_metadata import data_values
from sparkdl.registry import ModelStore
from sparkdl.serving import ModelServer, ServerPool, ServingLimits, WorkerOptions, read_token
from sparkdl.serving.export import export_saved_model

log = get_logger("cli")


def _add_job_args(parser: argparse.ArgumentParser, config_required: bool = True) -> None:
    parser.add_argument("--config", "-c", required=config_required, metavar="FILE",
                        help="YAML job file (see conf/digits.yaml for every key)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.epochs=3 (repeatable)")


def _slice_arg(text: str):
    """--slice: NAME=SQL, COL1,COL2 or COLUMN, in the forms of evaluate.slices."""
    name, sep, where = text.partition("=")
    if sep:
        return {"name": name.strip(), "where": where.strip()}
    columns = [c.strip() for c in text.split(",") if c.strip()]
    return columns if len(columns) > 1 else text.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparkdl", description="Distributed deep learning on Spark over Delta Lake.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  sparkdl demo\n  sparkdl train --config conf/digits.yaml --set train.epochs=5\n"
               "  sparkdl score --config conf/digits.yaml --model digits_cnn@2\n  sparkdl models list")
    parser.add_argument("--log-level", default=None, help="sparkdl log level (default INFO or $SPARKDL_LOG_LEVEL)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on failure")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("train", help="train a model on a Delta table with Horovod; saves it to the model store",
                         description="Read data.table (pinned to data.version/timestamp), validate and prepare the "
                                     "features, train model.name on train.num_proc Horovod processes, save a new "
                                     "version of model.store_name in the model store.")
    _add_job_args(p)

    p = verbs.add_parser("score", help="score a Delta table into another Delta table (with quarantine and lineage)",
                         description="Score score.source with a stored model and write score.target atomically; "
                                     "rows that fail validation go to <target>_quarantine with a reason.")
    _add_job_args(p)
    p.add_argument("--model", help="model ref: name, name@version or name@latest (default: score.model, "
                                   "else model.store_name@latest)")

    p = verbs.add_parser("evaluate", help="evaluate a stored model on a Delta table (metrics JSON + plots)",
                         description="Compute metrics in Spark on evaluate.table and store metrics.json and PNG "
                                     "plots next to the model version.")
    _add_job_args(p)
    p.add_argument("--model", help="model ref (default: evaluate.model, else model.store_name@latest)")
    p.add_argument("--slice", dest="slices", action="append", default=None, metavar="SLICE",
                   help="evaluate per slice (repeatable; replaces evaluate.slices): COLUMN, COL1,COL2 (a crossing) "
                        "or NAME=SQL (a named boolean expression, e.g. 'young=age < 25')")

    p = verbs.add_parser("explain", help="explain a stored model on a Delta table (attributions, importance, plots)",
                         description="Integrated gradients per row and permutation importance per feature on "
                                     "explain.table, computed in Spark; explanation.json and PNG plots next to the "
                                     "model version; per-row attributions to explain.output_table when set.")
    _add_job_args(p)
    p.add_argument("--model", help="model ref (default: explain.model, else model.store_name@latest)")

    p = verbs.add_parser("monitor", help="drift and performance of a logged or scored table in time windows",
                         description="Monitor monitor.table (the inference log of sparkdl serve, or a scored "
                                     "table) in windows of monitor.timestamp against the training table: PSI, KS, "
                                     "Jensen-Shannon, Wasserstein, chi-squared, null and out-of-range rates per "
                                     "column, window and slice, against the training data and the previous "
                                     "window; estimated (CBPE) and realized performance; Delta tables and plots.")
    _add_job_args(p)
    p.add_argument("--retrain", action="store_true",
                   help="decide the latest window by monitor.retrain: train a challenger when the policy fires and "
                        "move the alias only if it wins (one decision record per window)")

    p = verbs.add_parser("tune", help="search hyper-parameters: each trial a distributed fit (Optuna, pruning)",
                         description="Run tune.trials fits of the job's model on data.table with the params of "
                                     "tune.space (Optuna; median/successive-halving pruning from rank 0's "
                                     "per-epoch metric); the study in tune.study continues when run again.")
    _add_job_args(p)

    p = verbs.add_parser("demo", help="the end-to-end demo on bundled data (tables, training, scoring, SQL, report)",
                         description="Six runs on bundled data, each from Delta tables through Horovod training "
                                     "on 2 processes, evaluation, scoring and a SQL function: a CNN on digit pixel "
                                     "arrays, an MLP on breast-cancer measurements, a text CNN on fortunes, a CNN "
                                     "on PNG files, an LSTM forecasting 12 macroeconomic series, an MLP on a survey "
                                     "evaluated by slice with fairness metrics and gates (--config: some of them).")
    p.add_argument("--work-dir", help="work folder for the demo (default $SPARKDL_WORK_DIR or ~/.sparkdl)")
    p.add_argument("--json", action="store_true", help="also print the full summary as JSON")
    p.add_argument("--config", "-c", dest="configs", action="append", default=None, metavar="FILE",
                   help="run only this job file; repeat for several (default: the six demo configs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3")

    p = verbs.add_parser("models", help="list stored models, show one version's metadata, or set an alias",
                         description="list | show REF | alias REF ALIAS (name@ALIAS then names that version "
                                     "everywhere a reference is taken; a server on it follows the change)")
    p.add_argument("action", choices=["list", "show", "alias"])
    p.add_argument("ref", nargs="?", help="for show and alias: name, name@version, name@latest or name@alias")
    p.add_argument("alias", nargs="?", help="for alias: the alias to point at REF's version")
    p.add_argument("--force", action="store_true",
                   help="for alias: promote even though the version's evaluation gates failed (recorded)")
    p.add_argument("--data-values", action="store_true",
                   help="for show: list every raw value of the training data the version stores, by feature")
    _add_store_arg(p)

    p = verbs.add_parser("serve", help="serve a stored model over HTTP (MLflow request formats, metrics, reload)",
                         description="POST /invocations (MLflow's dataframe_split / dataframe_records / instances "
                                     "/ inputs), GET /ping /health /version /metrics. Concurrent requests are "
                                     "scored together; a server on name@alias follows the alias.")
    p.add_argument("ref", help="name, name@version or name@alias")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the port, each with its own model copy (default 1)")
    p.add_argument("--max-batch-size", type=int, default=64, help="rows per model call at most (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to batch with (default 5)")
    p.add_argument("--reload-s", type=float, default=2.0, help="seconds between alias checks (0: never)")
    p.add_argument("--log-table", default=None, metavar="TABLE",
                   help="append requests and predictions to this Delta table (for drift monitoring)")
    p.add_argument("--drift-window", type=int, default=0, metavar="N",
                   help="export the drift of the last N requested rows per feature as Prometheus gauges "
                        "(sparkdl_serving_drift; 0: off)")
    p.add_argument("--drift-reference", default=None, metavar="TABLE",
                   help="the Delta table live drift compares with (default: the model's training snapshot)")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="require 'Authorization: Bearer <token>' on /invocations, the token read from FILE (use it "
                        "whenever --host is not loopback)")
    ServingLimits.add_arguments(p)
    _add_store_arg(p)

    p = verbs.add_parser("export", help="export a stored model as a TensorFlow SavedModel (preprocessing inside)",
                         description="A SavedModel whose serving signature takes the raw feature columns, with the "
                                     "fitted preprocessing as TensorFlow ops (numeric and vector features), for "
                                     "TF Serving or TF Lite.")
    p.add_argument("ref", help="name, name@version or name@alias")
    p.add_argument("directory", help="the SavedModel folder to create")
    p.add_argument("--format", choices=["saved_model"], default="saved_model")
    _add_store_arg(p)

    p = verbs.add_parser("cache", help="list or delete Petastorm conversion caches")
    p.add_argument("action", choices=["list", "cleanup"])
    p.add_argument("--older-than", type=float, default=None, metavar="HOURS",
                   help="cleanup: only caches created more than this many hours ago (default: all)")

    p = verbs.add_parser("lake", help="Delta table upkeep: remove folders left by killed sparkdl writes",
                         description="clean: remove the sparkdl-write-* folders inside TABLE that no commit "
                                     "references (left by a write killed before its commit).")
    p.add_argument("action", choices=["clean"])
    p.add_argument("table", help="table path or URI")
    p.add_argument("--older-than", type=float, default=1.0, metavar="HOURS",
                   help="only folders older than this many hours (default 1: younger ones may be writes in flight)")
    p.add_argument("--dry-run", action="store_true", help="list the folders without removing them")
    return parser


def _add_store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="model store folder (default $SPARKDL_MODEL_STORE or <work dir>/models)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        result = _dispatch(args)
    except (SparkDLError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"sparkdl {args.verb}: error: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the one-line contract holds for unexpected failures too
        if args.debug:
            raise
        print(f"sparkdl {args.verb}: failed: {one_line_reason(exc)}", file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


def _dispatch(args: argparse.Namespace):
    if args.verb in ("train", "score", "evaluate", "explain", "tune", "monitor"):
        cfg = load_config(args.config, args.overrides)
        if args.verb == "train":
            return workflows.train(cfg).summary()
        if args.verb == "tune":
            return workflows.tune(cfg)
        if args.verb == "monitor":
            return workflows.monitor(cfg, retrain=args.retrain)
        if args.verb == "score":
            return workflows.score(cfg, model_ref=args.model).to_dict()
        if args.verb == "explain":
            return workflows.explain(cfg, model_ref=args.model)
        if args.slices:
            cfg.evaluate.slices = [_slice_arg(a) for a in args.slices]
        return workflows.evaluate(cfg, model_ref=args.model)
    if args.verb == "demo":
        summary = workflows.demo(config_paths=args.configs, overrides=args.overrides, work=args.work_dir)
        print(workflows.format_demo_report(summary))
        if args.json:
            return summary
        return None
    if args.verb == "models":
        store = ModelStore(args.store)
        if args.action == "list":
            return {name: store.list_versions(name) for name in store.list_models()}
        if not args.ref:
            raise SparkDLError(f"models {args.action}: give a model ref, e.g. digits_cnn@latest")
        if args.action == "alias":
            if not args.alias:
                raise SparkDLError("models alias: give the alias, e.g. sparkdl models alias digits_cnn@3 champion")
            version = store.set_alias(args.ref, args.alias, force=args.force)
            return {"model": version.name, "alias": args.alias, "version": version.version}
        if args.data_values:
            return data_values(store.metadata(args.ref))
        return _show_model(store, args.ref)
    if args.verb == "export":
        return {"saved_model": str(export_saved_model(args.ref, args.directory, store=args.store))}
    if args.verb == "serve":
        limits, token = ServingLimits.from_arguments(args), read_token(args.token_file)
        if args.workers > 1:
            options = WorkerOptions(args.ref, store=args.store, max_batch_size=args.max_batch_size,
                                    max_wait_ms=args.max_wait_ms, reload_s=args.reload_s, log_table=args.log_table,
                                    limits=dataclasses.asdict(limits), token=token,
                                    drift_window=args.drift_window, drift_reference=args.drift_reference)
            ServerPool(options, args.workers, host=args.host, port=args.port).serve_forever()
        else:
            ModelServer(args.ref, store=args.store, host=args.host, port=args.port,
                        max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, reload_s=args.reload_s,
                        log_table=args.log_table, limits=limits, token=token, drift_window=args.drift_window,
                        drift_reference=args.drift_reference).serve_forever()
        return None
    if args.verb == "cache":
        from datetime import timedelta

        if args.action == "list":
            from dataclasses import asdict

            return [asdict(info) for info in petastorm_io.list_caches()]
        older = timedelta(hours=args.older_than) if args.older_than is not None else None
        return {"deleted": petastorm_io.cleanup(older_than=older)}
    if args.verb == "lake":
        found = clean_staging(args.table, older_than_hours=args.older_than, dry_run=args.dry_run)
        return {"found" if args.dry_run else "removed": found}
    raise AssertionError(args.verb)


def _show_model(store, ref: str) -> dict:
    """A version's metadata, its artifacts, and the top features of its explanation when it has one."""
    version = store.resolve(ref)
    shown = {**store.metadata(version), "artifacts": store.artifacts(version)}
    if shown.get("source") is None:
        shown["source"] = "unknown: trained on a DataFrame that does not read one Delta table snapshot"
    if EXPLANATION_FILE in shown["artifacts"]:
        shown["explanation"] = load_explanation(version, store=store).summary()
    return shown


if __name__ == "__main__":
    sys.exit(main())
