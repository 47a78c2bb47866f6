"""SavedModel export: the model behind the transform graph, with three signatures.

- ``serving_default``: ``examples`` (serialized tf.Example of RAW features) -> ``probability``.
- ``serving_raw``: one tensor per raw feature (``FeatureSpec.raw_features``): scalars [B],
  histories [B, L] padded anywhere with ``hist_<fb>_item_id == ""`` -> ``probability``.
- ``transform_features``: serialized examples -> transformed features (used by TFMA).
Both prediction signatures run the same transform graph and the same model call
(``training=False``: no dropout, no noise, no memory writes).
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import Dict

import tensorflow as tf

from transforms.features import CLICK_PROB, LABEL, FeatureSpec

SERVING_DEFAULT, SERVING_RAW, TRANSFORM_FEATURES = "serving_default", "serving_raw", "transform_features"
_DTYPES = {"string": tf.string, "int64": tf.int64}


def raw_input_signature(spec: FeatureSpec) -> Dict[str, tf.TensorSpec]:
    return {
        name: tf.TensorSpec([None, None] if is_sequence else [None], _DTYPES[dtype], name=name)
        for name, (dtype, is_sequence) in spec.raw_features().items()
    }


def raw_tensors_to_parsed(spec: FeatureSpec, tensors: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Raw-signature tensors -> what ``tf.io.parse_example`` gives for the same examples."""
    parsed = {}
    for name, (_, is_sequence) in spec.raw_features().items():
        if not is_sequence:
            parsed[name] = tf.reshape(tensors[name], [-1, 1])
    for kind in spec.feedback_types:
        real = tf.not_equal(tensors[spec.history(kind, "item_id")], "")
        names = [spec.history(kind, f) for f in spec.item_fields] + [spec.history_timestamp(kind)]
        for name in names:
            parsed[name] = tf.ragged.boolean_mask(tensors[name], real).to_sparse()
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
        transformed = self.tft_layer(parsed)
        transformed.pop(LABEL, None)
        return {"probability": self.model(transformed, training=False)["probability"]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples):
        return self._predict(tf.io.parse_example(examples, self.serving_spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(self, examples):
        parsed = tf.io.parse_example(examples, self.full_spec)
        return self.tft_layer(parsed)


def export_serving_model(model, tft_output, spec: FeatureSpec, export_dir: str) -> str:
    """Writes the SavedModel with its three signatures to ``export_dir``."""
    module = _ServingModule(model, tft_output, spec)
    raw_signature = raw_input_signature(spec)

    @tf.function(input_signature=[raw_signature])
    def serve_raw(tensors):
        return module._predict(raw_tensors_to_parsed(spec, tensors))

    signatures = {
        SERVING_DEFAULT: module.serve_examples.get_concrete_function(),
        SERVING_RAW: serve_raw.get_concrete_function(),
        TRANSFORM_FEATURES: module.transform_features.get_concrete_function(),
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    return export_dir
