"""DIN baseline (Zhou et al., KDD 2018): target attention over the click sequence.

The target item (its N attribute embeddings concatenated) queries the click history through
DIN's activation unit MLP([q, k, q-k, q*k]); as in the paper the attention weights are not
softmax-normalised (pad slots get weight 0). The activation unit's activation is a parameter:
sigmoid by default, or the paper's Dice (``attention_activation: dice``). ``sequence_fields``
narrows the query and the keys to some item fields and ``sequence_gap`` drops the time gaps:
``din_ref`` in benchmarks/quality.py is FuxiCTR's DIN on ml1m-seq (query and keys of item id
and first genre, no gaps, one Dice layer of 64, MLP 500x3; ``peers/README.md``).
"""
from __future__ import annotations

import tensorflow as tf

from contract.model_params import DINParams
from models.base import CTRModel, ModelOutput, check_sequence_fields
from models.layers import LogitHead, TargetAttention, flatten_fields


class DIN(CTRModel):
    Params = DINParams

    def __init__(self, spec, vocab_sizes, params: DINParams, name: str = "din"):
        super().__init__(spec, vocab_sizes, params, name=name)
        self.sequence_fields = check_sequence_fields(spec, params, name) or spec.item_fields
        self.attention = TargetAttention(params.attention_units, activation=params.attention_activation,
                                         normalization=None, name="activation_unit")
        self.head = LogitHead(params.mlp_units, dropout=params.dropout, name="prediction_mlp")

    def forward(self, features, training=False, losses=True):
        emb = self.embeddings
        user, target, context = emb.user(features), emb.target(features), emb.context(features)
        clicks, mask = emb.sequence(features, "click", with_gap=self.params.sequence_gap, fields=self.sequence_fields)
        query = emb.item_vectors(tf.stack([emb.lookup(f, features[f]) for f in self.sequence_fields], axis=1))
        interest, _ = self.attention(query, emb.item_vectors(clicks), mask, training=training)
        flat = tf.concat([flatten_fields(user), emb.item_vectors(target), flatten_fields(context), interest], -1)
        return ModelOutput(logit=self.head(flat, training=training))
