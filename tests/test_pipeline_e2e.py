"""The real pipeline (LocalDagRunner, DirectRunner, ML Metadata in SQLite) on a tiny synthetic log."""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from pipeline import report
from contract.config import parse_config
from pipeline.runner import run_local
from ingest import synthetic

pytestmark = pytest.mark.slow


def _config(root, data_dir, auc_lower_bound):
    raw = {
        "pipeline_name": "e2e",
        "pipeline_root": os.path.join(root, "pipeline"),
        "serving_root": os.path.join(root, "serving"),
        "data": synthetic.data_config(data_dir),
        "sequences": {"max_length": 8},
        "features": {"embedding_dim": 8, "gap_buckets": 8},
        "training": {"models": {"dnn": {"mlp_units": [32]}}, "batch_size": 128, "epochs": 2, "learning_rate": 0.005},
        "evaluation": {"auc_lower_bound": auc_lower_bound, "auc_max_drop": 0.5},
    }
    return parse_config(raw)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("e2e"))
    data_dir = os.path.join(root, "data")
    synthetic.generate(data_dir, num_users=100, num_items=150, events_per_user=30, seed=3)
    config = _config(root, data_dir, auc_lower_bound=0.5)
    run_local(config)
    return root, data_dir, config, report.collect(config, ["dnn"])


def test_run_ends_with_a_blessed_pushed_model(first_run):
    _, _, config, summary = first_run
    (row,) = summary["models"]
    assert row["blessed"] is True and row["auc"] > 0.5
    assert 0.5 < row["gauc"] < 1 and row["logloss"] > 0
    assert row["pushed"].startswith(os.path.join(config.serving_root, "dnn") + os.sep)
    counts = summary["counts"]
    assert counts["balanced"] and counts["log_rows_in"] == counts["examples_total"] > 0
    assert summary["oracle_auc"] > row["auc"]


def test_pushed_model_serves_both_signatures_with_warmup_and_config(first_run):
    _, _, config, summary = first_run
    version_dir = summary["models"][0]["pushed"]
    assert os.path.basename(version_dir).isdigit()
    assert os.path.exists(os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests"))
    models_config = open(os.path.join(config.serving_root, "models.config")).read()
    assert 'name: "dnn"' in models_config
    loaded = tf.saved_model.load(version_dir)
    assert {"serving_default", "serving_raw", "transform_features"} <= set(loaded.signatures)
    examples_dir = glob.glob(os.path.join(config.pipeline_root, "SequenceExampleGen", "examples", "*", "Split-test"))[0]
    records = [r.numpy() for r in tf.data.TFRecordDataset(glob.glob(examples_dir + "/*"), compression_type="GZIP").take(16)]
    probs = loaded.signatures["serving_default"](examples=tf.constant(records))["probability"].numpy()
    assert probs.shape == (16,) and np.all((probs > 0) & (probs < 1))


def test_impossible_auc_bound_pushes_nothing(first_run):
    root, data_dir, _, _ = first_run
    config = _config(root, data_dir, auc_lower_bound=0.999)
    versions_before = sorted(os.listdir(os.path.join(config.serving_root, "dnn")))
    run_local(config)
    (row,) = report.collect(config, ["dnn"])["models"]
    assert row["blessed"] is False and row["pushed"] is None
    assert sorted(os.listdir(os.path.join(config.serving_root, "dnn"))) == versions_before


def test_generate_data_request_gets_ranked_scores_from_the_served_model(first_run, capsys):
    """The README's path: `ctr-pipeline serve` on the serving root, then `ctr-pipeline predict`
    with the request.json that generate-data wrote; every signature ranks the same scores."""
    from pipeline import cli
    from serving import server

    _, data_dir, config, _ = first_run
    request_path = os.path.join(data_dir, synthetic.REQUEST_FILE)
    with open(request_path, encoding="utf-8") as handle:
        candidates = sorted(c["item_id"] for c in json.load(handle)["candidates"])
    served = server.serve(config.serving_root, 0, poll_seconds=3600)
    rankings = {}
    try:
        for signature in ("serving_default", "serving_raw", "serving_candidates"):
            assert cli.main(["predict", "--server", f"127.0.0.1:{served.port}", "--model", "dnn",
                             "--input", request_path, "--signature", signature, "--json"]) == 0
            rankings[signature] = json.loads(capsys.readouterr().out)["ranking"]
    finally:
        served.stop()
    for ranking in rankings.values():
        scores = [row["score"] for row in ranking]
        assert sorted(row["item_id"] for row in ranking) == candidates
        assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
        by_item = {row["item_id"]: row["score"] for row in ranking}
        reference = {row["item_id"]: row["score"] for row in rankings["serving_default"]}
        assert by_item == pytest.approx(reference, abs=1e-5)
