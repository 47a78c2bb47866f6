"""FADIDN's attribute gate (eq. 1), computed exactly once per distinct (attribute, id, gap bucket)
of the batch and gathered back (docs/models.md "FADIDN"; ``AttributeGate`` says why this
granularity).
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf
import tf_keras

LEAKY_SLOPE = 0.01  # LeakyReLU slope: PyTorch's default (the paper's implementation is in PyTorch)


def gate_ids(ids: tf.Tensor, gap: tf.Tensor, mask: tf.Tensor, gap_vocabulary: int) -> tf.Tensor:
    """The int64 key of each (position, attribute) that ``AttributeGate`` deduplicates on.

    ids [B, T, N] (attribute n's index at each position), gap [B, T] (gap bucket, < ``gap_vocabulary``),
    mask [B, T]. At a real position the key is ``(id * gap_vocabulary + gap) * N + n`` >= 0, equal for
    two (position, attribute) pairs exactly when attribute, id and gap bucket are (so exactly when
    their rows of E_cp are: ``E_c^n[id] + E_gap[gap]``); pads, whose E_cp row is 0 whatever their ids,
    get ``-(n + 1)``, one key per attribute. Returns [B, T, N] int64 (exact while
    id < 2^63 / (gap_vocabulary * N), i.e. for any realistic vocabulary).
    """
    num_attributes = ids.shape[-1]
    attribute = tf.range(num_attributes, dtype=tf.int64)
    ids, gap = tf.cast(ids, tf.int64), tf.cast(gap, tf.int64)
    key = (ids * gap_vocabulary + gap[..., tf.newaxis]) * num_attributes + attribute
    return tf.where(mask[..., tf.newaxis], key, -1 - attribute)


def softmax_across_attributes(scores: tf.Tensor) -> tf.Tensor:
    """Softmax over axis -2 (the N attributes) of [..., N, E], written out: ``tf.nn.softmax`` on a
    non-last axis transposes to rows of length N and is ~5x slower on CPU for N = 3 (measured
    fwd+bwd on [4096, 50, 3, 16]: 378 ms against 79 ms); the max is the usual stabiliser."""
    exp = tf.exp(scores - tf.stop_gradient(tf.reduce_max(scores, axis=-2, keepdims=True)))
    return exp / tf.reduce_sum(exp, axis=-2, keepdims=True)


class AttributeGate(tf_keras.layers.Layer):
    """Eq. 1: ``w^n = softmax(LeakyReLU(W_l g_{l-1} + b_l))``, ``g_0 = E_cp^n``, per position.

    The same MLP scores every attribute (W_l carries no n in the paper); the softmax is taken
    across the N attributes (axis -2 of [..., N, E]), per position and embedding dimension.

    Deduplicated, exactly: the MLP's output for (position t, attribute n) is a function of the row
    ``E_cp^n[t] = E_c^n[id] + E_gap[gap]`` alone, so it is computed once per distinct
    (n, id, gap) key of the batch (``gate_ids``) and gathered back; the softmax, which couples the
    N attributes of one position, runs after the gather on the position's own N logits. This is the
    finer of the two exact granularities: a key on the whole position (all N ids and the gap)
    would run the MLP N times per distinct position, whereas per attribute the low-cardinality
    attributes (genre, year: tens of ids x gap buckets) collapse to a few hundred rows and only
    item_id keeps many; the gather and the softmax are cheap element-wise work either way.
    """

    def __init__(self, hidden_units: Sequence[int], output_dim: int, name: Optional[str] = None):
        super().__init__(name=name)
        self.hidden = [tf_keras.layers.Dense(units, name=f"W_{l + 1}") for l, units in enumerate(hidden_units)]
        self.output_layer = tf_keras.layers.Dense(output_dim, name=f"W_{len(hidden_units) + 1}")

    def logits(self, g):
        """``LeakyReLU(W_L g_{L-1} + b_L)`` of eq. 1 for rows g_0 [..., E]: the scores before the softmax."""
        for dense in self.hidden:
            g = tf.nn.leaky_relu(dense(g), alpha=LEAKY_SLOPE)
        return tf.nn.leaky_relu(self.output_layer(g), alpha=LEAKY_SLOPE)

    def call(self, E_cp, ids):
        """E_cp [B, T, N, E] and its keys ``ids`` [B, T, N] (``gate_ids``) -> w [B, T, N, E]."""
        num_attributes, dim = E_cp.shape[2], E_cp.shape[3]
        flat_ids = tf.reshape(ids, [-1])
        distinct, index = tf.unique(flat_ids)  # index: the distinct key of every (position, attribute)
        first = tf.math.unsorted_segment_min(tf.range(tf.size(flat_ids)), index, tf.size(distinct))
        rows = tf.gather(tf.reshape(E_cp, [-1, dim]), first)  # one g_0 per distinct key
        scores = tf.gather(self.logits(rows), index)
        scores = tf.reshape(scores, tf.concat([tf.shape(E_cp)[:2], [num_attributes, dim]], axis=0))
        return softmax_across_attributes(scores)
