"""gAUC as a TFMA metric, and what a non-finite metric means (``NON_FINITE_WHY``).

gAUC (protocol ml1m-seq, step 6): the AUC of each user whose examples hold both labels,
weighted by that user's number of examples. In TFMA it is a query-based metric: in a
``MetricsSpec`` with ``query_key="user_id"`` each input is one user's examples.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2

from contract.auc import auc

GAUC_NAME = "gauc"
# the names TFMA emits for the other metrics ``pipeline.eval_config`` configures (thresholds may only use these)
AUC, LOGLOSS, EXAMPLE_COUNT, MEAN_LABEL = "auc", "binary_crossentropy", "example_count", "mean_label"
# why a metric can be nan or inf, and why that refuses the blessing (ThresholdCheck, the report)
NON_FINITE_WHY = (
    "no threshold can judge it, so the model is not blessed; logloss (binary_crossentropy) is inf or nan "
    "when a prediction is exactly 0 or 1 or is nan, gAUC is nan when no user of the split has both labels"
)


class GAUC(metric_types.Metric):
    """Per-user AUC weighted by impressions, over users with both labels (needs a query_key)."""

    def __init__(self, name: str = GAUC_NAME):
        super().__init__(_gauc_computations, name=name)


metric_types.register_metric(GAUC)


def _gauc_computations(
    name: str = GAUC_NAME,
    eval_config: Optional[config_pb2.EvalConfig] = None,
    model_names: Optional[List[str]] = None,
    output_names: Optional[List[str]] = None,
    example_weighted: bool = False,
    query_key: str = "",
) -> metric_types.MetricComputations:
    if not query_key:
        raise ValueError("gAUC needs query_key (the user id feature) in its MetricsSpec")
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name, example_weighted=example_weighted)
            computations.append(metric_types.MetricComputation(keys=[key], preprocessors=None, combiner=_GAUCCombiner(key, eval_config)))
    return computations


class _GAUCCombiner(beam.CombineFn):
    """Accumulates (sum of user AUC x user examples, sum of user examples)."""

    def __init__(self, key: metric_types.MetricKey, eval_config):
        self._key, self._eval_config = key, eval_config

    def create_accumulator(self):
        return [0.0, 0.0]

    def add_input(self, accumulator, element: metric_types.StandardMetricInputs):
        labels, predictions, _ = next(
            metric_util.to_label_prediction_example_weight(
                element, eval_config=self._eval_config, model_name=self._key.model_name,
                output_name=self._key.output_name, flatten=False, require_single_example_weight=True,
            )
        )
        value = auc(labels, predictions)
        if not np.isnan(value):
            count = np.asarray(labels).size
            accumulator[0] += value * count
            accumulator[1] += count
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[list]):
        merged = self.create_accumulator()
        for total, weight in accumulators:
            merged[0] += total
            merged[1] += weight
        return merged

    def extract_output(self, accumulator) -> Dict[metric_types.MetricKey, float]:
        total, weight = accumulator
        return {self._key: total / weight if weight else float("nan")}


def metric_label(key) -> str:
    """A MetricKey proto as a reader names it: ``auc``, ``auc (change against the baseline)``."""
    label = key.name + (f" of model {key.model_name}" if key.model_name else "")
    return label + (" (change against the baseline)" if key.is_diff else "")


def threshold_failures(validation_result) -> List[str]:
    """One line per blessing threshold a model missed, with the numbers compared: ``auc 0.55 is
    below its lower bound 0.6``, ``auc (change against the baseline) -0.02 is below -0.01``."""
    lines = []
    for per_slice in validation_result.metric_validations_per_slice:
        for failure in per_slice.failures:
            value = failure.metric_value.double_value.value if failure.HasField("metric_value") else None
            threshold = failure.metric_threshold
            bounds = threshold.change_threshold if threshold.HasField("change_threshold") else threshold.value_threshold
            limits = [f"{side} bound {getattr(bounds, field).value:g}" for side, field in (("lower", "lower_bound"), ("upper", "upper_bound"))
                      if bounds.HasField(field)]
            shown = "not computed" if value is None else f"{value:.4f}"
            lines.append(f"{metric_label(failure.metric_key)} {shown}: outside its {' and '.join(limits) or 'threshold'}"
                         + (f" ({failure.message})" if failure.message else ""))
    return lines

