"""TF4CTR: shared checks for every SSEM and DFM variant, the twin-focus loss (eq. 7) on hand-computed
cases, where each TF term's gradient goes, the Voting Fusion's train/serve behaviour, and the
replaceable encoders."""
import numpy as np
import pydantic
import pytest
import tensorflow as tf
import tf_keras

from models.layers import MLP
from contract.model_params import TF4CTRParams
from models.tf4ctr import TF4CTR, VotingFusion, num_fields, twin_focus_loss
from tests import model_harness as h


@pytest.mark.parametrize(
    "params",
    [
        None,
        {"ssem": "gm"},
        {"ssem": "moe"},
        {"ssem": "share"},
        {"dfm": "vf"},
        {"dfm": "cf"},
        {"dfm": "moef"},
        {"dfm": "sum"},
        {"tf_loss": False},
        {"tf_loss": False, "dfm": "cf"},
        {"ssem": "moe", "dfm": "moef", "batch_norm": False, "dropout": 0.0, "c": 1.0, "gamma": 1.0, "alpha": 0.5},
    ],
    ids=["default", "gm", "moe", "share", "vf", "cf", "moef", "sum", "no_tf_loss", "no_tf_loss_cf", "varied"],
)
@pytest.mark.slow
def test_standard_checks(params):
    # Keras' uniform init: the harness's single Adam step at lr 1e-2 is 100x the normal(0, 1e-4)
    # default's scale, and with batch norm's running statistics that one step can overshoot
    h.run_standard_checks("tf4ctr", {**(params or {}), "embedding_init_std": None})


# ---- twin-focus loss (eq. 7), by hand --------------------------------------------------------------
def _logit(p):
    return float(np.log(p / (1 - p)))


def test_twin_focus_loss_hand_computed_with_positives_and_negatives():
    # two positives and two negatives; the probabilities are chosen, the logits follow
    y = [1, 1, 0, 0]
    p_s = [0.75, 0.25, 0.25, 0.5]  # simple encoder: easy positive, hard positive, easy negative, unsure
    p_c = [0.5, 0.25, 0.75, 0.75]  # complex encoder
    easy, hard = twin_focus_loss(
        tf.constant(y), tf.constant([_logit(p) for p in p_s]), tf.constant([_logit(p) for p in p_c]), c=0.8, gamma=2.0
    )
    # p_t = p for y = 1, 1 - p for y = 0; easy: -log(p_t) (0.8 + p_t)^2; hard: -log(p_t) (1.2 - p_t)^2
    p_t_s = [0.75, 0.25, 0.75, 0.5]
    p_t_c = [0.5, 0.25, 0.25, 0.25]
    expected_easy = np.mean([-np.log(p) * (0.8 + p) ** 2 for p in p_t_s])
    expected_hard = np.mean([-np.log(p) * (1.2 - p) ** 2 for p in p_t_c])
    # the first summand written out: -ln(0.75) * 1.55^2 = 0.2876821 * 2.4025
    assert abs(-np.log(0.75) * 1.55**2 - 0.6911562) < 1e-6
    np.testing.assert_allclose(float(easy), expected_easy, rtol=1e-5)
    np.testing.assert_allclose(float(hard), expected_hard, rtol=1e-5)
    # by hand: ln 4 = 1.3862944, ln 2 = 0.6931472
    # easy = (0.2876821 * 1.55^2 + 1.3862944 * 1.05^2 + 0.2876821 * 1.55^2 + 0.6931472 * 1.3^2) / 4
    #      = (0.6911562 + 1.5283895 + 0.6911562 + 1.1714187) / 4
    # hard = (0.6931472 * 0.7^2 + 3 * 1.3862944 * 0.95^2) / 4 = (0.3396421 + 3 * 1.2511307) / 4
    np.testing.assert_allclose(float(easy), 1.0205302, rtol=1e-5)
    np.testing.assert_allclose(float(hard), 1.0232585, rtol=1e-5)


def test_twin_focus_loss_weights_negatives_by_their_own_p_t():
    """A negative predicted at p = 0.9 is a hard sample (p_t = 0.1), not an easy one."""
    z = tf.constant([_logit(0.9)])
    easy, hard = twin_focus_loss(tf.constant([0]), z, z, c=0.8, gamma=2.0)
    np.testing.assert_allclose(float(easy), -np.log(0.1) * (0.8 + 0.1) ** 2, rtol=1e-5)
    np.testing.assert_allclose(float(hard), -np.log(0.1) * (1.2 - 0.1) ** 2, rtol=1e-5)


@pytest.mark.parametrize("gamma", [1.0, 2.0, 3.0])
def test_hard_term_with_c_1_is_focal_loss(gamma):
    y = np.array([1, 0, 1, 0, 1])
    z_c = np.array([2.0, -1.5, -0.3, 0.7, 0.0])
    p = 1 / (1 + np.exp(-z_c))
    p_t = np.where(y == 1, p, 1 - p)
    focal = np.mean(-np.log(p_t) * (1 - p_t) ** gamma)  # Lin et al. 2017, alpha-free
    _, hard = twin_focus_loss(tf.constant(y), tf.zeros(5), tf.constant(z_c, tf.float32), c=1.0, gamma=gamma)
    np.testing.assert_allclose(float(hard), focal, rtol=1e-5)


def test_twin_focus_loss_is_float32_from_float16_logits():
    z_s, z_c = tf.constant([0.5, -0.5], tf.float16), tf.constant([1.0, 2.0], tf.float16)
    easy, hard = twin_focus_loss(tf.constant([1, 0]), z_s, z_c, 0.8, 2.0)
    assert easy.dtype == hard.dtype == tf.float32


def test_total_loss_is_ctr_plus_weighted_twin_focus_plus_l2():
    features, labels = h.random_batch()
    model = h.build("tf4ctr", {"alpha": 0.3})
    out, terms = model.loss_terms(features, labels, training=False)
    bce = tf_keras.losses.BinaryCrossentropy(from_logits=True)(tf.cast(labels, tf.float32), out.logit)
    expected = float(bce) + 0.3 * float(terms["tf_easy"]) + 0.7 * float(terms["tf_hard"])
    expected += float(tf.add_n(model.losses))
    np.testing.assert_allclose(h.eval_loss(model, features, labels), expected, rtol=1e-5)
    assert model.loss_weights() == {"tf_easy": 0.3, "tf_hard": pytest.approx(0.7)}


# ---- logged terms and gradients --------------------------------------------------------------------
@pytest.mark.slow
def test_twin_focus_terms_are_logged_and_absent_when_switched_off():
    features, labels = h.random_batch()
    terms = h.logged_loss_terms(h.build("tf4ctr"), features, labels)
    assert set(terms) == {"ctr", "regularization", "tf_easy", "tf_hard"}
    assert terms["tf_easy"] > 0 and terms["tf_hard"] > 0 and terms["regularization"] > 0
    off = h.build("tf4ctr", {"tf_loss": False})
    assert set(h.logged_loss_terms(off, features, labels)) == {"ctr", "regularization"}
    assert off.loss_terms(features, labels)[1] == {}


def test_serving_call_without_labels_computes_no_loss_terms():
    features, _ = h.random_batch()
    output = h.build("tf4ctr").forward(features)
    assert output.aux_losses == {} and set(output.outputs) == {"z_s", "z_c"}


@pytest.mark.parametrize("ssem", ["ser", "gm", "moe", "share"])
def test_each_twin_focus_term_trains_its_own_encoder(ssem):
    features, labels = h.random_batch()
    model = h.build("tf4ctr", {"ssem": ssem})
    # SER's two table sets share variable names (checked by identity in the next test)
    tables = [] if ssem == "ser" else ["table_item_id"]
    easy = h.aux_loss_gradients(model, features, labels, "tf_easy")
    h.assert_gradient_reaches(easy, ["MLP_s/", "W_s/", *tables], ["MLP_c/", "W_c/", "WSF/"])
    hard = h.aux_loss_gradients(model, features, labels, "tf_hard")
    h.assert_gradient_reaches(hard, ["MLP_c/", "W_c/", *tables], ["MLP_s/", "W_s/", "WSF/"])
    if ssem in ("gm", "moe"):  # the selection network is trained by both terms
        fragment = "Gate/" if ssem == "gm" else "EX_1/"
        h.assert_gradient_reaches(easy, [fragment])
        h.assert_gradient_reaches(hard, [fragment])


def _table_gradient_norms(model, features, labels, term):
    """{(set, field): gradient norm} for the two SER table sets (their variables share names)."""
    tables = {("easy", f): t.embeddings for f, t in model.E_es.tables.items()}
    tables.update({("hard", f): t.embeddings for f, t in model.embeddings.tables.items()})
    with tf.GradientTape() as tape:
        loss = model.loss_terms(features, labels, training=True)[1][term]
    grads = tape.gradient(loss, list(tables.values()))
    return {k: 0.0 if g is None else float(tf.norm(tf.convert_to_tensor(g))) for k, g in zip(tables, grads)}


def test_ser_separates_the_easy_and_hard_embeddings():
    features, labels = h.random_batch()
    model = h.build("tf4ctr")  # ssem = ser
    model(features)
    d = h.SPEC.embedding_dim
    assert model.E_es.tables["item_id"].embeddings.shape[-1] == d // 2
    assert model.embeddings.tables["item_id"].embeddings.shape[-1] == d
    assert model.MLP_s.blocks[0][0].kernel.shape[0] == num_fields(h.SPEC, h.SPEC.feedback_types) * d // 2  # E_es is f * d/2 wide
    easy = _table_gradient_norms(model, features, labels, "tf_easy")
    hard = _table_gradient_norms(model, features, labels, "tf_hard")
    assert easy[("easy", "item_id")] > 0 and easy[("hard", "item_id")] == 0
    assert hard[("hard", "item_id")] > 0 and hard[("easy", "item_id")] == 0
    assert easy[("easy", "gap")] > 0  # the pooled sequences carry the gap embedding of their own set


@pytest.mark.parametrize("init_std", [1e-4, None])
def test_both_embedding_sets_start_as_embedding_init_std_says(init_std):
    model = h.build("tf4ctr", {"embedding_init_std": init_std})
    model(h.random_batch()[0])
    for tables in (model.embeddings.tables, model.E_es.tables):
        spread = float(tf.math.reduce_std(tables["item_id"].embeddings))
        assert spread < 1e-3 if init_std else spread > 1e-2  # normal(0, 1e-4), or v1's uniform(-0.05, 0.05)


def test_ser_easy_width_is_a_parameter_and_only_for_ser():
    model = h.build("tf4ctr", {"ser_easy_embedding_dim": 3})
    features, _ = h.random_batch()
    model(features)
    assert model.E_es.tables["user_id"].embeddings.shape[-1] == 3
    with pytest.raises(pydantic.ValidationError, match="ser_easy_embedding_dim"):
        TF4CTRParams(ssem="gm", ser_easy_embedding_dim=3)


def test_defaults_are_the_authors_ml1m_configuration():
    p = TF4CTRParams()
    assert (p.ssem, p.dfm, p.tf_loss, p.alpha, p.c, p.gamma) == ("ser", "wsf", True, 0.25, 0.8, 2.0)
    assert (p.simple_units, p.mlp_units, p.batch_norm, p.dropout) == ((400,), (400, 400, 400), True, 0.1)
    assert (p.vf_tau, p.embedding_l2) == (0.8, 0.01)


def test_gm_gate_splits_one_embedding_between_the_encoders():
    features, _ = h.random_batch()
    model = h.build("tf4ctr", {"ssem": "gm"})
    h_es, h_hs = model.sample_selection(features)
    flat = tf.reshape(
        tf.concat([model.embeddings.user(features), model.embeddings.target(features)], axis=1), [32, -1]
    )
    width = flat.shape[-1]  # the leading user and item fields of h
    np.testing.assert_allclose((h_es + h_hs)[:, :width].numpy(), flat.numpy(), rtol=1e-5, atol=1e-7)
    ratio = (h_es[:, :width] / (flat + 1e-30)).numpy()
    g = ratio[np.abs(flat.numpy()) > 1e-4]
    assert np.all((g > 0) & (g < 1))


# ---- fusion ----------------------------------------------------------------------------------------
def test_wsf_starts_as_the_mean_of_the_two_logits():
    features, _ = h.random_batch()
    model = h.build("tf4ctr")
    logit = model(features)["logit"]
    h_es, h_hs = model.sample_selection(features)
    z_s = tf.squeeze(model.W_s(model.MLP_s(h_es)), -1)
    z_c = tf.squeeze(model.W_c(model.MLP_c(h_hs)), -1)
    np.testing.assert_allclose(logit.numpy(), (0.5 * z_s + 0.5 * z_c).numpy(), rtol=1e-5, atol=1e-6)


def test_voting_fusion_is_noiseless_at_inference_and_gumbel_in_training():
    tf_keras.utils.set_random_seed(0)
    vf = VotingFusion(tau=0.8)
    hat_h_es, hat_h_hs = tf.random.normal([64, 5]), tf.random.normal([64, 7])
    z_s, z_c = tf.random.normal([64]), tf.random.normal([64])
    served = vf(z_s, z_c, hat_h_es, hat_h_hs, training=False).numpy()
    pi_s = hat_h_es.numpy() @ vf.W_es.kernel.numpy() + vf.W_es.bias.numpy()
    pi_c = hat_h_hs.numpy() @ vf.W_hs.kernel.numpy() + vf.W_hs.bias.numpy()
    pi = np.concatenate([pi_s, pi_c], axis=1)
    p = np.exp(pi / 0.8) / np.exp(pi / 0.8).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(served, p[:, 0] * z_s.numpy() + p[:, 1] * z_c.numpy(), rtol=1e-5, atol=1e-6)
    train_a = vf(z_s, z_c, hat_h_es, hat_h_hs, training=True).numpy()
    train_b = vf(z_s, z_c, hat_h_es, hat_h_hs, training=True).numpy()
    assert np.abs(train_a - train_b).max() > 1e-3
    votes = vf.vote(hat_h_es, hat_h_hs, training=True).numpy()
    np.testing.assert_allclose(votes.sum(axis=1), 1.0, rtol=1e-6)


def test_vf_model_is_deterministic_at_inference_only():
    features, _ = h.random_batch()
    params = {"dfm": "vf", "dropout": 0.0}  # batch norm is deterministic; Gumbel is the only noise left
    model = h.build("tf4ctr", params)
    a, b = model(features, training=False)["logit"], model(features, training=False)["logit"]
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    c, d = model(features, training=True)["logit"], model(features, training=True)["logit"]
    assert float(tf.reduce_max(tf.abs(c - d))) > 0
    wsf = h.build("tf4ctr", {"dropout": 0.0})  # control: without VF, two training calls agree
    e, f = wsf(features, training=True)["logit"], wsf(features, training=True)["logit"]
    np.testing.assert_allclose(e.numpy(), f.numpy(), rtol=1e-6)


def test_cf_without_tf_loss_builds_no_encoder_logit_layers():
    model = h.build("tf4ctr", {"dfm": "cf", "tf_loss": False})
    features, _ = h.random_batch()
    model(features)
    assert not model.uses_encoder_logits
    assert not any("W_s/" in v.name or "W_c/" in v.name for v in model.trainable_variables)


# ---- replaceable encoders --------------------------------------------------------------------------
@pytest.mark.slow
def test_encoders_are_replaceable():
    tf_keras.utils.set_random_seed(0)
    simple = MLP((7,), name="custom_simple")
    complex_ = MLP((9, 5), batch_norm=True, name="custom_complex")
    model = TF4CTR(h.SPEC, h.VOCAB_SIZES, TF4CTRParams(), simple_encoder=simple, complex_encoder=complex_)
    features, labels = h.random_batch()
    h.assert_output_shape_and_range(model, features)
    assert model.W_s.kernel.shape == (7, 1) and model.W_c.kernel.shape == (5, 1)
    grads = h.aux_loss_gradients(model, features, labels, "tf_hard")
    h.assert_gradient_reaches(grads, ["custom_complex"], ["custom_simple"])
    h.assert_fit_step_lowers_loss(model, features, labels)


def test_unknown_variants_are_rejected():
    with pytest.raises(pydantic.ValidationError):
        TF4CTRParams(ssem="mmoe")
    with pytest.raises(pydantic.ValidationError):
        TF4CTRParams(dfm="none")


def test_without_sequences_the_model_reads_only_the_flat_fields():
    """``sequences: []`` (``tf4ctr_ref``): the paper's flat categorical fields; every history input
    can change and the prediction does not, while the default model's does."""
    features, _ = h.random_batch(min_length=2)
    rng = np.random.default_rng(3)
    other_histories = dict(features)
    for feedback in h.SPEC.feedback_types:
        for name in h.SPEC.transformed_sequence_names(feedback):
            values = features[name].numpy()
            other_histories[name] = tf.constant(rng.permutation(values), values.dtype)
    flat = h.build("tf4ctr", {"sequences": [], "embedding_init_std": 0.05})
    d = h.SPEC.embedding_dim
    assert flat.num_fields == len(h.SPEC.user_fields) + len(h.SPEC.item_fields) + 2  # + hour, weekday
    np.testing.assert_allclose(flat(features)["probability"].numpy(), flat(other_histories)["probability"].numpy(), rtol=1e-6)
    assert flat.MLP_s.blocks[0][0].kernel.shape[0] == flat.num_fields * d // 2
    pooled = h.build("tf4ctr", {"embedding_init_std": 0.05})
    assert not np.allclose(pooled(features)["probability"].numpy(), pooled(other_histories)["probability"].numpy())
    with pytest.raises(ValueError, match=r"sequences \['clicks'\] are not feedback types"):
        h.build("tf4ctr", {"sequences": ["clicks"]})
