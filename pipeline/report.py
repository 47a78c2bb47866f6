"""The result of the latest pipeline run, read back from ML Metadata (SQLite).

Per model: test AUC / gAUC / logloss (TFMA), blessed or not, where it was pushed, training
examples/s, and the model's diagnostics on the validation split (an attention's mean normalised
entropy, DUMN's slot cosine: ``diag_<name>`` in the Trainer's logs) after its first epoch and at
its best epoch, the one the exported weights come from; per stage: wall time; and the oracle AUC of the test split when the logs carry the
true click probability (synthetic logs). Printed as a table and saved as ``report.json``. A nan or
infinite metric is printed with "(!)" and a line saying why the model was not blessed.
"""
from __future__ import annotations

import glob
import json
import math
import os
from typing import Dict, List, Optional

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from contract.features import LABEL
from contract.auc import auc
from pipeline.metrics import AUC, EXAMPLE_COUNT, GAUC_NAME, LOGLOSS, NON_FINITE_WHY
from pipeline.report_evaluation import read_evaluation

REPORT_FILE = "report.json"
_OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)


class PipelineRun:
    """The executions of the newest pipeline run and their output artifacts, by node id."""

    def __init__(self, metadata_path: str, pipeline_name: str):
        if not os.path.exists(metadata_path):
            raise FileNotFoundError(f"no ML Metadata at {metadata_path}: has the pipeline run?")
        config = metadata_store_pb2.ConnectionConfig()
        config.sqlite.filename_uri = metadata_path
        config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
        self.store = metadata_store.MetadataStore(config)
        runs = self.store.get_contexts_by_type("pipeline_run")
        if not runs:
            raise RuntimeError(f"ML Metadata at {metadata_path} records no pipeline run")
        run = max(runs, key=lambda c: c.create_time_since_epoch)
        self.run_id = run.name
        prefix = f"{pipeline_name}."
        self.executions: Dict[str, metadata_store_pb2.Execution] = {}
        for execution in self.store.get_executions_by_context(run.id):
            for context in self.store.get_contexts_by_execution(execution.id):
                if context.type == "node" and context.name.startswith(prefix):
                    self.executions[context.name[len(prefix):]] = execution

    def outputs(self, node_id: str) -> Dict[str, metadata_store_pb2.Artifact]:
        execution = self.executions.get(node_id)
        if execution is None:
            return {}
        events = [e for e in self.store.get_events_by_execution_ids([execution.id]) if e.type in _OUTPUT_EVENTS]
        artifacts = {a.id: a for a in self.store.get_artifacts_by_id([e.artifact_id for e in events])}
        return {e.path.steps[0].key: artifacts[e.artifact_id] for e in events if e.path.steps}

    def seconds(self, node_id: str) -> Optional[float]:
        execution = self.executions.get(node_id)
        if execution is None:
            return None
        return (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000.0

    def state(self, node_id: str) -> str:
        execution = self.executions.get(node_id)
        return metadata_store_pb2.Execution.State.Name(execution.last_known_state) if execution else "NOT RUN"


def oracle_auc(examples_uri: str, split: str = "test") -> Optional[float]:
    """AUC of the true click probability on a split, when the logs carry it."""
    import tensorflow as tf

    labels, probs = [], []
    files = glob.glob(os.path.join(examples_uri, f"Split-{split}", "*"))
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        features = tf.train.Example.FromString(record.numpy()).features.feature
        if "click_prob" not in features:
            return None
        labels.append(features[LABEL].int64_list.value[0])
        probs.append(features["click_prob"].float_list.value[0])
    return auc(labels, probs) if labels else None


DIAGNOSTIC_PREFIX = "val_diag_"


def validation_diagnostics(stats: dict) -> Dict[str, Dict[str, float]]:
    """name -> {"first": after epoch 1, "best": at the best validation-AUC epoch} from the
    Trainer's per-epoch logs (``training_stats.json``)."""
    epochs = stats.get("epochs") or []
    if not epochs:
        return {}
    best = max(epochs, key=lambda logs: logs.get("val_auc", float("-inf")))
    return {
        key[len(DIAGNOSTIC_PREFIX):]: {"first": epochs[0][key], "best": best[key]}
        for key in epochs[0] if key.startswith(DIAGNOSTIC_PREFIX) and key in best
    }


def _prop(artifact, name):
    value = artifact.custom_properties.get(name)
    if value is None:
        return None
    return value.int_value if value.HasField("int_value") else value.string_value


def collect(config, models: List[str]) -> dict:
    run = PipelineRun(config.metadata_path, config.pipeline_name)
    stages = {node: {"seconds": run.seconds(node), "state": run.state(node)} for node in sorted(run.executions)}
    example_gen = run.outputs("SequenceExampleGen")
    counts = {}
    if "quarantine" in example_gen:
        with open(os.path.join(example_gen["quarantine"].uri, "counts.json"), encoding="utf-8") as handle:
            counts = json.load(handle)
    rows = []
    for name in models:
        evaluation = run.outputs(f"Evaluator.{name}")
        slices = run.outputs(f"SliceEvaluator.{name}").get("evaluation")
        evaluated = (read_evaluation(evaluation["evaluation"].uri, slices.uri if slices else None)
                     if "evaluation" in evaluation else {})
        metrics = evaluated.get("metrics", {})
        blessed = _prop(evaluation["blessing"], "blessed") if "blessing" in evaluation else None
        pushed = run.outputs(f"Pusher.{name}").get("pushed_model")
        trainer = run.outputs(f"Trainer.{name}")
        stats = {}
        if "model_run" in trainer:
            path = os.path.join(trainer["model_run"].uri, "training_stats.json")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as handle:
                    stats = json.load(handle)
        rows.append({
            "model": name,
            "auc": metrics.get(AUC),
            "gauc": metrics.get(GAUC_NAME),
            "logloss": metrics.get(LOGLOSS),
            "examples": metrics.get(EXAMPLE_COUNT),
            "blessed": bool(blessed) if blessed is not None else None,
            "pushed": (_prop(pushed, "pushed_destination") if pushed is not None and _prop(pushed, "pushed") == 1 else None),
            "train_examples_per_second": stats.get("train_examples_per_second"),
            "diagnostics": validation_diagnostics(stats),
            "validation_auc_by_epoch": [logs.get("val_auc") for logs in stats.get("epochs") or []],
            "epochs": stats.get("epochs") or [],
            "baseline_auc": evaluated.get("baseline", {}).get(AUC),
            "warm_start": stats.get("warm_start"),
            "intervals": evaluated.get("intervals", {}),
            "slices": evaluated.get("slices", []),
            "calibration": evaluated.get("calibration", []),
            "validation": {"failures": evaluated.get("failures", [])},
            "model_uri": trainer["model"].uri if "model" in trainer else None,
            "model_run_uri": trainer["model_run"].uri if "model_run" in trainer else None,
        })
    oracle = oracle_auc(example_gen["examples"].uri, config.evaluation.split) if "examples" in example_gen else None
    report = {
        "run_id": run.run_id, "split": config.evaluation.split, "models": rows, "oracle_auc": oracle, "stages": stages,
        "spans": _spans(example_gen["examples"]) if config.data.span_pattern and "examples" in example_gen else None,
        "counts": counts, "examples_uri": example_gen["examples"].uri if "examples" in example_gen else None,
    }
    with open(os.path.join(config.pipeline_root, REPORT_FILE), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    return report


def _spans(examples) -> dict:
    """The spans a daily run ingested (``data.span_pattern``)."""
    return {"first": _prop(examples, "first_span"), "last": examples.properties["span"].int_value}


TENSORBOARD_DIR = "tensorboard"


def link_tensorboard(pipeline_root: str, report: dict) -> str:
    """``<pipeline_root>/tensorboard/<run id>/<model>``: a link to each model's Trainer logs, so
    ``tensorboard --logdir <pipeline_root>/tensorboard`` shows every model of every run by name."""
    run_dir = os.path.join(pipeline_root, TENSORBOARD_DIR, report["run_id"])
    os.makedirs(run_dir, exist_ok=True)
    for row in report["models"]:
        link = os.path.join(run_dir, row["model"])
        if row.get("model_run_uri") and not os.path.lexists(link):
            os.symlink(os.path.abspath(row["model_run_uri"]), link)
    return run_dir


def write_page(config, report: dict) -> str:
    """Writes the model cards of the pushed models (pipeline/model_card.py), the run's TensorBoard
    folder and ``report.html`` (pipeline/report_page.py); returns the page's path."""
    from contract.config import validate_model_params
    from pipeline import model_card, report_page

    architectures = {name: choice.architecture for name, choice in validate_model_params(config).items()}
    cards = model_card.write_cards(report, config.pipeline_root, architectures, config.data.path)
    link_tensorboard(config.pipeline_root, report)
    page = dict(report, model_cards=cards, tensorboard_dir=os.path.join(config.pipeline_root, TENSORBOARD_DIR))
    return report_page.write(page, os.path.join(config.pipeline_root, report_page.REPORT_PAGE))


NOT_FINITE = "(!)"  # marks a nan or infinite metric in the table


def _fmt(value, digits=4):
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if math.isfinite(value) else f"{value}{NOT_FINITE}"


def _non_finite(row: dict) -> List[str]:
    return [f"{name} {row[key]}" for name, key in (("AUC", "auc"), ("gAUC", "gauc"), ("logloss", "logloss"))
            if row[key] is not None and not math.isfinite(row[key])]


def format_report(report: dict) -> str:
    lines = [f"run {report['run_id']} — metrics on the {report['split']} split"]
    header = f"{'model':<8} {'AUC':>7} {'gAUC':>7} {'logloss':>8} {'last blessed AUC':>16} {'blessed':>8} {'train ex/s':>10}  pushed"
    lines += [header, "-" * len(header)]
    for row in report["models"]:
        blessed = "-" if row["blessed"] is None else ("yes" if row["blessed"] else "no")
        speed = "-" if row["train_examples_per_second"] is None else f"{row['train_examples_per_second']:,.0f}"
        lines.append(
            f"{row['model']:<8} {_fmt(row['auc']):>7} {_fmt(row['gauc']):>7} {_fmt(row['logloss']):>8} {_fmt(row.get('baseline_auc')):>16}"
            f" {blessed:>8} {speed:>10}  {row['pushed'] or '-'}"
        )
    if any(row.get("baseline_auc") is not None for row in report["models"]):
        lines.append("(last blessed AUC: the model's latest blessed version on the same examples, the no-regression gate's reference)")
    spans = report.get("spans")
    if spans:
        lines.append(f"spans ingested: {spans['first']}..{spans['last']} (days since 1970-01-01 for dated folders)")
    for row in report["models"]:
        if row.get("warm_start"):
            tables = row["warm_start"].get("embedding_tables", {})
            matched = ", ".join(f"{t['field']} {t['tokens_matched']}/{t['vocabulary_size']}" for t in tables.values())
            lines.append(f"{row['model']} warm-started from its last blessed version: {len(row['warm_start']['copied'])} variables; "
                         f"embedding rows matched by token: {matched}")
    for row in report["models"]:
        if _non_finite(row):
            lines.append(f"{NOT_FINITE} {row['model']}: {', '.join(_non_finite(row))}, not finite: {NON_FINITE_WHY}")
    diagnosed = [row for row in report["models"] if row.get("diagnostics")]
    if diagnosed:
        lines.append("diagnostics on the validation split, after epoch 1 -> at the best epoch (entropy: 1.0 = uniform attention)")
        for row in diagnosed:
            shown = ", ".join(f"{name} {_fmt(v['first'], 3)} -> {_fmt(v['best'], 3)}" for name, v in sorted(row["diagnostics"].items()))
            lines.append(f"  {row['model']}: {shown}")
    if report["oracle_auc"] is not None:
        lines.append(f"{'oracle':<8} {_fmt(report['oracle_auc']):>7}   (AUC of the true click probability: the ceiling)")
    counts = report.get("counts") or {}
    if counts:
        lines.append(
            f"rows: {counts['log_rows_in']:,} in = {counts['examples_total']:,} examples {counts['examples']} + {counts['log_rows_quarantined']:,} quarantined"
        )
    lines.append("stage wall times: " + ", ".join(
        f"{node} {info['seconds']:.0f}s" + ("" if info["state"] == "COMPLETE" else f" ({info['state'].lower()})")
        for node, info in report["stages"].items() if info["seconds"] is not None
    ))
    return "\n".join(lines)
