"""FADIDN's contrastive interest optimisation (section 2.4): pair construction from the user's own
sequences (top-k positives above eta, top-q hard negatives), in-batch random negatives and the
InfoNCE loss of eq. 5, as pure float32 functions.

See ``models.fadidn.FADIDN`` for the deviations from the paper (anchor projection, items without
the gap, random negatives of other users, the mean over valid pairs).
"""
from __future__ import annotations

from typing import Tuple

import tensorflow as tf

from models.layers import BELOW_ANY_COSINE, NEG_INF, cosine_similarity


def top_k_masked(scores: tf.Tensor, mask: tf.Tensor, k: int) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Top-k of ``scores`` [B, T] among real slots: (values [B, k'], indices, real [B, k']).

    Pad slots rank below every real one (cosines are >= -1); a row with fewer than k real slots
    returns pads at its end, flagged ``real = False``. k' = min(k, T).
    """
    steps = scores.shape[1]
    k = min(k, steps) if steps is not None else tf.minimum(k, tf.shape(scores)[1])
    ranked = tf.where(mask, scores, tf.cast(BELOW_ANY_COSINE, scores.dtype))  # pads rank after every real item
    values, indices = tf.math.top_k(ranked, k=k)
    return values, indices, tf.gather(mask, indices, batch_dims=1)


def hard_sample_pairs(
    anchor: tf.Tensor,
    clicks: tf.Tensor,
    click_mask: tf.Tensor,
    unclicks: tf.Tensor,
    unclick_mask: tf.Tensor,
    k: int,
    q: int,
    eta: float,
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Section 2.4 pair construction, all from the user's own sequences.

    anchor [B, D]; clicks [B, T, D], unclicks [B, T', D] with masks. Positives L: the top-k click
    items by ``sim(f_c, e_i)`` (cosine) with sim > eta. Hard negatives J: the top-q unclick items
    by the same similarity. Returns (positive_sim [B, k], positive_valid, hard_sim [B, q], hard_valid).
    """
    click_sim = cosine_similarity(anchor[:, tf.newaxis, :], clicks)  # [B, T]
    positive_sim, _, real = top_k_masked(click_sim, click_mask, k)
    positive_valid = real & (positive_sim > tf.cast(eta, positive_sim.dtype))
    if q == 0:
        empty = tf.zeros_like(positive_sim[:, :0])
        return positive_sim, positive_valid, empty, tf.cast(empty, tf.bool)
    unclick_sim = cosine_similarity(anchor[:, tf.newaxis, :], unclicks)  # [B, T']
    hard_sim, _, hard_valid = top_k_masked(unclick_sim, unclick_mask, q)
    return positive_sim, positive_valid, hard_sim, hard_valid


def sample_random_negatives(
    unclicks: tf.Tensor, unclick_mask: tf.Tensor, user_ids: tf.Tensor, uniform: tf.Tensor
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Random negatives: unclick items of OTHER users of the batch, drawn uniformly with replacement.

    unclicks [B, T, D], unclick_mask [B, T], user_ids [B], uniform [B, R] in [0, 1) (the draws).
    The pool is every real unclick event of the batch; a draw that lands on an event of the same
    user_id is dropped (invalid), so each user gets up to R. Returns (items [B, R, D], valid [B, R]).
    """
    steps = tf.shape(unclicks, out_type=tf.int64)[1]
    flat = tf.reshape(unclicks, [-1, tf.shape(unclicks)[-1]])
    positions = tf.where(tf.reshape(unclick_mask, [-1]))[:, 0]  # flat indices of real events
    count = tf.size(positions, out_type=tf.int64)
    pick = tf.cast(tf.floor(uniform * tf.cast(count, uniform.dtype)), tf.int64)
    pick = tf.minimum(pick, tf.maximum(count - 1, 0))
    # a dummy slot keeps the gather legal when the batch has no unclick at all (then nothing is valid)
    source = tf.gather(tf.concat([positions, tf.zeros([1], tf.int64)], 0), pick)  # [B, R]
    owner = tf.gather(user_ids, source // steps)
    valid = (count > 0) & tf.not_equal(owner, user_ids[:, tf.newaxis])
    return tf.gather(flat, source), valid


def info_nce(
    positive_sim: tf.Tensor, positive_valid: tf.Tensor, negative_sim: tf.Tensor, negative_valid: tf.Tensor, tau: float
) -> tf.Tensor:
    """Eq. 5: ``L_cl = -1/N sum_i log(e^{s_i^+/tau} / (e^{s_i^+/tau} + sum_j e^{s_j^-/tau}))``.

    positive_sim [B, P], negative_sim [B, K] (cosines) with validity masks. Every valid positive
    pair (f_c, e_i) of a user is scored against that user's valid negatives; N is the number of
    valid positive pairs in the batch, so a user with no valid positive contributes nothing.
    Returns a float32 scalar (0 when the batch has no valid positive pair).
    """
    positive_logit = tf.cast(positive_sim, tf.float32) / tau
    negative_logit = tf.where(negative_valid, tf.cast(negative_sim, tf.float32) / tau, NEG_INF)
    negatives = tf.reduce_logsumexp(negative_logit, axis=-1, keepdims=True)  # log sum_j e^{s_j^-/tau}
    denominator = tf.reduce_logsumexp(
        tf.stack([positive_logit, tf.broadcast_to(negatives, tf.shape(positive_logit))], axis=-1), axis=-1
    )
    per_pair = denominator - positive_logit  # -log(e^{s+/tau} / (e^{s+/tau} + sum_j e^{s-/tau}))
    valid = tf.cast(positive_valid, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(per_pair * valid), tf.reduce_sum(valid))
