"""The raw-data schema (TFDV / tensorflow-metadata), derived from the FeatureSpec.

It replaces an inferred schema: inference would freeze the string domains seen in train (every
new user or item in eval would then be an "anomaly") and could not know that a history may be
empty. This schema states what a valid raw example is: every scalar field present once, a
non-negative timestamp, histories of at most T values, a 0/1 label (absent when serving).
"""
from __future__ import annotations

from tensorflow_metadata.proto.v0 import schema_pb2

from contract.features import CLICK_PROB, LABEL
from contract.feature_spec import FeatureSpec

TRAINING, SERVING = "TRAINING", "SERVING"


def _feature(schema, name, kind, scalar: bool, max_values: int = 1):
    feature = schema.feature.add(name=name, type=kind)
    if scalar:
        feature.shape.dim.add(size=1)
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
    else:
        feature.value_count.min = 0
        feature.value_count.max = max_values
        feature.presence.min_fraction = 0.0
    return feature


def raw_schema(spec: FeatureSpec, with_click_prob: bool = False) -> schema_pb2.Schema:
    schema = schema_pb2.Schema()
    schema.default_environment.extend([TRAINING, SERVING])
    for name, (dtype, is_sequence) in spec.raw_features().items():
        kind = schema_pb2.BYTES if dtype == "string" else schema_pb2.INT
        feature = _feature(schema, name, kind, scalar=not is_sequence, max_values=spec.max_length)
        if kind == schema_pb2.INT:
            feature.int_domain.min = 0
    label = _feature(schema, LABEL, schema_pb2.INT, scalar=True)
    label.int_domain.min, label.int_domain.max = 0, 1
    label.not_in_environment.append(SERVING)
    if with_click_prob:
        prob = _feature(schema, CLICK_PROB, schema_pb2.FLOAT, scalar=False)
        prob.float_domain.min, prob.float_domain.max = 0.0, 1.0
        prob.not_in_environment.append(SERVING)
    return schema
