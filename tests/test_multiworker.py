"""Local multi-worker training (models.multiworker): the cluster each worker is told about, who
exports, and a failing worker named at once. Training itself: tests/test_pipeline_e2e.py."""
import types

import pytest

from models import multiworker


def test_local_workers_share_one_loopback_cluster_with_worker_0_the_chief():
    configs = multiworker.local_tf_configs(3)
    cluster = configs[0]["cluster"]["worker"]
    assert len(set(cluster)) == 3 and all(address.startswith("localhost:") for address in cluster)
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]
    assert all(c["cluster"] == configs[0]["cluster"] for c in configs)
    assert [multiworker.is_chief(c) for c in configs] == [True, False, False]


def test_vertex_ais_chief_is_the_chief_and_its_workers_are_not():
    cluster = {"chief": ["host0:2222"], "worker": ["host1:2222", "host2:2222"]}
    assert multiworker.is_chief({"cluster": cluster, "task": {"type": "chief", "index": 0}})
    assert not multiworker.is_chief({"cluster": cluster, "task": {"type": "worker", "index": 0}})


def test_a_failing_worker_fails_the_training_with_its_name(tmp_path, capsys):
    fn_args = types.SimpleNamespace(
        train_files=[], eval_files=[], transform_output=str(tmp_path / "missing"), serving_model_dir=str(tmp_path / "model"),
        model_run_dir=str(tmp_path / "logs"), custom_config={"model_name": "dnn"},  # not valid TrainerArgs
        base_model=None,
    )
    with pytest.raises(RuntimeError, match=r"training worker [01] of 2 failed with exit code 1"):
        multiworker.train_on_local_workers(fn_args, 2)
    output = capsys.readouterr().out
    assert "[worker 0]" in output and "validation error" in output.lower()
    assert not (tmp_path / "model").exists()
