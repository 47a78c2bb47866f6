"""Models selectable by name in the config (``training.models``)."""
from __future__ import annotations

import importlib
from typing import Mapping, Tuple

# name -> (module, class); modules are imported only when a model is asked for
_MODELS = {
    "dnn": ("models.dnn", "DNN"),
    "din": ("models.din", "DIN"),
    "fadidn": ("models.fadidn", "FADIDN"),
    "camn": ("models.camn", "CAMN"),
    "dumn": ("models.dumn", "DUMN"),
    "tf4ctr": ("models.tf4ctr", "TF4CTR"),
}


def names() -> Tuple[str, ...]:
    return tuple(_MODELS)


def model_class(name: str):
    """The model class registered as ``name``; KeyError for an unknown name."""
    module, cls = _MODELS[name]
    return getattr(importlib.import_module(module), cls)


def params_class(name: str):
    return model_class(name).Params


def build(name: str, spec, vocab_sizes: Mapping[str, int], params=None):
    """Builds model ``name``; ``params`` is a dict (validated) or a Params instance."""
    cls = model_class(name)
    if params is None or isinstance(params, dict):
        params = cls.Params.model_validate(params or {})
    return cls(spec, vocab_sizes, params, name=name)
