"""The run report's pictures (matplotlib, drawn off-screen), each returned as PNG bytes.

Every function takes plain numbers from ``report.json`` (pipeline/report.py), so a report can be
redrawn from the file alone.
"""
from __future__ import annotations

import io
import math
from typing import Dict, List, Optional

import matplotlib

from pipeline.report import DIAGNOSTIC_PREFIX
from pipeline.report_evaluation import has_auc

matplotlib.use("Agg")  # no display: the report is written by pipeline runs and CI
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

AUC_KEYS = ("auc", "val_auc")


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def _finite(values: List[Optional[float]]) -> List[float]:
    return [v if v is not None and math.isfinite(v) else float("nan") for v in values]


def loss_terms(epochs: List[dict]) -> List[str]:
    """The named loss terms of a Trainer's per-epoch logs (``loss``, ``ctr_loss``, ``triplet``, ...),
    without the ``val_`` copies, AUCs, diagnostics or the learning rate."""
    names = []
    for key in epochs[0] if epochs else {}:
        if key.startswith(("val_", "diag_")) or key in AUC_KEYS or key == "lr":
            continue
        names.append(key)
    return names


def training_curves(model: str, epochs: List[dict]) -> bytes:
    """AUC and every named loss term per epoch, training (solid) and validation (dashed)."""
    terms = loss_terms(epochs)
    figure, axes = plt.subplots(1, 1 + len(terms), figsize=(3.2 * (1 + len(terms)), 2.8), squeeze=False)
    x = list(range(1, len(epochs) + 1))
    for axis, key in zip(axes[0], ("auc", *terms)):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [logs.get(prefix + key) for logs in epochs]
            if any(v is not None for v in values):
                axis.plot(x, _finite(values), style, marker="o", markersize=3, label="validation" if prefix else "training")
        axis.set_title(f"{model}: {key}", fontsize=9)
        axis.set_xlabel("epoch", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=7)
    return _png(figure)


def diagnostics(model: str, epochs: List[dict]) -> Optional[bytes]:
    """The model's module diagnostics (attention entropy, slot cosine, ...) per epoch on the
    validation split; None when the model declares none."""
    names = sorted(key[len(DIAGNOSTIC_PREFIX):] for key in (epochs[0] if epochs else {}) if key.startswith(DIAGNOSTIC_PREFIX))
    if not names:
        return None
    figure, axis = plt.subplots(figsize=(5.5, 2.8))
    x = list(range(1, len(epochs) + 1))
    for name in names:
        axis.plot(x, _finite([logs.get(DIAGNOSTIC_PREFIX + name) for logs in epochs]), marker="o", markersize=3, label=name)
    axis.set_title(f"{model}: diagnostics on the validation split (entropy 1.0 = uniform)", fontsize=9)
    axis.set_xlabel("epoch", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.legend(fontsize=7)
    return _png(figure)


SHORTEST_STAGE_SECONDS = 1.0  # stages quicker than this are left out of the chart


def stage_times(stages: Dict[str, dict]) -> bytes:
    """Wall time per pipeline stage of at least SHORTEST_STAGE_SECONDS, longest first."""
    timed = sorted(((node, info["seconds"]) for node, info in stages.items()
                    if info.get("seconds") is not None and info["seconds"] >= SHORTEST_STAGE_SECONDS),
                   key=lambda item: item[1])
    figure, axis = plt.subplots(figsize=(7, 0.3 * len(timed) + 1.0))
    axis.barh([node for node, _ in timed], [seconds for _, seconds in timed], color="#4c72b0")
    axis.set_xlabel("wall time (s)", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.set_title("stage wall times", fontsize=9)
    return _png(figure)


def calibration(models: Dict[str, List[dict]]) -> Optional[bytes]:
    """Reliability diagram: mean predicted against observed click rate per prediction bucket
    (TFMA's calibration plot buckets, ``{"predicted", "observed", "weight"}``), one line per model."""
    drawn = {name: [b for b in buckets if b["weight"] > 0] for name, buckets in models.items() if buckets}
    if not drawn:
        return None
    figure, axis = plt.subplots(figsize=(4.2, 4.0))
    axis.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for name, buckets in drawn.items():
        axis.plot([b["predicted"] for b in buckets], [b["observed"] for b in buckets], marker="o", markersize=3, label=name)
    axis.set_xlabel("mean predicted click probability", fontsize=8)
    axis.set_ylabel("observed click rate", fontsize=8)
    axis.set_title("calibration (test split)", fontsize=9)
    axis.tick_params(labelsize=7)
    axis.legend(fontsize=7)
    return _png(figure)


def slice_auc(slices: Dict[str, List[dict]], titles: Dict[str, str], label) -> Optional[bytes]:
    """AUC per slice value, one panel per slice feature, one bar per model; ``label(feature, value)``
    names a value. ``slices``: model -> the Evaluator's slice rows ({feature, value, auc, ...})."""
    features = [f for f in titles if any(r["feature"] == f for rows in slices.values() for r in rows)]
    if not features:
        return None
    figure, axes = plt.subplots(1, len(features), figsize=(3.6 * len(features), 3.0), squeeze=False)
    width = 0.8 / max(len(slices), 1)
    for axis, feature in zip(axes[0], features):
        values = sorted({r["value"] for rows in slices.values() for r in rows if r["feature"] == feature})
        for offset, (model, rows) in enumerate(slices.items()):
            auc_by_value = {r["value"]: r.get("auc") for r in rows if r["feature"] == feature and has_auc(r)}
            axis.bar([i + offset * width for i in range(len(values))], _finite([auc_by_value.get(v) for v in values]),
                     width=width, label=model)
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(values))])
        axis.set_xticklabels([label(feature, v) for v in values], fontsize=6, rotation=90 if len(values) > 6 else 0)
        axis.set_ylim(0.4, 1.0)
        axis.set_title(f"AUC by {titles[feature]}", fontsize=9)
        axis.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    return _png(figure)
