"""Every model trains under MirroredStrategy with two replicas, in float32 and mixed precision."""
import math

import pytest

from models import registry
from tests import distributed_check

MIXED = "--mixed-precision"


def train_two_replicas(*args: str) -> dict:
    """(Runs in the harness's process.) Trains each model named in ``args`` a few steps; with
    ``--mixed-precision`` under the mixed_float16 policy."""
    import numpy as np
    import tensorflow as tf
    import tf_keras

    from models.trainer import create_variables
    from tests import model_harness as h

    policy = "mixed_float16" if MIXED in args else "float32"
    results = {}
    for name in (a for a in args if a != MIXED):
        tf_keras.mixed_precision.set_global_policy(policy)
        strategy = distributed_check.strategy()
        features, labels = h.random_batch(batch=64)
        dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(32).repeat(3)
        with strategy.scope():
            model = registry.build(name, h.SPEC, h.VOCAB_SIZES, None)
            model.compile(optimizer=tf_keras.optimizers.Adam(1e-3))
            create_variables(model, dataset)  # as the Trainer does, on the replicas' variables
        history = model.fit(dataset, epochs=1, verbose=0)
        out = model(features, training=False)
        tf_keras.mixed_precision.set_global_policy("float32")
        results[name] = {
            "replicas": strategy.num_replicas_in_sync,
            "loss": float(history.history["loss"][-1]),
            "logit_dtype": out["logit"].dtype.name,
            "finite": bool(np.all(np.isfinite(out["probability"].numpy()))),
        }
    return results


@pytest.mark.slow
@pytest.mark.parametrize("mixed_precision", [False, True], ids=["float32", "mixed_float16"])
def test_all_models_train_on_two_replicas(mixed_precision):
    names = list(registry.names())
    results = distributed_check.run("tests.test_distributed:train_two_replicas", *([MIXED] if mixed_precision else []), *names)
    for name in names:
        r = results[name]
        assert r["replicas"] == 2, name
        assert math.isfinite(r["loss"]) and r["finite"], (name, r)
        assert r["logit_dtype"] == "float32", (name, r)
