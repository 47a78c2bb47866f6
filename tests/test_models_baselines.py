"""DNN and DIN: the shared model checks, and the base class's loss-term bookkeeping."""
import os

import pytest
import tensorflow as tf
import tf_keras

from models.base import ModelOutput
from models.dnn import DNN
from tests import model_harness as h


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dnn", "din"])
def test_standard_checks(name):
    h.run_standard_checks(name)


def test_din_attention_ignores_the_unclick_history():
    features, _ = h.random_batch()
    model = h.build("din")
    other = dict(features)
    other["hist_unclick_item_id"] = tf.zeros_like(features["hist_unclick_item_id"])
    tf.debugging.assert_near(model(features)["probability"], model(other)["probability"])


def test_din_uses_the_click_history():
    features, _ = h.random_batch(min_length=2)
    model = h.build("din")
    other = dict(features)
    other["hist_click_item_id"] = tf.zeros_like(features["hist_click_item_id"])
    diff = tf.reduce_max(tf.abs(model(features)["probability"] - model(other)["probability"]))
    assert float(diff) > 0


def test_dnn_narrowed_to_the_click_sequence_ignores_the_others():
    features, _ = h.random_batch(min_length=2)
    narrowed, full = h.build("dnn", {"sequences": ["click"]}), h.build("dnn")
    other = dict(features)
    other["hist_unclick_item_id"] = tf.zeros_like(features["hist_unclick_item_id"])
    tf.debugging.assert_near(narrowed(features)["probability"], narrowed(other)["probability"])
    assert float(tf.reduce_max(tf.abs(full(features)["probability"] - full(other)["probability"]))) > 0


def test_dnn_rejects_a_sequence_the_spec_lacks():
    with pytest.raises(ValueError, match=r"sequences \['clicks'\] are not feedback types"):
        h.build("dnn", {"sequences": ["click", "clicks"]})


@pytest.mark.slow
def test_ctr_and_regularization_terms_are_logged():
    features, labels = h.random_batch()
    terms = h.logged_loss_terms(h.build("dnn", {"embedding_l2": 1e-3}), features, labels)
    assert set(terms) == {"ctr", "regularization"}
    assert terms["regularization"] > 0


class _ForgetsItsTerm(DNN):
    def loss_weights(self):
        return {"contrastive": 0.5}


class _AddsAnUndeclaredTerm(DNN):
    def forward(self, features, training=False):
        out = super().forward(features, training)
        return ModelOutput(out.logit, {"surprise": tf.constant(1.0)})


@pytest.mark.parametrize("cls", [_ForgetsItsTerm, _AddsAnUndeclaredTerm])
def test_a_loss_term_cannot_be_skipped_or_smuggled(cls):
    features, labels = h.random_batch()
    model = cls(h.SPEC, h.VOCAB_SIZES, DNN.Params())
    with pytest.raises(ValueError, match="loss terms declared"):
        model.compute_loss((features, labels), training=True)



class _ForgetsItsDiagnostic(DNN):
    def diagnostic_names(self):
        return ("attention_entropy",)


def test_a_declared_diagnostic_cannot_be_skipped():
    features, labels = h.random_batch()
    model = _ForgetsItsDiagnostic(h.SPEC, h.VOCAB_SIZES, DNN.Params())
    with pytest.raises(ValueError, match="diagnostics declared"):
        model.compute_loss((features, labels), training=True)


def test_embeddings_start_at_the_reference_librarys_scale_unless_asked_otherwise():
    """v2 default: normal(0, 1e-4) (FuxiCTR); ``embedding_init_std: null`` is Keras' uniform(-0.05, 0.05)."""
    features, _ = h.random_batch()
    default, v1 = h.build("dnn"), h.build("dnn", {"embedding_init_std": None})
    default(features), v1(features)
    small = default.embeddings.tables["item_id"].embeddings.numpy()
    uniform = v1.embeddings.tables["item_id"].embeddings.numpy()
    assert 0.5e-4 < small.std() < 2e-4
    assert 0.02 < uniform.std() < 0.04 and abs(uniform).max() <= 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dnn", "din", "camn", "fadidn", "dumn", "tf4ctr"])
def test_every_model_is_regularised_by_default_and_the_references_are_not(name):
    """v2 default for every model: dropout 0.1 in the prediction MLP and L2 0.01 on the embeddings
    (docs/models.md); FuxiCTR's reference forms and the v1 trainer's variants have neither."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import quality

    features, labels = h.random_batch()
    model = h.build(name)
    assert (model.params.dropout, model.params.embedding_l2) == (0.1, 0.01)
    assert h.logged_loss_terms(model, features, labels)["regularization"] > 0
    assert any(isinstance(layer, tf_keras.layers.Dropout) for layer in model.submodules)
    for variant in (f"{name}_noreg", *(["dnn_ref", "din_ref"] if name in ("dnn", "din") else [])):
        settings = quality.variant(variant)
        assert (settings["dropout"], settings["embedding_l2"]) == (0.0, 0.0), variant
    if name != "tf4ctr":  # TF4CTR's v1 had its own regularisation
        settings = quality.variant(f"{name}_v1")
        assert (settings["dropout"], settings["embedding_l2"]) == (0.0, 0.0)


# ---- the reference forms (FuxiCTR's inputs) --------------------------------------------------------
REFERENCE = {"sequence_fields": ["item_id", "category"], "sequence_gap": False}


@pytest.mark.parametrize("name,params", [
    ("dnn", {"sequences": ["click"], **REFERENCE}),
    ("din", {"attention_units": [8], "attention_activation": "dice", **REFERENCE}),
])
@pytest.mark.slow
def test_reference_forms_read_only_their_sequence_fields_and_no_gaps(name, params):
    h.run_standard_checks(name, params)
    features, _ = h.random_batch(min_length=2)
    model = h.build(name, {**params, "embedding_init_std": 0.05})  # outputs measurably apart
    base = model(features)["probability"]
    unread = dict(features)
    for field in ("hist_click_brand", "hist_click_gap"):  # brand is not a sequence field; gaps are off
        unread[field] = tf.where(features[field] > 0, 1 + features[field] % 3, 0)
    tf.debugging.assert_near(model(unread)["probability"], base)
    read = dict(features)
    read["hist_click_category"] = tf.where(features["hist_click_category"] > 0, 1 + features["hist_click_category"] % 5, 0)
    assert float(tf.reduce_max(tf.abs(model(read)["probability"] - base))) > 0
    # the target's brand is still a field of the prediction MLP
    brand = dict(features, brand=1 + features["brand"] % 8)
    assert float(tf.reduce_max(tf.abs(model(brand)["probability"] - base))) > 0


@pytest.mark.parametrize("name", ["dnn", "din"])
def test_an_unknown_sequence_field_is_rejected(name):
    with pytest.raises(ValueError, match=r"sequence_fields \['genre'\] are not item fields"):
        h.build(name, {"sequence_fields": ["item_id", "genre"]})
