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

    def call(self, x, mask, query=None, target=None):
        """Without ``query``: eq. 1-2, ``x`` is e_x and the result (O_x [B, T, D], the attention
        weights [B, H, T, T]) (the user's side alone). With ``query`` [B, Q] (= [e_user, e_item])
        and ``target`` [B, D] (= e_item): eq. 3-5, ``x`` is O_x and the result (f [B, D], alpha [B, T])."""
        if query is None:
            return self.self_attention(x, x, x, key_mask=mask)  # eq. 1-2
        o = self.norm_o(x)
        logits = self.W_c_query(query)[:, tf.newaxis, :] + self.W_c_sequence(o)
        if self.interaction:
            logits += self.W_c_interaction(self.norm_target(target)[:, tf.newaxis, :] * o)
        scores = tf.nn.relu(logits)  # eq. 3
        alpha = masked_softmax(tf.squeeze(scores, -1), mask)  # eq. 4
        return tf.einsum("bt,btd->bd", alpha, x), alpha  # eq. 5
