"""The gRPC stand-in server (``serving.server``): one loaded model version (``Servable``) and
``predict``, a PredictRequest run on it as TF Serving runs it."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import Callable, Dict, Sequence

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_log_pb2

from contract import serving as contract
from serving.request_tensors import (
    ServingError,
    check_batch_size,
    check_has_candidates,
    check_input_names,
    checked_shape,
    decode_input,
    from_protos_function,
    grpc_code,
    requested_outputs,
    serialized_inputs,
    tensor_proto,
)


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
            call = self._from_protos.setdefault(signature_name, from_protos_function(self.signatures[signature_name]))
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
    check_input_names(where, specs, request.inputs)
    shapes = {name: checked_shape(where, name, specs[name], request.inputs[name]) for name in specs}
    batch = check_batch_size(where, specs, shapes, max_batch_size)
    if signature_name == contract.SERVING_CANDIDATES:
        check_has_candidates(where, specs, batch)
    output_names = requested_outputs(where, function, request.output_filter)
    try:
        try:
            outputs = servable.call_from_protos(signature_name, serialized_inputs(request, specs))
        except tf.errors.InvalidArgumentError:
            # decoded one by one, a bad input gets a message naming it; else the model's own error
            outputs = function(**{name: decode_input(where, name, specs[name], request.inputs[name], shapes[name]) for name in specs})
    except tf.errors.OpError as e:
        raise ServingError(grpc_code(e.error_code), f"{where}: {e.message}") from e
    except UnicodeDecodeError as e:  # TF's message quotes undecodable input bytes
        message = e.object.decode("utf-8", "replace")
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"{where}: {message}") from e
    response = predict_pb2.PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = signature_name
    for name in output_names:
        response.outputs[name].CopyFrom(tensor_proto(outputs[name].numpy()))
    return response
