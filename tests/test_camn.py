"""CAMN: shared checks, the router (eq. 1-3), key-side scaling (eq. 4) and the diversity loss (eq. 7)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from models.camn import AttributeAttention, collaborative_scores, default_q, diversity_loss, keep_top_q
from tests import model_harness as h

K = len(h.SPEC.item_fields)  # 3 attributes in the harness spec: item_id, category, brand


def _spread_embeddings(model, features):
    """Draws the built embedding tables from N(0, 1).

    At initialisation the embeddings are ~N(0, 1e-4), so every A_r is close to uniform over the
    real keys, which is a stationary point of eq. 7 (its gradient there is tiny); spreading the
    embeddings makes the attention non-uniform so gradients are measurable.
    """
    model(features)
    for table in model.embeddings.tables.values():
        if table.built:
            table.embeddings.assign(tf.random.stateless_normal(table.embeddings.shape, seed=[1, 2]))


# ---- shared checks ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        None,
        {"router": False},
        {"diversity_loss": False},
        {"router": False, "diversity_loss": False},
        {"q": 1},
        {"q": K},
        {"sequence_length": None},
        {"sequence_length": 3},
    ],
)
@pytest.mark.slow
def test_standard_checks(params):
    h.run_standard_checks("camn", params)


def test_padding_changes_nothing_in_the_diversity_loss():
    features, _ = h.random_batch()
    model = h.build("camn")
    before = model.forward(features).aux_losses["diversity"]
    after = model.forward(h.scramble_padding(features)).aux_losses["diversity"]
    np.testing.assert_allclose(before.numpy(), after.numpy(), rtol=1e-6)


# ---- defaults -----------------------------------------------------------------------------------
def test_q_defaults_to_half_the_attributes_rounded_up():
    assert [default_q(k) for k in (1, 2, 3, 4, 5, 6)] == [1, 1, 2, 2, 3, 3]
    assert h.build("camn").q == 2  # k = 3 in the harness spec
    assert h.build("camn", {"q": 3}).q == 3


def test_q_larger_than_the_number_of_attributes_is_rejected():
    with pytest.raises(ValueError, match="keepTopq"):
        h.build("camn", {"q": K + 1})


# ---- router, eq. 1-3 ----------------------------------------------------------------------------
def test_keep_top_q_keeps_exactly_q_entries_per_position():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 6, 5)).astype(np.float32)
    scores[0, 0] = 1.0  # a row of ties
    scores[1, 2, :3] = scores[1, 2, 3]  # ties across the threshold
    for q in range(1, 6):
        keep = keep_top_q(tf.constant(scores), q).numpy()
        assert keep.dtype == bool
        np.testing.assert_array_equal(keep.sum(-1), np.full((4, 6), q))
        kept_min = np.where(keep, scores, np.inf).min(-1)
        dropped_max = np.where(keep, -np.inf, scores).max(-1)
        assert np.all(kept_min >= dropped_max)


def test_collaborative_scores_hand_case():
    # eq. 2-3 with q = 2: softmax over the two largest scores, 0 elsewhere; pad position -> all 0
    scores = tf.constant([[[2.0, 1.0, 0.0], [0.0, 3.0, 3.0], [5.0, 1.0, 2.0]]])
    mask = tf.constant([[True, True, False]])
    e = math.e
    expected = [[[e / (e + 1), 1 / (e + 1), 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 0.0]]]
    np.testing.assert_allclose(collaborative_scores(scores, 2, mask).numpy(), expected, rtol=1e-6, atol=1e-7)


def test_only_the_top_q_scores_have_nonzero_derivatives():
    scores = tf.Variable([[[2.0, 1.0, 0.0, -1.0]]])
    weights = tf.constant([[[1.0, -2.0, 3.0, 4.0]]])
    with tf.GradientTape() as tape:
        P = collaborative_scores(scores, 2, tf.constant([[True]]))
        objective = tf.reduce_sum(P * weights)
    grad = tape.gradient(objective, scores).numpy()[0, 0]
    assert np.all(grad[:2] != 0) and np.all(grad[2:] == 0), grad


def test_router_gives_pad_positions_no_score_and_ignores_their_content():
    features, _ = h.random_batch(min_length=1)
    model = h.build("camn")
    x, mask = model.click_sequence(features)
    P = model.router(x, mask).numpy()
    real = mask.numpy()
    assert (~real).any() and real.any()
    np.testing.assert_array_equal(P[~real], 0.0)
    np.testing.assert_allclose(P[real].sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal((P[real] > 0).sum(-1), model.q)
    x2, mask2 = model.click_sequence(h.scramble_padding(features))
    np.testing.assert_allclose(model.router(x2, mask2).numpy(), P, rtol=1e-6)


def test_router_off_builds_no_routing_weights():
    features, _ = h.random_batch()
    model = h.build("camn", {"router": False})
    model(features)
    assert model.router is None
    assert not [v.name for v in model.trainable_variables if "W_h" in v.name or "router" in v.name]
    on = h.build("camn")
    on(features)
    assert [v.name for v in on.trainable_variables if "W_h" in v.name]


# ---- modified Transformer, eq. 4 --------------------------------------------------------------------
def _reference_attention(x, mask, P, layer):
    """Eq. 4 in numpy, head by head: softmax_j(P[j, r] * (LN_r(X_r) W_r^Q)(LN_r(X_r) W_r^K)^T[t, j] / sqrt(d)),
    LN_r the pre-LN of head r (docs/models.md, v2)."""
    WQ, WK = layer.W_Q.numpy(), layer.W_K.numpy()
    gain, bias = layer.ln_gain.numpy(), layer.ln_bias.numpy()
    batch, steps, k, d = x.shape
    out = np.zeros((batch, k, steps, steps))
    for b in range(batch):
        for r in range(k):
            xr = x[b, :, r]
            normed = h.reference_layer_norm(xr, gain[r], bias[r], epsilon=1e-12)
            logits = (normed @ WQ[r]) @ (normed @ WK[r]).T / np.sqrt(d)
            if P is not None:
                logits = logits * P[b, :, r][np.newaxis, :]
            logits = np.where(mask[b][np.newaxis, :], logits, -np.inf)
            weights = np.exp(logits - logits.max(-1, keepdims=True))
            out[b, r] = weights / weights.sum(-1, keepdims=True)
    return out


def _attention_case():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 3, 4)).astype(np.float32)
    mask = np.array([[False, True, True, True, True], [False, False, True, True, True]])
    x[~mask] = 0.0
    P = rng.uniform(size=(2, 5, 3)).astype(np.float32)
    layer = AttributeAttention(num_attributes=3, dim=4)
    layer(tf.constant(x), tf.constant(mask))
    layer.W_Q.assign(rng.normal(size=(3, 4, 4)))  # sharper than the Glorot init
    layer.W_K.assign(rng.normal(size=(3, 4, 4)))
    return x, mask, P, layer


@pytest.mark.parametrize("with_router", [True, False])
def test_attention_matches_eq4_with_key_side_scaling(with_router):
    x, mask, P, layer = _attention_case()
    P = P if with_router else None
    _, A = layer(tf.constant(x), tf.constant(mask), None if P is None else tf.constant(P))
    np.testing.assert_allclose(A.numpy(), _reference_attention(x, mask, P, layer), rtol=1e-5, atol=1e-6)
    assert np.all(A.numpy()[:, :, :, ~mask.any(0)] == 0)  # pad keys get no weight


def test_changing_P_of_one_key_changes_only_the_attention_to_that_key():
    x, mask, P, layer = _attention_case()
    b, j, r = 0, 2, 1
    P2 = P.copy()
    P2[b, j, r] = 3.0 * P[b, j, r] + 1.0
    _, A1 = layer(tf.constant(x), tf.constant(mask), tf.constant(P))
    _, A2 = layer(tf.constant(x), tf.constant(mask), tf.constant(P2))
    A1, A2 = A1.numpy(), A2.numpy()
    # other examples and other heads are untouched
    np.testing.assert_array_equal(A1[1], A2[1])
    np.testing.assert_array_equal(np.delete(A1[b], r, axis=0), np.delete(A2[b], r, axis=0))
    # in head r every query row re-weights key j against the others, whose mutual ratios stay the
    # same; with query-side scaling row j would change its ratios and the other rows nothing
    others = [s for s in range(5) if s != j and mask[b, s]]
    for t in range(5):
        ratio1 = A1[b, r, t, others] / A1[b, r, t, others].sum()
        ratio2 = A2[b, r, t, others] / A2[b, r, t, others].sum()
        np.testing.assert_allclose(ratio1, ratio2, rtol=1e-5)
        if mask[b, t]:  # (a pad query row is X_r = 0: all its logits are 0 whatever P is)
            assert abs(A1[b, r, t, j] - A2[b, r, t, j]) > 1e-6, t


# ---- diversity loss, eq. 7 ----------------------------------------------------------------------
def test_diversity_loss_hand_case():
    # k = 2 heads, l = 2 positions, three examples:
    #   example 0, both positions real: A_1 = [[1, 0], [.5, .5]], A_2 = [[.5, .5], [0, 1]]
    #     ||A_1*A_1||_F = ||[[1, 0], [.25, .25]]||_F = sqrt(1.125) = ||A_2*A_2||_F
    #     ||A_1*A_2||_F = ||[[.5, 0], [0, .5]]||_F = sqrt(.5) = ||A_2*A_1||_F
    #     -> (2 sqrt(1.125) + 2 sqrt(.5)) / 2^2 = 0.88388348
    #   example 1, position 0 is pad: its query row (garbage here) is dropped; row 1 = [0, 1] in both
    #     heads -> every pair has norm 1 -> 1
    #   example 2, no click at all: excluded from the mean
    #   -> (0.88388348 + 1) / 2 = 0.94194174
    A = tf.constant(
        [
            [[[1.0, 0.0], [0.5, 0.5]], [[0.5, 0.5], [0.0, 1.0]]],
            [[[0.3, 0.7], [0.0, 1.0]], [[0.9, 0.1], [0.0, 1.0]]],
            [[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]],
        ]
    )
    mask = tf.constant([[True, True], [False, True], [False, False]])
    np.testing.assert_allclose(float(diversity_loss(A, mask)), 0.94194174, rtol=1e-6)
    # the reading "ordered pairs i != j only" would give (sqrt(.5) + 1) / 2 instead
    assert not np.isclose(float(diversity_loss(A, mask)), (math.sqrt(0.5) + 1) / 2, rtol=1e-3)


def test_diversity_loss_matches_a_double_loop_over_heads():
    rng = np.random.default_rng(5)
    k, steps = 3, 4
    A = rng.uniform(size=(2, k, steps, steps))
    mask = np.array([[True] * steps, [False, True, True, True]])
    A = A * mask[:, None, None, :]
    A = A / A.sum(-1, keepdims=True)
    per_example = []
    for b in range(2):
        rows = mask[b]
        total = 0.0
        for i in range(k):
            for j in range(k):
                total += np.sqrt(np.sum((A[b, i][rows] * A[b, j][rows]) ** 2))
        per_example.append(total / k**2)
    expected = np.mean(per_example)
    got = diversity_loss(tf.constant(A, tf.float32), tf.constant(mask))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_diversity_loss_has_finite_gradients_when_a_product_is_zero():
    A = tf.Variable([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])  # disjoint heads
    with tf.GradientTape() as tape:
        loss = diversity_loss(A, tf.constant([[True, True]]))
    grad = tape.gradient(loss, A).numpy()
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


@pytest.mark.parametrize("router", [True, False])
def test_diversity_loss_reaches_the_attention_and_router_only(router):
    features, labels = h.random_batch(min_length=2)
    model = h.build("camn", {"router": router})
    _spread_embeddings(model, features)
    grads = h.aux_loss_gradients(model, features, labels, "diversity")
    reach = ["attribute_attention/W_Q", "attribute_attention/W_K", "table_item_id", "table_gap"]
    if router:
        reach += ["router/W_h", "router_layer_norm"]
    else:
        assert not [n for n in grads if "W_h" in n]
    h.assert_gradient_reaches(
        grads,
        must_reach=reach,
        must_not_reach=["W_V", "W_1", "W_2", "interest_extractor", "prediction_mlp", "table_user_id"],
    )


@pytest.mark.slow
def test_loss_terms_logged_and_switched_off():
    features, labels = h.random_batch()
    model = h.build("camn", {"alpha": 0.5})
    assert model.loss_weights() == {"diversity": 0.5}
    terms = h.logged_loss_terms(model, features, labels)
    assert set(terms) == {"ctr", "diversity", "regularization"} and terms["diversity"] > 0
    off = h.build("camn", {"diversity_loss": False})
    assert off.loss_weights() == {}
    assert off.forward(features).aux_losses == {}
    assert set(h.logged_loss_terms(off, features, labels)) == {"ctr", "regularization"}


# ---- inputs --------------------------------------------------------------------------------------
def _older_clicks_replaced(features, keep_last: int):
    """The batch with every click older than the last ``keep_last`` positions made real and different."""
    changed = dict(features)
    steps = h.SPEC.max_length
    for name in h.SPEC.transformed_sequence_names("click"):
        values = features[name].numpy().copy()
        values[:, : steps - keep_last] = values[:, : steps - keep_last] % 4 + 1
        changed[name] = tf.constant(values)
    return changed


def test_only_the_most_recent_sequence_length_clicks_are_used():
    features, _ = h.random_batch()
    changed = _older_clicks_replaced(features, keep_last=3)
    truncated = h.build("camn", {"sequence_length": 3})
    np.testing.assert_allclose(truncated(features)["probability"], truncated(changed)["probability"], rtol=1e-6)
    full = h.build("camn", {"sequence_length": None})
    diff = np.abs(full(features)["probability"].numpy() - full(changed)["probability"].numpy())
    assert diff.max() > 0


def test_uses_the_click_history_and_no_other_feedback():
    features, _ = h.random_batch(min_length=2)
    model = h.build("camn")
    base = model(features)["probability"].numpy()
    others = dict(features)
    for feedback in ("unclick", "like", "dislike"):
        others[h.SPEC.history(feedback, "item_id")] = tf.zeros_like(features[h.SPEC.history(feedback, "item_id")])
    np.testing.assert_allclose(model(others)["probability"].numpy(), base, rtol=1e-6)
    no_clicks = dict(features)
    no_clicks["hist_click_item_id"] = tf.zeros_like(features["hist_click_item_id"])
    assert np.abs(model(no_clicks)["probability"].numpy() - base).max() > 0


# ---- eq. 5-6, d, diagnostics, known answer ----------------------------------------------------------
@pytest.mark.parametrize("residual", [False, True])
def test_eq5_values_and_eq6_ffn_on_a_hand_checked_case(residual):
    """X^_r = A_r X_r W_r^V (values without the pre-LN), X~_r = max(0, X^_r W_1 + b_1) W_2 + b_2;
    with the residuals H_r = X_r + X^_r and X~_r = H_r + max(0, H_r W_1 + b_1) W_2 + b_2."""
    features, _ = h.random_batch(min_length=2)
    model = h.build("camn", {"router": False, "residual": residual})
    model(features)
    x, mask = model.click_sequence(features)
    X_tilde, A, _ = model.refine(x, mask)
    x, mask, A = x.numpy(), mask.numpy(), A.numpy()
    WV = model.attention.W_V.numpy()
    W1, b1 = (w.numpy() for w in model.W_1.weights)
    W2, b2 = (w.numpy() for w in model.W_2.weights)
    b, r = 3, 1
    X_hat = A[b, r] @ (x[b, :, r] @ WV[r])  # eq. 5
    ffn = lambda z: np.maximum(0.0, z @ W1 + b1) @ W2 + b2  # noqa: E731  eq. 6
    H = x[b, :, r] + X_hat
    expected = H + ffn(H) if residual else ffn(X_hat)
    np.testing.assert_allclose(X_tilde.numpy()[b, :, r], expected, rtol=1e-4, atol=1e-5)


def test_the_residual_keeps_positions_apart_under_uniform_attention():
    """With eq. 4 uniform every row of X^ is the same average: without the residual X~'s positions
    are alike (refined_spread 0), with it they keep X's differences for the interest extractor."""
    features, labels = h.random_batch(min_length=3)
    spread = {residual: h.diagnostics(h.build("camn", {"attention": "mean", "residual": residual}), features, labels)
              for residual in (False, True)}
    assert spread[False]["refined_spread"] == pytest.approx(0.0, abs=1e-6)
    assert spread[True]["refined_spread"] > 0.1, spread


def test_d_is_the_papers_18_unless_set():
    assert h.build("camn").embedding_dim == 18
    assert h.build("camn", {"embedding_dim": 8}).embedding_dim == 8


@pytest.mark.slow
def test_mean_attention_reports_entropy_one_and_the_diagnostics_are_logged():
    features, labels = h.random_batch(min_length=3)
    uniform = h.build("camn", {"attention": "mean"})
    assert h.diagnostics(uniform, features, labels)["attention_entropy"] == pytest.approx(1.0, abs=1e-5)
    model = h.build("camn")
    history = h.train_on(model, features, labels, epochs=1)
    assert not [k for k in history.history if "diag_" in k]  # not computed by training steps
    logged = model.evaluate(features, labels, verbose=0, return_dict=True)  # as on the validation split
    assert {"diag_attention_entropy", "diag_interest_entropy"} <= set(logged)
    assert model(features)["probability"].shape == (32,)  # the serving path computes no diagnostic


@pytest.mark.slow
def test_known_answer_attention_sharpens_and_beats_mean_pooling():
    """Every target is in its click history and the label is whether that click was recent: CAMN
    must find the matching position and read its gap. In the paper's form (eq. 5-6, no residual)
    eq. 4 must keep the matching position apart for the interest extractor: both attentions'
    entropies fall well below 1 (uniform) and it beats CAMN with eq. 4 replaced by mean pooling
    on held-out examples by a wide margin."""
    train = h.repeat_recency_batch(2048, seed=0)
    test = h.repeat_recency_batch(1024, seed=1)
    aucs, entropy = {}, None
    for attention in ("dot", "mean"):
        model = h.build("camn", {"attention": attention, "diversity_loss": False, "residual": False})
        h.train_on(model, *train, epochs=15, learning_rate=1e-2)
        aucs[attention] = h.held_out_auc(model, *test)
        if attention == "dot":
            entropy = h.diagnostics(model, *test)
    assert entropy["attention_entropy"] < 0.8 and entropy["interest_entropy"] < 0.95, entropy
    assert aucs["dot"] > aucs["mean"] + 0.15, aucs


def test_known_answer_with_the_residual_the_interest_extractor_finds_the_position():
    """With the residuals (the default) X~ keeps each position's own embedding, so the interest
    extractor alone can find the matching click: its entropy falls well below 1 and the held-out
    AUC nears 1 (eq. 4 then has nothing left to do on this task; it need not sharpen)."""
    train = h.repeat_recency_batch(2048, seed=0)
    test = h.repeat_recency_batch(1024, seed=1)
    model = h.build("camn", {"diversity_loss": False})
    h.train_on(model, *train, epochs=15, learning_rate=1e-2)
    diagnostics = h.diagnostics(model, *test)
    assert diagnostics["interest_entropy"] < 0.8 and diagnostics["refined_spread"] > 0.3, diagnostics
    assert h.held_out_auc(model, *test) > 0.95
