"""Batch scoring: reading TFRecord files of raw tf.Examples and checking each record against the
model's raw features (an error row, with its reason, for each record that cannot be scored)."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import re
from typing import Dict, Optional, Tuple

import apache_beam as beam

from contract.features import ITEM_ID, TIMESTAMP, USER_ID
from serving.batch_outputs import ERRORS, error_row

# the ids every input row carries: feature -> tf.Example list kind
ID_FEATURES = {USER_ID: "bytes_list", ITEM_ID: "bytes_list", TIMESTAMP: "int64_list"}


class ReadRecords(beam.DoFn):
    """One TFRecord file -> batches of (source, record); the unreadable rest of a corrupt file ->
    one error.

    Records are read in batches (eager tf.data is slow per element); after a read error the
    last batch is read again record by record, so every readable record is still emitted.
    """

    BATCH = 512

    def process(self, path: str):
        import tensorflow as tf

        errors = (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError)
        dataset = tf.data.TFRecordDataset(path, compression_type="GZIP" if path.endswith(".gz") else "")
        index = 0
        try:
            for batch in dataset.batch(self.BATCH).as_numpy_iterator():
                yield [(f"{path}:record {index + k}", record) for k, record in enumerate(batch, start=1)]
                index += len(batch)
            return
        except errors:
            pass
        rest = []
        try:
            for record in dataset.skip(index).as_numpy_iterator():
                index += 1
                rest.append((f"{path}:record {index}", record))
        except errors as exc:
            yield beam.pvalue.TaggedOutput(ERRORS, error_row(
                f"{path}:record {index + 1}", "unreadable_tfrecord",
                f"the file cannot be read from record {index + 1} on (counted as one row): {tf_message(exc)}",
            ))
        if rest:
            yield rest


def tf_message(exc) -> str:
    """A TensorFlow error's message without the op/function decorations."""
    message = re.sub(r"\{\{.*?\}\}\s*", "", exc.message)
    return re.sub(r"\s*\[Op:.*$", "", message, flags=re.DOTALL).strip()


class CheckExamples(beam.DoFn):
    """A batch of (source, record) -> one chunk ``(keys, records)`` of the tf.Examples with
    readable ids (``key = (user_id, item_id, timestamp, source)``), an error row for each other record.

    ``expected``: feature name -> (list kind, rank) of the model's raw inputs; rank-1 features
    (scalars) must hold exactly one value, rank-2 ones (histories) may be absent or of any length.
    Fast path: the ids of the whole batch parse (``tf.io.parse_example`` of the id features
    only); the other features are left to the model's own parsing, which applies the same rules
    (a batch it rejects is diagnosed record by record, see ``_SignatureScorer``). A batch whose
    ids do not parse is checked record by record here.
    """

    def __init__(self, expected: Dict[str, Tuple[str, int]]):
        self.expected = dict(sorted(expected.items()))

    def setup(self):
        import tensorflow as tf

        dtypes = {"bytes_list": tf.string, "int64_list": tf.int64}
        self.id_spec = {name: tf.io.FixedLenFeature([], dtypes[kind]) for name, kind in ID_FEATURES.items()}
        self.fast = all(self.expected.get(name) == (kind, 1) for name, kind in ID_FEATURES.items())

    def process(self, batch):
        import tensorflow as tf

        if self.fast:
            try:
                parsed = tf.io.parse_example([record for _, record in batch], self.id_spec)
            except (tf.errors.InvalidArgumentError, UnicodeDecodeError):  # TF's message may quote the bad bytes
                parsed = None
            if parsed is not None:
                users, items, stamps = (parsed[name].numpy() for name in ID_FEATURES)
                keys = [(_text(user), _text(item), int(stamp), source)
                        for (source, _), user, item, stamp in zip(batch, users, items, stamps)]
                yield keys, [record for _, record in batch]
                return
        keys, records = [], []
        for source, record in batch:
            problem, ids = diagnose(record, self.expected)
            if problem:
                yield beam.pvalue.TaggedOutput(ERRORS, error_row(source, *problem, ids=ids))
            else:
                keys.append(ids + (source,))
                records.append(record)
        if keys:
            yield keys, records


def diagnose(record: bytes, expected: Dict[str, Tuple[str, int]]):
    """``(problem, ids)``: what is wrong with a serialized example for a model taking the
    ``expected`` raw features (``(reason, detail)``, None when nothing is) and its ids."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    try:
        example = example_pb2.Example.FromString(record)
    except (DecodeError, RuntimeWarning) as exc:
        return ("malformed_example", f"not a serialized tf.Example: {exc}"), (None, None, None)
    features = example.features.feature
    return _feature_problem(features, expected), _ids(features)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


def _feature_problem(features, expected: Dict[str, Tuple[str, int]]) -> Optional[Tuple[str, str]]:
    for name, (kind, rank) in expected.items():
        actual = features[name].WhichOneof("kind") if name in features else None
        if actual is None:
            if rank <= 1:
                return "missing_feature", f"feature {name!r} is missing"
            continue
        if actual != kind:
            return "wrong_feature_type", f"feature {name!r} is a {actual}, the model expects a {kind}"
        if rank <= 1:
            count = len(getattr(features[name], actual).value)
            if count != 1:
                return "wrong_value_count", f"feature {name!r} holds {count} values, the model expects exactly 1"
    return None


def _ids(features) -> Tuple[Optional[str], Optional[str], Optional[int]]:
    def first(name, kind):
        values = getattr(features[name], kind).value if name in features else []
        return values[0] if len(values) else None

    user, item, timestamp = (first(name, kind) for name, kind in ID_FEATURES.items())
    decode = lambda v: _text(v) if isinstance(v, bytes) else v
    return decode(user), decode(item), timestamp
