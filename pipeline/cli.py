"""``ctr-pipeline``: the project's one command-line entry point.

Subcommands import their heavy dependencies (TensorFlow, TFX) only when they run, so
``--help`` is instant.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import json
import sys
import time
import warnings

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)


def _load(path: str):
    from contract.config import load_config

    return load_config(path)


def _models_arg(value: str):
    return [m.strip() for m in value.split(",") if m.strip()] if value else None


# ---- run -----------------------------------------------------------------------------------------
def cmd_run(args) -> int:
    import logging

    from pipeline import report
    from pipeline.runner import run_local

    logging.getLogger().setLevel(logging.WARNING)
    config = _load(args.config)
    models = _models_arg(args.models) or list(config.training.models)
    started = time.perf_counter()
    run_local(config, models)
    summary = report.collect(config, models)
    print(report.format_report(summary))
    print(f"pipeline wall time {time.perf_counter() - started:.0f}s; report: {os.path.join(config.pipeline_root, report.REPORT_FILE)}")
    return 0


def cmd_report(args) -> int:
    from pipeline import report

    config = _load(args.config)
    models = _models_arg(args.models) or list(config.training.models)
    print(report.format_report(report.collect(config, models)))
    return 0


def cmd_validate_config(args) -> int:
    from contract.config import validate_model_params

    config = _load(args.config)
    validate_model_params(config)
    print(f"{args.config}: valid ({len(config.training.models)} models: {', '.join(config.training.models)})")
    return 0


# ---- generate-data ---------------------------------------------------------------------------------
def cmd_generate_data(args) -> int:
    from transforms import synthetic

    summary = synthetic.generate(args.output, **synthetic.preset_arguments(
        args.preset, num_users=args.users, num_items=args.items, events_per_user=args.events_per_user,
        seed=args.seed, days=args.days,
    ))
    print(json.dumps(summary, indent=2))
    print(f"wrote events.csv, items.csv, users.csv and {synthetic.REQUEST_FILE} (a `ctr-pipeline predict` request) to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pipeline import kubeflow
    from serving import batch_score, client, server

    parser = argparse.ArgumentParser(prog="ctr-pipeline", description="TFX pipeline for CTR prediction from user behaviour sequences.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the TFX pipeline locally (LocalDagRunner, Beam DirectRunner)")
    run.add_argument("--config", required=True, help="pipeline YAML config")
    run.add_argument("--models", default="", help="comma-separated subset of training.models to train")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="print the result table of the latest run of a config")
    rep.add_argument("--config", required=True)
    rep.add_argument("--models", default="")
    rep.set_defaults(func=cmd_report)

    val = sub.add_parser("validate-config", help="validate a YAML config (and its model parameters)")
    val.add_argument("--config", required=True)
    val.set_defaults(func=cmd_validate_config)

    gen = sub.add_parser("generate-data", help="write seeded synthetic interaction logs (generic CSV format)")
    gen.add_argument("--output", required=True, help="directory for events.csv, items.csv, users.csv, request.json")
    gen.add_argument("--preset", default="demo", choices=["demo", "known-answer"],
                     help="demo: 400 users x 50 events; known-answer: 5,000 users x 80 events with strong "
                          "sequence effects (transforms/synthetic.py PRESETS); the options below override its sizes")
    gen.add_argument("--users", type=int, default=None)
    gen.add_argument("--items", type=int, default=None)
    gen.add_argument("--events-per-user", type=int, default=None)
    gen.add_argument("--days", type=int, default=None)
    gen.add_argument("--seed", type=int, default=None)
    gen.set_defaults(func=cmd_generate_data)

    serve = sub.add_parser("serve", help="serve pushed models over TF Serving's gRPC API (development stand-in)")
    server.add_serve_arguments(serve)
    serve.set_defaults(func=server.run_serve)

    predict = sub.add_parser("predict", help="score candidate items for one user through TF Serving's gRPC API")
    client.add_predict_arguments(predict)
    predict.set_defaults(func=client.run_predict)

    score = sub.add_parser("score", help="batch-score logs or raw tf.Examples with a pushed model (Beam RunInference)")
    batch_score.add_score_arguments(score)
    score.set_defaults(func=batch_score.run_score)

    compile_ = sub.add_parser("compile", help="compile the pipeline for Kubeflow Pipelines v2 / Vertex (KFP spec)")
    kubeflow.add_compile_arguments(compile_)
    compile_.set_defaults(func=kubeflow.run_compile)
    return parser


def _ignore_tensorflow_teardown_errors() -> None:
    """TensorFlow 2.16's ``AtomicFunction.__del__`` raises a TypeError for each function still
    alive when the interpreter shuts down (its module globals are gone by then) and Python prints
    a traceback for each. Ignores exactly those; any other unraisable error is printed."""
    default_hook = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, TypeError) and getattr(unraisable.object, "__qualname__", "") == "AtomicFunction.__del__":
            return
        default_hook(unraisable)

    sys.unraisablehook = hook


def main(argv=None) -> int:
    from contract.config import ConfigError

    args = build_parser().parse_args(argv)
    _ignore_tensorflow_teardown_errors()
    try:
        return args.func(args) or 0
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
