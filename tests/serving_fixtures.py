"""A tiny SavedModel with the Trainer's export contract, and request builders, for serving tests.

The model hashes its raw inputs into a deterministic score (integer arithmetic, so padding and
batch layout cannot change it) plus a ``bias`` variable that tells versions apart.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import random
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from contract.serving import FEATURE_SPEC_SIGNATURE
from models.export import feature_spec_function, write_feature_spec
from contract.features import TIMESTAMP
from contract.feature_spec import FeatureSpec

MODEL_NAME = "ctr"
SPEC = FeatureSpec(
    user_fields=("user_id", "gender"), item_fields=("item_id", "genre"), max_length=5, gap_buckets=4
)
RAW = SPEC.raw_features()


def _hash(strings: tf.Tensor) -> tf.Tensor:
    return tf.strings.to_hash_bucket_fast(strings, 1000)


class FixtureModel(tf.Module):
    def __init__(self, bias: float):
        super().__init__()
        self.bias = tf.Variable(bias, dtype=tf.float32)

    def score(self, features: Dict[str, tf.Tensor]) -> tf.Tensor:
        timestamp = features[TIMESTAMP]
        total = timestamp % 1000
        for name in SPEC.scalar_fields:
            total += _hash(features[name])
        for k, feedback in enumerate(SPEC.feedback_types, start=2):
            present = features[SPEC.history(feedback, "item_id")] != ""
            for field in SPEC.item_fields:
                hashed = _hash(features[SPEC.history(feedback, field)])
                total += k * tf.reduce_sum(tf.where(present, hashed, 0), axis=1)
            gaps = timestamp[:, None] - features[SPEC.history_timestamp(feedback)]
            total += tf.reduce_sum(tf.where(present, gaps % 97, 0), axis=1)
        z = tf.cast(total % 10007, tf.float32) / 10007.0
        return tf.sigmoid(4.0 * z - 2.0 + self.bias)


def _parse_spec() -> Dict[str, object]:
    return {
        name: tf.io.VarLenFeature(tf.as_dtype(dtype)) if sequence
        else tf.io.FixedLenFeature([], tf.as_dtype(dtype))
        for name, (dtype, sequence) in RAW.items()
    }


def save_fixture_model(path: str, bias: float = 0.0) -> str:
    """Saves the fixture model with ``serving_default``, ``serving_raw``, ``serving_candidates``
    and the feature spec (signature and ``assets.extra`` file), as the Trainer exports."""
    model = FixtureModel(bias)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(examples):
        parsed = tf.io.parse_example(examples, _parse_spec())
        features = {
            name: tf.sparse.to_dense(value) if isinstance(value, tf.SparseTensor) else value
            for name, value in parsed.items()
        }
        return {"probability": model.score(features)}

    @tf.function
    def serve_raw(features):
        return {"probability": model.score(features)}

    @tf.function
    def serve_candidates(features):  # the user's features once ([1], [1, L]), candidates [N]
        count = tf.shape(features["item_id"])[0]
        tiled = {name: value if name in SPEC.item_fields else tf.repeat(value, count, axis=0) for name, value in features.items()}
        return {"probability": model.score(tiled)}

    raw_specs = {
        name: tf.TensorSpec([None, None] if sequence else [None], tf.as_dtype(dtype), name=name)
        for name, (dtype, sequence) in RAW.items()
    }
    candidate_specs = {
        name: tf.TensorSpec([None] if name in SPEC.item_fields else [1, None] if sequence else [1], tf.as_dtype(dtype), name=name)
        for name, (dtype, sequence) in RAW.items()
    }
    model.serve_examples, model.serve_raw, model.serve_candidates = serve_examples, serve_raw, serve_candidates
    signatures = {
        "serving_default": serve_examples.get_concrete_function(),
        "serving_raw": serve_raw.get_concrete_function(raw_specs),
        "serving_candidates": serve_candidates.get_concrete_function(candidate_specs),
        FEATURE_SPEC_SIGNATURE: feature_spec_function(SPEC),
    }
    tf.saved_model.save(model, path, signatures=signatures)
    write_feature_spec(path, SPEC)
    return path


# ---- example data -------------------------------------------------------------------------
def random_rows(n: int, seed: int = 0) -> List[Dict[str, object]]:
    """``n`` raw feature rows (python values) with histories of varying lengths."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        timestamp = 1_700_000_000 + rng.randrange(100_000)
        row: Dict[str, object] = {
            "user_id": f"u{rng.randrange(50)}", "gender": rng.choice(["F", "M"]),
            "item_id": f"i{rng.randrange(500)}", "genre": rng.choice(["drama", "comedy"]),
            TIMESTAMP: timestamp,
        }
        for feedback in SPEC.feedback_types:
            length = rng.randrange(SPEC.max_length + 1)
            items = [f"i{rng.randrange(500)}" for _ in range(length)]
            row[SPEC.history(feedback, "item_id")] = items
            row[SPEC.history(feedback, "genre")] = [rng.choice(["drama", "x"]) for _ in items]
            row[SPEC.history_timestamp(feedback)] = sorted(
                timestamp - rng.randrange(1, 10_000) for _ in range(length)
            )
        rows.append(row)
    return rows


def serialize(row: Dict[str, object]) -> bytes:
    feature = {}
    for name, (dtype, sequence) in RAW.items():
        values = row[name] if sequence else [row[name]]
        if dtype == "string":
            feature[name] = tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[str(v).encode() for v in values])
            )
        else:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def raw_arrays(rows: List[Dict[str, object]]) -> Dict[str, np.ndarray]:
    """Raw-signature inputs: scalars [B], histories [B, T] right-padded with "" / 0."""
    arrays = {}
    width = max(len(r[SPEC.history_timestamp(fb)]) for r in rows for fb in SPEC.feedback_types)
    for name, (dtype, sequence) in RAW.items():
        pad = "" if dtype == "string" else 0
        values = [r[name] + [pad] * (width - len(r[name])) if sequence else r[name] for r in rows]
        arrays[name] = np.array(values, dtype=object if dtype == "string" else np.int64)
    return arrays


def examples_request(
    rows, model: str = MODEL_NAME, signature: str = "serving_default", version: Optional[int] = None
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["examples"].CopyFrom(
        tf.make_tensor_proto([serialize(r) for r in rows], dtype=tf.string)
    )
    return request


def raw_request(rows, model: str = MODEL_NAME) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_raw"
    for name, array in raw_arrays(rows).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array, dtype=RAW[name][0]))
    return request


def candidates_request(user: Dict[str, object], candidates, model: str = MODEL_NAME) -> predict_pb2.PredictRequest:
    """A ``serving_candidates`` request: ``user``'s fields and histories once, the item fields
    of ``candidates`` (rows) as [N] tensors."""
    request = raw_request([user], model)
    request.model_spec.signature_name = "serving_candidates"
    for field in SPEC.item_fields:
        request.inputs[field].CopyFrom(tf.make_tensor_proto(
            np.array([r[field] for r in candidates], dtype=object), dtype=tf.string, shape=[len(candidates)]))
    return request


def direct_scores(saved_model_dir: str, rows, signature: str) -> np.ndarray:
    """Scores from calling a signature of the SavedModel in-process."""
    model = tf.saved_model.load(saved_model_dir)
    function = model.signatures[signature]
    if signature == "serving_default":
        inputs = {"examples": tf.constant([serialize(r) for r in rows])}
    else:
        inputs = {name: tf.constant(a, dtype=RAW[name][0]) for name, a in raw_arrays(rows).items()}
    return function(**inputs)["probability"].numpy()
