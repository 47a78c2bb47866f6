"""Trains models a few steps under MirroredStrategy on two logical CPU devices (run as a script).

The logical devices must be configured before TensorFlow initialises, hence a separate process.
Usage: python -m tests.distributed_check [--mixed-precision] MODEL...  -> JSON on stdout.
"""
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import tf_keras  # noqa: E402

from models import registry  # noqa: E402
from models.trainer import distribution_strategy  # noqa: E402
from tests import model_harness as h  # noqa: E402


def check(name: str, mixed_precision: bool) -> dict:
    tf_keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
    strategy = distribution_strategy(["/cpu:0", "/cpu:1"])
    features, labels = h.random_batch(batch=64)
    dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(32).repeat(3)
    with strategy.scope():
        model = registry.build(name, h.SPEC, h.VOCAB_SIZES, None)
        model.compile(optimizer=tf_keras.optimizers.Adam(1e-3))
    history = model.fit(dataset, epochs=1, verbose=0)
    out = model(features, training=False)
    tf_keras.mixed_precision.set_global_policy("float32")
    return {
        "replicas": strategy.num_replicas_in_sync,
        "loss": float(history.history["loss"][-1]),
        "logit_dtype": out["logit"].dtype.name,
        "finite": bool(np.all(np.isfinite(out["probability"].numpy()))),
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    mixed = "--mixed-precision" in args
    names = [a for a in args if not a.startswith("--")]
    print(json.dumps({name: check(name, mixed) for name in names}))
