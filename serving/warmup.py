"""TF Serving warmup requests: ``<saved_model>/assets.extra/tf_serving_warmup_requests``.

TF Serving (and ``serving.server``) replays these requests when it loads a version, before the
version answers traffic, so the first real request does not pay for lazy initialisation. Every
prediction signature is warmed: each example gives a ``serving_default`` request and, when it
parses and the model has them, a ``serving_raw`` and a ``serving_candidates`` request built from
its features by the client's own request code.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import Dict, Iterator, List

import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from contract.serving import (
    MAX_WARMUP_RECORDS,
    RAW_SIGNATURES,
    SERVING_DEFAULT,
    WARMUP_FILE,
    read_signature_defs,
)
from serving import client
from contract.feature_spec import FeatureSpec


def write_warmup_requests(
    saved_model_dir: str,
    model_name: str,
    serialized_examples: List[bytes],
    signature: str = SERVING_DEFAULT,
) -> str:
    """Writes the warmup requests of the examples (each a batch of one); returns the path.

    ``signature`` must take a single string input (the serialized examples), like
    ``serving_default``. At most 1000 records (TF Serving's limit on warmup records).
    """
    if not serialized_examples:
        raise ValueError("need at least one warmup example")
    input_name = _examples_input(saved_model_dir, signature)
    requests = []
    for example in serialized_examples:
        request = _request(model_name, signature)
        request.inputs[input_name].CopyFrom(tf.make_tensor_proto([example], dtype=tf.string))
        requests.append(request)
    requests += _raw_requests(saved_model_dir, model_name, serialized_examples)
    if len(requests) > MAX_WARMUP_RECORDS:
        raise ValueError(f"at most {MAX_WARMUP_RECORDS} warmup records, the examples give {len(requests)}")
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog()
            log.predict_log.request.CopyFrom(request)
            writer.write(log.SerializeToString())
    return path


def _request(model_name: str, signature: str) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    return request


def _raw_requests(saved_model_dir: str, model_name: str, serialized_examples: List[bytes]) -> List[predict_pb2.PredictRequest]:
    """``serving_raw`` / ``serving_candidates`` requests of the examples that parse, built with
    the feature spec the model carries."""
    signature_defs = read_signature_defs(saved_model_dir)
    signatures = [s for s in RAW_SIGNATURES if s in signature_defs]
    if not signatures or any(s not in signature_defs for s in client.REQUIRED_SIGNATURES):
        return []
    spec = FeatureSpec.from_model(saved_model_dir)
    requests = []
    for shared, candidate in _features_of(spec, serialized_examples):
        for signature in signatures:
            request = _request(model_name, signature)
            for name, tensor in client.raw_tensors(spec, shared, [candidate], user_rows=1).items():
                request.inputs[name].CopyFrom(tensor)
            requests.append(request)
    return requests


def _features_of(spec, serialized_examples: List[bytes]) -> Iterator[tuple]:
    """(user-level feature lists, candidate item fields) of each example holding every raw feature."""
    raw = spec.raw_features()
    for serialized in serialized_examples:
        try:
            features = example_pb2.Example.FromString(serialized).features.feature
        except DecodeError:
            continue
        values: Dict[str, list] = {}
        for name, (dtype, is_sequence) in raw.items():
            kind = "bytes_list" if dtype == "string" else "int64_list"
            found = list(getattr(features[name], kind).value) if name in features else []
            values[name] = [v.decode("utf-8", "replace") for v in found] if dtype == "string" else found
        if any(len(values[name]) != 1 for name, (_, is_sequence) in raw.items() if not is_sequence):
            continue
        candidate = {f: values[f][0] for f in spec.item_fields}
        shared = {n: v for n, v in values.items() if n not in spec.item_fields}
        yield shared, candidate


def _examples_input(saved_model_dir: str, signature: str) -> str:
    """The name of the signature's one string input."""
    signature_defs = read_signature_defs(saved_model_dir)
    if signature not in signature_defs:
        raise ValueError(
            f"{saved_model_dir}: no signature '{signature}'; available: {sorted(signature_defs)}"
        )
    inputs = signature_defs[signature].inputs
    if len(inputs) != 1 or next(iter(inputs.values())).dtype != types_pb2.DT_STRING:
        raise ValueError(
            f"signature '{signature}' must take one string input (serialized tf.Examples), "
            f"it takes {sorted(inputs)}"
        )
    return next(iter(inputs))

