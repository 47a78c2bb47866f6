"""The gRPC stand-in server (``serving.server``): checking and decoding a PredictRequest's input
TensorProtos against a signature, encoding the response's tensors, and ``ServingError``, the
refusal (with its gRPC status) every check raises."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import math
from typing import Callable, Dict, List

import grpc
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import predict_pb2

from serving.cli_options import MB

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


def check_row_count(request: predict_pb2.PredictRequest, max_batch_size: int) -> None:
    """Refuses a request of more than ``max_batch_size`` rows (examples, raw rows or candidates) before
    anything else: its rows are the largest leading dimension its TensorProtos declare, read
    from their ``tensor_shape`` alone (decoding allocates what the shape declares, whatever
    values the proto holds). Shapes a signature refuses are left to ``checked_shape``."""
    rows = {name: proto.tensor_shape.dim[0].size for name, proto in request.inputs.items() if proto.tensor_shape.dim}
    name = max(sorted(rows), key=rows.get, default=None)
    if name is not None and rows[name] > max_batch_size:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"model '{request.model_spec.name}': the request has {rows[name]} rows (input '{name}'), "
            f"more than the maximum batch size {max_batch_size} (ctr-pipeline serve --max-batch-size)",
        )


# bytes one decoded element takes (a string: at least its pointer); the declared-size check below
_DECODED_BYTES = {tf.string.as_datatype_enum: 8}


def check_declared_size(request: predict_pb2.PredictRequest, max_decoded_bytes: int) -> None:
    """Refuses a request whose TensorProtos declare more than ``max_decoded_bytes`` in all, before
    decoding: a TensorProto with one value and a shape of 10^8 elements is legal (the value fills
    the shape), and decoding allocates the whole shape, so the message limit alone does not bound
    what a request costs. Its default is the message limit: a request may not decode to more than
    it could have sent written out."""
    declared = {}
    for name, proto in request.inputs.items():
        elements = math.prod(max(d.size, 0) for d in proto.tensor_shape.dim)
        try:
            size = _DECODED_BYTES.get(proto.dtype) or tf.dtypes.as_dtype(proto.dtype).size
        except TypeError:  # an unknown dtype: checked_shape names it
            size = 1
        declared[name] = elements * size
    total = sum(declared.values())
    if total > max_decoded_bytes:
        name = max(sorted(declared), key=declared.get)
        dims = [d.size for d in request.inputs[name].tensor_shape.dim]
        raise ServingError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"model '{request.model_spec.name}': the request's tensors declare {total / MB:.1f} MB "
            f"decoded (input '{name}' has shape {dims}), more than the limit of "
            f"{max_decoded_bytes / MB:.0f} MB (ctr-pipeline serve --max-message-mb)",
        )


def check_input_names(where: str, specs: Dict[str, tf.TensorSpec], given) -> None:
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


def from_protos_function(function) -> Callable:
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


def checked_shape(where: str, name: str, spec: tf.TensorSpec, proto) -> List[int]:
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


def decode_input(where: str, name: str, spec: tf.TensorSpec, proto, dims: List[int]) -> tf.Tensor:
    try:
        return tf.constant(tf.make_ndarray(proto), dtype=spec.dtype)
    except (ValueError, TypeError) as e:
        raise _invalid_input(where, name, f"is not a valid TensorProto of shape {dims}: {e}") from e


def _dtype_name(enum: int) -> str:
    try:
        return tf.dtypes.as_dtype(enum).name
    except TypeError:
        return f"unknown dtype {enum}"


def check_batch_size(where: str, specs: Dict[str, tf.TensorSpec], shapes: Dict[str, List[int]], max_batch_size: int) -> int:
    """The batch size, checked. The batch dimension is the leading dimension a signature leaves
    unknown; inputs with a fixed leading dimension (``serving_candidates``' one user, [1]) are
    checked by their shape."""
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
    return batch


def check_has_candidates(where: str, specs: Dict[str, tf.TensorSpec], batch: int) -> None:
    """``serving_candidates`` scores one user's candidates: none fails inside its graph (tf.repeat
    of the user's row -1 times), so it is refused here naming the candidates' inputs."""
    if batch == 0:
        inputs = ", ".join(f"'{name}'" for name in sorted(specs) if specs[name].shape[0] is None)
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{where}: the request has 0 candidates (inputs {inputs} have no rows); send at least one",
        )


def requested_outputs(where: str, function, output_filter) -> List[str]:
    names = sorted(function.structured_outputs)
    unknown = sorted(set(output_filter) - set(names))
    if unknown:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{where}: output_filter names {unknown} are not outputs; outputs: {names}",
        )
    return sorted(set(output_filter)) if output_filter else names


def tensor_proto(array) -> tensor_pb2.TensorProto:
    dtype = tf.dtypes.as_dtype(array.dtype)
    field = _PROTO_FIELDS.get(dtype)
    if field is None:
        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(
        dtype=dtype.as_datatype_enum, tensor_shape=tf.TensorShape(array.shape).as_proto()
    )
    getattr(proto, field).extend(array.ravel().tolist())
    return proto


def grpc_code(tf_code: int) -> grpc.StatusCode:
    """TensorFlow error codes and gRPC status codes share their numbers."""
    return next((c for c in grpc.StatusCode if c.value[0] == tf_code), grpc.StatusCode.UNKNOWN)
