"""A development and test stand-in for TensorFlow Serving's gRPC model server.

``tensorflow_model_server`` cannot be installed on these machines. This module serves the pushed
SavedModels through TF Serving's own gRPC API (``tensorflow_serving.apis``) with TF Serving's
semantics: a client written against it works unchanged against the real server.

* ``PredictionService/Predict``, ``PredictionService/GetModelMetadata`` (``signature_def`` only)
  and ``ModelService/GetModelStatus``; the other methods answer UNIMPLEMENTED.
* Models live in ``<model_base>/<model_name>/<version>/saved_model.pb`` (version: an integer
  directory name). The newest loadable version of each model is served ("latest 1" policy).
* A background poller notices a newer version directory, loads it fully (replaying
  ``assets.extra/tf_serving_warmup_requests``), switches to it atomically and unloads the old
  version once the requests in flight on it have finished: no request fails during a swap.
  While a version loads, the served one answers requests one at a time, resting after each as
  long as it took (``versions.REQUESTS_DURING_LOAD``), so that many clients do not starve the load.
  A directory is loaded only after it stayed unchanged for one poll interval (so a model still
  being copied is not loaded half-written). A version that fails to load is logged, reported by
  GetModelStatus (state END with the error) and retried only when its files change; the previous
  version keeps serving. Versions only move forward: to roll back, push the old model again as a
  new version.
* The same poller gives freed heap memory back to the system every 10 s (``serving.heap``): glibc
  keeps what a large request freed, and the server's RSS would stay at its peak after abuse.

Status codes (as TF Serving):
  NOT_FOUND         unknown model, no loaded version, or a requested version that is not loaded
  INVALID_ARGUMENT  unknown signature, missing or extra input, wrong dtype, wrong rank or shape,
                    inputs with different batch sizes, undecodable TensorProto, malformed
                    serialized tf.Example (any error the model itself reports as invalid input),
                    unknown ``output_filter`` name, version labels, a batch larger than
                    ``max_batch_size`` (TF Serving's batcher also answers INVALID_ARGUMENT:
                    "Task size ... is larger than maximum input batch size"), ``serving_candidates``
                    with no candidate
  RESOURCE_EXHAUSTED a request message over ``max_message_mb`` (refused by gRPC itself, before
                    the request is read: "Received message larger than max (N vs. LIMIT)"); tensors
                    whose declared shapes would decode to more than that; a call beyond
                    ``max_pending`` calls in flight (gRPC: "Concurrent RPC limit exceeded!")
  other codes       errors raised by the model keep their TensorFlow code; unexpected server
                    errors are INTERNAL. The server keeps serving after every error.
A status message over 2 KB is cut, saying so (``servicers.MAX_DETAILS_BYTES``: gRPC clients refuse
longer status metadata). Bytes that do not parse as the call's request message are answered
INTERNAL ("Exception deserializing request!") by gRPC itself, as TF Serving's C++ gRPC does.

Request limits, checked before any input tensor is decoded (defaults: ``serving.cli_options``):
``max_message_mb`` is gRPC's receive limit (TF Serving's own is 2 GB) and also bounds the bytes the
request's TensorProtos declare, decoded (``request_tensors.check_declared_size``: one value may fill
a shape of any size); ``max_batch_size`` bounds the largest leading dimension they declare
(``request_tensors.check_row_count``), checked before the model is looked up, and then the
signature's batch dimension. ``max_pending`` bounds the calls in flight (load shedding).

This module is the server's lifecycle (``serve``, ``ServerHandle``) and ``run_serve``; its parts:
``serving.request_tensors`` (checking and decoding tensors), ``serving.servable`` (a loaded
version, ``predict``), ``serving.versions`` (the version manager), ``serving.servicers`` (the gRPC
services) and ``serving.cli_options`` (the command's options).
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import concurrent.futures
import logging
import signal
import sys
import threading
from typing import Optional

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving.cli_options import DEFAULT_MAX_MESSAGE_MB, DEFAULT_MAX_PENDING, MB
from serving.heap import HeapTrimmer
from serving.servicers import ModelServicer, PredictionServicer
from serving.versions import ModelManager

log = logging.getLogger(__name__)


class ServerHandle:
    """A running server: ``port`` (the bound one), ``manager``, ``stop()``, ``wait()``."""

    def __init__(self, server: grpc.Server, manager: ModelManager, port: int, poll_seconds: float):
        self.server = server
        self.manager = manager
        self.port = port
        self._stopped = threading.Event()
        self._poller = threading.Thread(
            target=self._poll_loop, args=(poll_seconds,), name="model-poller", daemon=True
        )
        self._poller.start()

    def _poll_loop(self, poll_seconds: float) -> None:
        trimmer = HeapTrimmer()  # freed request buffers go back to the system (serving.heap)
        while not self._stopped.wait(poll_seconds):
            try:
                self.manager.poll_once()
            except Exception:  # e.g. the model base vanished: keep serving what is loaded
                log.exception("model poll failed")
            trimmer.maybe_trim()

    def stop(self, grace: Optional[float] = 1.0) -> None:
        """Stops polling and the server; requests in flight get ``grace`` seconds to finish."""
        self._stopped.set()
        self.server.stop(grace).wait()
        self._poller.join()

    def wait(self) -> None:
        """Blocks until the server stops."""
        self.server.wait_for_termination()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(
    model_base: str,
    port: int,
    host: str = "127.0.0.1",
    poll_seconds: float = 1.0,
    max_batch_size: int = 1000,
    workers: int = 8,
    max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
    max_pending: int = DEFAULT_MAX_PENDING,
) -> ServerHandle:
    """Loads the newest version of every model under ``model_base`` and starts serving.

    Binds ``host`` (loopback by default); ``port=0`` picks a free port (see ``handle.port``).
    Requests over ``max_message_mb`` MB (sent, or declared by their shapes once decoded) or
    ``max_batch_size`` rows are refused unread; beyond ``max_pending`` calls in flight (answering
    or queued for one of the ``workers``) a call is refused at once (the defaults and their
    reasons are in ``serving.cli_options``).
    Returns once the server answers; ``handle.stop()`` stops it.
    """
    manager = ModelManager(model_base, max_batch_size)
    manager.poll_once(wait_until_stable=False)
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", max_message_mb * MB),  # larger: RESOURCE_EXHAUSTED
            ("grpc.max_send_message_length", -1),  # answers are scores: as small as their requests
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a shared port
        ],
        maximum_concurrent_rpcs=max_pending,  # beyond: RESOURCE_EXHAUSTED at once, not a longer queue
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(manager, max_message_mb * MB), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound_port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise OSError(f"cannot listen on {address}: {e}") from e
    if bound_port == 0:  # older grpcio reports a failed bind this way
        raise OSError(f"cannot listen on {address}")
    server.start()
    log.info("serving %s on %s:%d", sorted(manager.serving), host, bound_port)
    return ServerHandle(server, manager, bound_port, poll_seconds)


# ---- command line ---------------------------------------------------------------------------
def run_serve(args: argparse.Namespace) -> int:
    """Serves until interrupted (Ctrl-C or SIGTERM); returns the exit code."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s")  # a no-op under ctr-pipeline: its handlers are set
    logging.getLogger().setLevel(logging.INFO)  # the request log
    try:
        handle = serve(args.model_base, args.port, args.host, args.poll_seconds,
                       args.max_batch_size, args.workers, args.max_message_mb, args.max_pending)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        handle.wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        handle.stop()
    return 0
