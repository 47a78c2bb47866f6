"""Models selectable by name in the config (``training.models``)."""
from __future__ import annotations

import importlib
from typing import Mapping, Optional, Tuple

from contract.model_params import PARAMS

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
    """The Params class of ``name`` (``contract.model_params.PARAMS``); KeyError for an unknown name."""
    return PARAMS[name]


def build(architecture: str, spec, vocab_sizes: Mapping[str, int], params=None, name: Optional[str] = None):
    """Builds ``architecture`` (named ``name``, default the architecture); ``params`` is a dict
    (validated) or a Params instance."""
    cls = model_class(architecture)
    if params is None or isinstance(params, dict):
        params = cls.Params.model_validate(params or {})
    return cls(spec, vocab_sizes, params, name=name or architecture)
