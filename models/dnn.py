"""DNN baseline (MODELS.md): an MLP over every field, each behaviour sequence mean-pooled per attribute."""
from __future__ import annotations

from models.base import CTRModel, ModelOutput, ModelParams
from models.layers import LogitHead, flatten_fields


class DNN(CTRModel):
    Params = ModelParams

    def __init__(self, spec, vocab_sizes, params: ModelParams, name: str = "dnn"):
        super().__init__(spec, vocab_sizes, params, name=name)
        self.head = LogitHead(params.mlp_units, dropout=params.dropout, name="prediction_mlp")

    def forward(self, features, training=False, losses=True):
        flat = flatten_fields(self.embeddings.pooled_fields(features))
        return ModelOutput(logit=self.head(flat, training=training))
