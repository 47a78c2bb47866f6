"""DNN baseline (docs/models.md): an MLP over every field, each behaviour sequence mean-pooled per attribute.

``sequences`` narrows the pooled behaviour sequences (default: every feedback type of the
spec), so the baseline can be given exactly the inputs another model reads (DIN and CAMN: the
click sequence; FADIDN: click and unclick) to tell the inputs' share of a gap from the model's.
``sequence_fields`` and ``sequence_gap`` narrow each position to FuxiCTR's reference inputs
(``dnn_ref`` in benchmarks/quality.py); ``mlp_units`` (500, 500, 500) is FuxiCTR's DNN.
"""
from __future__ import annotations

from contract.model_params import DNNParams
from models.base import CTRModel, ModelOutput, check_sequence_fields
from models.layers import LogitHead, flatten_fields


class DNN(CTRModel):
    Params = DNNParams

    def __init__(self, spec, vocab_sizes, params: DNNParams, name: str = "dnn"):
        super().__init__(spec, vocab_sizes, params, name=name)
        self.sequences = spec.feedback_types if params.sequences is None else params.sequences
        unknown = [kind for kind in self.sequences if kind not in spec.feedback_types]
        if unknown:
            raise ValueError(f"{name}: sequences {unknown} are not feedback types of the feature spec {list(spec.feedback_types)}")
        self.sequence_fields = check_sequence_fields(spec, params, name)
        self.head = LogitHead(params.mlp_units, dropout=params.dropout, name="prediction_mlp")

    def forward(self, features, training=False, losses=True):
        pooled = self.embeddings.pooled_fields(features, self.sequences, self.sequence_fields, self.params.sequence_gap)
        flat = flatten_fields(pooled)
        return ModelOutput(logit=self.head(flat, training=training))
