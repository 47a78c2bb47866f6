"""FADIDN: shared checks, the section 2.4 contrastive loss on hand-computed cases, the gate's axis,
and where the contrastive gradient goes."""
import numpy as np
import pydantic
import pytest
import tensorflow as tf

from models.fadidn import (
    AttributeGate,
    FADIDNParams,
    FineGrainedInterest,
    hard_sample_pairs,
    info_nce,
    sample_random_negatives,
)
from tests import model_harness as h

TAU = 0.2


@pytest.mark.parametrize(
    "params",
    [
        None,
        {"gate": False},
        {"contrastive": False},
        {"num_heads": 4, "num_hard_negatives": 0, "context": True},
    ],
    ids=["default", "no_gate", "no_contrastive", "varied"],
)
def test_standard_checks(params):
    h.run_standard_checks("fadidn", params)


# ---- InfoNCE with hard negatives (eq. 5), by hand -----------------------------------------------
def _contrastive_case():
    """Three users, 2-d items, T = 4; pads (mask False) hold vectors that WOULD win if selected."""
    r = np.sqrt(0.5)
    anchor = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    clicks = [
        [[5.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]],  # pad; cos 1, 0 (not > eta), -r
        [[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]],  # pad (cos 1); real cos 0, -1, 0: no positive
        [[1.0, 1.0], [1.0, 0.0], [2.0, 2.0], [0.0, 1.0]],  # pad; cos r, 1, r
    ]
    click_mask = [[False, True, True, True], [False, True, True, True], [False, True, True, True]]
    unclicks = [
        [[3.0, 0.1], [1.0, 1.0], [0.0, -2.0], [-1.0, 0.0]],  # pad; cos r, 0, -1
        [[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]],  # irrelevant: user 1 has no positive
        [[1.0, 1.0], [1.0, 1.0], [2.0, 0.0], [1.0, -1.0]],  # pads (cos 1, 1, r); one real: cos 0
    ]
    unclick_mask = [[False, True, True, True], [True] * 4, [False, False, False, True]]
    as_tf = lambda x, dtype=tf.float32: tf.constant(x, dtype)  # noqa: E731
    return (
        as_tf(anchor), as_tf(clicks), as_tf(click_mask, tf.bool), as_tf(unclicks), as_tf(unclick_mask, tf.bool)
    )


def test_info_nce_with_hard_negatives_hand_computed():
    anchor, clicks, click_mask, unclicks, unclick_mask = _contrastive_case()
    pos, pos_valid, hard, hard_valid = hard_sample_pairs(
        anchor, clicks, click_mask, unclicks, unclick_mask, k=2, q=2, eta=0.0
    )
    loss = info_nce(pos, pos_valid, hard, hard_valid, TAU)

    r = np.sqrt(0.5)
    e = lambda s: np.exp(s / TAU)  # noqa: E731
    # user 0: positive cos 1 (the cos-0 click is not > eta); hard negatives cos r and 0 (not the pad)
    user0 = -np.log(e(1) / (e(1) + e(r) + e(0)))
    # user 1: no click with cos > 0 (the cos-1 pad is not a candidate): contributes nothing
    # user 2: positives cos 1 and r; the only real unclick (cos 0) is its one hard negative
    user2_a = -np.log(e(1) / (e(1) + e(0)))
    user2_b = -np.log(e(r) / (e(r) + e(0)))
    expected = (user0 + user2_a + user2_b) / 3  # N = 3 valid positive pairs
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)

    np.testing.assert_array_equal(tf.reduce_sum(tf.cast(pos_valid, tf.int32), 1).numpy(), [1, 0, 2])
    np.testing.assert_array_equal(hard_valid.numpy()[[0, 2]], [[True, True], [True, False]])
    np.testing.assert_allclose(hard.numpy()[0], [r, 0.0], atol=1e-6)


def test_info_nce_ignores_invalid_negatives_and_empty_batches():
    pos, neg = tf.constant([[0.5]]), tf.constant([[0.3, 0.9]])
    only_first = info_nce(pos, tf.constant([[True]]), neg, tf.constant([[True, False]]), TAU)
    expected = -np.log(np.exp(0.5 / TAU) / (np.exp(0.5 / TAU) + np.exp(0.3 / TAU)))
    np.testing.assert_allclose(float(only_first), expected, rtol=1e-5)
    nothing = info_nce(pos, tf.constant([[False]]), neg, tf.constant([[True, True]]), TAU)
    assert float(nothing) == 0.0


# ---- random negatives ---------------------------------------------------------------------------
def test_random_negatives_are_real_unclicks_of_other_users():
    # item vector = (row, position); users 0 and 1 share user_id 7
    steps, batch = 4, 3
    items = np.array([[[b, t] for t in range(steps)] for b in range(batch)], np.float32)
    mask = np.array([[False, False, True, True], [False, True, True, True], [False, False, False, True]])
    user_ids = tf.constant([7, 7, 9], tf.int64)
    uniform = tf.tile(tf.linspace(0.0, 0.999, 60)[tf.newaxis], [batch, 1])
    drawn, valid = sample_random_negatives(tf.constant(items), tf.constant(mask), user_ids, uniform)
    drawn, valid = drawn.numpy().astype(int), valid.numpy()
    owner_uid = {0: 7, 1: 7, 2: 9}
    for b in range(batch):
        picked = {tuple(x) for x in drawn[b][valid[b]]}
        others = {(o, t) for o in range(batch) for t in range(steps) if mask[o, t] and owner_uid[o] != owner_uid[b]}
        assert picked == others, (b, picked, others)  # only (and, over the grid, all) other users' real unclicks
        for (o, t), ok in zip(map(tuple, drawn[b]), valid[b]):
            assert mask[o, t], "a pad slot was drawn"
            assert ok == (owner_uid[o] != owner_uid[b])


def test_random_negatives_of_a_batch_without_unclicks_are_all_invalid():
    drawn, valid = sample_random_negatives(
        tf.ones([2, 3, 4]), tf.zeros([2, 3], tf.bool), tf.constant([1, 2], tf.int64), tf.fill([2, 5], 0.5)
    )
    assert drawn.shape == (2, 5, 4) and not valid.numpy().any()


# ---- the gate (eq. 1) ---------------------------------------------------------------------------
def test_gate_softmax_runs_across_the_attributes():
    tf.random.set_seed(0)
    gate = AttributeGate((16,), output_dim=4)
    w = gate(tf.random.normal([2, 5, 3, 4]) * 3.0).numpy()  # [B, T, N, E]
    np.testing.assert_allclose(w.sum(axis=2), 1.0, rtol=1e-5)  # per position and dimension
    assert not np.allclose(w.sum(axis=-1), 1.0)  # not a softmax over the embedding dimensions
    assert np.std(w, axis=-1).max() > 1e-3  # weights differ across dimensions (not one per attribute)
    assert np.std(w, axis=(0, 1)).max() > 1e-3  # and across positions


def test_gate_switch_removes_the_gate():
    assert not any("attribute_gate" in v.name for v in _built({"gate": False}).trainable_variables)
    assert any("click_interest/attribute_gate" in v.name for v in _built().trainable_variables)


def test_interest_module_computes_eq_1_to_4():
    """Section 2.3 restated in numpy with the layer's own weights (dense gate on every position)."""
    rng = np.random.default_rng(0)
    B, T, N, E, M1, H = 2, 5, 3, 8, 3, 2
    mask = np.array([[False, False, True, True, True], [True] * T])
    E_u, e_tar = rng.normal(size=(B, M1, E)), rng.normal(size=(B, N, E))
    E_cp = rng.normal(size=(B, T, N, E)) * mask[:, :, None, None]
    layer = FineGrainedInterest(N, E, H, gate_units=(16,), ffn_units=(32, 16))
    as_tf = lambda x: tf.constant(x, tf.float32)  # noqa: E731
    got = layer(as_tf(E_u), as_tf(E_cp), tf.constant(mask), as_tf(e_tar)).numpy()

    def softmax(x, axis=-1):
        x = np.exp(x - x.max(axis=axis, keepdims=True))
        return x / x.sum(axis=axis, keepdims=True)

    att = layer.profile_attention
    W_Q, W_K, W_V = (w.kernel.numpy() for w in (att.w_q, att.w_k, att.w_v))
    W_F, W_s = layer.W_F.kernel.numpy(), layer.W_s.kernel.numpy()
    ta = layer.target_attention
    W_Qs, W_Ks, W_Vs = ta.W_Q_star.numpy(), ta.W_K_star.numpy(), ta.W_V_star.numpy()
    w = layer.gate(as_tf(E_cp)).numpy()  # eq. 1 on every position, pads included
    d = E // H
    concat = []
    for n in range(N):
        Q, K, V = E_u @ W_Q, (E_cp[:, :, n] * w[:, :, n]) @ W_K, E_cp[:, :, n] @ W_V  # eq. 2
        heads = []
        for i in range(H):
            s = slice(i * d, (i + 1) * d)
            logits = np.einsum("bqd,bkd->bqk", Q[..., s], K[..., s]) / np.sqrt(d)
            logits = np.where(mask[:, None, :], logits, -np.inf)
            heads.append(np.einsum("bqk,bkd->bqd", softmax(logits), V[..., s]))
        o = np.concatenate(heads, -1) @ W_F  # eq. 3, [B, M+1, E]
        q, k, v = e_tar[:, n] @ W_Qs[n], o @ W_Ks[n], o @ W_Vs[n]  # eq. 4, head n
        a = softmax(np.einsum("bd,brd->br", q, k) / np.sqrt(E))
        concat.append(np.einsum("br,brd->bd", a, v))
    expected = layer.ffn(as_tf(np.concatenate(concat, -1) @ W_s)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


# ---- the contrastive term in the model ----------------------------------------------------------
def _built(params=None):
    model = h.build("fadidn", params)
    model(h.random_batch(batch=4)[0])
    return model


def test_contrastive_gradient_reaches_the_click_interest_module():
    features, labels = h.random_batch(min_length=2)
    grads = h.aux_loss_gradients(h.build("fadidn"), features, labels, "contrastive")
    h.assert_gradient_reaches(
        grads,
        must_reach=[
            "click_interest/profile_attention/W_Q",
            "click_interest/profile_attention/W_K",
            "click_interest/profile_attention/W_V",
            "click_interest/W_F",
            "click_interest/attribute_gate",
            "click_interest/target_attention/W_Q_star",
            "click_interest/W_s",
            "click_interest/ffn",
            "anchor_projection",
            "table_item_id",
            "table_user_id",  # the profile queries
        ],
        must_not_reach=["unclick_interest", "prediction_mlp"],
    )


def test_contrastive_term_is_logged_and_switched_off_term_is_absent():
    features, labels = h.random_batch()
    on = h.logged_loss_terms(h.build("fadidn"), features, labels)
    assert set(on) == {"ctr", "contrastive", "regularization"} and on["contrastive"] > 0
    off = h.logged_loss_terms(h.build("fadidn", {"contrastive": False}), features, labels)
    assert set(off) == {"ctr", "regularization"}


def test_total_loss_is_ce_plus_lambda_times_contrastive():
    features, labels = h.random_batch()
    model = h.build("fadidn", {"lambda_cl": 0.5})
    assert model.loss_weights() == {"contrastive": 0.5}
    output = model.forward(features, training=False)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(labels, tf.float32), logits=output.logit)
    expected = float(tf.reduce_mean(ce)) + 0.5 * float(output.aux_losses["contrastive"])
    np.testing.assert_allclose(h.eval_loss(model, features, labels), expected, rtol=1e-5)


def test_contrastive_term_ignores_pads_and_is_deterministic_in_evaluation():
    features, _ = h.random_batch()
    model = h.build("fadidn")
    first = float(model.forward(features, training=False).aux_losses["contrastive"])
    again = float(model.forward(features, training=False).aux_losses["contrastive"])
    scrambled = float(model.forward(h.scramble_padding(features), training=False).aux_losses["contrastive"])
    assert first == again
    np.testing.assert_allclose(scrambled, first, rtol=1e-5)


def test_unclick_sequence_reaches_the_prediction():
    features, _ = h.random_batch(min_length=2)
    model = h.build("fadidn", {"contrastive": False})
    other = dict(features, hist_unclick_item_id=tf.zeros_like(features["hist_unclick_item_id"]))
    diff = tf.reduce_max(tf.abs(model(features)["probability"] - model(other)["probability"]))
    assert float(diff) > 0


def test_params_are_validated():
    with pytest.raises(pydantic.ValidationError, match="num_negatives"):
        FADIDNParams(num_negatives=3, num_hard_negatives=4)
    with pytest.raises(ValueError, match="must divide"):
        h.build("fadidn", {"num_heads": 3})  # embedding 8
