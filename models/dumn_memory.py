"""DUMN's user memory network (section 3.4, eq. 8-12 and the anchor of eq. 18), after NTM:
content addressing with a key strength, the read, the batch-averaged erase/add write, and the
memory layer that holds M with its controller, heads and triplet term.

See ``models.dumn.DUMN`` for the deviations from the paper (key strength, orthogonal start,
batch-averaged write, read-then-write order).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import tensorflow as tf
import tf_keras

from models.dumn_triplet import TripletSamples, triplet_loss


def key_strength(logit: tf.Tensor) -> tf.Tensor:
    """NTM's key strength ``beta = 1 + softplus(logit)`` (docs/models.md, v2): >= 1, so addressing is
    never flatter than the paper's eq. 9 (beta = 1), and as sharp as the controller makes it."""
    return 1.0 + tf.nn.softplus(logit)


def content_addressing(key: tf.Tensor, memory: tf.Tensor, beta: tf.Tensor) -> tf.Tensor:
    """Eq. 9-10 with key strength: ``w(j) = softmax_j(beta * cos(k, M(j)))``.

    key [B, Z], memory [m, Z], beta [B, 1] (or a scalar) -> weights [B, m].
    """
    cosine = tf.matmul(tf.math.l2_normalize(key, axis=-1), tf.math.l2_normalize(memory, axis=-1), transpose_b=True)
    return tf.nn.softmax(beta * cosine, axis=-1)


def memory_read(weights: tf.Tensor, memory: tf.Tensor) -> tf.Tensor:
    """Eq. 11 / 18: ``sum_j w(j) M(j)``; weights [B, m], memory [m, Z] -> [B, Z]."""
    return tf.matmul(weights, memory)


def memory_write(memory: tf.Tensor, weights: tf.Tensor, erase: tf.Tensor, add: tf.Tensor, writes: tf.Tensor) -> tf.Tensor:
    """Eq. 12, batch-averaged: ``M' = (1 - E) * M + A`` with
    ``E = 1/B sum_b [writes_b] w_b (x) erase_b`` and ``A = 1/B sum_b [writes_b] w_b (x) add_b``.

    memory [m, Z], weights [B, m], erase/add [B, Z], writes [B] bool (a user who does not write
    contributes a zero erase and a zero add). The average is over the whole batch B, so the mean
    of equal-sized replicas' updates is exactly the global batch's update (MirroredStrategy).
    """
    writes = tf.cast(writes, weights.dtype)[:, tf.newaxis]
    batch = tf.cast(tf.shape(weights)[0], weights.dtype)
    weighted = weights * writes / batch
    E = tf.matmul(weighted, erase, transpose_a=True)  # [m, Z]
    A = tf.matmul(weighted, add, transpose_a=True)
    return (1.0 - E) * memory + A


def mean_slot_cosine(memory: tf.Tensor) -> tf.Tensor:
    """Diagnostic: the mean cosine between two distinct slots of memory [m, Z] (0 for m = 1).

    About 0 for orthogonal slots; 1 when every slot holds the same direction (a collapsed memory
    reads the same r for every user).
    """
    unit = tf.math.l2_normalize(memory, axis=-1)
    gram = tf.matmul(unit, unit, transpose_b=True)
    off_diagonal = tf.linalg.set_diag(gram, tf.zeros_like(gram[0]))
    slots = tf.cast(tf.shape(memory)[0], memory.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(off_diagonal), slots * (slots - 1.0))


class MemoryAccess(NamedTuple):
    """What one memory gives for a batch (eq. 9-11, 17-18)."""

    r: tf.Tensor  # [B, Z] float32, eq. 11
    read_weights: tf.Tensor  # w_r [B, m], eq. 9
    memory: tf.Tensor  # M [m, Z] as read: the state before this batch's write
    triplet: Optional[tf.Tensor] = None  # eq. 17, mean over the examples with a term; None without samples
    has_triplet: Optional[tf.Tensor] = None  # [B] bool: the examples with a term


class UserMemory(tf_keras.layers.Layer):
    """One memory of the user memory network (eq. 8-12, 18) with its controller, heads and triplet term.

    ``M`` [m, Z] is model state shared by all users: a non-trainable float32 variable, mirrored
    under MirroredStrategy (ON_WRITE, MEAN: every replica assigns its batch update and all see
    their average), initialised orthogonal. It is assigned only when ``training=True``.
    """

    def __init__(
        self,
        slots: int,
        slot_dim: int,
        controller_units: int,
        strength_init: float,
        margin: float,
        mining: str,
        name: Optional[str] = None,
    ):
        super().__init__(name=name)
        self.slots, self.slot_dim, self.margin, self.mining = slots, slot_dim, margin, mining
        self.controller = tf_keras.layers.Dense(controller_units, activation="relu", name="controller")  # eq. 8
        # the strength heads start at beta = strength_init: their bias is softplus^-1(strength_init - 1)
        strength_bias = tf_keras.initializers.Constant(math.log(math.expm1(strength_init - 1.0)))
        self.read_key = tf_keras.layers.Dense(slot_dim, name="read_key")  # k of eq. 8
        self.read_strength = tf_keras.layers.Dense(1, bias_initializer=strength_bias, name="read_strength")  # beta
        self.write_key = tf_keras.layers.Dense(slot_dim, name="write_key")  # key of w_w (eq. 12)
        self.write_strength = tf_keras.layers.Dense(1, bias_initializer=strength_bias, name="write_strength")
        self.erase_head = tf_keras.layers.Dense(slot_dim, activation="sigmoid", name="erase_head")
        self.add_head = tf_keras.layers.Dense(slot_dim, activation="tanh", name="add_head")
        self.item_projection = tf_keras.layers.Dense(slot_dim, use_bias=False, name="item_projection")  # s -> Z

    def build(self, input_shape):
        self.M = self.add_weight(
            name="M",
            shape=[self.slots, self.slot_dim],
            dtype=tf.float32,
            # orthonormal slots (m <= Z), or orthonormal columns (m > Z: a tight frame)
            initializer=tf_keras.initializers.Orthogonal(),
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_WRITE,
            aggregation=tf.VariableAggregation.MEAN,
            experimental_autocast=False,  # memory math is float32 under mixed precision too
        )
        super().build(input_shape)

    def address(self, h, key_head, strength_head, M):
        """Eq. 9-10 for one head: weights [B, m] from the key and key strength the controller gives."""
        beta = key_strength(tf.cast(strength_head(h), tf.float32))  # [B, 1]
        return content_addressing(tf.cast(key_head(h), tf.float32), M, beta)

    def call(self, f_o, e_user, writes, samples: Optional[TripletSamples] = None, training=False) -> MemoryAccess:
        """``writes`` [B] bool: users who write (eq. 12). ``samples``: the items for this memory's
        triplet term (eq. 17), or None for no term."""
        M = tf.convert_to_tensor(self.M)  # read once: the state before this batch's write
        h = self.controller(tf.concat([f_o, e_user], axis=-1))  # eq. 8
        w_r = self.address(h, self.read_key, self.read_strength, M)  # eq. 9-10
        read = MemoryAccess(r=memory_read(w_r, M), read_weights=w_r, memory=M)  # eq. 11
        if not (training or samples is not None):
            return read
        w_w = self.address(h, self.write_key, self.write_strength, M)
        erase, add = tf.cast(self.erase_head(h), tf.float32), tf.cast(self.add_head(h), tf.float32)
        M_updated = memory_write(M, w_w, erase, add, writes)  # eq. 12
        if training:
            self.M.assign(tf.stop_gradient(M_updated))  # replica context: the replicas' mean is stored
        if samples is None:
            return read
        q = memory_read(w_w, M_updated)  # eq. 18: anchor from the updated memory
        loss, has_term = triplet_loss(
            q,
            self.item_projection(samples.positives),
            samples.positive_mask,
            self.item_projection(samples.negatives),
            samples.negative_mask,
            self.margin,
            self.mining,
        )
        return read._replace(triplet=loss, has_triplet=has_term)
