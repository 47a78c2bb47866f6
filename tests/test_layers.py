"""Shared layers: the masked softmax every attention in the models relies on, and the MLP's batch norm."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import pytest
import tensorflow as tf

from models.layers import MLP, masked_softmax


def reference_masked_softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mask = np.broadcast_to(mask, logits.shape)
    shifted = np.where(mask, logits, -np.inf)
    top = np.max(shifted, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    exp = np.where(mask, np.exp(shifted - top), 0.0)
    total = exp.sum(axis=-1, keepdims=True)
    return np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_masked_softmax_with_a_broadcast_key_mask(dtype):
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(3, 2, 4, 5)).astype(np.float32)  # [B, H, Tq, Tk]
    mask = rng.random((3, 1, 1, 5)) < 0.6
    mask[1] = False  # a user with no real key: every weight is 0, not NaN
    mask[2, ..., 0] = True
    got = masked_softmax(tf.constant(logits, dtype), tf.constant(mask)).numpy().astype(np.float32)
    expected = reference_masked_softmax(logits, mask)
    np.testing.assert_allclose(got, expected, atol=2e-3 if dtype == "float16" else 1e-6)
    assert np.all(got[np.broadcast_to(~mask, got.shape)] == 0.0)  # exactly 0 at pads
    np.testing.assert_allclose(got[0].sum(-1), 1.0, rtol=2e-3)


def test_masked_softmax_gives_pad_logits_no_gradient():
    logits = tf.Variable([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0]])
    mask = tf.constant([[True, False, True], [False, False, False]])
    with tf.GradientTape() as tape:
        weights = masked_softmax(logits, mask)
        loss = tf.reduce_sum(weights * tf.constant([[1.0, 5.0, -2.0], [1.0, 2.0, 3.0]]))
    grad = tape.gradient(loss, logits).numpy()
    assert grad[0, 1] == 0.0 and np.all(grad[1] == 0.0)
    assert grad[0, 0] != 0.0


def test_batch_norm_statistics_catch_up_with_training_within_fifty_steps():
    """Evaluation (and serving) uses the running statistics: after 50 training steps on data whose
    scale moved they must give what training gives (Keras' default momentum 0.99 would still be
    40% off; see models.layers.BATCH_NORM_MOMENTUM)."""
    tf.random.set_seed(0)
    mlp = MLP((8,), batch_norm=True, activation="linear")
    x = tf.random.normal([256, 4], mean=3.0, stddev=4.0)
    for _ in range(50):
        training_output = mlp(x, training=True)  # updates the running mean and variance
    np.testing.assert_allclose(mlp(x, training=False).numpy(), training_output.numpy(), atol=0.05)
