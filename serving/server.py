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
  A directory is loaded only after it stayed unchanged for one poll interval (so a model still
  being copied is not loaded half-written). A version that fails to load is logged, reported by
  GetModelStatus (state END with the error) and retried only when its files change; the previous
  version keeps serving. Versions only move forward: to roll back, push the old model again as a
  new version.

Status codes (as TF Serving):
  NOT_FOUND         unknown model, no loaded version, or a requested version that is not loaded
  INVALID_ARGUMENT  unknown signature, missing or extra input, wrong dtype, wrong rank or shape,
                    inputs with different batch sizes, undecodable TensorProto, malformed
                    serialized tf.Example (any error the model itself reports as invalid input),
                    unknown ``output_filter`` name, version labels, a batch larger than
                    ``max_batch_size`` (TF Serving's batcher also answers INVALID_ARGUMENT:
                    "Task size ... is larger than maximum input batch size")
  other codes       errors raised by the model keep their TensorFlow code; unexpected server
                    errors are INTERNAL. The server keeps serving after every error.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import signal
import sys
import threading
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import grpc
import tensorflow as tf
from google.protobuf import any_pb2
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from contract import serving as contract

log = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State
UNKNOWN_ERROR = 2  # tensorflow.error.Code.UNKNOWN

# Response tensors use the typed value fields, as TF Serving does by default (AsProtoField).
_PROTO_FIELDS = {
    tf.float32: "float_val",
    tf.float64: "double_val",
    tf.int32: "int_val",
    tf.int64: "int64_val",
    tf.bool: "bool_val",
}


class ServingError(Exception):
    """A request the server refuses; ``code`` is the gRPC status it answers with."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ---- one loaded model version ---------------------------------------------------------------
def read_signature_defs(saved_model_dir: str) -> get_model_metadata_pb2.SignatureDefMap:
    """The signature defs of a SavedModel's "serve" meta graph (``contract.serving``), as the
    ``SignatureDefMap`` GetModelMetadata answers."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature_def in contract.read_signature_defs(saved_model_dir).items():
        signature_map.signature_def[name].CopyFrom(signature_def)
    return signature_map


class Servable:
    """One loaded version of a model, with the count of requests running on it."""

    def __init__(self, name: str, version: int, path: str):
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = read_signature_defs(path)
        self._model = tf.saved_model.load(path, tags=[contract.SERVE_TAG])  # owns the signatures' variables
        self.signatures = dict(self._model.signatures)
        self._from_protos: Dict[str, Callable] = {}  # signature -> its call on serialized TensorProtos
        self.in_flight = 0
        self.retired = False
        self.warmup_count = 0

    def __repr__(self) -> str:
        return f"model '{self.name}' version {self.version}"

    def unload(self) -> None:
        """Drops the model (TensorFlow frees it once nothing refers to it)."""
        self.signatures, self._from_protos, self._model = {}, {}, None

    def call_from_protos(self, signature_name: str, protos: Sequence[bytes]):
        """Runs a signature on its inputs given as serialized TensorProtos (in sorted input-name
        order): decoding and the call are one graph, as TF Serving decodes requests in C++
        (decoding each input in Python cost about 0.1 ms per input)."""
        call = self._from_protos.get(signature_name)
        if call is None:
            call = self._from_protos.setdefault(signature_name, _from_protos_function(self.signatures[signature_name]))
        return call(tf.constant(protos, dtype=tf.string))

    def warm_up(self, max_batch_size: int) -> None:
        """Replays the version's warmup requests (TF Serving fails the load if one fails)."""
        path = os.path.join(self.path, contract.WARMUP_FILE)
        if not os.path.exists(path):
            return
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            if self.warmup_count == contract.MAX_WARMUP_RECORDS:
                raise ValueError(f"{path}: more than {contract.MAX_WARMUP_RECORDS} warmup records")
            prediction_log = prediction_log_pb2.PredictionLog.FromString(record)
            if prediction_log.WhichOneof("log_type") != "predict_log":
                raise ValueError(f"{path}: only predict_log warmup records are supported")
            try:
                predict(self, prediction_log.predict_log.request, max_batch_size)
            except ServingError as e:
                raise ValueError(f"warmup request {self.warmup_count} failed: {e.message}") from e
            self.warmup_count += 1


# ---- Predict --------------------------------------------------------------------------------
def predict(
    servable: Servable, request: predict_pb2.PredictRequest, max_batch_size: int
) -> predict_pb2.PredictResponse:
    """Runs a PredictRequest on a loaded version, as TF Serving does; raises ServingError."""
    signature_name = request.model_spec.signature_name or contract.SERVING_DEFAULT
    where = f"{servable}, signature '{signature_name}'"
    function = servable.signatures.get(signature_name)
    if function is None:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{servable}: signature '{signature_name}' not found; "
            f"available: {sorted(servable.signatures)}",
        )
    specs: Dict[str, tf.TensorSpec] = function.structured_input_signature[1]
    _check_input_names(where, specs, request.inputs)
    shapes = {name: _checked_shape(where, name, specs[name], request.inputs[name]) for name in specs}
    _check_batch_size(where, specs, shapes, max_batch_size)
    output_names = _output_names(where, function, request.output_filter)
    try:
        try:
            outputs = servable.call_from_protos(signature_name, serialized_inputs(request, specs))
        except tf.errors.InvalidArgumentError:
            # decoded one by one, a bad input gets a message naming it; else the model's own error
            outputs = function(**{name: _decode_input(where, name, specs[name], request.inputs[name], shapes[name]) for name in specs})
    except tf.errors.OpError as e:
        raise ServingError(_grpc_code(e.error_code), f"{where}: {e.message}") from e
    except UnicodeDecodeError as e:  # TF's message quotes undecodable input bytes
        message = e.object.decode("utf-8", "replace")
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"{where}: {message}") from e
    response = predict_pb2.PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = signature_name
    for name in output_names:
        response.outputs[name].CopyFrom(_tensor_proto(outputs[name].numpy()))
    return response


def _check_input_names(where: str, specs: Dict[str, tf.TensorSpec], given) -> None:
    missing = sorted(set(specs) - set(given))
    extra = sorted(set(given) - set(specs))
    if missing or extra:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{where}: inputs do not match the signature; missing: {missing}, unexpected: {extra}",
        )


def serialized_inputs(request: predict_pb2.PredictRequest, specs: Dict[str, tf.TensorSpec]) -> List[bytes]:
    """A request's input TensorProtos, serialized, in the order ``Servable.call_from_protos`` takes."""
    return [request.inputs[name].SerializeToString() for name in sorted(specs)]


def _from_protos_function(function) -> Callable:
    """``function`` called on its inputs as a [K] tensor of serialized TensorProtos."""
    specs: Dict[str, tf.TensorSpec] = function.structured_input_signature[1]
    names = sorted(specs)

    @tf.function(input_signature=[tf.TensorSpec([len(names)], tf.string)])
    def call(protos):
        return function(**{
            name: tf.ensure_shape(tf.io.parse_tensor(protos[i], specs[name].dtype), specs[name].shape)
            for i, name in enumerate(names)
        })

    return call


def _invalid_input(where: str, name: str, problem: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"{where}: input '{name}' {problem}")


def _checked_shape(where: str, name: str, spec: tf.TensorSpec, proto) -> List[int]:
    """The input's dims, after checking its dtype, shape and (where countable) its value count."""
    if proto.dtype != spec.dtype.as_datatype_enum:
        raise _invalid_input(where, name, f"expects dtype {spec.dtype.name}, got {_dtype_name(proto.dtype)}")
    dims = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_shape.unknown_rank or any(d < 0 for d in dims):
        raise _invalid_input(where, name, "needs a fully defined shape (no unknown rank or negative dimension)")
    if not spec.shape.is_compatible_with(dims):
        raise _invalid_input(where, name, f"expects shape {spec.shape} (rank {spec.shape.rank}), got {dims}")
    field = "string_val" if spec.dtype == tf.string else _PROTO_FIELDS.get(spec.dtype)
    count = len(getattr(proto, field)) if field and not proto.tensor_content else None
    if count is not None and count > math.prod(dims):
        raise _invalid_input(where, name, f"is not a valid TensorProto of shape {dims}: it holds {count} values")
    return dims


def _decode_input(where: str, name: str, spec: tf.TensorSpec, proto, dims: List[int]) -> tf.Tensor:
    try:
        return tf.constant(tf.make_ndarray(proto), dtype=spec.dtype)
    except (ValueError, TypeError) as e:
        raise _invalid_input(where, name, f"is not a valid TensorProto of shape {dims}: {e}") from e


def _dtype_name(enum: int) -> str:
    try:
        return tf.dtypes.as_dtype(enum).name
    except TypeError:
        return f"unknown dtype {enum}"


def _check_batch_size(where: str, specs: Dict[str, tf.TensorSpec], shapes: Dict[str, List[int]], max_batch_size: int) -> None:
    """The batch dimension is the leading dimension a signature leaves unknown; inputs with a
    fixed leading dimension (``serving_candidates``' one user, [1]) are checked by their shape."""
    sizes = {name: dims[0] for name, dims in shapes.items() if dims and specs[name].shape[0] is None}
    if len(set(sizes.values())) > 1:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT, f"{where}: inputs have different batch sizes {sizes}"
        )
    batch = max(sizes.values(), default=0)
    if batch > max_batch_size:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{where}: batch size {batch} is larger than the maximum batch size {max_batch_size}",
        )


def _output_names(where: str, function, output_filter) -> List[str]:
    names = sorted(function.structured_outputs)
    unknown = sorted(set(output_filter) - set(names))
    if unknown:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{where}: output_filter names {unknown} are not outputs; outputs: {names}",
        )
    return sorted(set(output_filter)) if output_filter else names


def _tensor_proto(array) -> tensor_pb2.TensorProto:
    dtype = tf.dtypes.as_dtype(array.dtype)
    field = _PROTO_FIELDS.get(dtype)
    if field is None:
        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(
        dtype=dtype.as_datatype_enum, tensor_shape=tf.TensorShape(array.shape).as_proto()
    )
    getattr(proto, field).extend(array.ravel().tolist())
    return proto


def _grpc_code(tf_code: int) -> grpc.StatusCode:
    """TensorFlow error codes and gRPC status codes share their numbers."""
    return next((c for c in grpc.StatusCode if c.value[0] == tf_code), grpc.StatusCode.UNKNOWN)


# ---- the model manager ----------------------------------------------------------------------
@dataclasses.dataclass
class VersionStatus:
    state: int
    error_code: int = 0  # tensorflow.error.Code; 0 = OK
    error_message: str = ""


class ModelManager:
    """Which versions are loaded, served and known, with the poller's loading logic.

    ``serving[name]`` is the version answering requests; a version leaves it atomically (under
    ``_lock``) when a newer one is ready, and is unloaded when its last request finishes.
    """

    def __init__(self, model_base: str, max_batch_size: int = 1000):
        if not os.path.isdir(model_base):
            raise FileNotFoundError(f"model base directory {model_base!r} does not exist")
        self.model_base = model_base
        self.max_batch_size = max_batch_size
        self.serving: Dict[str, Servable] = {}
        self.status: Dict[str, Dict[int, VersionStatus]] = {}
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._fingerprints: Dict[Tuple[str, int], tuple] = {}  # as seen at the previous poll
        self._failed: Dict[Tuple[str, int], tuple] = {}  # fingerprint of a version that failed

    # -- requests --
    @contextlib.contextmanager
    def acquire(self, name: str, version: Optional[int] = None) -> Iterator[Servable]:
        """The servable answering a request; it stays loaded until the block exits."""
        with self._lock:
            servable = self.serving.get(name)
            if servable is None or (version is not None and servable.version != version):
                wanted = f"version {version}" if version is not None else "latest version"
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND, f"servable not found: model '{name}', {wanted}"
                )
            servable.in_flight += 1
        try:
            yield servable
        finally:
            with self._lock:
                servable.in_flight -= 1
                if servable.retired and servable.in_flight == 0:
                    self._unload(servable)

    def version_statuses(
        self, name: str, version: Optional[int] = None
    ) -> List[get_model_status_pb2.ModelVersionStatus]:
        with self._lock:
            known = dict(self.status.get(name, {}))
        if version is not None:
            known = {v: s for v, s in known.items() if v == version}
        if not known:
            wanted = f"version {version}" if version is not None else "any version"
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"no status known for model '{name}', {wanted}"
            )
        statuses = []
        for v, s in sorted(known.items()):
            proto = get_model_status_pb2.ModelVersionStatus(version=v, state=s.state)
            proto.status.error_code = s.error_code
            proto.status.error_message = s.error_message
            statuses.append(proto)
        return statuses

    # -- loading --
    def poll_once(self, wait_until_stable: bool = True) -> None:
        """Loads the newest loadable version of every model newer than the one served.

        With ``wait_until_stable`` a version directory is only loaded once its files are
        unchanged since the previous poll.
        """
        with self._poll_lock:
            for name in sorted(os.listdir(self.model_base)):
                model_dir = os.path.join(self.model_base, name)
                if not name.startswith(".") and os.path.isdir(model_dir):
                    self._poll_model(name, model_dir, wait_until_stable)

    def _poll_model(self, name: str, model_dir: str, wait_until_stable: bool) -> None:
        served = self.serving.get(name)
        newer = [v for v in contract.version_dirs(model_dir) if served is None or v > served.version]
        for version in sorted(newer, reverse=True):
            path = os.path.join(model_dir, str(version))
            key = (name, version)
            fingerprint = _fingerprint(path)
            changed = self._fingerprints.get(key) != fingerprint
            self._fingerprints[key] = fingerprint
            if (wait_until_stable and changed) or self._failed.get(key) == fingerprint:
                continue
            if self._load(name, version, path, fingerprint):
                return

    def _load(self, name: str, version: int, path: str, fingerprint: tuple) -> bool:
        key = (name, version)
        self._set_status(name, version, VersionStatus(State.LOADING))
        try:
            servable = Servable(name, version, path)
            servable.warm_up(self.max_batch_size)
        except Exception as e:  # a load must never take the server down
            log.error("model '%s' version %d failed to load from %s: %s", name, version, path, e)
            code = e.error_code if isinstance(e, tf.errors.OpError) else UNKNOWN_ERROR
            self._set_status(name, version, VersionStatus(State.END, code, str(e)))
            self._failed[key] = fingerprint
            return False
        self._failed.pop(key, None)
        self._swap_in(servable)
        log.info("serving %s (%d warmup requests replayed)", servable, servable.warmup_count)
        return True

    def _swap_in(self, servable: Servable) -> None:
        with self._lock:
            old = self.serving.get(servable.name)
            self.serving[servable.name] = servable
            self.status.setdefault(servable.name, {})[servable.version] = VersionStatus(
                State.AVAILABLE
            )
            if old is not None:
                old.retired = True
                self.status[old.name][old.version] = VersionStatus(State.UNLOADING)
                if old.in_flight == 0:
                    self._unload(old)

    def _unload(self, servable: Servable) -> None:
        """Drops the last reference to a retired version (called under ``_lock``)."""
        servable.unload()
        self.status[servable.name][servable.version] = VersionStatus(State.END)
        log.info("unloaded %s", servable)

    def _set_status(self, name: str, version: int, status: VersionStatus) -> None:
        with self._lock:
            self.status.setdefault(name, {})[version] = status


def _fingerprint(path: str) -> tuple:
    """(relative path, size, mtime) of every file below ``path``: changes while it is written."""
    files = []
    for root, _, names in os.walk(path):
        for file_name in names:
            full = os.path.join(root, file_name)
            with contextlib.suppress(FileNotFoundError):
                stat = os.stat(full)
                files.append((os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(files))


# ---- gRPC services --------------------------------------------------------------------------
def _answer(context: grpc.ServicerContext, call):
    """Runs ``call``; a ServingError or any unexpected error becomes a gRPC status."""
    try:
        return call()
    except ServingError as e:
        context.abort(e.code, e.message)
    except Exception as e:  # never let a request take the server down
        log.exception("unexpected error while answering a request")
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")


def _requested_version(model_spec) -> Optional[int]:
    if model_spec.WhichOneof("version_choice") == "version_label":
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"version label '{model_spec.version_label}' given but no labels are configured",
        )
    return model_spec.version.value if model_spec.HasField("version") else None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def Predict(self, request, context):
        def call():
            spec = request.model_spec
            with self.manager.acquire(spec.name, _requested_version(spec)) as servable:
                return predict(servable, request, self.manager.max_batch_size)

        return _answer(context, call)

    def GetModelMetadata(self, request, context):
        def call():
            fields = list(request.metadata_field)
            if fields != ["signature_def"]:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"metadata_field must be ['signature_def'] (the only one supported), "
                    f"got {fields}",
                )
            spec = request.model_spec
            with self.manager.acquire(spec.name, _requested_version(spec)) as servable:
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.name = servable.name
                response.model_spec.version.value = servable.version
                packed = any_pb2.Any()
                packed.Pack(servable.signature_defs)
                response.metadata["signature_def"].CopyFrom(packed)
                return response

        return _answer(context, call)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def GetModelStatus(self, request, context):
        def call():
            spec = request.model_spec
            statuses = self.manager.version_statuses(spec.name, _requested_version(spec))
            return get_model_status_pb2.GetModelStatusResponse(model_version_status=statuses)

        return _answer(context, call)


# ---- server lifecycle -----------------------------------------------------------------------
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
        while not self._stopped.wait(poll_seconds):
            try:
                self.manager.poll_once()
            except Exception:  # e.g. the model base vanished: keep serving what is loaded
                log.exception("model poll failed")

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
) -> ServerHandle:
    """Loads the newest version of every model under ``model_base`` and starts serving.

    Binds ``host`` (loopback by default); ``port=0`` picks a free port (see ``handle.port``).
    Returns once the server answers; ``handle.stop()`` stops it.
    """
    manager = ModelManager(model_base, max_batch_size)
    manager.poll_once(wait_until_stable=False)
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", -1),  # TF Serving accepts any message size
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a shared port
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(manager), server
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        handle = serve(args.model_base, args.port, args.host, args.poll_seconds,
                       args.max_batch_size, args.workers)
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
