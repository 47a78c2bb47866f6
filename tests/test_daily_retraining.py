"""Daily retraining through the real pipeline: day 2's run ingests only day 2 (histories carried
from day 1's state), warm-starts from day 1's blessed model and is gated against it."""
import os
import shutil

import pytest
import tensorflow as tf

from contract.config import parse_config
from ingest import synthetic
from pipeline import report
from pipeline.runner import run_local

pytestmark = pytest.mark.slow


def _rows(folder):
    with open(os.path.join(folder, "events.csv"), encoding="utf-8") as handle:
        return sum(1 for _ in handle) - 1


@pytest.fixture(scope="module")
def two_days(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("daily"))
    source, data = os.path.join(root, "source"), os.path.join(root, "data")
    synthetic.generate(source, num_users=120, num_items=150, events_per_user=30, days=2, seed=5, static_samples=1, dated_folders=True)
    days = sorted(os.listdir(os.path.join(source, "events")))
    os.makedirs(os.path.join(data, "events"))
    for table in ("items.csv", "users.csv"):
        shutil.copy(os.path.join(source, table), data)
    config = parse_config({
        "pipeline_name": "daily", "pipeline_root": os.path.join(root, "pipeline"), "serving_root": os.path.join(root, "serving"),
        "data": synthetic.data_config(data, dated_folders=True),
        "sequences": {"max_length": 8},
        "features": {"embedding_dim": 8, "gap_buckets": 8},
        "training": {"models": {"dnn": {"mlp_units": [32]}}, "batch_size": 128, "epochs": 2, "warm_start": True},
        "evaluation": {"auc_lower_bound": 0.0, "auc_max_drop": 1.0, "confidence_intervals": False},
    })
    reports = []
    for day in days:  # delivered one day at a time, a run after each
        shutil.copytree(os.path.join(source, "events", day), os.path.join(data, "events", day))
        run_local(config)
        reports.append(report.collect(config, ["dnn"]))
    return source, days, config, reports


def test_each_run_ingests_only_its_new_day(two_days):
    source, days, _, reports = two_days
    assert len(days) == 2
    for day, summary in zip(days, reports):
        assert summary["counts"]["log_rows_in"] == _rows(os.path.join(source, "events", day))
        assert summary["counts"]["balanced"]
    day_2 = (tf.io.gfile.glob(os.path.join(reports[1]["examples_uri"], "Split-train", "*")))
    assert day_2
    assert reports[0]["spans"]["last"] + 1 == reports[1]["spans"]["first"] == reports[1]["spans"]["last"]


def test_day_two_warm_starts_from_day_one_and_is_gated_against_it(two_days):
    _, _, _, reports = two_days
    (first,), (second,) = reports[0]["models"], reports[1]["models"]
    assert first["warm_start"] is None and first["baseline_auc"] is None  # nothing blessed before day 1
    assert first["blessed"] is True
    summary = second["warm_start"]
    assert summary is not None and summary["copied"]
    item_table = [t for t in summary["embedding_tables"].values() if t["field"] == "item_id"]
    assert item_table and 0 < item_table[0]["tokens_matched"] <= item_table[0]["vocabulary_size"]
    # TFMA scored day 1's blessed model on day 2's test split beside the new one
    assert second["baseline_auc"] is not None and second["baseline_auc"] != second["auc"]
