"""The gates that stop a run or a push: data anomalies before training, thresholds on missing
metrics, metrics that are nan or infinite."""
import os
import types

import pytest
import tensorflow_data_validation as tfdv
from tfx.utils import writer_utils

from contract.config import EvaluationConfig
from contract.features import ITEM_ID, LABEL, USER_ID
from contract.serving import OUTPUT_KEY
from pipeline.components import anomaly_messages, check_thresholds_were_evaluated, non_finite_refusals
from pipeline.metrics import AUC, LOGLOSS, NON_FINITE_WHY
from pipeline.pipeline import eval_config
from tests.model_harness import SPEC
from tests.raw_data import raw_examples
from transforms.schema import raw_schema


def _stats(examples):
    import pandas as pd

    rows = [{k: (v if isinstance(v, list) else [v]) for k, v in e.items()} for e in examples]
    return tfdv.generate_statistics_from_dataframe(pd.DataFrame(rows))


def _anomalies_dir(tmp_path, examples):
    anomalies = tfdv.validate_statistics(_stats(examples), raw_schema(SPEC, with_click_prob=True))
    os.makedirs(tmp_path / "Split-eval")
    writer_utils.write_anomalies(str(tmp_path / "Split-eval" / "SchemaDiff.pb"), anomalies)
    return str(tmp_path)


def test_valid_examples_have_no_anomalies(tmp_path):
    assert anomaly_messages(_anomalies_dir(tmp_path, raw_examples(SPEC, users=3)), ["eval"]) == []


def test_anomalies_are_reported_by_feature(tmp_path):
    examples = raw_examples(SPEC, users=3)
    history = SPEC.history("click", ITEM_ID)
    for e in examples:
        e[history] = ["x"] * (SPEC.max_length + 5)  # longer than the schema allows
        e[LABEL] = 7  # outside {0, 1}
    lines = anomaly_messages(_anomalies_dir(tmp_path, examples), ["eval"])
    assert [line.split(":")[0] for line in lines] == sorted(
        f"split eval, feature {name!r}" for name in (history, LABEL))  # one line per anomalous feature


# ---- blessing thresholds: TFMA's own evaluation and validation of scored examples -------------
@pytest.fixture(scope="module")
def scored():
    """Scored test examples of a model a bit better than chance (AUC ~0.8), several per user."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=300)
    scores = np.clip(0.5 + 0.25 * (labels - 0.5) + rng.normal(0, 0.2, size=labels.size), 0.01, 0.99)
    return pd.DataFrame({LABEL: labels, OUTPUT_KEY: scores, USER_ID: [f"u{i % 20}" for i in range(labels.size)]})


def _validation_result(scored, tmp_path, auc_lower_bound=0.5, edit=None):
    """TFMA evaluates and validates ``scored`` under the pipeline's eval config (``edit`` may change
    it), as the Evaluator does on a first run (no baseline yet: no change thresholds); the result
    is read back from the output as ThresholdCheck reads it."""
    import tensorflow_model_analysis as tfma

    config = eval_config(types.SimpleNamespace(evaluation=EvaluationConfig(auc_lower_bound=auc_lower_bound)))
    for spec in config.model_specs:  # scores come with the data: no model to call
        spec.ClearField("signature_name")
        spec.ClearField("preprocessing_function_names")
    if edit:
        edit(config)
    config = tfma.utils.update_eval_config_with_defaults(config, has_baseline=False, rubber_stamp=True)
    tfma.analyze_raw_data(scored, config, str(tmp_path))
    return tfma.load_validation_result(str(tmp_path))


def _failed_metrics(result):
    return sorted(f.metric_key.name for s in result.metric_validations_per_slice for f in s.failures)


def test_the_pipelines_auc_bound_blesses_a_model_above_it(scored, tmp_path):
    result = _validation_result(scored, tmp_path, auc_lower_bound=0.5)
    assert result.validation_ok and _failed_metrics(result) == []
    check_thresholds_were_evaluated(result, str(tmp_path))  # nothing to report


def test_a_model_below_the_auc_bound_is_not_blessed_and_that_is_no_error(scored, tmp_path):
    result = _validation_result(scored, tmp_path, auc_lower_bound=0.99)
    assert not result.validation_ok and _failed_metrics(result) == [AUC]
    check_thresholds_were_evaluated(result, str(tmp_path))  # a real failure: ThresholdCheck reports blessed=0


def test_threshold_on_a_metric_never_computed_fails_loudly_naming_it(scored, tmp_path):
    """A threshold under a name no configured metric emits (``logloss``; TFMA calls it
    ``binary_crossentropy``): TFMA only declines to bless, with "Metric not found."."""

    def threshold_on_logloss(config):
        config.metrics_specs[0].thresholds["logloss"].value_threshold.upper_bound.value = 1.0

    result = _validation_result(scored, tmp_path, edit=threshold_on_logloss)
    assert not result.validation_ok and _failed_metrics(result) == ["logloss"]
    with pytest.raises(RuntimeError, match=r"never computed: logloss\b") as raised:
        check_thresholds_were_evaluated(result, str(tmp_path))
    assert str(tmp_path) in str(raised.value) and LOGLOSS in str(raised.value)


def test_an_eval_config_without_thresholds_fails_loudly(scored, tmp_path):
    def without_thresholds(config):
        for spec in config.metrics_specs:
            for metric in spec.metrics:
                metric.ClearField("per_slice_thresholds")

    result = _validation_result(scored, tmp_path, edit=without_thresholds)
    assert result.missing_thresholds and not result.validation_ok
    with pytest.raises(RuntimeError, match="no blessing threshold"):
        check_thresholds_were_evaluated(result, str(tmp_path))


@pytest.mark.parametrize("label, value", [(1, "nan"), (0, "inf")])
def test_a_nan_or_infinite_logloss_refuses_the_blessing_naming_the_metric(scored, tmp_path, label, value):
    """A prediction of exactly 1.0 (DIN's float32 sigmoid once gave it): TFMA's logloss is nan for
    a click (0 * log 0) and inf for a non-click, while AUC stays well above its bound."""
    saturated = scored.copy()
    saturated.loc[saturated.index[saturated[LABEL] == label][0], OUTPUT_KEY] = 1.0
    result = _validation_result(saturated, tmp_path, auc_lower_bound=0.5)
    assert not result.validation_ok and _failed_metrics(result) == [LOGLOSS]
    check_thresholds_were_evaluated(result, str(tmp_path))  # a refused model, not a config error
    assert non_finite_refusals(result) == [
        f"not blessed: {LOGLOSS} is {value}, not a finite number: {NON_FINITE_WHY}"
    ]


def test_finite_metrics_give_no_refusal(scored, tmp_path):
    result = _validation_result(scored, tmp_path, auc_lower_bound=0.99)
    assert not result.validation_ok and non_finite_refusals(result) == []  # below the AUC bound: no nan to report


def test_a_nan_gauc_refuses_the_blessing(scored, tmp_path):
    """gAUC is nan when no user of the split has both labels."""
    one_label_each = scored.assign(user_id=[f"u{label}" for label in scored[LABEL]])
    result = _validation_result(one_label_each, tmp_path, auc_lower_bound=0.5)
    assert not result.validation_ok and _failed_metrics(result) == ["gauc"]
    assert non_finite_refusals(result) == [f"not blessed: gauc is nan, not a finite number: {NON_FINITE_WHY}"]
