"""Layers and functions shared by the models: one place for each.

Masks are always explicit boolean tensors computed from ids (``id != 0``), never Keras implicit
masks, so they survive SavedModel export and reload unchanged.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

NEG_INF = -1e9  # a "minus infinity" for float32 logits
# scores outside a cosine's [-1, 1], given to pad slots so that no ranking of cosines ever picks one
ABOVE_ANY_COSINE, BELOW_ANY_COSINE = 2.0, -2.0
# epsilon of the pre-LN before every W_Q / W_K: far below the variance of embeddings at their init
# scale (normal(0, 1e-4): variance 1e-8), which Keras' default of 1e-3 would swamp, leaving the
# normalised inputs ~3e-3 and the attention uniform; computed in float32 (also under mixed precision)
PRE_LN_EPSILON = 1e-12


def layer_norm_moments(x: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``x`` in float32 with its mean and variance over the last axis: what two pre-LNs of the
    same input share (``pre_layer_norm(..., moments=)``)."""
    x32 = tf.cast(x, tf.float32)
    mean, variance = tf.nn.moments(x32, axes=[-1], keepdims=True)
    return x32, mean, variance


def pre_layer_norm(x: tf.Tensor, gain, bias, moments: Optional[Tuple[tf.Tensor, tf.Tensor, tf.Tensor]] = None) -> tf.Tensor:
    """The pre-LN before every W_Q / W_K (docs/models.md "Attention numerics"): ``x`` normalised over its
    last axis with ``PRE_LN_EPSILON``, times ``gain`` plus ``bias``, computed in float32 (the gain
    and bias are cast to float32 too, also under mixed precision) and returned in ``x``'s dtype.

    ``gain`` and ``bias`` broadcast against ``x``: [D] for one norm, [k, D] for a gain per head.
    ``moments``: ``layer_norm_moments(x)`` when already computed (the result is the same).
    """
    x32, mean, variance = moments if moments is not None else layer_norm_moments(x)
    normed = tf.nn.batch_normalization(
        x32, mean, variance, offset=tf.cast(bias, tf.float32), scale=tf.cast(gain, tf.float32),
        variance_epsilon=PRE_LN_EPSILON,
    )
    return tf.cast(normed, x.dtype)


class PreLayerNorm(tf_keras.layers.Layer):
    """``pre_layer_norm`` with its own float32 gain and bias over the last axis, named ``gamma`` and
    ``beta`` as in Keras' ``LayerNormalization`` (which computes the same: checkpoints keep their
    variable names); inputs are taken in the layer's compute dtype, as Keras does."""

    epsilon = PRE_LN_EPSILON

    def build(self, input_shape):
        dim = (int(input_shape[-1]),)
        self.gamma = self.add_weight(name="gamma", shape=dim, initializer="ones", experimental_autocast=False)
        self.beta = self.add_weight(name="beta", shape=dim, initializer="zeros", experimental_autocast=False)
        super().build(input_shape)

    def call(self, x, moments=None):
        """``moments``: ``layer_norm_moments`` of ``x`` in the compute dtype, when another norm of
        the same ``x`` has them (the result is the same, the moments are computed once)."""
        return pre_layer_norm(tf.cast(x, self.compute_dtype), self.gamma, self.beta, moments)


def masked_softmax(logits: tf.Tensor, mask: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """Softmax over ``axis`` where ``mask`` is False gets exactly 0; an all-masked row gives 0s.

    ``mask`` may be of any shape that broadcasts to ``logits`` (a key mask [B, 1, 1, T] for
    attention logits [B, H, T, T]): the mask is applied as an additive bias and a per-row factor
    of its own shape, so no logits-sized mask is materialised (attention is memory-bound on CPU).
    """
    mask = tf.cast(mask, tf.bool)
    # half the dtype's minimum, not -1e9 (in float16 that is -inf) nor the minimum itself (a
    # negative logit plus the minimum overflows to -inf): masked entries get exp(-huge) = 0
    bias = tf.where(mask, tf.zeros([], logits.dtype), tf.cast(0.5 * logits.dtype.min, logits.dtype))
    any_real = tf.cast(tf.reduce_any(mask, axis=axis, keepdims=True), logits.dtype)
    return tf.nn.softmax(logits + bias, axis=axis) * any_real


def masked_mean(values: tf.Tensor, mask: tf.Tensor, axis: int = 1) -> tf.Tensor:
    """Mean of ``values`` over ``axis`` counting only positions where ``mask`` is True.

    ``mask`` has the shape of ``values`` without its trailing dimensions; an empty row gives 0.
    """
    mask = tf.cast(mask, values.dtype)
    while len(mask.shape) < len(values.shape):
        mask = mask[..., tf.newaxis]
    total = tf.reduce_sum(values * mask, axis=axis)
    count = tf.reduce_sum(mask, axis=axis)
    return tf.math.divide_no_nan(total, count)


def normalized_entropy(weights: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean normalised entropy H / log(n) of attention rows over their n valid keys (1.0 = uniform).

    ``weights`` [..., T] (each row sums to 1 over its valid keys), ``mask`` broadcastable to it
    (True at valid keys). Rows with fewer than two valid keys have no entropy to speak of and are
    left out of the mean; with no such row at all the result is 0. See docs/models.md "Attention numerics".
    """
    weights = tf.cast(weights, tf.float32)
    mask = tf.cast(tf.broadcast_to(tf.cast(mask, tf.bool), tf.shape(weights)), tf.float32)
    entropy = -tf.reduce_sum(mask * tf.math.multiply_no_nan(tf.math.log(weights), weights), axis=-1)
    count = tf.reduce_sum(mask, axis=-1)
    rows = tf.cast(count > 1.5, tf.float32)
    normalised = tf.math.divide_no_nan(entropy, tf.math.log(tf.maximum(count, 1.0))) * rows
    return tf.math.divide_no_nan(tf.reduce_sum(normalised), tf.reduce_sum(rows))


def position_spread(x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Share of a sequence's energy that varies across its real positions (0 = every position alike).

    ``x`` [B, T, ...], ``mask`` [B, T]. Per example ``sum_j ||x_j - mean||^2 / sum_j ||x_j||^2`` over
    the real positions j, averaged over the examples with at least two of them. Attention over keys
    that are all alike has nothing to choose between, so its entropy stays near 1 whatever it learns.
    """
    batch, steps = tf.shape(x)[0], tf.shape(x)[1]
    x = tf.reshape(tf.cast(x, tf.float32), [batch, steps, -1])
    m = tf.cast(mask, tf.float32)[:, :, tf.newaxis]
    count = tf.reduce_sum(m, axis=1)  # [B, 1]
    mean = tf.math.divide_no_nan(tf.reduce_sum(x * m, axis=1), count)
    varying = tf.reduce_sum(m * tf.square(x - mean[:, tf.newaxis, :]), axis=[1, 2])
    total = tf.reduce_sum(m * tf.square(x), axis=[1, 2])
    rows = tf.cast(count[:, 0] > 1.5, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(tf.math.divide_no_nan(varying, total) * rows), tf.reduce_sum(rows))


def flatten_fields(x: tf.Tensor) -> tf.Tensor:
    """[B, d1, ..., dk] -> [B, d1*...*dk] keeping the static width (Dense layers need it)."""
    width = 1
    for dim in x.shape[1:]:
        width *= int(dim)
    return tf.reshape(x, [-1, width])


def cosine_similarity(a: tf.Tensor, b: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """Cosine similarity along ``axis`` (0 for a zero vector, never NaN)."""
    return tf.reduce_sum(tf.math.l2_normalize(a, axis=axis) * tf.math.l2_normalize(b, axis=axis), axis=axis)


# Batch norm with PyTorch's BatchNorm1d defaults, which the papers' code (FuxiCTR) trains with: each
# step moves the running statistics 10% of the way (Keras' default 1% lags ~100 steps behind the
# weights, about one ml1m-seq epoch at batch 4096, so evaluation and serving saw stale statistics).
BATCH_NORM_MOMENTUM = 0.9  # Keras' momentum = 1 - PyTorch's 0.1
BATCH_NORM_EPSILON = 1e-5


class Dice(tf_keras.layers.Layer):
    """DIN's data-adaptive activation (Zhou et al., KDD 2018, eq. 9):
    ``p = sigmoid(BN(x))``, ``f(x) = p * x + (1 - p) * alpha * x`` with ``alpha`` learned per unit
    (initialised to 0) and batch norm without scale or shift. ``eps`` 1e-9 and the running
    statistics' 1% per step follow FuxiCTR's reference implementation."""

    def __init__(self, name: Optional[str] = None):
        super().__init__(name=name)
        self.batch_norm = tf_keras.layers.BatchNormalization(center=False, scale=False, epsilon=1e-9, momentum=0.99)

    def build(self, input_shape):
        self.alpha = self.add_weight(name="alpha", shape=(int(input_shape[-1]),), initializer="zeros")
        super().build(input_shape)

    def call(self, x, training=False):
        p = tf.sigmoid(self.batch_norm(x, training=training))
        return p * x + (1.0 - p) * self.alpha * x


def activation_layer(name: str) -> tf_keras.layers.Layer:
    """A Keras activation by name, or ``"dice"`` for DIN's Dice."""
    return Dice() if name == "dice" else tf_keras.layers.Activation(name)


class MLP(tf_keras.layers.Layer):
    """Dense blocks: Dense -> (BatchNorm) -> activation -> (Dropout), then an optional output.
    ``activation``: a Keras activation name or ``"dice"``."""

    def __init__(
        self,
        units: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        output_units: Optional[int] = None,
        name: Optional[str] = None,
    ):
        super().__init__(name=name)
        self.blocks = []
        for width in units:
            block = [tf_keras.layers.Dense(width, use_bias=not batch_norm)]
            if batch_norm:
                block.append(tf_keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON))
            block.append(activation_layer(activation))
            if dropout:
                block.append(tf_keras.layers.Dropout(dropout))
            self.blocks.append(block)
        self.output_layer = tf_keras.layers.Dense(output_units) if output_units else None

    def call(self, x, training=False):
        for block in self.blocks:
            for layer in block:
                x = layer(x, training=training)
        return self.output_layer(x) if self.output_layer is not None else x


class LogitHead(tf_keras.layers.Layer):
    """An MLP ending in one float32 logit per example (float32 even under mixed precision)."""

    def __init__(self, units: Sequence[int], dropout: float = 0.0, batch_norm: bool = False, name: Optional[str] = None):
        super().__init__(name=name)
        self.mlp = MLP(units, dropout=dropout, batch_norm=batch_norm)
        self.logit = tf_keras.layers.Dense(1, dtype="float32")

    def call(self, x, training=False):
        return tf.squeeze(self.logit(self.mlp(x, training=training)), axis=-1)


class TargetAttention(tf_keras.layers.Layer):
    """DIN's activation unit: score_j = MLP([q, k_j, q - k_j, q * k_j]), pooled over masked keys.

    query [B, D], keys [B, T, D], values [B, T, D'] (defaults to keys), mask [B, T].
    ``normalization="softmax"`` uses a masked softmax; ``None`` keeps DIN's raw (unnormalised)
    weights, zeroed at pad slots. ``pre_norm`` layer-normalises the query and the keys before the
    MLP (like the pre-LN before W_Q / W_K, docs/models.md: at the embeddings' init scale the scores are
    otherwise all alike and a softmax stays uniform); the values are pooled as they are.
    Returns (pooled [B, D'], weights [B, T]).
    """

    def __init__(self, units: Sequence[int] = (64, 32), activation: str = "sigmoid", normalization: Optional[str] = "softmax",
                 pre_norm: bool = False, name: Optional[str] = None):
        super().__init__(name=name)
        if normalization not in ("softmax", None):
            raise ValueError(f"normalization must be 'softmax' or None, got {normalization!r}")
        self.normalization = normalization
        self.norms = (
            PreLayerNorm(name="pre_ln_query"),
            PreLayerNorm(name="pre_ln_keys"),
        ) if pre_norm else None
        self.score = MLP(units, activation=activation, output_units=1)

    def call(self, query, keys, mask, values=None, training=False):
        values = keys if values is None else values
        if self.norms is not None:
            query, keys = self.norms[0](query), self.norms[1](keys)
        steps = tf.shape(keys)[1]
        q = tf.tile(query[:, tf.newaxis, :], [1, steps, 1])
        scores = tf.squeeze(self.score(tf.concat([q, keys, q - keys, q * keys], axis=-1), training=training), -1)
        if self.normalization == "softmax":
            weights = masked_softmax(scores, mask)
        else:
            weights = scores * tf.cast(mask, scores.dtype)
        return tf.einsum("bt,btd->bd", weights, values), weights


class MultiHeadAttention(tf_keras.layers.Layer):
    """Scaled dot-product multi-head attention with an explicit key mask.

    query [B, Tq, D], key/value [B, Tk, D], key_mask [B, Tk]. Scaled by sqrt(head dimension).
    The inputs to W_Q and W_K are layer-normalised first (pre-LN, docs/models.md "Attention numerics"):
    embeddings at their init scale would otherwise give logits near 0 and a uniform softmax for
    the whole run. Values are not normalised. Returns (output [B, Tq, D_out], weights [B, H, Tq, Tk]).
    """

    def __init__(self, num_heads: int, head_dim: int, output_dim: Optional[int] = None, name: Optional[str] = None):
        super().__init__(name=name)
        self.num_heads, self.head_dim = num_heads, head_dim
        width = num_heads * head_dim
        self.norm_q = PreLayerNorm(name="pre_ln_q")
        self.norm_k = PreLayerNorm(name="pre_ln_k")
        self.w_q = tf_keras.layers.Dense(width, use_bias=False, name="W_Q")
        self.w_k = tf_keras.layers.Dense(width, use_bias=False, name="W_K")
        self.w_v = tf_keras.layers.Dense(width, use_bias=False, name="W_V")
        self.w_o = tf_keras.layers.Dense(output_dim, use_bias=False, name="W_O") if output_dim else None

    def _split(self, x):
        batch, steps = tf.shape(x)[0], tf.shape(x)[1]
        return tf.transpose(tf.reshape(x, [batch, steps, self.num_heads, self.head_dim]), [0, 2, 1, 3])

    def call(self, query, key, value, key_mask):
        scale = tf.math.rsqrt(tf.cast(self.head_dim, query.dtype))  # on q: [B, Tq, D], not the logits
        # self-attention: the two pre-LNs share the input's moments (their gains and biases differ)
        moments = layer_norm_moments(tf.cast(query, self.norm_q.compute_dtype)) if key is query else None
        q = self._split(self.w_q(self.norm_q(query, moments)) * scale)
        k, v = self._split(self.w_k(self.norm_k(key, moments))), self._split(self.w_v(value))
        logits = tf.einsum("bhqd,bhkd->bhqk", q, k)
        weights = masked_softmax(logits, key_mask[:, tf.newaxis, tf.newaxis, :])
        out = tf.einsum("bhqk,bhkd->bhqd", weights, v)
        batch, steps = tf.shape(out)[0], tf.shape(out)[2]
        out = tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [batch, steps, self.num_heads * self.head_dim])
        return (self.w_o(out) if self.w_o is not None else out), weights
