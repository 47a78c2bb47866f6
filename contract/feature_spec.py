"""The one feature specification (FuxiCTR's FeatureMap idea), over the names of ``contract.features``.

``FeatureSpec`` names every feature once. The Beam sequence builder writes raw examples with these
names, ``preprocessing_fn`` turns them into model inputs with these names, the models look their
inputs up by these names, the serving signatures and the client build requests from them.

Raw features (tf.Example, written by the sequence builder, sent by clients):
  user fields, item fields          bytes scalars (``user_id``, ``item_id`` first)
  ``timestamp``                     int64 scalar, unix seconds (UTC)
  ``hist_<fb>_<item field>``        bytes lists, most recent last, at most ``max_length``
  ``hist_<fb>_timestamp``           int64 lists, the timestamps of those events
  ``clicked``                       int64 label; ``click_prob`` float (synthetic logs only)
Transformed features (model inputs, the output of the transform graph):
  user / item fields                int64 [B], vocabulary index >= 1 (shared with the history)
  ``hour``, ``weekday``             int64 [B] in [0, 24) and [0, 7)
  ``hist_<fb>_<item field>``        int64 [B, T], left-padded with 0 = pad, most recent last
  ``hist_<fb>_gap``                 int64 [B, T], bucketized time gap, 0 = pad
  ``slice_*``                       int64 [B], the Evaluator's slices (``contract.slices``)
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Dict, Tuple

from contract.config import GapBucketing, attribute_names
from contract.features import (
    CLICK_PROB, CONTEXT_FIELDS, FEEDBACK_TYPES, GAP, ITEM_ID, LABEL, TIMESTAMP, USER_ID, history_name,
)  # fmt: skip
from contract.serving import read_feature_spec
from contract.slices import TRANSFORM_SLICE_FEATURES


GAP_BUCKETINGS = typing.get_args(GapBucketing)


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    user_fields: Tuple[str, ...]  # USER_ID first
    item_fields: Tuple[str, ...]  # ITEM_ID first
    max_length: int
    gap_buckets: int
    embedding_dim: int = 16
    oov_buckets: int = 1
    vocab_min_frequency: int = 1
    feedback_types: Tuple[str, ...] = FEEDBACK_TYPES
    gap_bucketing: str = "quantile"  # contract.config.FeatureConfig.gap_bucketing

    def __post_init__(self):
        if not self.user_fields or self.user_fields[0] != USER_ID:
            raise ValueError(f"user_fields must start with {USER_ID!r}, got {self.user_fields}")
        if not self.item_fields or self.item_fields[0] != ITEM_ID:
            raise ValueError(f"item_fields must start with {ITEM_ID!r}, got {self.item_fields}")
        names = list(self.user_fields) + list(self.item_fields)
        clash = {n for n in names if names.count(n) > 1} | (set(names) & set(self.reserved_names()))
        if clash:
            raise ValueError(f"field names used twice or reserved: {sorted(clash)}")
        if self.gap_bucketing not in GAP_BUCKETINGS:
            raise ValueError(f"gap_bucketing must be one of {GAP_BUCKETINGS}, got {self.gap_bucketing!r}")
        unknown = set(self.feedback_types) - set(FEEDBACK_TYPES)
        if unknown:
            raise ValueError(f"unknown feedback types {sorted(unknown)}; known: {FEEDBACK_TYPES}")

    @staticmethod
    def reserved_names() -> Tuple[str, ...]:
        return (LABEL, TIMESTAMP, CLICK_PROB) + CONTEXT_FIELDS + TRANSFORM_SLICE_FEATURES

    @classmethod
    def from_config(cls, config) -> "FeatureSpec":
        """Builds the spec of a ``contract.config.PipelineConfig``."""
        user_attributes, item_attributes = attribute_names(config.data)
        return cls(
            user_fields=(USER_ID,) + tuple(user_attributes),
            item_fields=(ITEM_ID,) + tuple(item_attributes),
            max_length=config.sequences.max_length,
            gap_buckets=config.features.gap_buckets,
            embedding_dim=config.features.embedding_dim,
            oov_buckets=config.features.oov_buckets,
            vocab_min_frequency=config.features.vocab_min_frequency,
            gap_bucketing=config.features.gap_bucketing,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "FeatureSpec":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})

    @classmethod
    def from_model(cls, saved_model_dir: str) -> "FeatureSpec":
        """The spec a SavedModel carries (``contract.serving.read_feature_spec``; its max_length
        is the trained history length); ``FeatureSpecMissing`` for an older export."""
        return cls.from_dict(read_feature_spec(saved_model_dir)["spec"])

    # ---- names -------------------------------------------------------------------------------
    @staticmethod
    def history(feedback: str, field: str) -> str:
        return history_name(feedback, field)

    @staticmethod
    def history_timestamp(feedback: str) -> str:
        return history_name(feedback, TIMESTAMP)

    @staticmethod
    def history_gap(feedback: str) -> str:
        return history_name(feedback, GAP)

    @staticmethod
    def vocabulary_name(field: str) -> str:
        """Vocabulary file of a field; a target item field and its histories share one."""
        return f"vocab_{field}"

    @property
    def scalar_fields(self) -> Tuple[str, ...]:
        return self.user_fields + self.item_fields

    # ---- raw features ------------------------------------------------------------------------
    def raw_features(self) -> Dict[str, Tuple[str, bool]]:
        """Raw model inputs: name -> (dtype "string" | "int64", is_sequence). No label."""
        return dict(_raw_features(self))

    def raw_dtype(self, name: str) -> str:
        """"string", "int64" or "float" for any raw feature, label and click_prob included."""
        if name == CLICK_PROB:
            return "float"
        if name == LABEL:
            return "int64"
        return _raw_features(self)[name][0]

    # ---- transformed features ----------------------------------------------------------------
    def transformed_sequence_names(self, feedback: str) -> Tuple[str, ...]:
        return tuple(self.history(feedback, f) for f in self.item_fields) + (self.history_gap(feedback),)


@functools.lru_cache(maxsize=64)
def _raw_features(spec: FeatureSpec) -> Dict[str, Tuple[str, bool]]:
    """The raw features of a spec, computed once per spec (called for every value written)."""
    features: Dict[str, Tuple[str, bool]] = {name: ("string", False) for name in spec.scalar_fields}
    features[TIMESTAMP] = ("int64", False)
    for feedback in spec.feedback_types:
        for field in spec.item_fields:
            features[spec.history(feedback, field)] = ("string", True)
        features[spec.history_timestamp(feedback)] = ("int64", True)
    return features
