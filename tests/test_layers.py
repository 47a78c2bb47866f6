"""Shared layers: the masked softmax every attention in the models relies on, and the MLP's batch norm."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import pytest
import tensorflow as tf

from models import layers
from models.layers import MLP, masked_softmax
from tests.model_harness import reference_layer_norm


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


# ---- normalised entropy (the attention diagnostic) ------------------------------------------------
def test_normalised_entropy_is_one_for_uniform_rows_and_zero_for_one_hot_rows():
    from models.layers import normalized_entropy

    mask = tf.constant([[True, True, True, False], [True, True, True, True]])
    uniform = tf.constant([[1 / 3, 1 / 3, 1 / 3, 0.0], [0.25] * 4])
    one_hot = tf.constant([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    assert float(normalized_entropy(uniform, mask)) == pytest.approx(1.0, abs=1e-6)
    assert float(normalized_entropy(one_hot, mask)) == pytest.approx(0.0, abs=1e-6)
    # H([0.5, 0.5, 0]) / log 3 on row 0, 1.0 on row 1
    half = tf.constant([[0.5, 0.5, 0.0, 0.0], [0.25] * 4])
    assert float(normalized_entropy(half, mask)) == pytest.approx((np.log(2) / np.log(3) + 1.0) / 2, abs=1e-6)


def test_normalised_entropy_leaves_out_rows_with_fewer_than_two_keys():
    from models.layers import normalized_entropy

    mask = tf.constant([[True, False, False], [False, False, False], [True, True, False]])
    weights = tf.constant([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    assert float(normalized_entropy(weights, mask)) == pytest.approx(1.0, abs=1e-6)
    assert float(normalized_entropy(weights[:2], mask[:2])) == 0.0  # no row to average: 0, not NaN


# ---- multi-head attention ------------------------------------------------------------------------
def _reference_mha(layer, query, key, value, key_mask):
    """Per head in numpy: softmax over valid keys of LN(q) W_Q (LN(k) W_K)^T / sqrt(head_dim), times V."""
    def layer_norm(x, norm):
        return reference_layer_norm(x, norm.gamma.numpy(), norm.beta.numpy(), norm.epsilon)

    WQ, WK, WV = (w.kernel.numpy() for w in (layer.w_q, layer.w_k, layer.w_v))
    q, k, v = layer_norm(query, layer.norm_q) @ WQ, layer_norm(key, layer.norm_k) @ WK, value @ WV
    heads, dim = layer.num_heads, layer.head_dim
    batch, steps = query.shape[:2]
    out = np.zeros((batch, steps, heads * dim))
    weights = np.zeros((batch, heads, steps, key.shape[1]))
    for b in range(batch):
        for h in range(heads):
            cols = slice(h * dim, (h + 1) * dim)
            logits = q[b, :, cols] @ k[b, :, cols].T / np.sqrt(dim)
            weights[b, h] = reference_masked_softmax(logits, key_mask[b][np.newaxis, :])
            out[b, :, cols] = weights[b, h] @ v[b, :, cols]
    return out, weights


def test_multi_head_attention_matches_a_per_head_reference_with_masking_and_scaling():
    from models.layers import MultiHeadAttention

    rng = np.random.default_rng(0)
    query = rng.normal(size=(3, 4, 6)).astype(np.float32)
    key = rng.normal(size=(3, 5, 6)).astype(np.float32)
    value = rng.normal(size=(3, 5, 6)).astype(np.float32)
    key_mask = np.array([[True] * 5, [True, True, False, False, False], [False, True, False, True, True]])
    layer = MultiHeadAttention(num_heads=2, head_dim=3)
    out, weights = layer(query, key, value, tf.constant(key_mask))
    expected_out, expected_weights = _reference_mha(layer, query, key, value, key_mask)
    np.testing.assert_allclose(weights.numpy(), expected_weights, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.numpy(), expected_out, rtol=1e-4, atol=1e-5)
    assert np.all(weights.numpy()[1, :, :, 2:] == 0.0)  # masked keys get no weight in any head
    # the two heads attend differently (separate projections)
    assert np.abs(weights.numpy()[:, 0] - weights.numpy()[:, 1]).max() > 1e-3


def test_self_attention_shares_the_pre_ln_moments_and_keeps_each_norms_gain():
    """Query and key the same tensor (DUMN's eq. 1-2): the two pre-LNs reuse one mean and variance,
    and the result is the reference's and, to the bit, that of the same call with a copy of the key."""
    from models.layers import MultiHeadAttention

    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(3, 5, 6)).astype(np.float32))
    key_mask = np.array([[True] * 5, [True, True, False, False, False], [False, True, False, True, True]])
    layer = MultiHeadAttention(num_heads=2, head_dim=3)
    layer(x, x, x, tf.constant(key_mask))
    for norm in (layer.norm_q, layer.norm_k):  # distinct gains and biases: sharing must not merge them
        norm.gamma.assign(rng.normal(size=6).astype(np.float32))
        norm.beta.assign(rng.normal(size=6).astype(np.float32))
    out, weights = layer(x, x, x, tf.constant(key_mask))
    copy_out, copy_weights = layer(x, tf.identity(x), x, tf.constant(key_mask))
    np.testing.assert_array_equal(out.numpy(), copy_out.numpy())
    np.testing.assert_array_equal(weights.numpy(), copy_weights.numpy())
    expected_out, expected_weights = _reference_mha(layer, x.numpy(), x.numpy(), x.numpy(), key_mask)
    np.testing.assert_allclose(weights.numpy(), expected_weights, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.numpy(), expected_out, rtol=1e-4, atol=1e-5)


def test_pre_ln_gives_non_uniform_attention_at_the_embeddings_init_scale():
    """Embeddings start normal(0, 1e-4): without the pre-LN the logits would be ~1e-8 and every
    row uniform; with it the attention at initialisation is already measurably non-uniform."""
    from models.layers import MultiHeadAttention, normalized_entropy

    rng = np.random.default_rng(1)
    x = (1e-4 * rng.normal(size=(8, 10, 16))).astype(np.float32)
    mask = tf.ones([8, 10], tf.bool)
    tf.random.set_seed(0)
    _, weights = MultiHeadAttention(num_heads=2, head_dim=8)(x, x, x, mask)
    assert float(normalized_entropy(weights, mask[:, tf.newaxis, tf.newaxis, :])) < 0.99


def test_dice_is_p_x_plus_one_minus_p_alpha_x():
    from models.layers import Dice

    x = tf.constant([[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0]])
    dice = Dice()
    dice(x, training=True)
    dice.alpha.assign([0.5, -0.25])
    got = dice(x, training=True).numpy()
    mean, var = x.numpy().mean(0), x.numpy().var(0)
    p = 1 / (1 + np.exp(-(x.numpy() - mean) / np.sqrt(var + 1e-9)))
    np.testing.assert_allclose(got, p * x.numpy() + (1 - p) * np.array([0.5, -0.25]) * x.numpy(), rtol=1e-5)


# ---- the pre-LN before W_Q / W_K -------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_pre_layer_norm_is_keras_layer_normalization_to_the_bit(policy):
    """``PreLayerNorm`` gives what Keras' LayerNormalization with the same epsilon, gain and bias
    gives, bit for bit, also under mixed precision (float16 in and out, float32 gain and math)."""
    import tf_keras

    from models.layers import PRE_LN_EPSILON, PreLayerNorm

    rng = np.random.default_rng(2)
    x = (1e-4 * rng.normal(size=(4, 5, 6))).astype(np.float32)
    tf_keras.mixed_precision.set_global_policy(policy)
    try:
        ours, keras = PreLayerNorm(), tf_keras.layers.LayerNormalization(epsilon=PRE_LN_EPSILON)
        ours(x), keras(x)
        gain, bias = rng.uniform(0.5, 1.5, size=6), rng.normal(size=6)
        for layer in (ours, keras):
            layer.gamma.assign(gain)
            layer.beta.assign(bias)
        assert [w.dtype for w in ours.weights] == [tf.float32, tf.float32]
        got, expected = ours(x), keras(x)
        assert got.dtype == expected.dtype == ours.compute_dtype
        np.testing.assert_array_equal(got.numpy(), expected.numpy())
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")


def test_pre_layer_norm_with_a_gain_per_head_in_float32_from_float16():
    from models.layers import PRE_LN_EPSILON, pre_layer_norm

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 3, 4))  # [B, l, k heads, d]
    gain, bias = rng.uniform(0.5, 1.5, size=(3, 4)), rng.normal(size=(3, 4))
    got = pre_layer_norm(tf.constant(x, tf.float32), tf.constant(gain, tf.float32), tf.constant(bias, tf.float32))
    np.testing.assert_allclose(got.numpy(), reference_layer_norm(x, gain, bias, PRE_LN_EPSILON), rtol=1e-5, atol=1e-5)
    half = pre_layer_norm(tf.constant(x, tf.float16), tf.constant(gain, tf.float32), tf.constant(bias, tf.float32))
    assert half.dtype == tf.float16
    np.testing.assert_allclose(half.numpy(), reference_layer_norm(x.astype(np.float16), gain, bias, PRE_LN_EPSILON), atol=5e-3)


def test_position_spread_measures_how_much_positions_differ():
    alike = tf.tile(tf.constant([[[1.0, 2.0]]]), [1, 3, 1])
    mask = tf.constant([[True, True, True]])
    assert float(layers.position_spread(alike, mask)) == pytest.approx(0.0, abs=1e-7)
    opposite = tf.constant([[[1.0, 0.0], [-1.0, 0.0], [50.0, 50.0]]])  # the third position is padding
    assert float(layers.position_spread(opposite, tf.constant([[True, True, False]]))) == pytest.approx(1.0)
    # examples with fewer than two real positions are left out of the mean
    mixed = tf.concat([opposite, alike], axis=0)
    assert float(layers.position_spread(mixed, tf.constant([[True, True, False], [True, False, False]]))) == pytest.approx(1.0)
