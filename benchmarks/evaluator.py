"""What the Evaluator's bootstrap intervals and slices cost: TFMA on one model of a finished run
with the pipeline's evaluation configurations and variants of them, one after another.

    python benchmarks/evaluator.py --config configs/demo.yaml [--models dnn[,din,...]]
        [--variants gate,slices,no_intervals,one_pass,jackknife,gate_jackknife,slices_together] [--output benchmarks/results]

It evaluates the newest run's ``WarmupRequests.<model>`` SavedModel of each model on its evaluation split
(``evaluation.split``) as the TFX Evaluator does (serialized tf.Examples, no baseline: a first
run's evaluation), under the config's Beam settings. Variants:

* ``gate``: ``Evaluator.<model>`` with ``evaluation.confidence_intervals: true`` (the overall
  slice with its bootstrap intervals; ``pipeline.pipeline.eval_config``);
* ``slices``: ``SliceEvaluator.<model>``, which runs beside it (every slice, no intervals;
  ``slice_eval_config``);
* ``no_intervals``: ``Evaluator.<model>`` with ``confidence_intervals: false`` (the overall slice
  and every slice in one evaluation, no intervals, no SliceEvaluator);
* ``one_pass``: the overall slice and every slice in one evaluation with intervals (the design
  before the two were split: TFMA bootstraps every slice).
* ``jackknife``: ``one_pass`` with TFMA's jackknife intervals instead of the Poisson bootstrap
  (each example is accumulated once, into one of 20 partitions, and the leave-one-partition-out
  estimates are merges of those accumulators; the bootstrap accumulates every example once per
  resample).
* ``gate_jackknife``: ``gate`` with jackknife intervals.
* ``slices_together``: ``slices`` for all the models in one evaluation (one TFMA model spec per
  model), against ``slices`` once per model: what one SliceEvaluator for every model would save.

The variants but ``slices_together`` run once per model. Per run: wall seconds, the process's
CPU seconds and the overall slice's AUC, gAUC and logloss (a variant with the overall slice). Writes ``evaluator.json`` and
``evaluator.md`` to ``--output``.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from typing import Callable, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import machine  # noqa: E402
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import apache_beam as beam  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_analysis as tfma  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from tfx_bsl.tfxio import tf_example_record  # noqa: E402

from contract.config import PipelineConfig, load_config  # noqa: E402
from pipeline.pipeline import eval_config, slice_eval_config  # noqa: E402
from pipeline.metrics import AUC, GAUC_NAME, LOGLOSS  # noqa: E402
from pipeline.report import PipelineRun  # noqa: E402
from pipeline.report_evaluation import read_evaluation  # noqa: E402


def _with_intervals(config: PipelineConfig, intervals: bool) -> PipelineConfig:
    return config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"confidence_intervals": intervals})})


def _one_pass(config: PipelineConfig) -> tfma.EvalConfig:
    """The evaluation without intervals (the overall slice and every slice), with intervals."""
    one = eval_config(_with_intervals(config, False))
    one.options.compute_confidence_intervals.value = True
    return one


def _jackknife(evaluation: tfma.EvalConfig) -> tfma.EvalConfig:
    """``evaluation`` with jackknife intervals."""
    evaluation.options.confidence_intervals.method = tfma.ConfidenceIntervalOptions.JACKKNIFE
    return evaluation


# variant -> its EvalConfig for the pipeline's config
VARIANTS: Dict[str, Callable[[PipelineConfig], tfma.EvalConfig]] = {
    "gate": lambda config: eval_config(_with_intervals(config, True)),
    "slices": lambda config: slice_eval_config(),
    "no_intervals": lambda config: eval_config(_with_intervals(config, False)),
    "one_pass": _one_pass,
    "jackknife": lambda config: _jackknife(_one_pass(config)),
    "gate_jackknife": lambda config: _jackknife(eval_config(_with_intervals(config, True))),
    "slices_together": lambda config: slice_eval_config(),
}
TOGETHER = "slices_together"


def _named(config: tfma.EvalConfig, names: List[str]) -> tfma.EvalConfig:
    """``config`` with one copy of its model spec per model, named after it."""
    (spec,) = config.model_specs
    named = tfma.EvalConfig()
    named.CopyFrom(config)
    del named.model_specs[:]
    for name in names:
        named.model_specs.add().CopyFrom(spec)
        named.model_specs[-1].name = name
    return named


def evaluate(model_paths: Dict[str, str], files: List[str], config: tfma.EvalConfig, beam_args: List[str], output: str) -> None:
    """TFMA as the TFX Evaluator runs it on serialized tf.Examples (no schema, no baseline yet);
    with several models, one evaluation of all of them."""
    if len(model_paths) > 1:
        config = _named(config, list(model_paths))
    config = tfma.utils.update_eval_config_with_defaults(config, has_baseline=False, rubber_stamp=True)
    shared_model = [
        tfma.default_eval_shared_model(eval_saved_model_path=path, eval_config=config,
                                       model_name=name if len(model_paths) > 1 else "")
        for name, path in model_paths.items()
    ]
    shared_model = shared_model[0] if len(shared_model) == 1 else shared_model
    # what the TFX Evaluator reads without a schema: every feature decoded beside the raw records,
    # so the gAUC groups by user_id as in the pipeline (raw records alone would leave one group)
    tfxio = tf_example_record.TFExampleRecord(files, raw_record_column_name=tfma.constants.ARROW_INPUT_COLUMN,
                                              telemetry_descriptors=["ctr-pipeline-benchmark"])
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        _ = (pipeline | "Read" >> tfxio.BeamSource()
             | "Evaluate" >> tfma.ExtractEvaluateAndWriteResults(eval_shared_model=shared_model, eval_config=config, output_path=output))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.yaml"))
    parser.add_argument("--models", default="dnn", help="comma-separated models of the run (default dnn)")
    parser.add_argument("--variants", default=",".join(v for v in VARIANTS if v != TOGETHER),
                        help=f"comma-separated, of: {', '.join(VARIANTS)} (default: all but {TOGETHER})")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")

    config = load_config(args.config)
    run = PipelineRun(config.metadata_path, config.pipeline_name)
    examples = run.outputs("SequenceExampleGen").get("examples")
    model_paths = {}
    for name in args.models.split(","):
        model = run.outputs(f"WarmupRequests.{name}").get("warmed_model")
        if model is None or examples is None:
            raise SystemExit(f"the newest run of {config.pipeline_name} has no warmed model {name!r}: run the pipeline first")
        serving = os.path.join(model.uri, "Format-Serving")
        model_paths[name] = serving if os.path.isdir(serving) else model.uri
    split_dir = os.path.join(examples.uri, f"Split-{config.evaluation.split}")
    files = [os.path.join(split_dir, name) for name in sorted(os.listdir(split_dir))]
    examples_count = sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))

    facts = machine.machine_facts({"tensorflow_model_analysis": tfma.__version__})
    runs = [(v, {m: p}) for v in variants if v != TOGETHER for m, p in model_paths.items()]
    runs += [(TOGETHER, model_paths)] if TOGETHER in variants else []
    rows = []
    for name, paths in runs:
        with tempfile.TemporaryDirectory() as output:
            started, cpu_started = time.perf_counter(), _cpu_seconds()
            evaluate(paths, files, VARIANTS[name](config), config.beam_pipeline_args(), output)
            row = {"variant": name, "models": ",".join(paths), "seconds": round(time.perf_counter() - started, 1),
                   "cpu_seconds": round(_cpu_seconds() - cpu_started, 1), "load_average_end": machine.load_average()}
            # the overall slice's values, where the variant computes it for one model: every
            # variant must report the same values (only the intervals' method may differ)
            overall = read_evaluation(output)["metrics"] if len(paths) == 1 else {}
            row.update({metric: round(overall[metric], 4) if metric in overall else None for metric in (AUC, GAUC_NAME, LOGLOSS)})
        print(f"{name} ({row['models']}): {row['seconds']} s wall, {row['cpu_seconds']} s CPU", flush=True)
        rows.append(row)

    figures = {"command": machine.command_line(argv), "machine": facts, "models": list(model_paths),
               "examples": examples_count, "split": config.evaluation.split, "rows": rows}
    lines = [
        "# Evaluator cost", "", f"`{figures['command']}`", "",
        f"- machine: {machine.describe()}; load average at the start {facts['load_average_start']}",
        f"- models {', '.join(f'`{m}`' for m in model_paths)} of the newest run of `{config.pipeline_name}`, {examples_count} "
        f"{config.evaluation.split} examples, Beam `{' '.join(config.beam_pipeline_args())}`", "",
        "| variant | models | wall s | CPU s | load at the end | AUC | gAUC | logloss |", "|---|---|---:|---:|---|---:|---:|---:|",
    ] + [f"| {r['variant']} | {r['models']} | {r['seconds']} | {r['cpu_seconds']} | {r['load_average_end']} "
         f"| {r[AUC]} | {r[GAUC_NAME]} | {r[LOGLOSS]} |" for r in rows]
    machine.save_results(args.output, "evaluator", figures, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
