"""A model card per pushed model, in the Model Card Toolkit's JSON schema (v0.0.2 field names).

The toolkit itself pins an older TFMA than this stack's, so the cards are written here from
``report.json``: model details (architecture, pushed version and path), the data (examples per
split, where the logs came from), the test metrics overall with their 95% intervals and per
slice, and the intended use and limits. ``<pipeline_root>/model_cards/<model>.json``, one per
model pushed by the run; the report page shows them.
"""
from __future__ import annotations

import json
import os
from typing import Dict

from contract import slices
from pipeline.metrics import AUC, GAUC_NAME, LOGLOSS
from pipeline.report_evaluation import has_auc

MODEL_CARDS_DIR = "model_cards"
SCHEMA_VERSION = "0.0.2"
_CARD_METRICS = (AUC, GAUC_NAME, LOGLOSS)

USE_CASES = [
    "Ranking candidate items for a user of the system whose logs it was trained on, by the "
    "probability that the user clicks the item, from the user's recent click, unclick, like and "
    "dislike histories (TF Serving, signatures serving_default, serving_raw, serving_candidates).",
]
LIMITATIONS = [
    "Trained on the logs of one time span: its scores drift as the catalogue and the users change; "
    "retrain and re-evaluate rather than reuse an old version.",
    "Users and items absent from the train split share out-of-vocabulary embeddings: see the "
    "new-user and short-history slices before relying on scores for cold-start traffic.",
    "Probabilities are calibrated only as far as the calibration diagram of the report shows.",
]


def _metric(name: str, value, interval=None, slice_name: str = "") -> dict:
    entry = {"type": name, "value": f"{value:.4f}"}
    if slice_name:
        entry["slice"] = slice_name
    if interval:
        entry["confidence_interval"] = {"lower_bound": f"{interval[0]:.4f}", "upper_bound": f"{interval[1]:.4f}"}
    return entry


def card(report: dict, row: dict, architecture: str, data_path: str) -> dict:
    """The model card of one pushed model (row of ``report.json``)."""
    metrics = [_metric(name, row[name], (row.get("intervals") or {}).get(name))
               for name in _CARD_METRICS if row.get(name) is not None]
    for entry in row.get("slices") or []:
        if entry.get("auc") is not None and has_auc(entry):
            label = f"{entry['feature']}={slices.value_label(entry['feature'], entry['value'])}"
            metrics.append(_metric(AUC, entry["auc"], slice_name=label))
    examples = (report.get("counts") or {}).get("examples") or {}
    version = os.path.basename(os.path.normpath(row["pushed"]))
    return {
        "schema_version": SCHEMA_VERSION,
        "model_details": {
            "name": row["model"],
            "overview": f"{architecture} click-through-rate model trained and blessed by ctr-pipeline run {report['run_id']}.",
            "version": {"name": version, "diff": _diff(row)},
            "path": row["pushed"],
        },
        "model_parameters": {
            "model_architecture": architecture,
            "data": [{"name": f"{split} split", "description": f"{count:,} examples built from the logs at {data_path}"}
                     for split, count in sorted(examples.items())],
            "input_format": "tf.Example (serving_default) or one tensor per raw feature (serving_raw); "
                            "the feature spec is in the model's assets.extra/feature_spec.json",
            "output_format": "probability: the click probability per example",
        },
        "quantitative_analysis": {"performance_metrics": metrics},
        "considerations": {
            "use_cases": [{"description": text} for text in USE_CASES],
            "limitations": [{"description": text} for text in LIMITATIONS],
        },
    }


def _diff(row: dict) -> str:
    if row.get("baseline_auc") is None:
        return "The first blessed version of this model"
    return f"Test AUC {row['auc']:.4f} against {row['baseline_auc']:.4f} of the last blessed version"


def write_cards(report: dict, pipeline_root: str, architectures: dict, data_path: str) -> Dict[str, dict]:
    """Writes the card of every model the run pushed; returns model -> {"path", "card"}."""
    folder = os.path.join(pipeline_root, MODEL_CARDS_DIR)
    written = {}
    for row in report["models"]:
        if not row.get("pushed"):
            continue
        os.makedirs(folder, exist_ok=True)
        entry = {"path": os.path.join(folder, f"{row['model']}.json"),
                 "card": card(report, row, architectures.get(row["model"], row["model"]), data_path)}
        with open(entry["path"], "w", encoding="utf-8") as handle:
            json.dump(entry["card"], handle, indent=2)
        written[row["model"]] = entry
    return written
