"""``beam.runner: portable`` through the real pipeline on demo-size logs (400 users x 50 events):
every Beam step (SequenceExampleGen, StatisticsGen, Transform, the Evaluator, batch scoring) runs
on Beam's PortableRunner and SDK worker processes, and gives the DirectRunner's examples,
vocabularies and scores."""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from contract.config import parse_config
from ingest import synthetic
from pipeline.report import PipelineRun, collect
from contract.beam_runner import BEAM_WORKERS_LOG
from pipeline.runner import run_local
from serving import batch_model, batch_score

pytestmark = pytest.mark.slow

BEAM_STEPS = ["SequenceExampleGen", "StatisticsGen", "Transform", "Evaluator.dnn"]  # (no intervals: no SliceEvaluator)


def _config(root, data_dir, runner):
    return parse_config({
        "pipeline_name": "portable", "pipeline_root": os.path.join(root, runner), "serving_root": os.path.join(root, f"serving-{runner}"),
        "data": synthetic.data_config(data_dir),
        "sequences": {"max_length": 8}, "features": {"embedding_dim": 8, "gap_buckets": 8},
        "training": {"models": {"dnn": {"mlp_units": [32]}}, "batch_size": 256, "epochs": 1},
        "evaluation": {"auc_lower_bound": 0.5, "auc_max_drop": 0.5, "confidence_intervals": False},
        "beam": {"runner": runner},
    })


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("portable"))
    data_dir = os.path.join(root, "data")
    synthetic.generate(data_dir, **synthetic.preset_arguments("demo"))
    configs = {runner: _config(root, data_dir, runner) for runner in ("direct", "portable")}
    for config in configs.values():
        run_local(config)
    return data_dir, configs


def _outputs(config, node):
    return PipelineRun(config.metadata_path, config.pipeline_name).outputs(node)


def _examples_by_split(config):
    uri = _outputs(config, "SequenceExampleGen")["examples"].uri
    splits = {}
    for split_dir in sorted(glob.glob(os.path.join(uri, "Split-*"))):
        files = sorted(glob.glob(os.path.join(split_dir, "*")))
        records = tf.data.TFRecordDataset(files, compression_type="GZIP")
        # a deterministic serialization orders each example's feature map
        splits[os.path.basename(split_dir)] = sorted(
            tf.train.Example.FromString(r.numpy()).SerializeToString(deterministic=True) for r in records)
    return splits


def _vocabularies(config):
    assets = os.path.join(_outputs(config, "Transform")["transform_graph"].uri, "transform_fn", "assets")
    return {name: open(os.path.join(assets, name), "rb").read() for name in sorted(os.listdir(assets))}


def test_every_beam_step_ran_on_the_worker_pool(runs):
    _, configs = runs
    config = configs["portable"]
    run = PipelineRun(config.metadata_path, config.pipeline_name)
    assert {step: run.state(step) for step in BEAM_STEPS} == {step: "COMPLETE" for step in BEAM_STEPS}
    log = open(os.path.join(config.pipeline_root, BEAM_WORKERS_LOG), encoding="utf-8").read()
    assert log.count("Starting worker") >= len(BEAM_STEPS), "each Beam step starts an SDK worker of the pool"
    (row,) = collect(config, ["dnn"])["models"]
    assert row["blessed"] is True and row["pushed"], "the portable run's model was gated and pushed"


def test_portable_examples_equal_the_direct_runners(runs):
    _, configs = runs
    direct, portable = _examples_by_split(configs["direct"]), _examples_by_split(configs["portable"])
    assert set(direct) == {"Split-train", "Split-eval", "Split-test"}
    assert min(len(records) for records in direct.values()) > 1000
    assert portable == direct


def test_portable_vocabularies_equal_the_direct_runners(runs):
    _, configs = runs
    direct = _vocabularies(configs["direct"])
    assert len(direct) >= 4 and all(direct.values())
    assert _vocabularies(configs["portable"]) == direct


def test_portable_batch_scores_equal_the_direct_runners(runs, tmp_path):
    data_dir, configs = runs
    model = batch_model.resolve_model("dnn", configs["direct"].serving_root)
    scores = {}
    for runner, config in configs.items():
        output = tmp_path / runner
        batch_score.score(batch_score.ScoreJob(model=model, input_path=os.path.join(data_dir, "events.csv"),
                                               output_dir=str(output), config=config))
        rows = [json.loads(line) for path in glob.glob(str(output / "scores-*.jsonl")) for line in open(path, encoding="utf-8")]
        scores[runner] = {(r["user_id"], r["item_id"], r["timestamp"]): r["score"] for r in rows}
    events = sum(1 for _ in open(os.path.join(data_dir, "events.csv"), encoding="utf-8")) - 1  # the header
    assert len(scores["direct"]) == events > 400 * 40
    assert scores["portable"].keys() == scores["direct"].keys()
    keys = sorted(scores["direct"])
    np.testing.assert_allclose([scores["portable"][k] for k in keys], [scores["direct"][k] for k in keys], rtol=1e-6)
    assert (tmp_path / "portable" / BEAM_WORKERS_LOG).exists()
