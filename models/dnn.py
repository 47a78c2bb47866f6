"""DNN baseline (MODELS.md): an MLP over every field, each behaviour sequence mean-pooled per attribute."""
from __future__ import annotations

import tensorflow as tf

from models.base import CTRModel, ModelOutput, ModelParams
from models.layers import LogitHead, flatten_fields, masked_mean


class DNN(CTRModel):
    Params = ModelParams

    def __init__(self, spec, vocab_sizes, params: ModelParams, name: str = "dnn"):
        super().__init__(spec, vocab_sizes, params, name=name)
        self.head = LogitHead(params.mlp_units, dropout=params.dropout, name="prediction_mlp")

    def forward(self, features, training=False, losses=True):
        emb = self.embeddings
        parts = [emb.user(features), emb.target(features), emb.context(features)]
        for feedback in self.spec.feedback_types:
            sequence, mask = emb.sequence(features, feedback)
            parts.append(masked_mean(sequence, mask, axis=1))  # [B, N, E]
        flat = tf.concat([flatten_fields(p) for p in parts], axis=-1)
        return ModelOutput(logit=self.head(flat, training=training))
