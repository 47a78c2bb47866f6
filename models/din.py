"""DIN baseline (Zhou et al., KDD 2018): target attention over the click sequence.

The target item (its N attribute embeddings concatenated) queries the click history through
DIN's activation unit MLP([q, k, q-k, q*k]); as in the paper the attention weights are not
softmax-normalised (pad slots get weight 0). Deviation: sigmoid activation units instead of
Dice/PReLU (Dice's batch statistics add little on these data sizes).
"""
from __future__ import annotations

from typing import Tuple

import tensorflow as tf

from models.base import CTRModel, ModelOutput, ModelParams
from models.layers import LogitHead, TargetAttention, flatten_fields


class DINParams(ModelParams):
    attention_units: Tuple[int, ...] = (64, 32)


class DIN(CTRModel):
    Params = DINParams

    def __init__(self, spec, vocab_sizes, params: DINParams, name: str = "din"):
        super().__init__(spec, vocab_sizes, params, name=name)
        self.attention = TargetAttention(params.attention_units, normalization=None, name="activation_unit")
        self.head = LogitHead(params.mlp_units, dropout=params.dropout, name="prediction_mlp")

    def forward(self, features, training=False, losses=True):
        emb = self.embeddings
        user, target, context = emb.user(features), emb.target(features), emb.context(features)
        clicks, mask = emb.sequence(features, "click")
        interest, _ = self.attention(emb.item_vectors(target), emb.item_vectors(clicks), mask, training=training)
        flat = tf.concat([flatten_fields(user), emb.item_vectors(target), flatten_fields(context), interest], -1)
        return ModelOutput(logit=self.head(flat, training=training))
