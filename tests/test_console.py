"""Clean output: what TensorFlow, absl, Beam and TFX log, and Python warnings, go to the log file
(``ctr-pipeline.log`` in the config's pipeline_root), not to the terminal, unless ``--verbose``.

The console script runs in a fresh interpreter (``python -m pipeline.cli``), as a user runs it.
"""
import logging
import os
import subprocess
import sys

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from pipeline import cli, console

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE_NAME = "ctr-demo"  # configs/demo.yaml's

# validate-config, made to raise a Python warning and to log through the libraries' loggers first
_NOISY_VALIDATE_CONFIG = """
import logging, sys, warnings
from pipeline import cli

def noisy_validate_config(args):
    warnings.warn("a python warning", FutureWarning)
    logging.getLogger("tensorflow").warning("a tensorflow warning")
    logging.getLogger("absl").warning("an absl warning")
    logging.getLogger("apache_beam.io.tfrecordio").warning("a beam warning")
    logging.getLogger("serving.server").warning("the project's own warning")
    return cli.cmd_validate_config(args)

cli.COMMANDS["validate-config"] = cli.COMMANDS["validate-config"]._replace(run=noisy_validate_config)
sys.exit(cli.main(sys.argv[1:]))
"""
LIBRARY_TEXTS = ["FutureWarning: a python warning", "a tensorflow warning", "an absl warning", "a beam warning"]


def _config(tmp_path):
    """configs/demo.yaml with small synthetic logs in tmp_path/data and its run in tmp_path/run."""
    from ingest import synthetic

    small = synthetic.preset_arguments("demo", num_users=20, num_items=30, events_per_user=10)
    synthetic.generate(str(tmp_path / "data"), **small)
    with open(os.path.join(ROOT, "configs", "demo.yaml"), encoding="utf-8") as handle:
        text = handle.read().replace("pipeline_root: ../runs/demo", f"pipeline_root: {tmp_path / 'run'}")
    path = tmp_path / "config.yaml"
    path.write_text(text.replace("path: ../data/demo", f"path: {tmp_path / 'data'}"))
    return str(path)


def _ctr_pipeline(argv, args=("-m", "pipeline.cli")):
    env = {k: v for k, v in os.environ.items() if k not in (console.LOG_ENV, "TF_CPP_MIN_LOG_LEVEL")}  # conftest sets it
    env["PYTHONPATH"] = ROOT
    return subprocess.run([sys.executable, *args, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def _log_text(tmp_path):
    return (tmp_path / "run" / console.LOG_NAME).read_text()


def test_validate_config_prints_its_line_only(tmp_path):
    config = _config(tmp_path)
    done = _ctr_pipeline(["validate-config", "--config", config])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{config}: valid (6 models: dnn, din, fadidn, camn, dumn, tf4ctr)")
    assert done.stderr == ""


def test_library_warnings_go_to_the_log_file_and_own_records_to_the_console(tmp_path):
    config = _config(tmp_path)
    done = _ctr_pipeline(["validate-config", "--config", config], args=("-c", _NOISY_VALIDATE_CONFIG))
    assert done.returncode == 0, done.stderr
    assert f"{config}: valid" in done.stdout
    assert "the project's own warning" in done.stderr
    assert not [text for text in LIBRARY_TEXTS if text in done.stdout + done.stderr], done.stderr
    log = _log_text(tmp_path)
    assert all(text in log for text in LIBRARY_TEXTS + ["the project's own warning"]), log


def test_verbose_shows_library_warnings_on_stderr(tmp_path):
    config = _config(tmp_path)
    done = _ctr_pipeline(["--verbose", "validate-config", "--config", config], args=("-c", _NOISY_VALIDATE_CONFIG))
    assert done.returncode == 0, done.stderr
    assert all(text in done.stderr for text in LIBRARY_TEXTS), done.stderr
    assert all(text in _log_text(tmp_path) for text in LIBRARY_TEXTS)


def _store(tmp_path):
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = str(tmp_path / "run" / "metadata.sqlite")
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    os.makedirs(tmp_path / "run", exist_ok=True)
    return metadata_store.MetadataStore(connection)


def _context(store, type_name, name):
    context_type = metadata_store_pb2.ContextType(name=type_name)
    context = metadata_store_pb2.Context(type_id=store.put_context_type(context_type), name=name)
    context.id = store.put_contexts([context])[0]
    return context


def _run_with_an_evaluation(tmp_path):
    """ML Metadata of a run whose one execution, Evaluator.dnn, wrote an evaluation with no
    metrics (reading it is what makes TensorFlow warn that tf_record_iterator is deprecated)."""
    store = _store(tmp_path)
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    (evaluation / "metrics-00000-of-00001.tfrecord").write_bytes(b"")
    artifact = metadata_store_pb2.Artifact(
        type_id=store.put_artifact_type(metadata_store_pb2.ArtifactType(name="ModelEvaluation")), uri=str(evaluation))
    event = metadata_store_pb2.Event(type=metadata_store_pb2.Event.OUTPUT)
    event.path.steps.add().key = "evaluation"
    execution = metadata_store_pb2.Execution(
        type_id=store.put_execution_type(metadata_store_pb2.ExecutionType(name="Evaluator")),
        last_known_state=metadata_store_pb2.Execution.COMPLETE)
    contexts = [_context(store, "pipeline_run", "run-1"), _context(store, "node", f"{PIPELINE_NAME}.Evaluator.dnn")]
    store.put_execution(execution, [(artifact, event)], contexts)


def test_report_prints_the_table_and_tensorflows_warning_goes_to_the_log_file(tmp_path):
    config = _config(tmp_path)
    _run_with_an_evaluation(tmp_path)
    warning = "tf_record_iterator (from tensorflow.python.lib.io.tf_record) is deprecated"
    done = _ctr_pipeline(["report", "--config", config, "--models", "dnn"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("run run-1 — metrics on the test split") and "\ndnn " in done.stdout
    assert done.stderr == ""
    assert warning in _log_text(tmp_path)
    done = _ctr_pipeline(["report", "--config", config, "--models", "dnn", "--verbose"])
    assert done.returncode == 0 and done.stdout.startswith("run run-1"), done.stderr
    assert warning in done.stderr


def test_an_unexpected_failure_says_where_its_traceback_is(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(console.LOG_ENV, raising=False)
    _store(tmp_path)  # no run in it
    log = tmp_path / "run" / console.LOG_NAME
    assert cli.main(["report", "--config", _config(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: RuntimeError: ML Metadata at {tmp_path / 'run' / 'metadata.sqlite'} records no pipeline run (traceback in {log})\n"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in cmd_report" in text and "RuntimeError: ML Metadata" in text


def test_routing_is_undone_after_the_command(tmp_path):
    root = logging.getLogger()
    handlers = list(root.handlers)
    with console.routed(str(tmp_path / console.LOG_NAME), verbose=False):
        assert len(root.handlers) == len(handlers) + 2
    assert root.handlers == handlers


def test_log_file_is_the_env_var_else_in_a_local_pipeline_root_else_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(console.LOG_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert console.log_file(str(tmp_path / "run")) == str(tmp_path / "run" / console.LOG_NAME)
    cached = str(tmp_path / "home" / ".cache" / "ctr-pipeline" / console.LOG_NAME)
    assert console.log_file("gs://bucket/run") == cached and console.log_file(None) == cached
    assert os.path.isdir(tmp_path / "run") and os.path.isdir(os.path.dirname(cached))
    monkeypatch.setenv(console.LOG_ENV, str(tmp_path / "elsewhere" / "my.log"))
    assert console.log_file(str(tmp_path / "run")) == str(tmp_path / "elsewhere" / "my.log")
