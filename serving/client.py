"""Requests for TF Serving's gRPC API: one user's candidate items as one PredictRequest.

The gRPC calls and ``ctr-pipeline predict`` are ``serving.grpc_client``'s; requests built here
work against real TF Serving and against ``serving.server`` alike. The model's input contract is
the feature spec the model carries (``contract.serving``): ``GetModelMetadata`` lists the
signatures, and the model's ``feature_spec`` signature answers the spec it was trained with
(user and item fields, feedback types, raw feature dtypes and the history length), checked
against the ``serving_raw`` inputs.

Histories are built by ``ingest.history.user_histories_at`` (events strictly before the
request's timestamp, most recent last, at most ``max_history`` per feedback type: the model's
trained length unless ``--max-history`` says otherwise), the code that built the training
examples. One PredictRequest scores all candidates of the user, through
``serving_default`` (serialized tf.Examples), ``serving_raw`` (raw tensors; histories are
right-padded with "" and 0 to the longest history, at least one position) or
``serving_candidates`` (the user's fields and histories once, the candidates' item fields as a
batch: the smallest request and the fastest for many candidates).

Request JSON (one user)::

    {"user": {"user_id": "u1", <user fields>...},
     "timestamp": 1700000000,                      # optional, default: now (unix seconds)
     "events": [{"item_id": "i1", "timestamp": 1690000000, "clicked": 1,
                 "liked": 0, "disliked": 0, <item fields>...}],   # optional; liked/disliked too
     "candidates": [{"item_id": "i7", <item fields>...}]}

Field values are strings (integers are accepted and turned into strings); every user and item
field the model uses is required; other keys are ignored.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import dataclasses
import json
import time
from typing import Dict, List, Mapping, Optional, Tuple, Union

import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.framework.tensor_pb2 import TensorProto
from tensorflow_serving.apis import predict_pb2

from contract.serving import (
    FEATURE_SPEC_SIGNATURE,
    OUTPUT_KEY,
    PREDICTION_SIGNATURES,
    REEXPORT_HINT,
    SERVING_CANDIDATES,
    SERVING_DEFAULT,
    SERVING_RAW,
)
from contract.features import DISLIKED, LABEL, LIKED, TIMESTAMP
from contract.feature_spec import FeatureSpec
from ingest.history import user_histories_at

REQUIRED_SIGNATURES = (SERVING_DEFAULT, SERVING_RAW)  # the contract is checked against these
_DT = {"string": types_pb2.DT_STRING, "int64": types_pb2.DT_INT64}


class RequestError(ValueError):
    """A request that cannot be built; the message names the field at fault."""


class ContractError(ValueError):
    """The served model's signatures are not the contract this client knows."""


# ---- the model's input contract -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelContract:
    """What a served model expects: its feature spec and the name of its examples input."""

    spec: FeatureSpec  # the model's feature spec; max_length = the histories' limit
    examples_input: str  # serving_default's one input (serialized tf.Examples)

def contract_from_signatures(
    model: str, signature_defs, feature_spec: Optional[dict], max_history: Optional[int] = None
) -> ModelContract:
    """The contract of a model from the feature spec document it carries
    (``contract.serving.read_feature_spec``), checked against its ``serving_raw`` and
    ``serving_default`` signatures; ``max_history`` overrides the trained history length."""
    if max_history is not None and max_history < 1:
        raise ValueError(f"max history must be at least 1, got {max_history}")
    missing = [s for s in REQUIRED_SIGNATURES if s not in signature_defs]
    if missing:
        raise ContractError(f"model '{model}' lacks the signature(s) {missing}")
    if feature_spec is None:
        raise ContractError(
            f"model '{model}' carries no feature spec (no '{FEATURE_SPEC_SIGNATURE}' signature: it was "
            f"exported before models carried their feature spec); {REEXPORT_HINT}"
        )
    try:
        spec = FeatureSpec.from_dict(feature_spec["spec"])
        if max_history is not None:
            spec = dataclasses.replace(spec, max_length=max_history)
    except (TypeError, ValueError) as e:
        raise ContractError(f"model '{model}': its feature spec is not understood: {e}") from e
    raw_inputs = signature_defs[SERVING_RAW].inputs
    expected = {name: _DT[dtype] for name, (dtype, _) in spec.raw_features().items()}
    if {name: info.dtype for name, info in raw_inputs.items()} != expected:
        raise ContractError(
            f"model '{model}': serving_raw inputs {sorted(raw_inputs)} do not match the raw "
            f"features {sorted(expected)} of its feature spec (or a dtype differs)"
        )
    examples_inputs = list(signature_defs[SERVING_DEFAULT].inputs)
    if len(examples_inputs) != 1:
        raise ContractError(f"model '{model}': serving_default must take one input (examples)")
    return ModelContract(spec, examples_inputs[0])


# ---- the user's request -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class UserRequest:
    user: Dict[str, str]
    timestamp: int
    events: List[Dict[str, object]]
    candidates: List[Dict[str, str]]


def parse_user_request(
    raw: Union[str, Mapping], spec: FeatureSpec, now: Optional[int] = None
) -> UserRequest:
    """Validates a request (JSON text or decoded) against the model's fields."""
    if isinstance(raw, str):
        raw = decode_json(raw)
    if not isinstance(raw, Mapping):
        raise RequestError(f"the request must be a JSON object, got {_show(raw)}")
    user = _fields("user", _value(raw, "user"), spec.user_fields)
    if TIMESTAMP in raw:
        timestamp = _timestamp(TIMESTAMP, raw[TIMESTAMP])
    else:
        timestamp = int(time.time()) if now is None else now
    events = [
        _event(f"events[{i}]", event, spec)
        for i, event in enumerate(_list("events", raw.get("events", [])))
    ]
    candidates = [
        _fields(f"candidates[{i}]", candidate, spec.item_fields)
        for i, candidate in enumerate(_list("candidates", _value(raw, "candidates")))
    ]
    if not candidates:
        raise RequestError("candidates: at least one candidate is needed")
    return UserRequest(user, timestamp, events, candidates)


def decode_json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(f"not valid JSON: {e}") from e


def _show(value) -> str:
    return json.dumps(value)[:80]


def _value(obj: Mapping, key: str, where: str = ""):
    if key not in obj:
        raise RequestError(f"{where + '.' if where else ''}{key}: missing")
    return obj[key]


def _list(path: str, value) -> list:
    if not isinstance(value, list):
        raise RequestError(f"{path}: expected a list, got {_show(value)}")
    return value


def _fields(path: str, obj, fields: Tuple[str, ...]) -> Dict[str, str]:
    """The model's fields of a user or item (``fields[0]``: its id), as strings."""
    if not isinstance(obj, Mapping):
        raise RequestError(f"{path}: expected an object, got {_show(obj)}")
    values = {}
    for field in fields:
        if field not in obj:
            raise RequestError(f"{path}.{field}: missing (the model's fields: {', '.join(fields)})")
        value = obj[field]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise RequestError(f"{path}.{field}: expected a string, got {_show(value)}")
        values[field] = str(value)
    if not values[fields[0]]:
        raise RequestError(f"{path}.{fields[0]}: must not be empty")
    return values


def _timestamp(path: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequestError(f"{path}: expected unix seconds (an integer >= 0), got {_show(value)}")
    return value


def _flag(path: str, value) -> int:
    if value not in (0, 1):  # true and false are 1 and 0 too
        raise RequestError(f"{path}: expected 0 or 1, got {_show(value)}")
    return int(value)


def _event(path: str, obj, spec: FeatureSpec) -> Dict[str, object]:
    event: Dict[str, object] = dict(_fields(path, obj, spec.item_fields))
    event[TIMESTAMP] = _timestamp(f"{path}.{TIMESTAMP}", _value(obj, TIMESTAMP, path))
    event[LABEL] = _flag(f"{path}.{LABEL}", _value(obj, LABEL, path))
    for key in (LIKED, DISLIKED):
        event[key] = _flag(f"{path}.{key}", obj.get(key, 0))
    return event


# ---- the PredictRequest -----------------------------------------------------------------------
def user_features(spec: FeatureSpec, request: UserRequest) -> Dict[str, list]:
    """Features shared by all candidates, as lists: user fields, timestamp and histories."""
    features: Dict[str, list] = {field: [value] for field, value in request.user.items()}
    features[TIMESTAMP] = [request.timestamp]
    features.update(user_histories_at(spec, request.events, request.timestamp))
    return features


def build_predict_request(
    contract: ModelContract,
    model: str,
    signature: str,
    request: UserRequest,
    version: Optional[int] = None,
) -> predict_pb2.PredictRequest:
    """One PredictRequest scoring every candidate of the user."""
    if signature not in PREDICTION_SIGNATURES:
        raise RequestError(f"signature must be one of {PREDICTION_SIGNATURES}, got '{signature}'")
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = model
    predict.model_spec.signature_name = signature
    if version is not None:
        predict.model_spec.version.value = version
    predict.output_filter.append(OUTPUT_KEY)
    shared = user_features(contract.spec, request)
    if signature == SERVING_DEFAULT:
        predict.inputs[contract.examples_input].CopyFrom(
            _examples_tensor(contract.spec, shared, request.candidates)
        )
    else:
        user_rows = 1 if signature == SERVING_CANDIDATES else len(request.candidates)
        for name, tensor in raw_tensors(contract.spec, shared, request.candidates, user_rows).items():
            predict.inputs[name].CopyFrom(tensor)
    return predict


def _examples_tensor(spec: FeatureSpec, shared: Dict[str, list], candidates) -> TensorProto:
    """Serialized tf.Examples, one per candidate, each with all the raw features.

    Concatenated serialized protos parse as one merged message, so the shared features are
    serialized once and each candidate's item fields appended.
    """
    raw = spec.raw_features()
    shared_bytes = _example(raw, shared)
    examples = [
        shared_bytes + _example(raw, {field: [value] for field, value in candidate.items()})
        for candidate in candidates
    ]
    return _tensor("string", examples, [len(examples)])


def _example(raw: Dict[str, Tuple[str, bool]], features: Mapping[str, list]) -> bytes:
    example = tf.train.Example()
    for name, values in features.items():
        if raw[name][0] == "string":
            example.features.feature[name].bytes_list.value.extend(_encode("string", values))
        else:
            example.features.feature[name].int64_list.value.extend(values)
    return example.SerializeToString()


def raw_tensors(spec: FeatureSpec, shared: Dict[str, list], candidates, user_rows: int) -> Dict[str, TensorProto]:
    """Item fields [n]; the user's fields [user_rows] and histories [user_rows, width],
    right-padded with "" and 0 (``serving_raw``: a copy per candidate; ``serving_candidates``: 1)."""
    width = max([1] + [len(shared[spec.history_timestamp(fb)]) for fb in spec.feedback_types])
    tensors = {}
    for name, (dtype, sequence) in spec.raw_features().items():
        if sequence:
            padding = ["" if dtype == "string" else 0] * (width - len(shared[name]))
            tensors[name] = _tensor(dtype, _encode(dtype, shared[name] + padding) * user_rows, [user_rows, width])
        elif name in shared:
            tensors[name] = _tensor(dtype, _encode(dtype, shared[name]) * user_rows, [user_rows])
        else:
            tensors[name] = _tensor(dtype, _encode(dtype, [c[name] for c in candidates]), [len(candidates)])
    return tensors


def _encode(dtype: str, values: list) -> list:
    return [v.encode() for v in values] if dtype == "string" else values


def _tensor(dtype: str, values: list, shape: List[int]) -> TensorProto:
    """A TensorProto of encoded values (bytes for "string", ints for "int64")."""
    proto = TensorProto(
        dtype=types_pb2.DT_STRING if dtype == "string" else types_pb2.DT_INT64,
        tensor_shape=tf.TensorShape(shape).as_proto(),
    )
    (proto.string_val if dtype == "string" else proto.int64_val).extend(values)
    return proto
