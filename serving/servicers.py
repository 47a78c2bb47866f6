"""The gRPC stand-in server (``serving.server``): the ``PredictionService`` and ``ModelService``
servicers, answering each call from the version manager (any error becomes a gRPC status)."""
from __future__ import annotations

import logging
from typing import Optional

import grpc
from google.protobuf import any_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from serving.request_tensors import ServingError, check_declared_size, check_row_count
from serving.servable import predict
from serving.versions import ModelManager

log = logging.getLogger("serving.server")  # one logger for the whole server, as before its split

# A status message travels in the call's trailing metadata, percent-encoded (3 bytes for a byte that is
# not printable ASCII), and gRPC clients refuse metadata over 8 KB by default (grpc.max_metadata_size;
# at random up to 16 KB, always beyond): a longer message (e.g. naming 10,000 unexpected inputs) would
# reach the client as RESOURCE_EXHAUSTED "Stream removed" instead of the request's own status.
MAX_DETAILS_BYTES = 2048


def bounded_details(message: str) -> str:
    """``message`` cut to at most ``MAX_DETAILS_BYTES`` bytes of UTF-8, saying so when it is cut."""
    data = message.encode("utf-8")
    if len(data) <= MAX_DETAILS_BYTES:
        return message
    note = f" ... (cut: the message has {len(data):,} bytes)"
    kept = data[: MAX_DETAILS_BYTES - len(note.encode())].decode("utf-8", "ignore")
    return kept + note


def _answer(context: grpc.ServicerContext, call):
    """Runs ``call``; a ServingError or any unexpected error becomes a gRPC status."""
    try:
        return call()
    except ServingError as e:
        context.abort(e.code, bounded_details(e.message))
    except Exception as e:  # never let a request take the server down
        log.exception("unexpected error while answering a request")
        context.abort(grpc.StatusCode.INTERNAL, bounded_details(f"internal error: {type(e).__name__}: {e}"))


def _requested_version(model_spec) -> Optional[int]:
    if model_spec.WhichOneof("version_choice") == "version_label":
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"version label '{model_spec.version_label}' given but no labels are configured",
        )
    return model_spec.version.value if model_spec.HasField("version") else None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, max_decoded_bytes: int):
        self.manager = manager
        self.max_decoded_bytes = max_decoded_bytes

    def Predict(self, request, context):
        def call():
            # first, from the declared shapes only
            check_row_count(request, self.manager.max_batch_size)
            check_declared_size(request, self.max_decoded_bytes)
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
