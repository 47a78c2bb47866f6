"""AUC and gAUC (protocol ml1m-seq step 6), including TFMA's query-based gAUC metric."""
import numpy as np
import pytest
from tensorflow_model_analysis.metrics import metric_types

from contract.auc import auc
from contract.features import USER_ID
from pipeline.metrics import GAUC


def test_auc_counts_ties_as_half():
    assert auc([0, 1], [0.2, 0.8]) == 1.0
    assert auc([1, 0], [0.2, 0.8]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.1, 0.9]) == pytest.approx(0.875)  # 3.5 of 4 pairs
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert np.isnan(auc([1, 1], [0.1, 0.2]))


def test_tfma_gauc_weights_users_by_examples_and_skips_one_label_users():
    computation = GAUC().computations(query_key=USER_ID)[0]
    combiner = computation.combiner
    # a: AUC 0.5 over 3 examples, b: 0.0 over 2, c: one label only -> skipped
    queries = {"a": ([1, 0, 0], [0.9, 0.1, 0.95]), "b": ([1, 0], [0.2, 0.8]), "c": ([1], [0.5])}
    acc = combiner.create_accumulator()
    for labels, scores in queries.values():
        element = metric_types.StandardMetricInputs(
            labels=np.array(labels, float), predictions=np.array(scores, float), example_weights=np.array([1.0])
        )
        acc = combiner.add_input(acc, element)
    (value,) = combiner.extract_output(combiner.merge_accumulators([acc])).values()
    assert value == pytest.approx((0.5 * 3 + 0.0 * 2) / 5)


def test_gauc_without_query_key_fails_loudly():
    with pytest.raises(ValueError, match="query_key"):
        GAUC().computations()


def test_the_report_takes_the_candidates_metrics_not_the_baselines():
    """A run gated against an earlier blessed version: TFMA stores both models' metrics and their
    difference; the report must show the new model's."""
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.proto import metrics_for_slice_pb2

    from pipeline.report_evaluation import BASELINE_MODEL, candidate_metrics

    assert BASELINE_MODEL == tfma.BASELINE_KEY
    overall = metrics_for_slice_pb2.MetricsForSlice()
    for model_name, is_diff, value in (("candidate", False, 0.786), (BASELINE_MODEL, False, 0.784), ("candidate", True, 0.002)):
        kv = overall.metric_keys_and_values.add()
        kv.key.name, kv.key.model_name, kv.key.is_diff = "auc", model_name, is_diff
        kv.value.double_value.value = value
    sliced = metrics_for_slice_pb2.MetricsForSlice()
    sliced.slice_key.single_slice_keys.add(column=USER_ID, bytes_value=b"u1")
    kv = sliced.metric_keys_and_values.add()
    kv.key.name = "auc"
    kv.value.double_value.value = 0.5
    assert candidate_metrics([sliced, overall]) == {"auc": 0.786}
    only = metrics_for_slice_pb2.MetricsForSlice()  # no baseline: the model name is empty
    kv = only.metric_keys_and_values.add()
    kv.key.name = "auc"
    kv.value.double_value.value = 0.7
    assert candidate_metrics([only]) == {"auc": 0.7}


def test_the_report_shows_each_models_validation_diagnostics_first_and_at_its_best_epoch():
    from pipeline.report import format_report, validation_diagnostics

    stats = {"epochs": [
        {"val_auc": 0.70, "val_diag_attention_entropy": 0.99, "diag_attention_entropy": 0.98},
        {"val_auc": 0.74, "val_diag_attention_entropy": 0.61},
        {"val_auc": 0.73, "val_diag_attention_entropy": 0.55},
    ]}
    diagnostics = validation_diagnostics(stats)
    assert diagnostics == {"attention_entropy": {"first": 0.99, "best": 0.61}}
    assert validation_diagnostics({}) == {}
    row = {"model": "camn", "auc": 0.7, "gauc": 0.6, "logloss": 0.5, "blessed": True, "pushed": None,
           "train_examples_per_second": 100.0, "diagnostics": diagnostics}
    text = format_report({"run_id": "r", "split": "test", "models": [row], "oracle_auc": None, "stages": {}})
    assert "camn: attention_entropy 0.990 -> 0.610" in text
