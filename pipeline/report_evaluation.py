"""What the report reads from a model's two TFMA evaluations: from the gate (``Evaluator.<model>``)
the candidate's and the baseline's metrics, their bootstrap 95% intervals, the calibration buckets
and the missed blessing thresholds; from ``SliceEvaluator.<model>`` the per-slice metrics."""
from __future__ import annotations

import glob
import os
from typing import Dict, List, Optional, Tuple

from contract.slices import SLICE_FEATURES
from pipeline.metrics import AUC, EXAMPLE_COUNT, GAUC_NAME, LOGLOSS, MEAN_LABEL, threshold_failures

BASELINE_MODEL = "baseline"  # TFMA's name for the baseline model's metrics (tfma.BASELINE_KEY)
REPORTED = (AUC, GAUC_NAME, LOGLOSS, EXAMPLE_COUNT)


def _is_model(key, model_name: str) -> bool:
    return (key.model_name == BASELINE_MODEL) == (model_name == BASELINE_MODEL)


def _model_values(metrics, model_name: str = ""):
    """A model's plain metric values (no sub-key, no difference against the baseline)."""
    return [kv for kv in metrics.metric_keys_and_values
            if not kv.key.HasField("sub_key") and not kv.key.is_diff and _is_model(kv.key, model_name)]


def _values(metrics, model_name: str = "") -> Dict[str, float]:
    return {kv.key.name: kv.value.double_value.value for kv in _model_values(metrics, model_name)
            if kv.value.HasField("double_value")}


def _intervals(metrics) -> Dict[str, Tuple[float, float]]:
    """The candidate's Poisson-bootstrap 95% interval of each metric that has one."""
    return {
        kv.key.name: (kv.confidence_interval.lower_bound.double_value.value,
                      kv.confidence_interval.upper_bound.double_value.value)
        for kv in _model_values(metrics)
        if kv.HasField("confidence_interval") and kv.confidence_interval.lower_bound.HasField("double_value")
    }


def _overall(metrics_for_slices):
    return next((m for m in metrics_for_slices if not m.slice_key.single_slice_keys), None)


def candidate_metrics(metrics_for_slices, model_name: str = "") -> Dict[str, float]:
    """One model's overall-slice metrics from TFMA's MetricsForSlice protos.

    With a baseline (the latest blessed version of the same model), TFMA reports the baseline's
    metrics (``model_name`` BASELINE_MODEL) and the differences beside the candidate's; the
    default takes only the candidate's.
    """
    overall = _overall(metrics_for_slices)
    return _values(overall, model_name) if overall is not None else {}


def _slice_value(key) -> Optional[int]:
    return key.int64_value if key.HasField("int64_value") else None


def has_auc(slice_row: dict) -> bool:
    """A slice with clicks and non-clicks: AUC is defined (TFMA writes 0 for a one-class slice)."""
    return slice_row.get("mean_label") is None or 0.0 < slice_row["mean_label"] < 1.0


def slice_rows(metrics_for_slices) -> List[dict]:
    """{feature, value, auc, gauc, logloss, examples, mean_label} of the candidate on each single-feature slice."""
    rows = []
    for metrics in metrics_for_slices:
        keys = metrics.slice_key.single_slice_keys
        if len(keys) != 1 or keys[0].column not in SLICE_FEATURES or _slice_value(keys[0]) is None:
            continue
        values = _values(metrics)
        rows.append({"feature": keys[0].column, "value": _slice_value(keys[0]), "auc": values.get(AUC),
                     "gauc": values.get(GAUC_NAME), "logloss": values.get(LOGLOSS), "examples": values.get(EXAMPLE_COUNT),
                     "mean_label": values.get(MEAN_LABEL)})
    return sorted(rows, key=lambda row: (SLICE_FEATURES.index(row["feature"]), row["value"]))


def calibration_buckets(plots_for_slices) -> List[dict]:
    """{predicted, observed, weight} per non-empty bucket of the candidate's overall calibration plot."""
    for plots in plots_for_slices:
        if plots.slice_key.single_slice_keys:
            continue
        for kv in plots.plot_keys_and_values:
            if not _is_model(kv.key, "") or not kv.value.HasField("calibration_histogram_buckets"):
                continue
            return [
                {"predicted": b.total_weighted_refined_prediction.value / b.num_weighted_examples.value,
                 "observed": b.total_weighted_label.value / b.num_weighted_examples.value,
                 "weight": b.num_weighted_examples.value}
                for b in kv.value.calibration_histogram_buckets.buckets if b.num_weighted_examples.value > 0
            ]
    return []


def read_evaluation(evaluation_uri: str, slices_uri: Optional[str] = None) -> dict:
    """Everything the report shows of a model's gate evaluation and its slices (``slices_uri``;
    without it, from the gate's evaluation: a run without intervals computes them there)."""
    import tensorflow_model_analysis as tfma

    metrics = list(tfma.load_metrics(evaluation_uri))
    overall = _overall(metrics)
    return {
        "metrics": candidate_metrics(metrics),
        "baseline": candidate_metrics(metrics, BASELINE_MODEL),
        "intervals": {k: v for k, v in (_intervals(overall) if overall is not None else {}).items() if k in REPORTED},
        "slices": slice_rows(tfma.load_metrics(slices_uri)) if slices_uri else slice_rows(metrics),
        "calibration": calibration_buckets(tfma.load_plots(evaluation_uri)),
        # an evaluation written without its validation result (an interrupted Evaluator) has no failures to show
        "failures": (threshold_failures(tfma.load_validation_result(evaluation_uri))
                     if glob.glob(os.path.join(evaluation_uri, "validations*")) else []),
    }
