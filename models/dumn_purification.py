"""DUMN's feature purification layer (section 3.3): each feedback sequence's self-attention and
target-aware pooling (eq. 1-5), and the orthogonal mapping between paired sequences (eq. 6-7).

See ``models.dumn.DUMN`` for the deviations from the paper (pre-LN, W_c split by rows, project(a, 0) = 0).
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf
import tf_keras

from models.layers import MultiHeadAttention, PreLayerNorm, masked_softmax


def orthogonal_map(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Eq. 6-7: ``a - project(a, b)``, ``project(a, b) = (a.b / |b|^2) b``, along the last axis.

    A zero ``b`` (a user with no explicit feedback of that type) projects to 0, so ``a`` is
    returned exactly, with finite gradients. Computed in float32, returned in ``a``'s dtype.
    """
    a32, b32 = tf.cast(a, tf.float32), tf.cast(b, tf.float32)
    coefficient = tf.math.divide_no_nan(
        tf.reduce_sum(a32 * b32, axis=-1, keepdims=True), tf.reduce_sum(b32 * b32, axis=-1, keepdims=True)
    )
    return tf.cast(a32 - coefficient * b32, a.dtype)


class FeedbackEncoder(tf_keras.layers.Layer):
    """Eq. 1-5 for one feedback sequence in two calls: self-attention (eq. 1-2, the user's side
    alone), then target-aware attention pooling -> f (eq. 3-5)."""

    def __init__(self, num_heads: int, head_dim: int, width: int, interaction: bool = True, name: Optional[str] = None):
        super().__init__(name=name)
        self.self_attention = MultiHeadAttention(num_heads, head_dim, output_dim=width, name="self_attention")
        # W_c of eq. 3 split by rows: Concat(e_user, e_item, o_j) W_c = [e_user, e_item] W_c^q + o_j W_c^o
        self.W_c_query = tf_keras.layers.Dense(1, use_bias=False, name="W_c_query")
        self.W_c_sequence = tf_keras.layers.Dense(1, use_bias=False, name="W_c_sequence")
        # o_j enters the scores layer-normalised (docs/models.md "Attention numerics" applied to eq. 3)
        self.norm_o = PreLayerNorm(name="pre_ln_o")
        self.interaction = interaction
        if interaction:  # the rows of W_c for the extra block e_item (.) o_j (models.dumn.DUMN)
            self.W_c_interaction = tf_keras.layers.Dense(1, use_bias=False, name="W_c_interaction")
            self.norm_target = PreLayerNorm(name="pre_ln_target")

    def build(self, input_shape):
        width = int(input_shape[-1])  # e_x's width, also O_x's (eq. 2's W_F maps back to it)
        for layer in (self.W_c_sequence, self.norm_o, *((self.W_c_interaction, self.norm_target) if self.interaction else ())):
            layer.build((None, width))  # their weights are read directly (``_normalized_sequence_scores``)
        super().build(input_shape)

    def _normalized_sequence_scores(self, o, target):
        """[B, T] float32: the terms of eq. 3 that read LN(o_j), ``LN(o_j) W_c^o`` plus, with the
        interaction, ``(LN(e_item) (.) LN(o_j)) W_c^int``.

        Both are ``LN(o_j) . u`` with u [B, D] = W_c^o + LN(e_item) (.) W_c^int, and with
        ``LN(o_j) = gamma (.) (o_j - mean_j) / std_j + beta``, ``LN(o_j) . u = (o_j . g - mean_j
        sum(g)) / std_j + beta . u`` where g = gamma (.) u: the same numbers (to float rounding) without
        materialising LN(o) [B, T, D], which cost DUMN more than its pooling itself.
        """
        o32 = tf.cast(o, tf.float32)
        mean, variance = tf.nn.moments(o32, axes=[-1])  # [B, T]
        u = tf.transpose(tf.cast(self.W_c_sequence.kernel, tf.float32))  # [1, D]
        if self.interaction:
            u += tf.cast(self.norm_target(target), tf.float32) * tf.transpose(tf.cast(self.W_c_interaction.kernel, tf.float32))
        u = tf.broadcast_to(u, [tf.shape(o32)[0], tf.shape(u)[1]])  # [B, D]
        g = self.norm_o.gamma * u
        dot = tf.einsum("btd,bd->bt", o32, g)
        return (dot - mean * tf.reduce_sum(g, -1, keepdims=True)) * tf.math.rsqrt(variance + self.norm_o.epsilon) + tf.reduce_sum(
            self.norm_o.beta * u, -1, keepdims=True
        )

    def call(self, x, mask, query=None, target=None):
        """Without ``query``: eq. 1-2, ``x`` is e_x and the result (O_x [B, T, D], the attention
        weights [B, H, T, T]) (the user's side alone). With ``query`` [B, Q] (= [e_user, e_item])
        and ``target`` [B, D] (= e_item): eq. 3-5, ``x`` is O_x and the result (f [B, D], alpha [B, T])."""
        if query is None:
            return self.self_attention(x, x, x, key_mask=mask)  # eq. 1-2
        logits = tf.cast(self.W_c_query(query), tf.float32) + self._normalized_sequence_scores(x, target)
        scores = tf.nn.relu(logits)  # eq. 3
        alpha = tf.cast(masked_softmax(scores, mask), x.dtype)  # eq. 4
        return tf.einsum("bt,btd->bd", alpha, x), alpha  # eq. 5
