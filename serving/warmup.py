"""TF Serving warmup requests: ``<saved_model>/assets.extra/tf_serving_warmup_requests``.

TF Serving (and ``serving.server``) replays these requests when it loads a version, before the
version answers traffic, so the first real request does not pay for lazy initialisation.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import List

import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import prediction_log_pb2

from serving.server import MAX_WARMUP_RECORDS, WARMUP_FILE, read_signature_defs


def write_warmup_requests(
    saved_model_dir: str,
    model_name: str,
    serialized_examples: List[bytes],
    signature: str = "serving_default",
) -> str:
    """Writes one PredictRequest per serialized tf.Example (a batch of one); returns the path.

    ``signature`` must take a single string input (the serialized examples), like
    ``serving_default``. At most 1000 examples (TF Serving's limit on warmup records).
    """
    if not 0 < len(serialized_examples) <= MAX_WARMUP_RECORDS:
        raise ValueError(
            f"need 1 to {MAX_WARMUP_RECORDS} warmup examples, got {len(serialized_examples)}"
        )
    input_name = _examples_input(saved_model_dir, signature)
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for example in serialized_examples:
            log = prediction_log_pb2.PredictionLog()
            request = log.predict_log.request
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            request.inputs[input_name].CopyFrom(tf.make_tensor_proto([example], dtype=tf.string))
            writer.write(log.SerializeToString())
    return path


def _examples_input(saved_model_dir: str, signature: str) -> str:
    """The name of the signature's one string input."""
    signature_defs = read_signature_defs(saved_model_dir).signature_def
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

