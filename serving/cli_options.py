"""Options of ``ctr-pipeline serve``, ``predict`` and ``score``.

Light on purpose: importing this module loads neither TensorFlow, gRPC nor Beam, so
``ctr-pipeline serve --help`` (and predict's, score's) starts in a moment. The commands run in
``serving.server.run_serve``, ``serving.grpc_client.run_predict`` and ``serving.batch_score.run_score``.
"""
from __future__ import annotations

import argparse

from contract.serving import OUTPUT_KEY, PREDICTION_SIGNATURES, SERVING_DEFAULT

# The message limit of ``serve`` and of the client. The documented use is one user's request:
# the demo's 10 candidates (about 20 KB); serving_default, the largest encoding, sends each
# candidate as a tf.Example with the user's histories: measured 4.7 KB at history length 50 with
# all four histories full, so --max-batch-size's 1,000 rows are about 5 MB and 64 MB leaves room
# for raising it ten times (gRPC's own 4 MB default would refuse 900 candidates).
DEFAULT_MAX_MESSAGE_MB = 64
MB = 1 << 20
# Calls in flight (answering or queued) before ``serve`` sheds load with RESOURCE_EXHAUSTED: with
# the default 8 workers, 56 calls may queue, so 50 clients that each wait for their answer are
# queued, not refused, while a flood is answered at once instead of waiting ever longer.
DEFAULT_MAX_PENDING = 64


# ---- serve ---------------------------------------------------------------------------------------
def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ctr-pipeline serve``."""
    parser.add_argument("--model-base", required=True,
                        help="directory laid out <model_name>/<version>/saved_model.pb")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (default: 8500)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: 127.0.0.1; 0.0.0.0 exposes the server)")
    parser.add_argument("--poll-seconds", type=float, default=1.0,
                        help="how often to look for new model versions (default: 1)")
    parser.add_argument("--max-batch-size", type=int, default=1000,
                        help="largest batch one request may carry (default: 1000)")
    parser.add_argument("--workers", type=int, default=8,
                        help="threads answering requests (default: 8)")
    parser.add_argument("--max-message-mb", type=_positive_int, default=DEFAULT_MAX_MESSAGE_MB,
                        help=f"largest request message accepted, in MB; gRPC refuses a larger one with "
                             f"RESOURCE_EXHAUSTED before it is read, and a request whose tensors declare more "
                             f"once decoded is refused too (default: {DEFAULT_MAX_MESSAGE_MB})")
    parser.add_argument("--max-pending", type=_positive_int, default=DEFAULT_MAX_PENDING,
                        help=f"calls in flight (answering or queued for a worker); beyond it a call gets "
                             f"RESOURCE_EXHAUSTED at once (default: {DEFAULT_MAX_PENDING})")


# ---- predict -------------------------------------------------------------------------------------
def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ctr-pipeline predict``."""
    parser.add_argument("--server", default="127.0.0.1:8500",
                        help="TF Serving gRPC address host:port (default: 127.0.0.1:8500)")
    parser.add_argument("--model", required=True, help="model name on the server")
    parser.add_argument("--input", required=True,
                        help="request JSON file for one user ('-' reads standard input)")
    parser.add_argument("--signature", choices=PREDICTION_SIGNATURES, default=SERVING_DEFAULT,
                        help="signature to call (default: serving_default; serving_candidates sends the user's "
                             "history once: fastest for many candidates)")
    parser.add_argument("--model-version", type=int, default=None,
                        help="a specific loaded version (default: the latest)")
    parser.add_argument("--max-history", type=_positive_int, default=None,
                        help="most recent events kept per feedback type (default: the length the model "
                             "was trained with, from the feature spec it carries)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for each call (default: 10)")
    parser.add_argument("--max-message-mb", type=_positive_int, default=DEFAULT_MAX_MESSAGE_MB,
                        help=f"largest message sent or received, in MB (default: {DEFAULT_MAX_MESSAGE_MB}, the "
                             f"server's default; the server refuses requests over its own --max-message-mb)")
    parser.add_argument("--json", action="store_true", help="print the ranking as JSON")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# ---- score ---------------------------------------------------------------------------------------
def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ctr-pipeline score``."""
    parser.add_argument("--model", required=True,
                        help="a SavedModel directory, a model directory of versions (<serving_root>/<name>: newest "
                             "version), or with --serving-root/--config a model name, optionally name@version")
    parser.add_argument("--serving-root", default=None,
                        help="where pushed models live (<root>/<name>/<version>); default: serving_root of --config")
    parser.add_argument("--input", required=True,
                        help="interaction logs (directory or events file; needs --config) or TFRecord files of raw "
                             "tf.Examples (a file, a glob or a directory of *.tfrecord / *.gz)")
    parser.add_argument("--input-format", choices=("auto", "logs", "tfrecord"), default="auto",
                        help="auto (default): TFRecords when every input file is named *.tfrecord* or *.gz "
                             "(not .csv.gz/.tsv.gz/...), logs otherwise")
    parser.add_argument("--config", default=None,
                        help="pipeline YAML config: data format, columns, tables and sequence settings for logs; "
                             "also the Beam options and the serving root")
    parser.add_argument("--output", required=True, help="output directory (scores-*, errors-*, counts.json)")
    parser.add_argument("--format", dest="output_format", choices=("jsonl", "csv"), default="jsonl",
                        help="format of the score rows (errors are always JSON lines); default jsonl")
    parser.add_argument("--num-shards", type=int, default=0, help="output files per output (default: runner decides)")
    parser.add_argument("--max-batch-size", type=int, default=1024, help="largest batch per model call (default 1024)")
    parser.add_argument("--signature", default=SERVING_DEFAULT,
                        help="SavedModel signature: serialized tf.Example in, score out (default serving_default; "
                             "with the default, logs are scored through the model's serving_raw when it has one)")
    parser.add_argument("--output-key", default=OUTPUT_KEY, help="the signature output holding the score")
    parser.add_argument("--model-name", default=None, help="model name written in the rows (default: from the path)")
    parser.add_argument("--model-version", default=None, help="model version written in the rows (default: from the path)")
    parser.add_argument("--beam-arg", dest="beam_args", action="append", default=[], metavar="ARG",
                        help="a Beam pipeline option, repeatable, e.g. --beam-arg=--runner=DataflowRunner "
                             "(default: the config's beam options, else DirectRunner in_memory)")
