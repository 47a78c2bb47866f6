"""tensorflow-transform ``preprocessing_fn``: the only place raw values become model inputs.

Analyzers see the train split only (the Transform component analyzes ``train``). Training,
evaluation (TFMA's ``transform_features``) and serving (both signatures) run this same graph.

- Vocabularies: one per field; an item field's vocabulary is computed over the target field AND
  all its histories, and applied to both, so an item maps to the same index everywhere.
  Index 0 is padding, 1..V the vocabulary, V+1..V+oov the OOV buckets.
- Sequences: the last T items of each raw list (most recent last), left-padded with 0 to T.
- Time gaps: example timestamp - history timestamp, log1p, bucketized into 1..gap_buckets by
  train-split boundaries (``gap_bucketing``: quantiles, or equal widths up to the largest log
  gap); 0 = pad.
- Context: hour and weekday (Monday = 0) of the timestamp, UTC.
- Slices (``contract.slices``, for the Evaluator; the models ignore them): click-history length
  bucket, events-in-the-last-7-days bucket, and whether the user id is outside the train
  vocabulary.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import Dict

import tensorflow as tf
import tensorflow_transform as tft

from contract import slices
from contract.features import ITEM_ID, LABEL, PAD_INDEX, TIMESTAMP, USER_ID
from contract.feature_spec import FeatureSpec

SPEC_KEY = "feature_spec"


def _dense_1d(x) -> tf.Tensor:
    """A scalar feature ([B], [B, 1] or a sparse/ragged one-value list) as a [B] tensor."""
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(x)
    elif isinstance(x, tf.RaggedTensor):
        x = x.to_tensor()
    return tf.reshape(x, [-1])


def _ragged(x) -> tf.RaggedTensor:
    """A variable-length feature as ragged rows.

    A SparseTensor here comes from parsing a VarLen feature (``tf.io.parse_example``, TFXIO)
    and is row-major, so its row ids are all that is needed. ``RaggedTensor.from_sparse`` would
    check that layout on every call: a fifth of the whole transform's time.
    """
    if isinstance(x, tf.SparseTensor):
        return tf.RaggedTensor.from_value_rowids(x.values, x.indices[:, 0], nrows=x.dense_shape[0], validate=False)
    if isinstance(x, tf.RaggedTensor):
        return x
    raise TypeError(f"expected a variable-length (sparse or ragged) sequence feature, got {x!r}")


def left_pad(ragged: tf.RaggedTensor, length: int, pad_value) -> tf.Tensor:
    """[B, length]: the last ``length`` values of each row, left-padded with ``pad_value``."""
    row_lengths = ragged.row_lengths()
    kept = tf.minimum(row_lengths, length)
    first = ragged.row_starts() + (row_lengths - kept)
    offset = tf.range(length, dtype=tf.int64)[tf.newaxis, :] - (length - kept)[:, tf.newaxis]
    padded_values = tf.concat([ragged.flat_values, tf.fill([1], tf.cast(pad_value, ragged.dtype))], 0)
    index = tf.where(offset >= 0, first[:, tf.newaxis] + offset, tf.size(ragged.flat_values, out_type=tf.int64))
    return tf.gather(padded_values, index)


def _indices(values, vocab_file, spec: FeatureSpec):
    """Vocabulary indices shifted by one so that 0 stays the pad index."""
    return tft.apply_vocabulary(values, vocab_file, num_oov_buckets=spec.oov_buckets) + 1


def preprocessing_fn(inputs: Dict[str, tf.Tensor], custom_config: Dict) -> Dict[str, tf.Tensor]:
    spec = FeatureSpec.from_dict(custom_config[SPEC_KEY])
    timestamp = _dense_1d(inputs[TIMESTAMP])
    outputs: Dict[str, tf.Tensor] = {
        "hour": (timestamp // 3600) % 24,
        "weekday": (timestamp // 86400 + 3) % 7,  # 1970-01-01 was a Thursday
    }
    histories = {
        (kind, field): _ragged(inputs[spec.history(kind, field)])
        for kind in spec.feedback_types
        for field in spec.item_fields
    }
    for field in spec.scalar_fields:
        target = _dense_1d(inputs[field])
        all_values = tf.RaggedTensor.from_tensor(target[:, tf.newaxis])
        if field in spec.item_fields:
            all_values = tf.concat([all_values] + [histories[(k, field)] for k in spec.feedback_types], axis=1)
        vocab_file = tft.vocabulary(
            all_values,
            frequency_threshold=spec.vocab_min_frequency if spec.vocab_min_frequency > 1 else None,
            vocab_filename=spec.vocabulary_name(field),
        )
        outputs[field] = _indices(target, vocab_file, spec)
        if field == USER_ID:
            outputs[slices.NEW_USER] = tf.cast(tft.apply_vocabulary(target, vocab_file, default_value=-1) < 0, tf.int64)
        if field in spec.item_fields:
            for kind in spec.feedback_types:
                sequence = histories[(kind, field)]
                indexed = sequence.with_flat_values(_indices(sequence.flat_values, vocab_file, spec))
                outputs[spec.history(kind, field)] = left_pad(indexed, spec.max_length, PAD_INDEX)
    ages, log_gaps = {}, {}
    for kind in spec.feedback_types:
        ages[kind] = timestamp[:, tf.newaxis] - _ragged(inputs[spec.history_timestamp(kind)])
        log_gaps[kind] = tf.math.log1p(tf.cast(tf.maximum(ages[kind], 0), tf.float32))
    # one set of boundaries for every feedback type (one gap table in the model)
    boundaries = gap_boundaries(tf.concat(list(log_gaps.values()), axis=1).flat_values, spec)
    for kind, gaps in log_gaps.items():
        buckets = tft.apply_buckets(gaps.flat_values, boundaries) + 1
        outputs[spec.history_gap(kind)] = left_pad(gaps.with_flat_values(buckets), spec.max_length, PAD_INDEX)
    outputs.update(_slice_buckets(timestamp, histories, ages, spec))
    outputs[LABEL] = _dense_1d(inputs[LABEL])
    return outputs


def _bucket(counts: tf.Tensor, edges) -> tf.Tensor:
    """int64 [B]: bucket i where edges[i - 1] <= count < edges[i], 0 below the first edge."""
    return tf.reduce_sum(tf.cast(counts[:, tf.newaxis] >= tf.constant(edges, tf.int64), tf.int64), axis=1)


def _slice_buckets(timestamp, histories, ages, spec: FeatureSpec) -> Dict[str, tf.Tensor]:
    """The history-length and user-activity slice features (contract.slices); ``ages``: per
    feedback type, the request timestamp minus each history timestamp (ragged [B, None])."""
    kind = "click" if "click" in spec.feedback_types else spec.feedback_types[0]
    length = tf.minimum(histories[(kind, ITEM_ID)].row_lengths(), spec.max_length)
    recent = tf.zeros_like(timestamp)
    for age in ages.values():
        within = tf.cast((age >= 0) & (age <= slices.ACTIVITY_WINDOW_SECONDS), tf.int64)
        recent += tf.reduce_sum(within, axis=1)
    return {
        slices.HISTORY_LENGTH: _bucket(tf.cast(length, tf.int64), slices.HISTORY_LENGTH_EDGES),
        slices.USER_ACTIVITY: _bucket(tf.cast(recent, tf.int64), slices.USER_ACTIVITY_EDGES),
    }


def gap_boundaries(log_gaps: tf.Tensor, spec: FeatureSpec) -> tf.Tensor:
    """The gap_buckets - 1 inner boundaries of log1p(gap), shape [1, gap_buckets - 1].

    "quantile": equal shares of the train split's gaps. "log": equal widths from 0 to the largest
    log gap, which keeps seconds and days apart when most gaps are days (with quantiles, one
    bucket then spans a minute to a day).
    """
    if spec.gap_bucketing == "quantile":
        return tft.quantiles(log_gaps, spec.gap_buckets, epsilon=0.01, name="gap_quantiles")
    largest = tf.maximum(tft.max(log_gaps, name="gap_log_max"), 1.0)
    inner = tf.range(1, spec.gap_buckets, dtype=tf.float32) / float(spec.gap_buckets)
    return tf.reshape(inner * largest, [1, -1])
