"""``ctr-pipeline``: the project's one command-line entry point.

Subcommands import their heavy dependencies (TensorFlow, TFX, Beam) only when they run, and the
parser imports a subcommand's options module only when that subcommand is named and its run
function only when it runs: ``ctr-pipeline --help`` and the help of every subcommand load neither
TensorFlow nor Beam (serve, predict and score take their options from ``serving.cli_options``).
What TensorFlow, Beam and TFX log, and Python warnings, go to a log file unless ``--verbose``
(``pipeline.console``).
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import importlib
import json
import sys
import time
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Union

from pipeline import console


def _load(path: str):
    from contract.config import load_config

    return load_config(path)


def _checked(path: str):
    """The config at ``path`` after the data check a run starts with (``ingest.preflight``): its
    notes are printed, its problems raised together (``ConfigError``), before TensorFlow loads."""
    from ingest.preflight import check_data

    config = _load(path)
    check = check_data(config.data)
    for note in check.notes:
        print(f"note: {note}")
    check.raise_problems(path)
    return config


def _models_arg(value: str):
    return [m.strip() for m in value.split(",") if m.strip()] if value else None


# ---- run -----------------------------------------------------------------------------------------
def cmd_run(args) -> int:
    config = _checked(args.config)
    models = _models_arg(args.models) or list(config.training.models)
    unknown = [name for name in models if name not in config.training.models]
    if unknown:
        raise ValueError(f"--models: {unknown} are not in training.models of {args.config} ({', '.join(config.training.models)})")
    import logging

    from pipeline import report
    from pipeline.killed_runs import RunInProgress
    from pipeline.runner import run_local

    logging.getLogger().setLevel(logging.WARNING)
    started = time.perf_counter()
    try:
        run_local(config, models)
    except RunInProgress as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = report.collect(config, models)
    print(report.format_report(summary))
    print(f"pipeline wall time {time.perf_counter() - started:.0f}s; report: {os.path.join(config.pipeline_root, report.REPORT_FILE)}, "
          f"{report.write_page(config, summary)}")
    print(f"TensorFlow, Beam and TFX warnings: {console.log_file(config.pipeline_root)}")
    return 0


def cmd_report(args) -> int:
    from pipeline import report

    config = _load(args.config)
    models = _models_arg(args.models) or list(config.training.models)
    summary = report.collect(config, models)
    print(report.format_report(summary))
    if args.html:
        print(f"report page: {report.write_page(config, summary)}")
    return 0


def cmd_validate_config(args) -> int:
    config = _checked(args.config)
    print(f"{args.config}: valid ({len(config.training.models)} models: {', '.join(config.training.models)}); "
          f"the data's files, headers and first rows match it")
    return 0


# ---- generate-data ---------------------------------------------------------------------------------
def cmd_generate_data(args) -> int:
    from ingest import synthetic

    summary = synthetic.generate(args.output, **synthetic.preset_arguments(
        args.preset, num_users=args.users, num_items=args.items, events_per_user=args.events_per_user,
        seed=args.seed, days=args.days,
    ), dated_folders=args.dated_folders)
    print(json.dumps(summary, indent=2))
    events = f"{synthetic.DATED_EVENTS}/<YYYY-MM-DD>/events.csv" if args.dated_folders else "events.csv"
    print(f"wrote {events}, items.csv, users.csv and {synthetic.REQUEST_FILE} (a `ctr-pipeline predict` request) to {args.output}")
    return 0


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML config")
    parser.add_argument("--models", default="", help="comma-separated subset of training.models to train")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True)
    parser.add_argument("--models", default="")
    parser.add_argument("--html", action="store_true",
                        help="also write the report as one self-contained HTML page (report.html in the pipeline root; "
                             "every run writes it) with its plots")


def add_validate_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True)


def add_generate_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="directory for events.csv, items.csv, users.csv, request.json")
    parser.add_argument("--preset", default="demo", choices=["demo", "known-answer"],
                        help="demo: 400 users x 50 events; known-answer: 5,000 users x 80 events with strong "
                             "sequence effects (ingest/synthetic.py PRESETS); the options below override its sizes")
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--events-per-user", type=int, default=None)
    parser.add_argument("--days", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dated-folders", action="store_true",
                        help="write the events as one folder per UTC day (events/<YYYY-MM-DD>/events.csv), the layout of "
                             "daily retraining (data.span_pattern: '{YYYY}-{MM}-{DD}', configs/daily.yaml)")


class Command(NamedTuple):
    """A subcommand: its one-line help, the function adding its options and the function running
    it; a function of another module is named "module:function" and imported only when needed
    (the run function only when the subcommand runs, not for its help)."""

    help: str
    add_arguments: Union[Callable, str]
    run: Union[Callable, str]


COMMANDS: Dict[str, Command] = {
    "run": Command("run the TFX pipeline locally (LocalDagRunner, Beam DirectRunner)",
                   add_run_arguments, cmd_run),
    "report": Command("print the result table of the latest run of a config",
                      add_report_arguments, cmd_report),
    "validate-config": Command("check a YAML config, its model parameters and its data (files, headers, first rows)",
                               add_validate_config_arguments, cmd_validate_config),
    "generate-data": Command("write seeded synthetic interaction logs (generic CSV format)",
                             add_generate_data_arguments, cmd_generate_data),
    "serve": Command("serve pushed models over TF Serving's gRPC API (development stand-in)",
                     "serving.cli_options:add_serve_arguments", "serving.server:run_serve"),
    "predict": Command("score candidate items for one user through TF Serving's gRPC API",
                       "serving.cli_options:add_predict_arguments", "serving.grpc_client:run_predict"),
    "score": Command("batch-score logs or raw tf.Examples with a pushed model (Beam RunInference)",
                     "serving.cli_options:add_score_arguments", "serving.batch_score:run_score"),
    "compile": Command("compile the pipeline for Kubeflow Pipelines v2 / Vertex (KFP spec)",
                       "pipeline.kubeflow:add_compile_arguments", "pipeline.kubeflow:run_compile"),
}


def _function(where: Union[Callable, str]) -> Callable:
    if callable(where):
        return where
    module, name = where.split(":")
    return getattr(importlib.import_module(module), name)


def command_in(argv: Sequence[str]) -> Optional[str]:
    """The subcommand ``argv`` names (its first positional argument), if it names one."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


VERBOSE_HELP = f"show TensorFlow, Beam and TFX logs and Python warnings on stderr, not only in the log file ({console.WHERE})"


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``ctr-pipeline`` parser: every subcommand with its help line, and the options of
    ``command`` (imported from its module; the other subcommands' modules are not imported).
    ``args.func`` is the run function as the table names it (``_function`` resolves it)."""
    parser = argparse.ArgumentParser(
        prog="ctr-pipeline", description="TFX pipeline for CTR prediction from user behaviour sequences.",
        epilog=f"TensorFlow, Beam and TFX logs, Python warnings and the traceback of an unexpected failure go "
               f"to a log file: {console.WHERE}. --verbose shows them on stderr too.")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, spec in COMMANDS.items():
        subparser = sub.add_parser(name, help=spec.help)
        if name == command:
            _function(spec.add_arguments)(subparser)
            subparser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
            subparser.set_defaults(func=spec.run)
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

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(command_in(argv)).parse_args(argv)
    _ignore_tensorflow_teardown_errors()
    try:
        log = console.log_file(_load(args.config).pipeline_root if getattr(args, "config", None) else None)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with console.routed(log, args.verbose):
            return _function(args.func)(args) or 0
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # unexpected: the traceback goes to the log file
        console.record_traceback(log, args.verbose)
        print(f"error: {type(exc).__name__}: {exc} (traceback in {log})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
