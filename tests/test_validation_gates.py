"""The gates that stop a run: data anomalies before training, thresholds on missing metrics."""
import os

import pytest
import tensorflow_data_validation as tfdv
from tensorflow_model_analysis.proto import validation_result_pb2
from tfx.utils import writer_utils

from pipeline.components import anomaly_messages, check_thresholds_were_evaluated
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
    for e in examples:
        e["hist_click_item_id"] = ["x"] * (SPEC.max_length + 5)  # longer than the schema allows
        e["clicked"] = 7  # outside {0, 1}
    lines = anomaly_messages(_anomalies_dir(tmp_path, examples), ["eval"])
    text = "\n".join(lines)
    assert "'hist_click_item_id'" in text and "'clicked'" in text and "split eval" in text


def test_threshold_on_a_metric_never_computed_fails_loudly():
    check_thresholds_were_evaluated(validation_result_pb2.ValidationResult(validation_ok=False), "x")
    with pytest.raises(RuntimeError, match="never computed"):
        check_thresholds_were_evaluated(validation_result_pb2.ValidationResult(missing_thresholds=True), "x")
