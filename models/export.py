"""SavedModel export: the model behind the transform graph, with four signatures.

- ``serving_default``: ``examples`` (serialized tf.Example of RAW features) -> ``probability``.
- ``serving_raw``: one tensor per raw feature (``FeatureSpec.raw_features``): scalars [B],
  histories [B, L] padded anywhere with ``hist_<fb>_item_id == ""`` -> ``probability``.
- ``serving_candidates``: one user, many candidates: the user's fields and ``timestamp`` [1],
  histories [1, L] (padded as in ``serving_raw``), the candidates' item fields [N] ->
  ``probability`` [N]. The user's histories are sent and transformed once, not N times. Its
  inputs do not share a batch dimension, so TF Serving's server-side batching does not apply.
- ``transform_features``: serialized examples -> transformed features (used by TFMA).
- ``feature_spec``: no input -> the feature spec JSON (for gRPC clients, which cannot read files).
The prediction signatures run the same transform graph and the same model call
(``training=False``: no dropout, no noise, no memory writes). The names are
``contract.serving``'s; ``assets.extra/feature_spec.json`` holds the feature spec the model was
trained with (the history length included), read by the client, warmup and batch scoring.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import Dict

import tensorflow as tf

from contract.serving import (
    EXAMPLES_INPUT,
    FEATURE_SPEC_FILE,
    FEATURE_SPEC_OUTPUT,
    FEATURE_SPEC_SIGNATURE,
    OUTPUT_KEY,
    SERVING_CANDIDATES,
    SERVING_DEFAULT,
    SERVING_RAW,
    TRANSFORM_FEATURES,
    feature_spec_document,
)
from contract.features import CLICK_PROB, ITEM_ID, LABEL
from contract.feature_spec import FeatureSpec

_DTYPES = {"string": tf.string, "int64": tf.int64}


def raw_input_signature(spec: FeatureSpec) -> Dict[str, tf.TensorSpec]:
    return {
        name: tf.TensorSpec([None, None] if is_sequence else [None], _DTYPES[dtype], name=name)
        for name, (dtype, is_sequence) in spec.raw_features().items()
    }


def candidates_input_signature(spec: FeatureSpec) -> Dict[str, tf.TensorSpec]:
    """User-level inputs (user fields, timestamp, histories) for one user; item fields per candidate."""
    signature = {}
    for name, (dtype, is_sequence) in spec.raw_features().items():
        shape = [None] if name in spec.item_fields else [1, None] if is_sequence else [1]
        signature[name] = tf.TensorSpec(shape, _DTYPES[dtype], name=name)
    return signature


def raw_tensors_to_parsed(spec: FeatureSpec, tensors: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Raw-signature tensors -> what ``tf.io.parse_example`` gives for the same examples."""
    parsed = {}
    for name, (_, is_sequence) in spec.raw_features().items():
        if not is_sequence:
            parsed[name] = tf.reshape(tensors[name], [-1, 1])
    for kind in spec.feedback_types:
        # one layout per feedback type, shared by its fields: the real positions, left-aligned
        real = tf.not_equal(tensors[spec.history(kind, ITEM_ID)], "")
        positions = tf.where(real)  # [P, 2], row-major
        column = tf.gather_nd(tf.cumsum(tf.cast(real, tf.int64), axis=1, exclusive=True), positions)
        indices = tf.stack([positions[:, 0], column], axis=1)
        lengths = tf.reduce_sum(tf.cast(real, tf.int64), axis=1)
        dense_shape = tf.stack([tf.size(lengths, out_type=tf.int64), tf.reduce_max(tf.concat([lengths, [0]], 0))])
        for name in [spec.history(kind, f) for f in spec.item_fields] + [spec.history_timestamp(kind)]:
            parsed[name] = tf.SparseTensor(indices, tf.gather_nd(tensors[name], positions), dense_shape)
    return parsed


class _ServingModule(tf.Module):
    def __init__(self, model, tft_output, spec: FeatureSpec):
        super().__init__()
        self.model, self.spec = model, spec
        self.tft_layer = tft_output.transform_features_layer()
        raw_spec = tft_output.raw_feature_spec()
        self.full_spec = {k: v for k, v in raw_spec.items() if k != CLICK_PROB}
        self.serving_spec = {k: v for k, v in self.full_spec.items() if k != LABEL}

    def _predict(self, parsed):
        return self._model_probability(self.tft_layer(parsed))

    def _model_probability(self, transformed):
        transformed.pop(LABEL, None)
        return {OUTPUT_KEY: self.model(transformed, training=False)["probability"]}

    def predict_candidates(self, tensors):
        """One user's N candidates: the user's histories are transformed in one row, the model
        sees that row once beside the N candidates' item fields (``CTRModel.score_candidates``).

        The transform is row-wise (analyzer results are constants), so row 0 carries the
        histories and rows 1..N-1 none; row 0 then stands for the user.
        """
        spec = self.spec
        count = tf.shape(tensors[spec.item_fields[0]])[0]
        rows = {}
        for name, (_, is_sequence) in spec.raw_features().items():
            value = tensors[name]
            if is_sequence:
                empty = tf.zeros_like(value[:1])
                rows[name] = tf.concat([value, tf.repeat(empty, count - 1, axis=0)], axis=0)
            elif name not in spec.item_fields:
                rows[name] = tf.repeat(value, count)
            else:
                rows[name] = value
        transformed = self.tft_layer(raw_tensors_to_parsed(spec, rows))
        transformed.pop(LABEL, None)
        user_row = {name: value[:1] for name, value in transformed.items() if name not in spec.item_fields}
        candidates = {name: transformed[name] for name in spec.item_fields}
        return {OUTPUT_KEY: self.model.score_candidates(user_row, candidates)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve_examples(self, examples):
        return self._predict(tf.io.parse_example(examples, self.serving_spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def transform_features(self, examples):
        parsed = tf.io.parse_example(examples, self.full_spec)
        return self.tft_layer(parsed)


def feature_spec_json(spec: FeatureSpec) -> str:
    """The feature spec document the model carries (``contract.serving.feature_spec_document``)."""
    return feature_spec_document(spec.to_dict(), spec.raw_features())


def feature_spec_function(spec: FeatureSpec):
    """The ``feature_spec`` signature: no input, the feature spec JSON as a [1] string."""
    document = feature_spec_json(spec)

    @tf.function(input_signature=[])
    def feature_spec():
        return {FEATURE_SPEC_OUTPUT: tf.constant([document])}

    return feature_spec.get_concrete_function()


def write_feature_spec(export_dir: str, spec: FeatureSpec) -> str:
    """Writes ``assets.extra/feature_spec.json`` into a SavedModel directory; returns its path."""
    path = os.path.join(export_dir, FEATURE_SPEC_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(feature_spec_json(spec))
    return path


def export_serving_model(model, tft_output, spec: FeatureSpec, export_dir: str) -> str:
    """Writes the SavedModel with its signatures and its feature spec to ``export_dir``."""
    module = _ServingModule(model, tft_output, spec)
    raw_signature = raw_input_signature(spec)

    @tf.function(input_signature=[raw_signature])
    def serve_raw(tensors):
        return module._predict(raw_tensors_to_parsed(spec, tensors))

    @tf.function(input_signature=[candidates_input_signature(spec)])
    def serve_candidates(tensors):
        return module.predict_candidates(tensors)

    signatures = {
        SERVING_DEFAULT: module.serve_examples.get_concrete_function(),
        SERVING_RAW: serve_raw.get_concrete_function(),
        SERVING_CANDIDATES: serve_candidates.get_concrete_function(),
        TRANSFORM_FEATURES: module.transform_features.get_concrete_function(),
        FEATURE_SPEC_SIGNATURE: feature_spec_function(spec),
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    write_feature_spec(export_dir, spec)
    return export_dir
