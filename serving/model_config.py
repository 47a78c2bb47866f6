"""TF Serving's ``models.config`` for a serving root holding one directory per model.

``tensorflow_model_server --model_config_file=<root>/models.config`` then serves every model,
each from ``<base_path>/<version>/`` with the "latest 1" version policy.
"""
from __future__ import annotations

import os
from typing import Optional

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

CONFIG_NAME = "models.config"


def write_models_config(serving_root: str, container_root: Optional[str] = None) -> str:
    """Writes ``<serving_root>/models.config`` listing every model directory; returns its path.

    ``base_path`` is the model directory's absolute path, or ``<container_root>/<model>`` when the
    server sees the root elsewhere (e.g. ``container_root="/models"`` for a Docker volume).
    The file is replaced atomically, so a server polling it never reads half a file.
    """
    serving_root = os.path.abspath(serving_root)
    os.makedirs(serving_root, exist_ok=True)
    names = sorted(
        name for name in os.listdir(serving_root)
        if not name.startswith(".") and os.path.isdir(os.path.join(serving_root, name))
    )
    config = model_server_config_pb2.ModelServerConfig()
    for name in names:
        model = config.model_config_list.config.add()
        model.name = name
        model.base_path = (
            f"{container_root.rstrip('/')}/{name}" if container_root
            else os.path.join(serving_root, name)
        )
        model.model_platform = "tensorflow"
        model.model_version_policy.latest.num_versions = 1
    path = os.path.join(serving_root, CONFIG_NAME)
    with open(path + ".tmp", "w") as f:
        f.write(text_format.MessageToString(config))
    os.replace(path + ".tmp", path)
    return path
