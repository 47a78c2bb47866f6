"""Multi-worker training (``training.workers: N``): N processes training one model together under
``tf.distribute.MultiWorkerMirroredStrategy``, gradients all-reduced between them every step.

Each worker reads the same transformed examples; Keras shards them between the workers by
element (``make_dataset`` sets the DATA policy), and every worker shuffles with the same seed, so
the workers' shards are disjoint; a global batch is N x ``batch_size`` examples
(``tests/test_pipeline_e2e.py`` compares two workers at 64 with one process at 128). The chief (worker 0) exports the SavedModel and
writes ``training_stats.json``; the others save into a scratch directory (every worker must take
part in a save under this strategy) that is removed afterwards; so are their warm-start files.
Every worker restores the same warm-start base (``base_model``), so they start alike.

On a cluster the platform starts the workers and sets ``TF_CONFIG`` in each (Vertex AI's worker
pools, Kubeflow's TFJob); the Trainer then trains in place (``run_fn`` sees ``TF_CONFIG``).
Locally (``ctr-pipeline run``), ``train_on_local_workers`` starts N worker processes on loopback
ports, each with its own ``TF_CONFIG``, streams their output prefixed with ``[worker i]``, and
fails naming the worker when one fails (the others are stopped).

Usage in a worker: ``python -m models.multiworker <job.json>`` (written by the launcher).
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from typing import List

TF_CONFIG = "TF_CONFIG"
# the fn_args fields a worker gets; base_model (the warm-start base) is None without a blessed version
_FN_ARGS = ("train_files", "eval_files", "transform_output", "serving_model_dir", "model_run_dir", "custom_config", "base_model")


def example_dataset_factory():
    """A ``data_accessor`` reading tf.Example files as TFX's Trainer does (tfxio, the given schema)."""
    from tfx.components.util import tfxio_utils
    from tfx.proto import example_gen_pb2

    def factory(files, options, schema):
        return tfxio_utils.make_tfxio(
            file_pattern=files, telemetry_descriptors=["ctr-pipeline"],
            payload_format=example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE, schema=schema,
        ).TensorFlowDataset(options)

    return types.SimpleNamespace(tf_dataset_factory=factory)


def _free_ports(count: int) -> List[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def local_tf_configs(workers: int) -> List[dict]:
    """One ``TF_CONFIG`` per worker: a cluster of ``workers`` loopback addresses, worker 0 the chief."""
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(workers)]}
    return [{"cluster": cluster, "task": {"type": "worker", "index": index}} for index in range(workers)]


def _relay(stream, prefix: str) -> None:
    for line in iter(stream.readline, ""):
        sys.stdout.write(f"{prefix} {line}")
        sys.stdout.flush()


def train_on_local_workers(fn_args, workers: int) -> None:
    """Trains with ``workers`` local processes (the Trainer's ``fn_args``); returns when all are done."""
    scratch = tempfile.mkdtemp(prefix="ctr-workers-")
    job = os.path.join(scratch, "job.json")
    with open(job, "w", encoding="utf-8") as handle:
        json.dump({name: getattr(fn_args, name) for name in _FN_ARGS}, handle)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    processes = []
    try:
        for tf_config in local_tf_configs(workers):
            env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
            process = subprocess.Popen(
                [sys.executable, "-m", "models.multiworker", job], env=env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            prefix = f"[worker {tf_config['task']['index']}]"
            threading.Thread(target=_relay, args=(process.stdout, prefix), daemon=True).start()
            processes.append(process)
        _wait_for_all(processes)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        shutil.rmtree(scratch, ignore_errors=True)


def _wait_for_all(processes: List[subprocess.Popen], poll_seconds: float = 0.5) -> None:
    """Returns when every worker has succeeded; raises as soon as one fails (the others would
    wait for it in their next all-reduce)."""
    while True:
        codes = [process.poll() for process in processes]
        failed = [(index, code) for index, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            index, code = failed[0]
            raise RuntimeError(f"training worker {index} of {len(processes)} failed with exit code {code} (its output is above)")
        if all(code == 0 for code in codes):
            return
        time.sleep(poll_seconds)


def is_chief(tf_config: dict) -> bool:
    task = tf_config.get("task", {})
    return task.get("type") == "chief" or (task.get("type") == "worker" and task.get("index") == 0
                                           and "chief" not in tf_config.get("cluster", {}))


def train_as_worker(fn_args, strategy) -> None:
    """Trains as one worker of the cluster ``TF_CONFIG`` describes, under ``strategy`` (a
    MultiWorkerMirroredStrategy, made before any other TensorFlow op); non-chief workers write
    their export and logs to a scratch directory."""
    from models import trainer

    fields = {name: getattr(fn_args, name) for name in (*_FN_ARGS, "data_accessor")}
    scratch = None if is_chief(json.loads(os.environ[TF_CONFIG])) else tempfile.mkdtemp(prefix="ctr-worker-")
    if scratch:
        fields.update(serving_model_dir=os.path.join(scratch, "model"), model_run_dir=os.path.join(scratch, "logs"))
    try:
        trainer.train(types.SimpleNamespace(**fields), strategy)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def main(argv: List[str]) -> int:
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with open(argv[0], encoding="utf-8") as handle:
        fn_args = types.SimpleNamespace(**json.load(handle), data_accessor=example_dataset_factory())
    train_as_worker(fn_args, strategy)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
