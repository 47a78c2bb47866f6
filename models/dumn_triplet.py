"""DUMN's triplet loss (section 3.6, eq. 17-19) mined in each user's own pools.

See ``models.dumn.DUMN`` for the deviations from the paper (per-user pools, every pair rather than
the hardest by default, examples without a term left out of the mean).
"""
from __future__ import annotations

import typing
from typing import NamedTuple, Tuple

import tensorflow as tf

from contract.model_params import TripletMining
from models.layers import ABOVE_ANY_COSINE, BELOW_ANY_COSINE, cosine_similarity

MINING = typing.get_args(TripletMining)


class TripletSamples(NamedTuple):
    """One memory's triplet candidates, per example: its own pools of two feedback types,
    [B, T, N*E] item embeddings and [B, T] masks (``own_pools``)."""

    positives: tf.Tensor
    positive_mask: tf.Tensor
    negatives: tf.Tensor
    negative_mask: tf.Tensor


def own_pools(mask: tf.Tensor, item_id: tf.Tensor, other_mask: tf.Tensor, other_item_id: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Mining scope of eq. 17 (docs/models.md, v2) for two paired feedback sequences: ([B, T],
    [B, T']) bool, the real positions of each user's sequence whose item that same user does not
    also have in the paired sequence.

    mask, item_id [B, T]; other_mask, other_item_id [B, T'] (the paired feedback type). An item in
    both of a user's pools says nothing about the user's preference and is skipped from both. Pools
    are per user: an item one user clicked and another unclicked stays in both users' pools.
    """
    shared = (
        tf.equal(item_id[:, :, tf.newaxis], other_item_id[:, tf.newaxis, :])
        & mask[:, :, tf.newaxis]
        & other_mask[:, tf.newaxis, :]
    )  # [B, T, T']: position i of one sequence holds the item of position j of the other
    return mask & ~tf.reduce_any(shared, axis=2), other_mask & ~tf.reduce_any(shared, axis=1)


def triplet_loss(
    anchors: tf.Tensor,
    positives: tf.Tensor,
    positive_mask: tf.Tensor,
    negatives: tf.Tensor,
    negative_mask: tf.Tensor,
    margin: float,
    mining: str = "hardest",
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Eq. 17, 19 in each user's own pools: (loss, has_term [B] bool).

    anchors [B, Z]; positives [B, T, Z] and negatives [B, T', Z], example b's own pools, real where
    the masks [B, T], [B, T'] are True (``own_pools``). Per example: the hardest positive is its real
    positive of least cosine similarity to the anchor, the hardest negative its real negative of
    greatest similarity; the term is ``max(d(q, s+) - d(q, s-) + margin, 0)`` with ``d = 1 - cos``.
    An example with an empty positive or negative pool has no term; the loss is the float32 mean
    over the examples that have one (0 if none). The choice of the hardest sample is piecewise
    constant: min/max pass the gradient to the chosen samples' distances only.

    ``mining="all"`` (Hermans et al. 2017's batch-all, within the user's pools) averages the hinge
    over every (real positive, real negative) pair of the example instead. When a user's pools
    overlap in content (a noisy click next to a similar unclick), the hardest pair violates the
    margin whatever the geometry, so the hardest-sample hinge is never below ``margin`` and is
    smallest when every distance is alike (the collapse FaceNet, Schroff et al. 2015, 3.2, warns
    of); the all-pairs mean still falls as the user's positives move closer than the negatives.
    """
    if mining not in MINING:
        raise ValueError(f"mining must be one of {MINING}, got {mining!r}")
    q = tf.cast(anchors, tf.float32)[:, tf.newaxis, :]
    positive_cos = cosine_similarity(q, tf.cast(positives, tf.float32))  # [B, T]
    negative_cos = cosine_similarity(q, tf.cast(negatives, tf.float32))  # [B, T']
    has_term = tf.reduce_any(positive_mask, axis=1) & tf.reduce_any(negative_mask, axis=1)
    if mining == "hardest":
        d_pos = 1.0 - tf.reduce_min(tf.where(positive_mask, positive_cos, ABOVE_ANY_COSINE), axis=1)  # eq. 19
        d_neg = 1.0 - tf.reduce_max(tf.where(negative_mask, negative_cos, BELOW_ANY_COSINE), axis=1)
        hinge = tf.where(has_term, tf.nn.relu(d_pos - d_neg + margin), 0.0)  # eq. 17
    else:
        # d(q, s+) - d(q, s-) = cos(q, s-) - cos(q, s+) for every pair [B, T, T']. A pad gets a
        # cosine that puts every pair it is in below the margin (hinge exactly 0, no gradient), so
        # no pair-sized mask is built; the pairs are counted per example instead.
        positive_cos = tf.where(positive_mask, positive_cos, ABOVE_ANY_COSINE + margin)
        negative_cos = tf.where(negative_mask, negative_cos, BELOW_ANY_COSINE - margin)
        pair_hinge = tf.nn.relu(negative_cos[:, tf.newaxis, :] - positive_cos[:, :, tf.newaxis] + margin)  # eq. 17
        pairs = tf.reduce_sum(tf.cast(positive_mask, tf.float32), 1) * tf.reduce_sum(tf.cast(negative_mask, tf.float32), 1)
        hinge = tf.math.divide_no_nan(tf.reduce_sum(pair_hinge, axis=[1, 2]), pairs)
    return tf.math.divide_no_nan(tf.reduce_sum(hinge), tf.reduce_sum(tf.cast(has_term, tf.float32))), has_term
