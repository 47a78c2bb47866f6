"""The serving contract, defined once: what export writes and the server, the client, warmup and
batch scoring read.

A pushed model is ``<model_dir>/<version>/`` (an integer folder holding ``saved_model.pb``);
its "serve" meta graph has the signatures below, each answering ``OUTPUT_KEY`` (the click
probability), and ``assets.extra/`` holds the TF Serving warmup requests and the feature spec
the model was trained with (``FEATURE_SPEC_FILE``: field names, dtypes, history names and the
history length), so that no reader has to guess it. Over gRPC, where a model's files cannot be
read, the same document is the answer of the ``FEATURE_SPEC_SIGNATURE`` signature.

TensorFlow-free to import; ``read_signature_defs`` (and paths with a ``scheme://``) load
TensorFlow's file system or protos when called.
"""
from __future__ import annotations

import json
import os
from typing import List, Mapping, Optional

# signatures of an exported model
SERVING_DEFAULT = "serving_default"  # serialized raw tf.Examples ("examples") -> OUTPUT_KEY
SERVING_RAW = "serving_raw"  # one tensor per raw feature -> OUTPUT_KEY
SERVING_CANDIDATES = "serving_candidates"  # one user's features once, N candidates' item fields -> OUTPUT_KEY
TRANSFORM_FEATURES = "transform_features"  # serialized examples -> transformed features (TFMA)
FEATURE_SPEC_SIGNATURE = "feature_spec"  # no input -> FEATURE_SPEC_OUTPUT: the feature spec JSON, [1] string
PREDICTION_SIGNATURES = (SERVING_DEFAULT, SERVING_RAW, SERVING_CANDIDATES)
RAW_SIGNATURES = (SERVING_RAW, SERVING_CANDIDATES)  # inputs named after the raw features
EXAMPLES_INPUT = "examples"  # SERVING_DEFAULT's one input
OUTPUT_KEY = "probability"
FEATURE_SPEC_OUTPUT = "feature_spec"
SERVE_TAG = "serve"

# files of a SavedModel directory
SAVED_MODEL_FILE = "saved_model.pb"
ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = os.path.join(ASSETS_EXTRA, "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
FEATURE_SPEC_FILE = os.path.join(ASSETS_EXTRA, "feature_spec.json")
FEATURE_SPEC_FORMAT = 1  # the "format" of FEATURE_SPEC_FILE

# batch scoring's row accounting, beside its outputs
COUNTS_FILE = "counts.json"

REEXPORT_HINT = (
    "re-export the model: run the pipeline again (`ctr-pipeline run --config <config>`; the Trainer "
    "exports every new model with its feature spec) and push the new version"
)


class FeatureSpecMissing(FileNotFoundError):
    """A model exported before models carried their feature spec."""


# ---- files -------------------------------------------------------------------------------------
def _remote(path: str) -> bool:
    return "://" in path


def _exists(path: str) -> bool:
    if _remote(path):
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def _read_bytes(path: str) -> bytes:
    if _remote(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "rb") as handle:
            return handle.read()
    with open(path, "rb") as handle:
        return handle.read()


def has_saved_model(path: str) -> bool:
    return _exists(os.path.join(path, SAVED_MODEL_FILE))


def version_dirs(model_dir: str) -> List[int]:
    """The versions of a model directory: integer-named folders holding a ``saved_model.pb``
    (anything else is ignored); empty when ``model_dir`` is not a directory."""
    if _remote(model_dir):
        import tensorflow as tf

        entries = [e.rstrip("/") for e in tf.io.gfile.listdir(model_dir)] if tf.io.gfile.isdir(model_dir) else []
    else:
        entries = os.listdir(model_dir) if os.path.isdir(model_dir) else []
    return sorted(int(e) for e in entries if e.isdigit() and has_saved_model(os.path.join(model_dir, e)))


def latest_version(model_dir: str) -> Optional[int]:
    """The highest version of a model directory (TF Serving's "latest" policy); None if none."""
    versions = version_dirs(model_dir)
    return versions[-1] if versions else None


def read_signature_defs(saved_model_dir: str) -> Mapping[str, object]:
    """Signature name -> ``SignatureDef`` of a SavedModel's "serve" meta graph, read from
    ``saved_model.pb`` (TensorFlow's protos, imported here); ValueError if it is not one."""
    import warnings

    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(saved_model_dir, SAVED_MODEL_FILE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # protobuf only warns about some garbage
        try:
            saved_model = saved_model_pb2.SavedModel.FromString(_read_bytes(path))
        except (DecodeError, RuntimeWarning) as e:
            raise ValueError(f"{path}: not a SavedModel: {e}") from e
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return meta_graph.signature_def
    raise ValueError(f"{saved_model_dir}: no meta graph tagged '{SERVE_TAG}'")


# ---- the model's feature spec ----------------------------------------------------------------
def feature_spec_document(spec: Mapping[str, object], raw_features: Mapping[str, tuple]) -> str:
    """The JSON of ``FEATURE_SPEC_FILE``: the feature spec's fields (``FeatureSpec.to_dict()``,
    ``max_length`` = the trained history length) and every raw input's dtype and kind."""
    return json.dumps({
        "format": FEATURE_SPEC_FORMAT,
        "spec": dict(spec),
        "raw_features": {name: {"dtype": dtype, "sequence": sequence} for name, (dtype, sequence) in raw_features.items()},
    }, indent=2, sort_keys=True)


def parse_feature_spec(text, where: str) -> dict:
    """The document of ``feature_spec_document`` (str or bytes); ValueError naming ``where``."""
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: the feature spec is not valid JSON: {e}") from e
    if not isinstance(document, dict) or document.get("format") != FEATURE_SPEC_FORMAT or "spec" not in document:
        raise ValueError(f"{where}: not a feature spec of format {FEATURE_SPEC_FORMAT}; {REEXPORT_HINT}")
    return document


def read_feature_spec(model_dir: str) -> dict:
    """The feature spec document a SavedModel carries (``FEATURE_SPEC_FILE``); its ``"spec"``
    builds a ``FeatureSpec`` (``FeatureSpec.from_dict``). ``FeatureSpecMissing`` for older exports."""
    path = os.path.join(model_dir, FEATURE_SPEC_FILE)
    if not _exists(path):
        raise FeatureSpecMissing(f"{model_dir}: the model carries no {FEATURE_SPEC_FILE} (it was exported "
                                 f"before models carried their feature spec); {REEXPORT_HINT}")
    return parse_feature_spec(_read_bytes(path), path)
