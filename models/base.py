"""The base of every CTR model: named outputs and named loss terms (TFRS ``compute_loss`` pattern).

A model implements ``forward(features, training, losses) -> ModelOutput(logit, aux_losses, outputs)``
(label-free: the same call serves, with ``losses=False`` so that no auxiliary term is computed) and, for auxiliary terms that need the labels,
``label_losses(output, labels)`` over the named ``outputs`` forward returned. It declares its
auxiliary terms with their weights in ``loss_weights()`` (a term switched off in the config is
simply absent there). ``compute_loss`` adds ``ctr`` (binary cross-entropy through
``tfrs.tasks.Ranking``) and every weighted term, and fails loudly when the model returns a term
it did not declare or omits one it did: an auxiliary loss can never be silently skipped. Each
term is logged every epoch as ``loss_<name>`` beside the total.

Diagnostics follow the same pattern: a model declares the names of the scalars that show its
modules at work (an attention's mean normalised entropy, DUMN's slot cosine) in
``diagnostic_names()`` and returns them in ``ModelOutput.diagnostics`` whenever ``losses=True``;
each is logged every epoch on the validation split as ``val_diag_<name>`` (``evaluate`` logs
``diag_<name>``), and a declared diagnostic the model omits is an error, as for loss terms.
Training steps do not track them: nothing consumes them there, so the graph prunes their
computation (the entropy of every attention row cost DUMN 8% of its training step).
"""
from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import Dict, Mapping, Optional, Tuple

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras

from contract.model_params import ModelParams, SequenceInputParams
from models.inputs import FeatureEmbeddings
from contract.feature_spec import FeatureSpec


def check_sequence_fields(spec: FeatureSpec, params: SequenceInputParams, name: str) -> Optional[Tuple[str, ...]]:
    """``params.sequence_fields`` if every one is an item field of ``spec`` (ValueError otherwise)."""
    unknown = [f for f in params.sequence_fields or () if f not in spec.item_fields]
    if unknown:
        raise ValueError(f"{name}: sequence_fields {unknown} are not item fields of the feature spec {list(spec.item_fields)}")
    return params.sequence_fields


# Probabilities stay this far from 0 and 1. TensorFlow's float32 sigmoid is exactly 1.0 from a
# logit of about 17 and exactly 0.0 below about -88, and one such prediction makes logloss inf or
# nan (a label-1 example at 1.0 gives 0 * log(0)). 1 - 1e-7 is 0.99999988 in float32, below 1.
PROBABILITY_EPSILON = 1e-7


def probability(logit: tf.Tensor) -> tf.Tensor:
    """The click probability of a logit, clipped to [1e-7, 1 - 1e-7]: every model's serving
    output goes through here. Training never does: its loss takes the logit itself."""
    return tf.clip_by_value(tf.sigmoid(logit), PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)


@dataclasses.dataclass
class ModelOutput:
    logit: tf.Tensor  # [B] float32
    aux_losses: Dict[str, tf.Tensor] = dataclasses.field(default_factory=dict)  # unweighted scalars
    outputs: Dict[str, tf.Tensor] = dataclasses.field(default_factory=dict)  # named tensors for label_losses
    diagnostics: Dict[str, tf.Tensor] = dataclasses.field(default_factory=dict)  # scalars, logged, not optimised


class CTRModel(tfrs.models.Model):
    """Base class; subclasses set ``Params`` and implement ``forward``."""

    Params = ModelParams

    def __init__(self, spec: FeatureSpec, vocab_sizes: Mapping[str, int], params: ModelParams, name: str):
        super().__init__(name=name)
        if not isinstance(params, self.Params):
            raise TypeError(f"{type(self).__name__} needs {self.Params.__name__}, got {type(params).__name__}")
        self.spec, self.params = spec, params
        self.embedding_dim = params.embedding_dim or spec.embedding_dim
        self.embeddings = FeatureEmbeddings(spec, vocab_sizes, self.embedding_dim, l2=params.embedding_l2,
                                           init_std=params.embedding_init_std)
        self.task = tfrs.tasks.Ranking(
            # per-example losses, averaged in compute_loss (the only reduction allowed under
            # tf.distribute outside compile())
            loss=tf_keras.losses.BinaryCrossentropy(from_logits=True, reduction=tf_keras.losses.Reduction.NONE),
            metrics=[tf_keras.metrics.AUC(from_logits=True, name="auc")],
        )
        self.loss_trackers = {
            term: tf_keras.metrics.Mean(name=f"loss_{term}")
            for term in ["ctr", *self.loss_weights(), "regularization"]
        }
        self.total_loss_tracker = tf_keras.metrics.Mean(name="loss")  # the weighted sum
        self.diagnostic_trackers = {name: tf_keras.metrics.Mean(name=f"diag_{name}") for name in self.diagnostic_names()}

    # ---- to implement --------------------------------------------------------------------------
    def loss_weights(self) -> Dict[str, float]:
        """Active auxiliary loss terms -> weight. Override in models with auxiliary losses."""
        return {}

    def diagnostic_names(self) -> Tuple[str, ...]:
        """Names of the diagnostics ``forward`` returns when ``losses=True``. Override where there are some."""
        return ()

    def forward(self, features: Mapping[str, tf.Tensor], training: bool = False, losses: bool = True) -> ModelOutput:
        """``losses=False`` is the serving path (``call``): no auxiliary term is computed."""
        raise NotImplementedError

    def label_losses(self, output: ModelOutput, labels: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Auxiliary terms that need the labels ([B] in {0, 1}); override where there are some."""
        return {}

    def score_candidates(self, user_features: Mapping[str, tf.Tensor], item_features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Probabilities [N] of N candidate items for one user (the ``serving_candidates`` path).

        ``user_features``: every transformed feature but the item fields, for one row ([1, ...]:
        user fields, context, histories); ``item_features``: the item fields of the N candidates.
        This default tiles the user row N times and runs ``call``; a model whose user-side work
        does not depend on the candidate overrides it to do that work once.
        """
        count = tf.shape(item_features[self.spec.item_fields[0]])[0]
        tiled = {name: tf.repeat(value, count, axis=0) for name, value in user_features.items()}
        return self({**tiled, **item_features}, training=False)["probability"]

    # ---- shared behaviour ----------------------------------------------------------------------
    def call(self, features, training=False):
        logit = self.forward(features, training=training, losses=False).logit
        return {"logit": logit, "probability": probability(logit)}

    def loss_terms(self, features, labels, training: bool = False) -> Tuple[ModelOutput, Dict[str, tf.Tensor]]:
        """The forward output and every declared auxiliary term (unweighted, float32)."""
        output = self.forward(features, training=training)
        label_terms = self.label_losses(output, tf.reshape(labels, [-1]))
        both = set(output.aux_losses) & set(label_terms)
        if both:
            raise ValueError(f"{self.name}: loss terms {sorted(both)} returned by forward and label_losses")
        terms = {**output.aux_losses, **label_terms}
        declared = set(self.loss_weights())
        if declared != set(terms):
            raise ValueError(f"{self.name}: loss terms declared {sorted(declared)} but the model returned {sorted(terms)}")
        if set(self.diagnostic_names()) != set(output.diagnostics):
            raise ValueError(f"{self.name}: diagnostics declared {sorted(self.diagnostic_names())} "
                             f"but the model returned {sorted(output.diagnostics)}")
        return output, {name: tf.cast(value, tf.float32) for name, value in terms.items()}

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        features, labels = inputs
        output, terms = self.loss_terms(features, labels, training=training)
        labels = tf.reshape(tf.cast(labels, tf.float32), [-1, 1])
        per_example = self.task(labels=labels, predictions=output.logit[:, tf.newaxis], training=training)
        terms["ctr"] = tf.reduce_mean(per_example)
        terms["regularization"] = tf.add_n(self.losses) if self.losses else tf.constant(0.0)
        weights = dict(self.loss_weights(), ctr=1.0, regularization=1.0)
        for name, value in terms.items():
            self.loss_trackers[name].update_state(value)
        if not training:  # diagnostics are measured on held-out data; unused, training's are never computed
            for name, value in output.diagnostics.items():
                self.diagnostic_trackers[name].update_state(tf.cast(value, tf.float32))
        total = tf.add_n([weights[name] * value for name, value in terms.items()])
        self.total_loss_tracker.update_state(total)
        return total

    @property
    def metrics(self):
        return [self.total_loss_tracker, *self.task.metrics, *self.loss_trackers.values(), *self.diagnostic_trackers.values()]

    def train_step(self, inputs):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            # gradients are summed over replicas: scale so the update is the global mean
            loss = self.compute_loss(inputs, training=True) / replicas
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        diagnostics = set(map(id, self.diagnostic_trackers.values()))
        return {metric.name: metric.result() for metric in self.metrics if id(metric) not in diagnostics}

    def test_step(self, inputs):
        self.compute_loss(inputs, training=False)
        return {metric.name: metric.result() for metric in self.metrics}

