"""After a killed local run: its RUNNING executions are marked failed, their half-written outputs
abandoned and removed, and two runs cannot share a pipeline root (pipeline/killed_runs.py)."""
import multiprocessing
import os

import pytest
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2 as mlmd

from pipeline.killed_runs import KILLED_NOTE, RunInProgress, abandon_killed_executions, run_lock


def _store(path):
    config = mlmd.ConnectionConfig()
    config.sqlite.filename_uri = str(path)
    config.sqlite.connection_mode = mlmd.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return metadata_store.MetadataStore(config)


def _execution(store, root, node_id, state, output_state=None):
    """An execution of ``node_id`` (TFX's node context) writing ``<root>/<node_id>/model/<id>``; with
    ``output_state`` its output is also registered as an artifact in that state."""
    type_id = store.put_execution_type(mlmd.ExecutionType(name="Trainer"))
    context_type = store.put_context_type(mlmd.ContextType(name="node"))
    execution_id = store.put_executions([mlmd.Execution(type_id=type_id, last_known_state=state)])[0]
    (context_id,) = store.put_contexts([mlmd.Context(type_id=context_type, name=f"demo.{node_id}")])
    store.put_attributions_and_associations([], [mlmd.Association(context_id=context_id, execution_id=execution_id)])
    folder = root / node_id / "model" / str(execution_id)
    os.makedirs(folder)
    (folder / "saved_model.pb").write_bytes(b"half")
    if output_state is not None:
        artifact_type = store.put_artifact_type(mlmd.ArtifactType(name="Model"))
        artifact_id = store.put_artifacts([mlmd.Artifact(type_id=artifact_type, uri=str(folder), state=output_state)])[0]
        event = mlmd.Event.OUTPUT if output_state == mlmd.Artifact.LIVE else mlmd.Event.PENDING_OUTPUT
        store.put_events([mlmd.Event(artifact_id=artifact_id, execution_id=execution_id, type=event)])
    return execution_id, folder


def test_a_killed_runs_executions_are_failed_and_their_output_folders_removed(tmp_path):
    path = tmp_path / "metadata.sqlite"
    store = _store(path)
    done, done_folder = _execution(store, tmp_path, "Trainer.dnn", mlmd.Execution.COMPLETE, mlmd.Artifact.LIVE)
    killed, killed_folder = _execution(store, tmp_path, "Trainer.din", mlmd.Execution.RUNNING)
    pending, pending_folder = _execution(store, tmp_path, "Trainer.camn", mlmd.Execution.RUNNING, mlmd.Artifact.PENDING)
    del store

    lines = abandon_killed_executions(str(path), str(tmp_path))

    assert lines == [f"execution {killed} (Trainer) marked failed; removed {killed_folder}",
                     f"execution {pending} (Trainer) marked failed; removed {pending_folder}"]
    store = _store(path)
    by_id = {e.id: e for e in store.get_executions()}
    assert by_id[killed].last_known_state == by_id[pending].last_known_state == mlmd.Execution.FAILED
    assert "killed" in by_id[killed].custom_properties[KILLED_NOTE].string_value
    assert by_id[done].last_known_state == mlmd.Execution.COMPLETE
    states = {a.uri: a.state for a in store.get_artifacts()}
    assert states == {str(done_folder): mlmd.Artifact.LIVE, str(pending_folder): mlmd.Artifact.ABANDONED}
    assert not killed_folder.exists() and not pending_folder.exists()
    assert (done_folder / "saved_model.pb").exists()
    assert abandon_killed_executions(str(path), str(tmp_path)) == []  # nothing left to clean
    assert abandon_killed_executions(str(tmp_path / "none.sqlite"), str(tmp_path)) == []  # no metadata yet


def _hold_lock(root, ready, release):
    with run_lock(root):
        ready.set()
        release.wait(30)


def test_a_second_run_on_the_same_root_is_refused_and_a_killed_holder_frees_it(tmp_path):
    root = str(tmp_path / "root")
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(root, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(RunInProgress, match=f"another run is using the pipeline root {root} \\(pid {holder.pid}\\)"):
            with run_lock(root):
                pass
    finally:
        holder.kill()  # a killed run: the lock goes with its process
        holder.join()
    with run_lock(root):  # free again
        pass


@pytest.mark.slow
def test_a_run_killed_in_the_trainer_is_cleaned_up_by_the_next_run(tmp_path):
    """The real thing: `ctr-pipeline run` killed (SIGKILL) while its Trainer trains, then run again.

    Kept small, since each run's cost is mostly fixed (TensorFlow, Beam and tf.Transform set-up):
    logs without item and user tables (two vocabularies, not eight), a one-layer DNN; the second
    run reuses the first run's cached examples and Transform and trains one epoch."""
    import json
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from ingest import synthetic

    data_dir = str(tmp_path / "data")
    synthetic.generate(data_dir, num_users=50, num_items=100, events_per_user=20, seed=3)
    data = {**synthetic.data_config(data_dir), "items": None, "users": None, "item_attributes": [], "user_attributes": []}
    root = tmp_path / "pipeline"
    config = {
        "pipeline_name": "killed", "pipeline_root": str(root), "serving_root": str(tmp_path / "serving"),
        "data": data, "sequences": {"max_length": 8},
        "features": {"embedding_dim": 8, "gap_buckets": 8},
        # no early stop: the first run must still be training when it is killed
        "training": {"models": {"dnn": {"mlp_units": [32]}}, "batch_size": 64, "epochs": 30, "learning_rate": 0.005,
                     "early_stopping_patience": 30},
        "evaluation": {"auc_lower_bound": 0.5, "auc_max_drop": 0.5, "confidence_intervals": False},  # not what this tests
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "pipeline.cli", "run", "--config", str(path)]
    env = {**os.environ, "CTR_PIPELINE_LOG": str(tmp_path / "run.log")}
    first = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while not list(root.glob("Trainer.dnn/model_run/*/*")) and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert first.poll() is None, "the run ended before its Trainer was seen training"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    (half_written,) = [p for p in root.glob("Trainer.dnn/model/*")]  # the folders of the killed execution
    half_written_run = root / "Trainer.dnn" / "model_run" / half_written.name

    config["training"]["epochs"] = 1
    path.write_text(yaml.safe_dump(config))
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert second.returncode == 0, second.stderr
    notes = [line for line in second.stdout.splitlines() if line.startswith("note: a killed earlier run")]
    assert any("marked failed" in line and str(half_written) in line for line in notes), second.stdout
    assert not half_written.exists() and not half_written_run.exists()
    store = _store(root / "metadata.sqlite")
    failed = [e for e in store.get_executions() if e.last_known_state == mlmd.Execution.FAILED]
    assert failed and all("killed" in e.custom_properties[KILLED_NOTE].string_value for e in failed)
    assert not [e for e in store.get_executions() if e.last_known_state == mlmd.Execution.RUNNING]
    # the report of the finished run: a table row for dnn (the notes name Trainer.dnn too), evaluated
    assert any(line.split()[0] == "dnn" for line in second.stdout.splitlines() if line.strip()), second.stdout
    (row,) = json.loads((root / "report.json").read_text())["models"]
    assert row["model"] == "dnn" and row["auc"] is not None, row
    # without intervals the one Evaluator computes the slices too: no SliceEvaluator runs
    from contract.slices import SLICE_FEATURES
    assert {entry["feature"] for entry in row["slices"]} == set(SLICE_FEATURES) and not row["intervals"], row
    assert "SliceEvaluator.dnn" not in json.loads((root / "report.json").read_text())["stages"]
