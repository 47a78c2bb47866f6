"""Batch scoring: ``ctr-pipeline score`` runs a SavedModel over logs or raw tf.Examples with Beam.

Inputs (``--input``):

* interaction logs (with ``--config`` for the data format, columns, tables and sequence
  settings): the examples are built by ``ingest.sequences.BuildExamples(split=False)``, the
  sequence builder the pipeline trains on, with the feature spec the model carries (its fields
  must be the config's; the history length is the model's), so every event is scored with
  exactly the features (behaviour histories included) training would have given it. ``--input`` replaces
  ``data.path`` of the config (a directory, or for the generic format the events file itself).
* TFRecord files of serialized raw tf.Examples (``*.tfrecord``, ``*.gz``, e.g. an ``Examples``
  artifact's ``Split-*/*.gz``): each record must be a tf.Example with the raw features of the
  model's ``serving_raw`` signature (``user_id``, ``item_id``, ``timestamp`` at least).

Scoring uses Beam's ``RunInference`` with Beam model handlers for the SavedModel's signatures.
Rows travel in chunks, so Beam's per-element cost is paid per chunk, not per row, and every
score keeps the ids of its input row:

* TFRecords: chunks ``(keys, serialized examples)`` (a read batch) through ``serving_default``
  (serialized raw tf.Example -> ``probability``; ``SignatureModelHandler``).
* logs: the sequence builder's ``WindowRows`` (one user's window, columnar) through
  ``serving_raw``: each window's past events become tensors once and every row's histories are
  gathered from them in the graph, with no tf.Example written and parsed again
  (``WindowRowsModelHandler``; a model without ``serving_raw``, or ``--signature`` naming
  another signature, gets the rows as tf.Examples).

A batch the model rejects is retried as tf.Examples one example at a time, so one bad example
costs only its own row.

Outputs in ``--output``:

* ``scores-*.jsonl`` (or ``.csv``): one row per scored input row: ``user_id``, ``item_id``,
  ``timestamp``, ``score``, ``model``, ``model_version``.
* ``errors-*.jsonl``: one row per input row that could not be scored: ``source``, ``reason``,
  ``detail``, the ids when known and ``raw`` (the log line) for quarantined log rows. Reasons
  are the quarantine reasons of ``ingest.sources``/``ingest.sequences`` for logs, and
  ``malformed_example`` (not a tf.Example), ``missing_feature``, ``wrong_feature_type``,
  ``wrong_value_count``, ``unreadable_tfrecord`` (the unreadable rest of a corrupt file, one row)
  and ``model_error`` (the model refused the example).
* ``table_quarantine-*.jsonl`` (logs only): bad rows of the items/users tables (not input rows).
* ``counts.json``: rows in = rows scored + error rows, checked after the run (an error if not).

Any Beam runner: pass pipeline options with ``--beam-arg=--runner=DataflowRunner`` (repeatable).
Workers then need this package (``--beam-arg=--setup_file=./setup.py`` or the project's image as
``--beam-arg=--sdk_container_image=...``) and must be able to read the model and the input.

This module is the job (``ScoreJob``, ``build_scoring``, ``score``, ``run_score``); its parts:
``serving.batch_model`` (which SavedModel), ``serving.batch_inputs`` (which files, which format),
``serving.batch_records`` (reading and checking TFRecords), ``serving.batch_handlers`` (the model
handlers and ``ScoreExamples``), ``serving.batch_outputs`` (rows, files, counts) and
``serving.cli_options`` (the command's options).
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import dataclasses
import json
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import apache_beam as beam

from contract.serving import COUNTS_FILE, OUTPUT_KEY, SERVE_TAG, SERVING_DEFAULT, SERVING_RAW
from serving.batch_handlers import ScoreExamples, SignatureModelHandler, WindowRowsModelHandler, chunk_size
from serving.batch_inputs import detect_input_format, list_input_files
from serving.batch_model import ModelRef, resolve_model, signature_inputs
from serving.batch_outputs import ERRORS, check_counts, error_row, format_counts, summarize, write_outputs
from serving.batch_records import ID_FEATURES, CheckExamples, ReadRecords

# quarantine reasons only the items/users tables produce (see ingest.sources)
TABLE_REASONS = frozenset({"duplicate_item", "duplicate_user", "invalid_attribute", "conflicting_item_attribute"})


@dataclasses.dataclass
class ScoreJob:
    model: ModelRef
    input_path: str
    output_dir: str
    input_format: str = "auto"  # auto | logs | tfrecord
    config: Optional[object] = None  # contract.config.PipelineConfig; required for logs
    output_format: str = "jsonl"  # jsonl | csv
    num_shards: int = 0  # 0: the runner decides
    max_batch_size: int = 1024
    signature: str = SERVING_DEFAULT
    output_key: str = OUTPUT_KEY
    beam_args: Sequence[str] = ()


def _error_of_quarantine(record: dict) -> dict:
    return error_row(record["source"], record["reason"], record["detail"], raw=record.get("raw"))


def _is_table_record(record: dict, event_files: frozenset) -> bool:
    """A quarantined items/users table row (not an input row): by reason, or by its file."""
    return record["reason"] in TABLE_REASONS or record["source"].rsplit(":", 1)[0] not in event_files


def _log_config(config, input_path: str):
    """The config with ``data.path`` pointing at the logs to score."""
    import tensorflow as tf

    update = {"path": input_path if "://" in input_path else os.path.abspath(input_path)}
    if config.data.format == "generic" and not tf.io.gfile.isdir(input_path):
        update["events"] = None  # the input is the events file itself
    return config.model_copy(update={"data": config.data.model_copy(update=update)})


def _model_raw_features(job: ScoreJob, spec) -> Dict[str, Tuple[str, int]]:
    """The raw features the model parses; checked against the config's feature spec if any."""
    if signature_inputs(job.model.path, job.signature) is None:
        raise ValueError(f"{job.model.path}: the SavedModel has no signature {job.signature!r} (tag '{SERVE_TAG}')")
    expected = signature_inputs(job.model.path, SERVING_RAW)
    if spec is not None:
        kinds = {"string": "bytes_list", "int64": "int64_list"}
        from_spec = {name: (kinds[dtype], 2 if seq else 1) for name, (dtype, seq) in spec.raw_features().items()}
        if expected is not None and expected != from_spec:
            missing, extra = sorted(set(expected) - set(from_spec)), sorted(set(from_spec) - set(expected))
            raise ValueError(
                f"the model's raw features do not match the config's feature spec (model only: {missing}, "
                f"config only: {extra}; or a type differs): score with the config the model was trained with"
            )
        expected = expected or from_spec
    return expected if expected is not None else {name: (kind, 1) for name, kind in ID_FEATURES.items()}


def _model_spec(model_path: str, config_spec):
    """The feature spec the model carries (its trained history length: the logs' histories are
    built at that length); its fields must be the config's."""
    from contract.feature_spec import FeatureSpec

    spec = FeatureSpec.from_model(model_path)
    fields = ("user_fields", "item_fields", "feedback_types")
    if any(getattr(spec, f) != getattr(config_spec, f) for f in fields):
        raise ValueError(
            "the model's fields do not match the config's feature spec (model: "
            + ", ".join(f"{f} {list(getattr(spec, f))}" for f in fields) + "; config: "
            + ", ".join(f"{f} {list(getattr(config_spec, f))}" for f in fields)
            + "): score with the config the model was trained with"
        )
    return spec


def build_scoring(pipeline: beam.Pipeline, job: ScoreJob) -> dict:
    """Adds the scoring steps; returns the PCollections {"scored" (chunks ``(keys, scores)``),
    "errors", "counts"[, "table_quarantine"]}."""
    from ingest import sequences, sources
    from contract.feature_spec import FeatureSpec

    input_format = detect_input_format(job.input_path) if job.input_format == "auto" else job.input_format
    if input_format == "logs" and job.config is None:
        raise ValueError("scoring logs needs --config (the data format, columns, tables and sequence settings)")
    spec = FeatureSpec.from_config(job.config) if job.config is not None else None
    if input_format == "logs":
        spec = _model_spec(job.model.path, spec)
    expected = _model_raw_features(job, spec)
    result = {}
    if input_format == "logs":
        config = _log_config(job.config, job.input_path)
        event_files = frozenset(sources.list_event_files(config.data))
        built = pipeline | "BuildExamples" >> sequences.BuildExamples(config, spec, split=False)
        chunks = built[sequences.ALL]
        # the columns through serving_raw unless another signature is asked for by name
        handler = WindowRowsModelHandler(job.model.path, job.signature, job.output_key, job.max_batch_size, expected,
                                         spec, use_raw=job.signature == SERVING_DEFAULT)
        table, logs = built[sequences.QUARANTINE] | "TableOrLog" >> beam.Partition(
            lambda record, _: int(not _is_table_record(record, event_files)), 2
        )
        read_errors = logs | "QuarantineErrors" >> beam.Map(_error_of_quarantine)
        rows_in = built["counts"] | "RowsIn" >> beam.Map(lambda counts: ("rows_in", counts["log_rows_in"]))
        extra = built["counts"] | "SequenceCounts" >> beam.Map(lambda counts: {"sequence_builder": counts})
        result["table_quarantine"] = table
    else:
        records = (
            pipeline
            | "InputFiles" >> beam.Create(list_input_files(job.input_path))
            | "ReadRecords" >> beam.ParDo(ReadRecords()).with_outputs(ERRORS, main="records")
        )
        checked = records.records | "Check" >> beam.ParDo(CheckExamples(expected)).with_outputs(ERRORS, main="examples")
        chunks = checked.examples
        read_errors = (records[ERRORS], checked[ERRORS]) | "ReadErrors" >> beam.Flatten()
        rows_in = (
            (records.records | "BatchSizes" >> beam.Map(len), records[ERRORS] | "OneEach" >> beam.Map(lambda _: 1))
            | "AllRecords" >> beam.Flatten()
            | "CountIn" >> beam.CombineGlobally(sum)
            | "RowsIn" >> beam.Map(lambda n: ("rows_in", n))
        )
        extra = pipeline | "NoExtra" >> beam.Create([{}])
        handler = SignatureModelHandler(job.model.path, job.signature, job.output_key, job.max_batch_size, expected)

    scored = chunks | "Score" >> ScoreExamples(handler)
    result["scored"] = scored["scored"]
    result[ERRORS] = (read_errors, scored[ERRORS]) | "AllErrors" >> beam.Flatten()
    tallies = (
        rows_in,
        result["scored"] | "TallyScored" >> beam.Map(lambda chunk: ("scored", chunk_size(chunk))),
        result[ERRORS] | "TallyErrors" >> beam.Map(lambda e: (f"errors.{e['reason']}", 1)),
    ) | "Tallies" >> beam.Flatten()
    result["counts"] = (
        tallies
        | "Sum" >> beam.CombinePerKey(sum)
        | "ToDict" >> beam.combiners.ToDict()
        | "Summarize" >> beam.Map(summarize, beam.pvalue.AsSingleton(extra), input_format, job.model)
    )
    return result

def score(job: ScoreJob) -> dict:
    """Runs the scoring job to completion with the config's Beam runner (the DirectRunner without
    a config; the portable runner's worker pool logs to beam-workers.log in the output folder);
    returns counts.json; raises when rows do not balance."""
    import tensorflow as tf
    from apache_beam.options.pipeline_options import PipelineOptions

    from contract.beam_runner import BEAM_WORKERS_LOG, beam_pipeline_args
    from contract.config import BeamConfig

    beam_config = job.config.beam if job.config is not None else BeamConfig()
    log_dir = job.output_dir if "://" not in job.output_dir else tempfile.gettempdir()  # the pool is local
    with beam_pipeline_args(beam_config, os.path.join(log_dir, BEAM_WORKERS_LOG)) as args:
        with beam.Pipeline(options=PipelineOptions(list(args) + list(job.beam_args))) as pipeline:
            write_outputs(build_scoring(pipeline, job), job)
    with tf.io.gfile.GFile(os.path.join(job.output_dir, COUNTS_FILE)) as handle:
        counts = json.load(handle)
    check_counts(counts)
    return counts

# ---- command line ------------------------------------------------------------------------------
def run_score(args: argparse.Namespace) -> int:
    config = None
    if args.config:
        from contract.config import load_config

        config = load_config(args.config)
    serving_root = args.serving_root or (config.serving_root if config is not None else None)
    model = resolve_model(args.model, serving_root)
    model = dataclasses.replace(
        model, name=args.model_name or model.name, version=args.model_version if args.model_version is not None else model.version
    )
    job = ScoreJob(
        model=model, input_path=args.input, output_dir=args.output, input_format=args.input_format, config=config,
        output_format=args.output_format, num_shards=args.num_shards, max_batch_size=args.max_batch_size,
        signature=args.signature, output_key=args.output_key, beam_args=args.beam_args,
    )
    print(f"[score] model {model.name} version {model.version or '-'}: {model.path}", flush=True)
    started = time.perf_counter()
    counts = score(job)
    seconds = time.perf_counter() - started
    print(format_counts(counts))
    rate = counts["rows_in"] / seconds if seconds > 0 else 0.0
    print(f"[score] {seconds:.1f}s ({rate:,.0f} rows/s); outputs in {args.output}", flush=True)
    return 0
