"""Embeddings of the transformed features, driven by the FeatureSpec.

One table per field, shared by name between a target field and every history of that field
(``item_id`` and ``hist_click_item_id`` look up the same table, as in DeepCTR). One table for
the bucketized time gaps, added to every attribute embedding of its position (docs/models.md).
Masks come from ids: a history position is real where its ``item_id`` index is not 0.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import Dict, Mapping, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

from models.layers import masked_mean
from contract.features import CONTEXT_FIELDS, CONTEXT_SIZES, ITEM_ID, PAD_INDEX
from contract.feature_spec import FeatureSpec

GAP_TABLE = "gap"


def table_sizes(spec: FeatureSpec, vocab_sizes: Mapping[str, int]) -> Dict[str, int]:
    """Rows of each embedding table: vocabulary + OOV buckets + the pad row 0."""
    missing = [f for f in spec.scalar_fields if f not in vocab_sizes]
    if missing:
        raise ValueError(f"vocab_sizes lacks fields {missing}")
    sizes = {field: int(vocab_sizes[field]) + spec.oov_buckets + 1 for field in spec.scalar_fields}
    sizes.update(CONTEXT_SIZES)
    sizes[GAP_TABLE] = spec.gap_buckets + 1
    return sizes


class FeatureEmbeddings(tf_keras.layers.Layer):
    """Looks up the embeddings of users, target items, context and behaviour sequences.

    Every output is [..., E]; history outputs are zero at pad positions.
    """

    def __init__(self, spec: FeatureSpec, vocab_sizes: Mapping[str, int], dim: int, l2: float = 0.0,
                 init_std: Optional[float] = None, name: str = "embeddings"):
        """``init_std``: tables start normal(0, init_std); None: Keras' uniform(-0.05, 0.05)."""
        super().__init__(name=name)
        self.spec, self.dim = spec, dim
        regularizer = tf_keras.regularizers.L2(l2) if l2 else None
        self.tables = {
            field: tf_keras.layers.Embedding(
                rows, dim, embeddings_regularizer=regularizer, name=f"table_{field}",
                embeddings_initializer=(tf_keras.initializers.RandomNormal(0.0, init_std) if init_std else "uniform"),
            )
            for field, rows in table_sizes(spec, vocab_sizes).items()
        }

    def lookup(self, field: str, ids: tf.Tensor) -> tf.Tensor:
        return self.tables[field](ids)

    def user(self, features) -> tf.Tensor:
        """[B, M+1, E]: user_id and the profile fields."""
        return tf.stack([self.lookup(f, features[f]) for f in self.spec.user_fields], axis=1)

    def target(self, features) -> tf.Tensor:
        """[B, N, E]: item_id and the target item's attributes."""
        return tf.stack([self.lookup(f, features[f]) for f in self.spec.item_fields], axis=1)

    def context(self, features) -> tf.Tensor:
        """[B, C, E]: hour and weekday."""
        return tf.stack([self.lookup(f, features[f]) for f in CONTEXT_FIELDS], axis=1)

    def sequence_mask(self, features, feedback: str) -> tf.Tensor:
        """[B, T] bool: True at real (non-pad) positions of a feedback sequence."""
        return tf.not_equal(features[self.spec.history(feedback, ITEM_ID)], PAD_INDEX)

    def sequence(self, features, feedback: str, with_gap: bool = True,
                 fields: Optional[Sequence[str]] = None) -> Tuple[tf.Tensor, tf.Tensor]:
        """([B, T, N, E], mask [B, T]): attribute embeddings per position (of ``fields``, default
        every item field), gap embedding added unless ``with_gap`` is False."""
        mask = self.sequence_mask(features, feedback)
        emb = tf.stack(
            [self.lookup(f, features[self.spec.history(feedback, f)]) for f in fields or self.spec.item_fields], axis=2
        )
        if with_gap:
            emb = emb + self.lookup(GAP_TABLE, features[self.spec.history_gap(feedback)])[:, :, tf.newaxis, :]
        return emb * tf.cast(mask, emb.dtype)[:, :, tf.newaxis, tf.newaxis], mask

    def pooled_fields(self, features, feedback_types: Optional[Sequence[str]] = None,
                      fields: Optional[Sequence[str]] = None, with_gap: bool = True) -> tf.Tensor:
        """[B, f, E]: user, target and context fields, then each behaviour sequence mean-pooled
        per attribute over its real positions (the field layout of DNN and TF4CTR); by default
        every feedback type of the spec, else ``feedback_types``; ``fields`` and ``with_gap`` as
        in ``sequence``."""
        parts = [self.user(features), self.target(features), self.context(features)]
        for feedback in self.spec.feedback_types if feedback_types is None else feedback_types:
            sequence, mask = self.sequence(features, feedback, with_gap=with_gap, fields=fields)
            parts.append(masked_mean(sequence, mask, axis=1))  # [B, N, E]
        return tf.concat(parts, axis=1)

    def item_vectors(self, item_embeddings: tf.Tensor) -> tf.Tensor:
        """Concatenates the N attribute embeddings of items: [..., N, E] -> [..., N*E]."""
        width = int(item_embeddings.shape[-2]) * int(item_embeddings.shape[-1])
        if item_embeddings.shape.rank == 3:  # keep the batch dimension static-free but the width static
            return tf.reshape(item_embeddings, [-1, width])
        return tf.reshape(item_embeddings, [-1, int(item_embeddings.shape[1]), width])
