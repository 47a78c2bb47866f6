"""DNN and DIN: the shared model checks, and the base class's loss-term bookkeeping."""
import pytest
import tensorflow as tf

from models.base import ModelOutput
from models.dnn import DNN
from tests import model_harness as h


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

