"""FADIDN: shared checks, the section 2.4 contrastive loss on hand-computed cases and its wiring
into the total loss, the gate's axis and its exact deduplication, eq. 1-4 restated in numpy (pre-LN
included), the entropy diagnostics, and a known-answer case for the profile attention."""
import numpy as np
import pydantic
import pytest
import tensorflow as tf

from contract.model_params import FADIDNParams
from models.fadidn import FineGrainedInterest
from models.fadidn_contrastive import hard_sample_pairs, info_nce, sample_random_negatives
from models.fadidn_gate import AttributeGate, gate_ids
from models.layers import normalized_entropy
from contract.feature_spec import FeatureSpec
from tests import model_harness as h

TAU = 0.2


@pytest.mark.parametrize(
    "params",
    [
        None,
        {"gate": False},
        {"contrastive": False},
        {"num_heads": 4, "num_hard_negatives": 0, "context": True},
        {"attention": "mean", "gate": False, "detach_items": True},
    ],
    ids=["default", "no_gate", "no_contrastive", "varied", "mean_detached"],
)
@pytest.mark.slow
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


# ---- the gate (eq. 1) and its deduplication ----------------------------------------------------
def per_position_gate(gate: AttributeGate, E_cp: tf.Tensor) -> tf.Tensor:
    """Eq. 1 run on every position (the reference for the deduplicated gate): [B, T, N, E]."""
    return tf.nn.softmax(gate.logits(E_cp), axis=-2)


def _spread_embeddings(model, features):
    """Draws the built embedding tables from N(0, 1): at their init scale (1e-4) the gate's MLP
    sees ~0 and gives ~1/N everywhere, which would make any equality of gates vacuous."""
    model(features)
    for number, table in enumerate(model.embeddings.tables.values()):
        table.embeddings.assign(tf.random.stateless_normal(table.embeddings.shape, seed=[1, number]))


def test_gate_softmax_runs_across_the_attributes():
    tf.random.set_seed(0)
    gate = AttributeGate((16,), output_dim=4)
    E_cp = tf.random.normal([2, 5, 3, 4]) * 3.0  # [B, T, N, E]
    ids = tf.reshape(tf.range(2 * 5 * 3, dtype=tf.int64), [2, 5, 3])  # all distinct
    w = gate(E_cp, ids).numpy()
    np.testing.assert_allclose(w.sum(axis=2), 1.0, rtol=1e-5)  # per position and dimension
    assert not np.allclose(w.sum(axis=-1), 1.0)  # not a softmax over the embedding dimensions
    assert np.std(w, axis=-1).max() > 1e-3  # weights differ across dimensions (not one per attribute)
    assert np.std(w, axis=(0, 1)).max() > 1e-3  # and across positions


def test_gate_ids_are_equal_exactly_for_equal_attribute_id_and_gap():
    features, _ = h.random_batch(batch=64, seed=3)
    spec, mask = h.SPEC, features["hist_click_item_id"].numpy() != 0
    ids = np.stack([features[spec.history("click", f)].numpy() for f in spec.item_fields], axis=-1)
    gap = features[spec.history_gap("click")].numpy()
    keys = gate_ids(tf.constant(ids), tf.constant(gap), tf.constant(mask), spec.gap_buckets + 1).numpy()
    attribute = np.broadcast_to(np.arange(ids.shape[-1]), ids.shape)
    triples = np.stack([attribute, ids, np.broadcast_to(gap[..., None], ids.shape)], -1)[mask]  # real (n, id, gap)
    real_keys = keys[mask]
    assert len(np.unique(real_keys)) == len(np.unique(triples.reshape(-1, 3), axis=0))  # injective on real
    assert (real_keys >= 0).all() and (keys[~mask] < 0).all()
    np.testing.assert_array_equal(np.unique(keys[~mask]), [-3, -2, -1])  # one pad key per attribute


def test_deduplicated_gate_equals_the_per_position_gate():
    """A batch with repeated (attribute, id, gap) and pad positions: the gate computed once per
    distinct key and gathered back equals eq. 1 run on every position."""
    features, _ = h.random_batch(batch=64, seed=5)
    model = h.build("fadidn")
    _spread_embeddings(model, features)
    E_cp, mask = model.embeddings.sequence(features, "click")
    ids = model._gate_ids(features, "click", mask)
    distinct = tf.size(tf.unique(tf.reshape(ids, [-1]))[0])
    assert int(distinct) < int(tf.size(ids)) // 2, "the batch should repeat (attribute, id, gap) keys"
    assert not mask.numpy().all(), "the batch should have pads"
    gate = model.interest["click"].gate
    got, expected = gate(E_cp, ids).numpy(), per_position_gate(gate, E_cp).numpy()
    assert expected.std(axis=2).max() > 0.05, "degenerate gate: nothing to compare"
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_model_with_the_deduplicated_gate_equals_the_per_position_model(monkeypatch):
    """Logits, L_cl, diagnostics and every gradient are those of the per-position eq. 1."""
    features, labels = h.random_batch(batch=64, seed=6, min_length=2)
    model = h.build("fadidn")
    _spread_embeddings(model, features)

    def run():
        with tf.GradientTape() as tape:
            output, terms = model.loss_terms(features, labels, training=False)
            loss = tf.reduce_mean(output.logit) + terms["contrastive"]
        gradients = tape.gradient(loss, model.trainable_variables)
        return output, terms, gradients

    deduplicated = run()
    monkeypatch.setattr(AttributeGate, "call", lambda self, E_cp, ids: per_position_gate(self, E_cp))
    per_position = run()
    np.testing.assert_allclose(deduplicated[0].logit.numpy(), per_position[0].logit.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(deduplicated[1]["contrastive"]), float(per_position[1]["contrastive"]), rtol=1e-6)
    for name, value in deduplicated[0].diagnostics.items():
        np.testing.assert_allclose(float(value), float(per_position[0].diagnostics[name]), rtol=1e-5)
    for variable, a, b in zip(model.trainable_variables, deduplicated[2], per_position[2]):
        if a is None:
            assert b is None, variable.name
            continue
        a, b = tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy()
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * max(1.0, np.abs(b).max()), err_msg=variable.name)
    gate_gradients = [g for v, g in zip(model.trainable_variables, deduplicated[2]) if "click_interest/attribute_gate" in v.name]
    assert gate_gradients and all(float(tf.norm(tf.convert_to_tensor(g))) > 0 for g in gate_gradients)


def test_gate_switch_removes_the_gate():
    assert not any("attribute_gate" in v.name for v in _built({"gate": False}).trainable_variables)
    assert any("click_interest/attribute_gate" in v.name for v in _built().trainable_variables)


def test_mean_attention_needs_the_gate_off():
    with pytest.raises(pydantic.ValidationError, match="gate=False"):
        FADIDNParams(attention="mean")
    names = [v.name for v in _built({"attention": "mean", "gate": False}).trainable_variables]
    assert not any("profile_attention" in n for n in names) and any("click_interest/W_V" in n for n in names)


# ---- eq. 1-4 restated in numpy --------------------------------------------------------------------
def _layer_norm(x, layer):
    """The pre-LN over the last axis with the layer's own gain, bias and epsilon."""
    return h.reference_layer_norm(x, layer.gamma.numpy(), layer.beta.numpy(), layer.epsilon)


def _softmax(x, axis=-1):
    x = np.exp(x - x.max(axis=axis, keepdims=True))
    return x / x.sum(axis=axis, keepdims=True)


def test_interest_module_computes_eq_1_to_4_with_pre_ln():
    """Section 2.3 restated in numpy with the layer's own weights: the gate on every position, and
    layer-normalised inputs to W_Q, W_K (eq. 2) and W_Q*, W_K* (eq. 4), values not normalised."""
    rng = np.random.default_rng(0)
    B, T, N, E, M1, H = 2, 5, 3, 8, 3, 2
    mask = np.array([[False, False, True, True, True], [True] * T])
    E_u, e_tar = rng.normal(size=(B, M1, E)), rng.normal(size=(B, N, E))
    E_cp = rng.normal(size=(B, T, N, E)) * mask[:, :, None, None]
    ids = np.arange(1, B * T * N + 1).reshape(B, T, N)  # one id per row of E_cp ...
    E_cp[1, 3], ids[1, 3] = E_cp[1, 1], ids[1, 1]  # ... but position 3 repeats position 1 (deduplicated)
    keys = gate_ids(tf.constant(ids), tf.ones([B, T], tf.int64), tf.constant(mask), 2)
    layer = FineGrainedInterest(N, E, H, gate_units=(16,), ffn_units=(32, 16))
    as_tf = lambda x: tf.constant(x, tf.float32)  # noqa: E731
    f, profile_weights, target_weights = layer(as_tf(E_u), as_tf(E_cp), tf.constant(mask), as_tf(e_tar), ids=keys)
    for norm in (layer.profile_attention.norm_q, layer.target_attention.norm_k):  # not the identity
        norm.gamma.assign(rng.uniform(0.5, 1.5, size=E))
        norm.beta.assign(rng.normal(size=E) * 0.1)
    f, profile_weights, target_weights = layer(as_tf(E_u), as_tf(E_cp), tf.constant(mask), as_tf(e_tar), ids=keys)

    att = layer.profile_attention
    W_Q, W_K, W_V = (w.kernel.numpy() for w in (att.w_q, att.w_k, att.w_v))
    W_F, W_s = layer.W_F.kernel.numpy(), layer.W_s.kernel.numpy()
    ta = layer.target_attention
    W_Qs, W_Ks, W_Vs = ta.W_Q_star.numpy(), ta.W_K_star.numpy(), ta.W_V_star.numpy()
    w = per_position_gate(layer.gate, as_tf(E_cp)).numpy()  # eq. 1 on every position, pads included
    d = E // H
    concat, expected_profile, expected_target = [], [], []
    for n in range(N):
        Q = _layer_norm(E_u, att.norm_q) @ W_Q  # eq. 2
        K = _layer_norm(E_cp[:, :, n] * w[:, :, n], att.norm_k) @ W_K
        V = E_cp[:, :, n] @ W_V
        heads, head_weights = [], []
        for i in range(H):
            s = slice(i * d, (i + 1) * d)
            logits = np.einsum("bqd,bkd->bqk", Q[..., s], K[..., s]) / np.sqrt(d)
            a = _softmax(np.where(mask[:, None, :], logits, -np.inf))
            heads.append(np.einsum("bqk,bkd->bqd", a, V[..., s]))
            head_weights.append(a)
        expected_profile.append(np.stack(head_weights, 1))
        o = np.concatenate(heads, -1) @ W_F  # eq. 3, [B, M+1, E]
        q = _layer_norm(e_tar[:, n], ta.norm_q) @ W_Qs[n]  # eq. 4, head n
        k, v = _layer_norm(o, ta.norm_k) @ W_Ks[n], o @ W_Vs[n]
        a = _softmax(np.einsum("bd,brd->br", q, k) / np.sqrt(E))
        expected_target.append(a)
        concat.append(np.einsum("br,brd->bd", a, v))
    expected = layer.ffn(as_tf(np.concatenate(concat, -1) @ W_s)).numpy()
    np.testing.assert_allclose(f.numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(profile_weights.numpy(), np.stack(expected_profile, 1), atol=1e-5)  # [B, N, H, M+1, T]
    np.testing.assert_allclose(target_weights.numpy(), np.stack(expected_target, 1), atol=1e-5)  # [B, N, M+1]


# ---- diagnostics --------------------------------------------------------------------------------
@pytest.mark.slow
def test_diagnostics_are_the_attention_entropies_and_only_on_the_loss_path():
    features, labels = h.random_batch(min_length=2)
    model = h.build("fadidn")
    names = {"click_profile_entropy", "click_target_entropy", "unclick_profile_entropy", "unclick_target_entropy"}
    assert set(model.diagnostic_names()) == names
    assert model.forward(features, losses=False).diagnostics == {}
    values = h.diagnostics(model, features, labels)
    assert set(values) == names and all(0.0 < v <= 1.0 for v in values.values()), values
    # pre-LN: at the embeddings' init scale (1e-4) the attentions are not uniform
    assert values["click_profile_entropy"] < 0.99 and values["click_target_entropy"] < 0.999, values
    # and the value is normalized_entropy of the module's own weights
    E_cp, mask = model.embeddings.sequence(features, "click")
    e_u, e_tar = model.embeddings.user(features), model.embeddings.target(features)
    ids = model._gate_ids(features, "click", mask)
    _, profile_weights, target_weights = model.interest["click"](e_u, E_cp, mask, e_tar, ids=ids)
    expected = normalized_entropy(profile_weights, mask[:, None, None, None, :])
    np.testing.assert_allclose(values["click_profile_entropy"], float(expected), rtol=1e-6)
    np.testing.assert_allclose(values["click_target_entropy"], float(normalized_entropy(target_weights, True)), rtol=1e-6)
    history = h.train_on(model, features, labels, epochs=1)
    assert not [k for k in history.history if "diag_" in k]  # not computed by training steps
    logged = model.evaluate(features, labels, verbose=0, return_dict=True)  # as on the validation split
    assert {f"diag_{name}" for name in names} <= set(logged)


def test_mean_pooling_reports_entropy_one_and_a_single_user_field_has_no_target_entropy():
    features, labels = h.random_batch(min_length=2)
    values = h.diagnostics(h.build("fadidn", {"attention": "mean", "gate": False}), features, labels)
    assert values["click_profile_entropy"] == pytest.approx(1.0, abs=1e-6)
    assert values["click_target_entropy"] == pytest.approx(1.0, abs=1e-6)  # M+1 equal rows
    spec = FeatureSpec(user_fields=("user_id",), item_fields=h.SPEC.item_fields, max_length=8, gap_buckets=6, embedding_dim=8)
    model = h.build("fadidn", spec=spec)
    assert model.diagnostic_names() == ("click_profile_entropy", "unclick_profile_entropy")
    assert set(h.diagnostics(model, *h.random_batch(spec=spec, min_length=2))) == set(model.diagnostic_names())


# ---- the contrastive term in the model ----------------------------------------------------------
def _built(params=None):
    """A model with every weight created (the loss path builds anchor_projection too), so two
    models built one after the other from the same seed have the same weights."""
    model = h.build("fadidn", params)
    model.forward(h.random_batch(batch=4)[0])
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


@pytest.mark.slow
def test_contrastive_term_is_logged_and_switched_off_term_is_absent():
    features, labels = h.random_batch()
    on = h.logged_loss_terms(h.build("fadidn"), features, labels)
    assert set(on) == {"ctr", "contrastive", "regularization"} and on["contrastive"] > 0
    off = h.logged_loss_terms(h.build("fadidn", {"contrastive": False}), features, labels)
    assert set(off) == {"ctr", "regularization"}


def test_total_loss_is_ce_plus_lambda_times_contrastive():
    """Eq. 7: the total with lambda = 0.3 exceeds the total with lambda = 0 by exactly 0.3 * L_cl."""
    features, labels = h.random_batch()
    with_term, without = _built({"lambda_cl": 0.3}), _built({"lambda_cl": 0.0})  # the same weights
    assert with_term.loss_weights() == {"contrastive": 0.3}
    L_cl = float(with_term.forward(features, training=False).aux_losses["contrastive"])
    assert L_cl > 0.1
    difference = h.eval_loss(with_term, features, labels) - h.eval_loss(without, features, labels)
    np.testing.assert_allclose(difference, 0.3 * L_cl, rtol=1e-4)
    output = without.forward(features, training=False)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(labels, tf.float32), logits=output.logit)
    np.testing.assert_allclose(h.eval_loss(without, features, labels), float(tf.reduce_mean(ce)), rtol=1e-5)


def test_an_example_without_click_history_adds_nothing_and_does_not_dilute_the_mean():
    """Without random negatives each example's pairs are its own, so L_cl over a batch with an
    extra example that has no click history (no positive) equals L_cl over the batch without it."""
    features, labels = h.random_batch(batch=8, seed=4, min_length=2)
    model = h.build("fadidn", {"num_negatives": 4, "num_hard_negatives": 4})
    no_clicks = {k: v[:1] for k, v in features.items()}
    for name in h.SPEC.transformed_sequence_names("click"):
        no_clicks[name] = tf.zeros_like(no_clicks[name])
    with_it = {k: tf.concat([no_clicks[k], v], axis=0) for k, v in features.items()}
    contrastive = lambda f: float(model.forward(f, training=False).aux_losses["contrastive"])  # noqa: E731
    assert contrastive(no_clicks) == 0.0
    alone = contrastive(features)
    assert alone > 0.1
    np.testing.assert_allclose(contrastive(with_it), alone, rtol=1e-6)


@pytest.mark.parametrize("detach", [False, True])
def test_detached_items_get_no_contrastive_gradient_the_anchor_side_does(detach):
    """L_cl around a free anchor f_c: with ``detach_items`` no gradient reaches the item embeddings
    (the only item-side parameters), without it they get one; the anchor side gets one either way."""
    features, labels = h.random_batch(min_length=2)
    model = h.build("fadidn", {"detach_items": detach})
    model(features)
    masks = {f: model.embeddings.sequence_mask(features, f) for f in ("click", "unclick")}
    f_c = tf.Variable(tf.random.stateless_normal([32, model.params.ffn_units[-1]], seed=[0, 1]))
    tables = [model.embeddings.tables[name].embeddings for name in h.SPEC.item_fields]
    with tf.GradientTape() as tape:
        L_cl = model.contrastive_loss(features, f_c, masks, training=False)
    anchor = [f_c, *model.anchor_projection.trainable_variables]
    gradients = tape.gradient(L_cl, anchor + tables)
    norms = [0.0 if g is None else float(tf.norm(tf.convert_to_tensor(g))) for g in gradients]
    assert all(n > 0 for n in norms[: len(anchor)]), norms
    if detach:
        assert all(n == 0 for n in norms[len(anchor):]), norms
    else:
        assert all(n > 0 for n in norms[len(anchor):]), norms


def test_detaching_the_items_leaves_the_forward_pass_unchanged():
    features, labels = h.random_batch()
    attached, detached = _built(), _built({"detach_items": True})  # the same weights
    np.testing.assert_allclose(h.eval_loss(detached, features, labels), h.eval_loss(attached, features, labels), rtol=1e-6)


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
    for bad in ({"tau": 0.0}, {"lambda_cl": -0.1}, {"detach_items": "sometimes"}, {"attention": "max"}):
        with pytest.raises(pydantic.ValidationError):
            FADIDNParams(**bad)


# ---- known answer: the profile attention finds the positions a user field points at -------------
KNOWN_ANSWER_SPEC = FeatureSpec(
    user_fields=("user_id", "gender"), item_fields=("item_id", "category"), max_length=8, gap_buckets=6, embedding_dim=8
)


def gender_category_recency_batch(batch: int, seed: int):
    """(features, labels): gender g in {1, 2} decides which category's click matters, and the label
    is whether that click is recent. Every click history holds six real positions (two pads), one
    per category 1-6 in random order, with gap buckets 6, 5, ..., 1 (most recent last); item_id =
    category + 6r (r random). Label = 1 iff the click of category g has gap bucket <= 3.

    The multisets of categories and gaps are the same for every user, and the item ids are
    independent of the gaps, so every per-attribute mean over the positions (of E_c^n + E_gap)
    carries no information about the label: mean pooling can only reach AUC 0.5, while the gender
    query of eq. 2 can pick out the one position that decides it.
    """
    spec = KNOWN_ANSWER_SPEC
    features, _ = h.random_batch(spec, batch=batch, seed=seed, min_length=2)
    rng = np.random.default_rng(seed + 100)
    gender = rng.integers(1, 3, size=batch)
    category = np.argsort(rng.random((batch, 6)), axis=1) + 1
    gap = np.broadcast_to(np.arange(6, 0, -1), (batch, 6))
    item = category + 6 * rng.integers(0, 6, size=(batch, 6))
    relevant_gap = gap[category == gender[:, None]]
    pad = lambda x: tf.constant(np.concatenate([np.zeros((batch, 2), np.int64), x], axis=1), tf.int64)  # noqa: E731
    features.update({
        "gender": tf.constant(gender, tf.int64),
        spec.history("click", "item_id"): pad(item),
        spec.history("click", "category"): pad(category),
        spec.history_gap("click"): pad(gap),
    })
    return features, tf.constant((relevant_gap <= 3).astype(np.int64))


@pytest.mark.slow
def test_known_answer_profile_attention_sharpens_and_beats_mean_pooling():
    """FADIDN learns the case (held-out AUC > 0.9; mean pooling stays near 0.5), the logged profile
    entropy falls clearly below both 1 and its value at init, and the gender query gives the one
    position (of six) that decides the label well above its uniform share. (Full sharpness is not
    needed here: the other positions' gaps sum to the same for everyone, so any weight above 1/6
    on the deciding position already reveals its gap.)"""
    train = gender_category_recency_batch(2048, seed=0)
    test = gender_category_recency_batch(1024, seed=1)
    aucs, entropy = {}, {}
    for attention, params in (("dot", {}), ("mean", {"gate": False})):
        model = h.build("fadidn", {"attention": attention, "contrastive": False, **params}, spec=KNOWN_ANSWER_SPEC)
        if attention == "dot":
            initial = h.diagnostics(model, *test)["click_profile_entropy"]
        h.train_on(model, *train, epochs=12)  # 192 steps
        aucs[attention] = h.held_out_auc(model, *test)
        entropy[attention] = h.diagnostics(model, *test)["click_profile_entropy"]
        if attention == "dot":
            trained = model
    features, _ = test
    E_cp, mask = trained.embeddings.sequence(features, "click")
    e_u, e_tar = trained.embeddings.user(features), trained.embeddings.target(features)
    _, weights, _ = trained.interest["click"](e_u, E_cp, mask, e_tar, ids=trained._gate_ids(features, "click", mask))
    deciding = tf.equal(features["hist_click_category"], features["gender"][:, tf.newaxis])  # [B, T], one True
    on_deciding = tf.reduce_mean(tf.reduce_sum(weights[:, 1, :, 1, :] * tf.cast(deciding, tf.float32)[:, tf.newaxis], -1), 0)
    print(f"known answer: AUC {aucs}; click profile entropy {entropy} (dot at init {initial:.3f}); "
          f"weight of the gender query (category sequence) on the deciding position, per head: {on_deciding.numpy()}")
    assert aucs["dot"] > 0.9 and aucs["mean"] < 0.6, aucs  # the case is built so that mean pooling sees nothing
    assert entropy["dot"] < 0.8 and entropy["dot"] < initial - 0.1, (entropy, initial)
    assert float(tf.reduce_max(on_deciding)) > 2 / 6, on_deciding  # at least twice the uniform 1/6
