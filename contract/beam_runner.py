"""The Beam runner a configuration asks for, ready to use.

``beam.runner: direct`` needs nothing running. ``beam.runner: portable`` runs every Beam step on
Beam's PortableRunner with its embedded job server, whose SDK harnesses are separate worker
processes started by Beam's own worker pool (``apache_beam.runners.worker.worker_pool_main``) on a
loopback port: the Fn API path that Flink, Spark and Dataflow use, so a step that cannot be
pickled, or reads something only the launching process has, fails here as it would there.

Beam 2.59's embedded job server runs one SDK worker per Beam job (its FnApiRunner is built with
one worker and ignores ``direct_num_workers``), so this path spreads no work over processes on one
machine; that takes a real job server (Flink or Spark), see the README's Scale section.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator, List

from contract.config import BeamConfig

POOL_START_SECONDS = 120
BEAM_WORKERS_LOG = "beam-workers.log"  # the pool's output, in the run's folder


@contextlib.contextmanager
def beam_pipeline_args(beam: BeamConfig, log_path: str) -> Iterator[List[str]]:
    """Yields the Beam pipeline options of ``beam``. For the portable runner, Beam's SDK worker
    pool runs (its output appended to ``log_path``) until the block ends."""
    if beam.runner != "portable":
        yield beam.pipeline_args()
        return
    with sdk_worker_pool(log_path, beam.worker_pool_port) as address:
        yield beam.pipeline_args(worker_pool=address)


@contextlib.contextmanager
def sdk_worker_pool(log_path: str, port: int = 0) -> Iterator[str]:
    """Runs Beam's SDK worker pool on loopback ``port`` (0: a free one); yields its ``localhost:port``.
    The pool starts each worker with the ``python`` first on PATH, so this interpreter's directory
    goes first."""
    port = _checked_free(port) if port else _free_port()
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "ab") as log:
        pool = subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            _wait_until_listening(pool, port, log_path)
            print(f"[beam] portable runner: SDK worker pool on localhost:{port}, its log in {log_path}", flush=True)
            yield f"localhost:{port}"
        finally:
            _stop(pool)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _checked_free(port: int) -> int:
    """``port``, if nothing listens on it (else the pool would fail to bind while the runner
    talked to whatever holds the port)."""
    with socket.socket() as probe:
        try:
            probe.bind(("localhost", port))
        except OSError as error:
            raise RuntimeError(f"beam.worker_pool_port {port} is in use ({error.strerror}): "
                               "choose another port, or 0 for any free one") from None
    return port


def _wait_until_listening(pool: subprocess.Popen, port: int, log_path: str) -> None:
    deadline = time.monotonic() + POOL_START_SECONDS
    while time.monotonic() < deadline:
        if pool.poll() is not None:
            raise RuntimeError(f"Beam's SDK worker pool exited with code {pool.returncode} before it listened on "
                               f"port {port}; its output is in {log_path}")
        with socket.socket() as probe:
            if probe.connect_ex(("localhost", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"Beam's SDK worker pool did not listen on port {port} within {POOL_START_SECONDS} s; "
                       f"its output is in {log_path}")


def _stop(pool: subprocess.Popen) -> None:
    """Stops the pool and the workers it started (they share its process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pool.pid, signal.SIGTERM)
    try:
        pool.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pool.pid, signal.SIGKILL)
        pool.wait()
