"""Batch scoring: which SavedModel ``ctr-pipeline score`` runs (``resolve_model``) and the raw
features its signatures take (``signature_inputs``)."""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional, Tuple

from contract.serving import has_saved_model, latest_version, read_signature_defs


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A SavedModel directory and the name/version written beside its scores."""

    path: str
    name: str
    version: str


def _latest_version(model_dir: str) -> Optional[str]:
    latest = latest_version(model_dir)
    return None if latest is None else str(latest)


def resolve_model(model: str, serving_root: Optional[str] = None) -> ModelRef:
    """``model`` is a SavedModel directory, a model directory of integer versions
    (``<serving_root>/<name>``, newest version used) or, with ``serving_root``, ``name`` or
    ``name@version``."""
    path = model.rstrip("/")
    if has_saved_model(path):
        base = os.path.basename(path)
        if base == "Format-Serving":  # a TFX Model artifact: <root>/<Trainer.name>/model/<id>/Format-Serving
            artifact = os.path.dirname(path)
            return ModelRef(path, os.path.basename(os.path.dirname(os.path.dirname(artifact))), os.path.basename(artifact))
        if base.isdigit():
            return ModelRef(path, os.path.basename(os.path.dirname(path)), base)
        return ModelRef(path, base, "")
    latest = _latest_version(path)
    if latest is not None:
        return ModelRef(os.path.join(path, latest), os.path.basename(path), latest)
    if serving_root and "/" not in model:
        name, _, version = model.partition("@")
        model_dir = os.path.join(serving_root, name)
        version = version or _latest_version(model_dir)
        if version and has_saved_model(os.path.join(model_dir, version)):
            return ModelRef(os.path.join(model_dir, version), name, version)
        wanted = f"version {version}" if version else "any version"
        raise FileNotFoundError(f"model {name!r}: {wanted} not found under {model_dir}")
    hint = "" if serving_root else " (give --serving-root, or --config, to score a pushed model by name)"
    raise FileNotFoundError(f"{model!r} is neither a SavedModel directory nor a directory of model versions{hint}")


def signature_inputs(model_path: str, signature: str) -> Optional[Dict[str, Tuple[str, int]]]:
    """name -> (tf.Example list kind, rank) of a signature's inputs; None without that signature."""
    import tensorflow as tf

    signature_defs = read_signature_defs(model_path)
    if signature not in signature_defs:
        return None
    kinds = {tf.string: "bytes_list", tf.int64: "int64_list", tf.float32: "float_list"}
    return {
        name: (kinds.get(tf.dtypes.as_dtype(info.dtype), "unsupported"), len(info.tensor_shape.dim))
        for name, info in signature_defs[signature].inputs.items()
    }
