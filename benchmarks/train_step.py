"""Where training time goes: the input pipeline against the model's own step, per model.

Runs on the transformed examples of a pipeline that has run (for instance the quality
benchmark's ml1m-seq run), with the Trainer's own code:

    python benchmarks/train_step.py --config runs/quality/ml1m-seq/config-seed0.yaml \
        [--models dnn,din,fadidn,camn,tf4ctr,dumn] [--steps 20] [--output benchmarks/results]

Per model, training examples/s of

* ``input``: reading and parsing the transformed training examples alone
  (``models.trainer.make_dataset``, the Trainer's input function; the same for every model),
* ``model step``: the training step alone, on batches already in memory (the first
  ``--cached-batches`` batches of the same data, repeated),
* ``trainer``: both together, as the Trainer runs them (the figure quality.py reports),

each after ``--warmup`` steps, under the Trainer's distribution strategy. Writes
``train_step.json`` and ``train_step.md`` to ``--output``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import types
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import machine  # noqa: E402
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras  # noqa: E402

from models import registry  # noqa: E402
from models.multiworker import example_dataset_factory  # noqa: E402
from models.trainer import (  # noqa: E402
    ThroughputLogger, distribution_strategy, make_dataset, make_optimizer, shuffle_buffer_size, vocabulary_sizes,
)  # fmt: skip
from contract.config import load_config, validate_model_params  # noqa: E402
from pipeline.report import PipelineRun  # noqa: E402
from contract.feature_spec import FeatureSpec  # noqa: E402


def transform_outputs(config) -> Dict[str, str]:
    """URIs of the Transform outputs of the pipeline's newest run, from its ML Metadata."""
    run = PipelineRun(config.metadata_path, config.pipeline_name)
    outputs = {key: artifact.uri for key, artifact in run.outputs("Transform").items()}
    if "transform_graph" not in outputs:
        raise SystemExit(f"the newest run of {config.pipeline_name} has no Transform output: run the pipeline first")
    return outputs


def trainer_inputs():
    """The ``fn_args`` the Trainer's ``make_dataset`` reads: a tfxio dataset factory for tf.Examples."""
    return types.SimpleNamespace(data_accessor=example_dataset_factory())


def input_examples_per_second(dataset: tf.data.Dataset, batch: int, warmup: int, steps: int) -> float:
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    started = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch / (time.perf_counter() - started)


def fit_examples_per_second(model, dataset: tf.data.Dataset, batch: int, warmup: int, steps: int) -> float:
    throughput = ThroughputLogger(batch, warmup_steps=warmup)
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, callbacks=[throughput], verbose=0)
    return throughput.examples_per_second


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the pipeline config whose Transform output is read")
    parser.add_argument("--models", default=None, help="comma-separated model names (default: the config's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each measurement")
    parser.add_argument("--cached-batches", type=int, default=4)
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args(argv)

    config = load_config(args.config)
    choices = validate_model_params(config)
    names = args.models.split(",") if args.models else list(choices)
    spec = FeatureSpec.from_config(config)
    outputs = transform_outputs(config)
    tft_output = tft.TFTransformOutput(outputs["transform_graph"])
    train_files = [os.path.join(outputs["transformed_examples"], "Split-train", "*")]
    vocab = vocabulary_sizes(tft_output, spec)
    strategy = distribution_strategy()
    batch = config.training.batch_size * strategy.num_replicas_in_sync
    fn_args = trainer_inputs()
    training = config.training.model_dump()

    def train_dataset():
        buffer = shuffle_buffer_size(training, batch)  # the Trainer's own input: its buffer, its seed
        return make_dataset(fn_args, train_files, tft_output, batch, buffer, config.training.seed)

    input_rate = input_examples_per_second(train_dataset(), batch, args.warmup, args.steps)
    print(f"input (read + parse): {input_rate:,.0f} examples/s", flush=True)
    cached = train_dataset().take(args.cached_batches).cache().repeat()
    rows: List[Dict] = []
    for name in names:
        choice = choices.get(name)
        architecture, params = (choice.architecture, choice.params) if choice else (name, registry.params_class(name)())
        tf_keras.utils.set_random_seed(config.training.seed)
        with strategy.scope():
            model = registry.build(architecture, spec, vocab, params.model_dump(), name=name)
            model.compile(optimizer=make_optimizer(training))  # the Trainer's: Adam with its gradient clipping
        step_rate = fit_examples_per_second(model, cached, batch, args.warmup, args.steps)
        trainer_rate = fit_examples_per_second(model, train_dataset(), batch, args.warmup, args.steps)
        row = {"model": name, "batch_size": batch, "input": input_rate, "model_step": step_rate, "trainer": trainer_rate}
        rows.append(row)
        print(f"{name}: model step {step_rate:,.0f} examples/s, trainer {trainer_rate:,.0f} examples/s", flush=True)

    command = "python benchmarks/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Training throughput: input pipeline vs model step", "", f"`{command}`", "",
        f"- machine: {machine.describe()}; batch {batch}; examples/s after {args.warmup} warmup steps",
        "", "| model | input alone | model step alone | trainer (both) |", "|---|---:|---:|---:|",
    ]
    lines += [f"| {r['model']} | {r['input']:,.0f} | {r['model_step']:,.0f} | {r['trainer']:,.0f} |" for r in rows]
    figures = {"command": command, "machine": machine.describe(), "rows": rows}
    machine.save_results(args.output, "train_step", figures, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
