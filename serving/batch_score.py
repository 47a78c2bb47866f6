"""Batch scoring: ``ctr-pipeline score`` runs a SavedModel over logs or raw tf.Examples with Beam.

Inputs (``--input``):

* interaction logs (with ``--config`` for the data format, columns, tables and sequence
  settings): the examples are built by ``transforms.sequences.BuildExamples(split=False)``, the
  sequence builder the pipeline trains on, with the feature spec the model carries (its fields
  must be the config's; the history length is the model's), so every event is scored with
  exactly the features (behaviour histories included) training would have given it. ``--input`` replaces
  ``data.path`` of the config (a directory, or for the generic format the events file itself).
* TFRecord files of serialized raw tf.Examples (``*.tfrecord``, ``*.gz``, e.g. an ``Examples``
  artifact's ``Split-*/*.gz``): each record must be a tf.Example with the raw features of the
  model's ``serving_raw`` signature (``user_id``, ``item_id``, ``timestamp`` at least).

Scoring uses Beam's ``RunInference`` with Beam model handlers for the SavedModel's signatures.
Rows travel in chunks, so Beam's per-element cost is paid per chunk, not per row, and every
score keeps the ids of its input row:

* TFRecords: chunks ``(keys, serialized examples)`` (a read batch) through ``serving_default``
  (serialized raw tf.Example -> ``probability``; ``SignatureModelHandler``).
* logs: the sequence builder's ``WindowRows`` (one user's window, columnar) through
  ``serving_raw``: each window's past events become tensors once and every row's histories are
  gathered from them in the graph, with no tf.Example written and parsed again
  (``WindowRowsModelHandler``; a model without ``serving_raw``, or ``--signature`` naming
  another signature, gets the rows as tf.Examples).

A batch the model rejects is retried as tf.Examples one example at a time, so one bad example
costs only its own row.

Outputs in ``--output``:

* ``scores-*.jsonl`` (or ``.csv``): one row per scored input row: ``user_id``, ``item_id``,
  ``timestamp``, ``score``, ``model``, ``model_version``.
* ``errors-*.jsonl``: one row per input row that could not be scored: ``source``, ``reason``,
  ``detail``, the ids when known and ``raw`` (the log line) for quarantined log rows. Reasons
  are the quarantine reasons of ``transforms.sources``/``transforms.sequences`` for logs, and
  ``malformed_example`` (not a tf.Example), ``missing_feature``, ``wrong_feature_type``,
  ``wrong_value_count``, ``unreadable_tfrecord`` (the unreadable rest of a corrupt file, one row)
  and ``model_error`` (the model refused the example).
* ``table_quarantine-*.jsonl`` (logs only): bad rows of the items/users tables (not input rows).
* ``counts.json``: rows in = rows scored + error rows, checked after the run (an error if not).

Any Beam runner: pass pipeline options with ``--beam-arg=--runner=DataflowRunner`` (repeatable).
Workers then need this package (``--beam-arg=--setup_file=./setup.py`` or the project's image as
``--beam-arg=--sdk_container_image=...``) and must be able to read the model and the input.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import csv
import dataclasses
import io
import json
import re
import time
from typing import Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, RunInference

from contract.features import ITEM_ID, TIMESTAMP, USER_ID
from contract.serving import (
    COUNTS_FILE,
    OUTPUT_KEY,
    SERVE_TAG,
    SERVING_DEFAULT,
    SERVING_RAW,
    has_saved_model,
    latest_version,
    read_signature_defs,
)

SCORE_FIELDS = (USER_ID, ITEM_ID, TIMESTAMP, "score", "model", "model_version")
ID_FEATURES = {USER_ID: "bytes_list", ITEM_ID: "bytes_list", TIMESTAMP: "int64_list"}
ERRORS = "errors"
# quarantine reasons only the items/users tables produce (see transforms.sources)
TABLE_REASONS = frozenset({"duplicate_item", "duplicate_user", "invalid_attribute", "conflicting_item_attribute"})
# compressed files that are logs, not TFRecords (--input-format auto)
_LOG_GZ_SUFFIXES = (".csv.gz", ".tsv.gz", ".dat.gz", ".json.gz", ".txt.gz")
_MAX_DETAIL = 500


# ---- the model -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A SavedModel directory and the name/version written beside its scores."""

    path: str
    name: str
    version: str


def _latest_version(model_dir: str) -> Optional[str]:
    latest = latest_version(model_dir)
    return None if latest is None else str(latest)


def resolve_model(model: str, serving_root: Optional[str] = None) -> ModelRef:
    """``model`` is a SavedModel directory, a model directory of integer versions
    (``<serving_root>/<name>``, newest version used) or, with ``serving_root``, ``name`` or
    ``name@version``."""
    path = model.rstrip("/")
    if has_saved_model(path):
        base = os.path.basename(path)
        if base == "Format-Serving":  # a TFX Model artifact: <root>/<Trainer.name>/model/<id>/Format-Serving
            artifact = os.path.dirname(path)
            return ModelRef(path, os.path.basename(os.path.dirname(os.path.dirname(artifact))), os.path.basename(artifact))
        if base.isdigit():
            return ModelRef(path, os.path.basename(os.path.dirname(path)), base)
        return ModelRef(path, base, "")
    latest = _latest_version(path)
    if latest is not None:
        return ModelRef(os.path.join(path, latest), os.path.basename(path), latest)
    if serving_root and "/" not in model:
        name, _, version = model.partition("@")
        model_dir = os.path.join(serving_root, name)
        version = version or _latest_version(model_dir)
        if version and has_saved_model(os.path.join(model_dir, version)):
            return ModelRef(os.path.join(model_dir, version), name, version)
        wanted = f"version {version}" if version else "any version"
        raise FileNotFoundError(f"model {name!r}: {wanted} not found under {model_dir}")
    hint = "" if serving_root else " (give --serving-root, or --config, to score a pushed model by name)"
    raise FileNotFoundError(f"{model!r} is neither a SavedModel directory nor a directory of model versions{hint}")


def signature_inputs(model_path: str, signature: str) -> Optional[Dict[str, Tuple[str, int]]]:
    """name -> (tf.Example list kind, rank) of a signature's inputs; None without that signature."""
    import tensorflow as tf

    signature_defs = read_signature_defs(model_path)
    if signature not in signature_defs:
        return None
    kinds = {tf.string: "bytes_list", tf.int64: "int64_list", tf.float32: "float_list"}
    return {
        name: (kinds.get(tf.dtypes.as_dtype(info.dtype), "unsupported"), len(info.tensor_shape.dim))
        for name, info in signature_defs[signature].inputs.items()
    }


# ---- reading and checking TFRecords ------------------------------------------------------------
def list_input_files(path: str) -> List[str]:
    """A file, a glob, or every non-hidden file below a directory."""
    import tensorflow as tf

    if tf.io.gfile.isdir(path):
        files = [
            os.path.join(root, name)
            for root, _, names in tf.io.gfile.walk(path)
            for name in names
            if not name.startswith((".", "_"))
            and not any(part.startswith((".", "_")) for part in os.path.relpath(root, path).split(os.sep) if part != ".")
        ]
    elif any(c in path for c in "*?["):
        files = tf.io.gfile.glob(path)
    else:
        files = [path] if tf.io.gfile.exists(path) else []
    if not files:
        raise FileNotFoundError(f"no input files at {path}")
    return sorted(files)


def is_tfrecord_name(path: str) -> bool:
    name = os.path.basename(path).lower()
    if "tfrecord" in name:
        return True
    return name.endswith(".gz") and not name.endswith(_LOG_GZ_SUFFIXES)


def detect_input_format(path: str) -> str:
    """"tfrecord" when every input file looks like a TFRecord file, "logs" when none does."""
    files = list_input_files(path)
    flags = {is_tfrecord_name(f) for f in files}
    if flags == {True}:
        return "tfrecord"
    if flags == {False}:
        return "logs"
    raise ValueError(f"{path} mixes TFRecord files and other files; choose with --input-format tfrecord|logs")


class _ReadRecords(beam.DoFn):
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
                f"the file cannot be read from record {index + 1} on (counted as one row): {_tf_message(exc)}",
            ))
        if rest:
            yield rest


def _tf_message(exc) -> str:
    """A TensorFlow error's message without the op/function decorations."""
    message = re.sub(r"\{\{.*?\}\}\s*", "", exc.message)
    return re.sub(r"\s*\[Op:.*$", "", message, flags=re.DOTALL).strip()


class _CheckExamples(beam.DoFn):
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


# ---- rows ------------------------------------------------------------------------------------
def error_row(source: str, reason: str, detail: str, ids=(None, None, None), raw: Optional[str] = None) -> dict:
    user_id, item_id, timestamp = ids
    return {
        "source": source, "reason": reason, "detail": detail[:_MAX_DETAIL],
        USER_ID: user_id, ITEM_ID: item_id, TIMESTAMP: timestamp, "raw": raw,
    }


def _error_of_quarantine(record: dict) -> dict:
    return error_row(record["source"], record["reason"], record["detail"], raw=record.get("raw"))


def _is_table_record(record: dict, event_files: frozenset) -> bool:
    """A quarantined items/users table row (not an input row): by reason, or by its file."""
    return record["reason"] in TABLE_REASONS or record["source"].rsplit(":", 1)[0] not in event_files


def exception_message(error) -> str:
    """A one-line message of a dead-letter ``(type, repr, traceback lines)`` from Beam."""
    try:
        exc_type, text, lines = error
        text = "".join(lines[-1:]) or text
        name = exc_type.__name__
    except (TypeError, ValueError):
        return str(error)
    text = text.split(": ", 1)[1] if text.split(": ", 1)[0].endswith(name) else text
    parts = [p.strip() for p in text.replace("Graph execution error:", "").splitlines()]
    return f"{name}: " + " ".join(p for p in parts if p and not p.startswith("[["))


def _csv_line(values: Sequence) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(["" if v is None else v for v in values])
    return buffer.getvalue()


# ---- RunInference ------------------------------------------------------------------------------
def chunk_size(chunk) -> int:
    """Examples in a chunk ``(keys, serialized examples)``."""
    return len(chunk[0])


class SignatureModelHandler(ModelHandler):
    """Beam model handler for a SavedModel signature that maps serialized tf.Examples to one
    score each (``serving_default``: ``examples`` -> ``probability``).

    Its elements are chunks ``(keys, serialized examples)``, not single examples, so Beam's
    per-element cost is paid per chunk; RunInference batches chunks up to ``max_batch_size``
    examples. Each chunk comes back as ``(keys, scores, error rows)``: the rows scored, and an
    error row for each example the model rejected (see ``_SignatureScorer.score``). Lean on
    purpose: one signature call per batch, no PredictionLog protos, no pickling of batches to
    count their bytes. A key is ``(user_id, item_id, timestamp, source)``.
    """

    def __init__(self, model_path: str, signature: str, output_key: str, max_batch_size: int,
                 expected: Optional[Dict[str, Tuple[str, int]]] = None):
        super().__init__()
        self.model_path, self.signature, self.output_key = model_path, signature, output_key
        self.max_batch_size, self.expected = max_batch_size, expected

    def load_model(self) -> "_SignatureScorer":
        import tensorflow as tf

        loaded = tf.saved_model.load(self.model_path)
        if self.signature not in loaded.signatures:
            raise ValueError(f"{self.model_path}: no signature {self.signature!r} (has {sorted(loaded.signatures)})")
        function = loaded.signatures[self.signature]
        inputs = function.structured_input_signature[1]
        if len(inputs) != 1 or next(iter(inputs.values())).dtype != tf.string:
            raise ValueError(f"signature {self.signature!r} must take one string tensor of serialized tf.Examples; it takes {sorted(inputs)}")
        if self.output_key not in function.structured_outputs:
            raise ValueError(f"signature {self.signature!r} has no output {self.output_key!r}; outputs: {sorted(function.structured_outputs)}")
        return _SignatureScorer(loaded, function, next(iter(inputs)), self.output_key, self.expected)

    @staticmethod
    def keys_of(chunk) -> list:
        return chunk[0]

    def score_batch(self, batch, model) -> Tuple[List[Optional[float]], Dict[int, Tuple[str, str]]]:
        """Scores of the batch's rows in order, and ``(reason, detail)`` of the rejected ones by index."""
        return model.score([record for _, records in batch for record in records])

    def run_inference(self, batch, model, inference_args=None):
        scores, problems = self.score_batch(batch, model)
        results, start = [], 0
        for chunk in batch:
            keys = self.keys_of(chunk)
            end = start + len(keys)
            if not any(start <= i < end for i in problems):
                results.append((keys, scores[start:end], []))
            else:
                kept = [i for i in range(start, end) if i not in problems]
                errors = [error_row(keys[i - start][3], *problems[i], ids=keys[i - start][:3])
                          for i in range(start, end) if i in problems]
                results.append(([keys[i - start] for i in kept], [scores[i] for i in kept], errors))
            start = end
        return results

    def get_num_bytes(self, batch) -> int:
        return sum(len(record) for _, records in batch for record in records)

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self.max_batch_size, "element_size_fn": chunk_size}


class WindowRowsModelHandler(SignatureModelHandler):
    """Beam model handler for the sequence builder's ``WindowRows`` (scoring logs).

    The rows reach the model's ``serving_raw`` signature as columns: each window's past events
    become tensors once, and every row's histories are gathered from them in the graph
    (``_RawColumnsScorer``): no tf.Example is encoded and parsed again, no history is copied once
    per row. ``serving_raw`` runs the same transform graph and model as ``serving_default``. A
    batch the model rejects, and every batch of a model without ``serving_raw``, is encoded as
    tf.Examples and scored through ``signature`` as ``SignatureModelHandler`` does, so each
    rejected row gets its own error row.
    """

    def __init__(self, model_path: str, signature: str, output_key: str, max_batch_size: int,
                 expected: Optional[Dict[str, Tuple[str, int]]], spec, use_raw: bool = True):
        super().__init__(model_path, signature, output_key, max_batch_size, expected)
        self.spec, self.use_raw = spec, use_raw

    def load_model(self) -> "_RawColumnsScorer":
        examples = super().load_model()
        raw = examples.loaded.signatures.get(SERVING_RAW) if self.use_raw else None
        return _RawColumnsScorer(examples, self.spec, None if raw is None else _gather_and_score(raw, self.spec, self.output_key))

    @staticmethod
    def keys_of(rows) -> list:
        return [(user, item, timestamp, "") for timestamp, user, item in rows.keys]

    def score_batch(self, batch, model):
        return model.score(batch)

    def get_num_bytes(self, batch) -> int:
        return sum(len(rows) for rows in batch)  # rows, not bytes: sizing columns would cost a pass over them

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self.max_batch_size, "element_size_fn": len}


def raw_columns(batch, spec) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """``WindowRows`` -> (scalars [rows] per scalar raw feature, each feedback type's past events
    [events + 1] per history feature (the last a pad: "" / 0), positions [rows, longest history]
    per feedback type, indexing those events, the pad where a history is shorter)."""
    scalars = {name: np.concatenate([rows.scalars[name] for rows in batch])
               for name, (_, is_sequence) in spec.raw_features().items() if not is_sequence}
    columns, positions = {}, {}
    for kind in spec.feedback_types:
        tables = [rows.histories[kind] for rows in batch]
        sizes = [len(table.columns[spec.history_timestamp(kind)]) for table in tables]
        bases = np.cumsum([0] + sizes[:-1])
        for name in tables[0].columns:
            pad = np.array([0 if tables[0].columns[name].dtype != object else ""], dtype=tables[0].columns[name].dtype)
            columns[name] = np.concatenate([table.columns[name] for table in tables] + [pad])
        lengths = np.concatenate([np.diff(table.positions.offsets) for table in tables])
        index = np.full((len(lengths), int(lengths.max(initial=0))), sum(sizes), dtype=np.int32)
        index[np.arange(index.shape[1]) < lengths[:, np.newaxis]] = np.concatenate(
            [table.positions.values + base for table, base in zip(tables, bases)])
        positions[kind] = index
    return scalars, columns, positions


def _gather_and_score(raw_signature, spec, output_key: str):
    """A tf.function: ``raw_columns``' arrays -> scores, the histories gathered in the graph."""
    import tensorflow as tf

    dtypes = {"string": tf.string, "int64": tf.int64}
    features = spec.raw_features()
    by_kind = {kind: [spec.history(kind, f) for f in spec.item_fields] + [spec.history_timestamp(kind)] for kind in spec.feedback_types}
    signature = (
        {name: tf.TensorSpec([None], dtypes[dtype]) for name, (dtype, seq) in features.items() if not seq},
        {name: tf.TensorSpec([None], dtypes[features[name][0]]) for names in by_kind.values() for name in names},
        {kind: tf.TensorSpec([None, None], tf.int32) for kind in spec.feedback_types},
    )

    @tf.function(input_signature=signature)
    def score(scalars, columns, positions):
        inputs = dict(scalars)
        for kind, names in by_kind.items():
            inputs.update({name: tf.gather(columns[name], positions[kind]) for name in names})
        return raw_signature(**inputs)[output_key]

    return score


@dataclasses.dataclass
class _RawColumnsScorer:
    examples: "_SignatureScorer"  # tf.Examples through the job's signature: the fallback
    spec: object  # transforms.features.FeatureSpec
    raw: Optional[object]  # _gather_and_score's function; None: the model has no serving_raw

    def score(self, batch) -> Tuple[List[Optional[float]], Dict[int, Tuple[str, str]]]:
        """As ``_SignatureScorer.score``, for a batch of ``WindowRows``."""
        if self.raw is not None:
            try:
                return self._score_raw(batch), {}
            except _model_input_errors():
                pass  # scored again as tf.Examples, where each rejected row gets its reason
        return self.examples.score([record for rows in batch for record in rows.serialized()])

    def _score_raw(self, batch) -> List[float]:
        scores = self.raw(*raw_columns(batch, self.spec)).numpy().reshape(-1)
        rows = sum(len(window) for window in batch)
        if len(scores) != rows:
            raise ValueError(f"serving_raw gave {len(scores)} scores for {rows} rows")
        return scores.tolist()
@dataclasses.dataclass
class _SignatureScorer:
    loaded: object  # keeps the SavedModel's variables alive
    function: object
    input_name: str
    output_key: str
    expected: Optional[Dict[str, Tuple[str, int]]]  # the raw features, to diagnose a rejected example

    def __call__(self, serialized: Sequence[bytes]) -> List[float]:
        import tensorflow as tf

        scores = self.function(**{self.input_name: tf.constant(serialized, dtype=tf.string)})[self.output_key].numpy().reshape(-1)
        if len(scores) != len(serialized):
            raise ValueError(f"output {self.output_key!r} holds {len(scores)} values for {len(serialized)} examples")
        return scores.tolist()

    def score(self, serialized: Sequence[bytes]) -> Tuple[List[Optional[float]], Dict[int, Tuple[str, str]]]:
        """Scores, and ``(reason, detail)`` by index for the examples the model rejects.

        One call for the batch; when the model rejects it, each example is diagnosed (a missing
        feature, a wrong type or value count, not a tf.Example), the rest scored again as a
        batch and, if that still fails, one at a time: only bad examples lose their score.
        """
        try:
            return self(serialized), {}
        except _model_input_errors():
            pass
        problems: Dict[int, Tuple[str, str]] = {}
        if self.expected is not None:
            for index, record in enumerate(serialized):
                problem, _ = diagnose(record, self.expected)
                if problem:
                    problems[index] = problem
        rest = [i for i in range(len(serialized)) if i not in problems]
        scores: List[Optional[float]] = [None] * len(serialized)
        try:
            for index, value in zip(rest, self([serialized[i] for i in rest]) if rest else []):
                scores[index] = value
        except _model_input_errors():
            for index in rest:
                try:
                    scores[index] = self([serialized[index]])[0]
                except _model_input_errors() as exc:
                    problems[index] = ("model_error", _error_text(exc))
        return scores, problems


def _model_input_errors():
    import tensorflow as tf

    # UnicodeDecodeError: TF's message quoting undecodable bytes of the input
    return (tf.errors.OpError, UnicodeDecodeError, ValueError)


def _error_text(exc: Exception) -> str:
    message = _tf_message(exc) if hasattr(exc, "message") else str(exc)
    return f"{type(exc).__name__}: {message}"


def _scored_and_errors(result):
    keys, scores, errors = result
    if keys:
        yield keys, scores
    for error in errors:
        yield beam.pvalue.TaggedOutput(ERRORS, error)


class ScoreExamples(beam.PTransform):
    """The handler's chunks (``(keys, serialized tf.Examples)`` for ``SignatureModelHandler``,
    ``WindowRows`` for ``WindowRowsModelHandler``) -> {"scored": chunks ``(keys, scores)``,
    "errors": error rows}.

    A key is ``(user_id, item_id, timestamp, source)``. With ``expected`` (the model's raw
    features), an example the model rejects gets the precise reason (``missing_feature``, ...),
    else ``model_error``; a batch RunInference itself fails on becomes ``model_error`` rows.
    """

    def __init__(self, handler: SignatureModelHandler):
        super().__init__()
        self.handler = handler

    def expand(self, chunks):
        results, failed = chunks | "RunInference" >> RunInference(self.handler).with_exception_handling()
        split = results | "ScoredOrError" >> beam.ParDo(_scored_and_errors).with_outputs(ERRORS, main="scored")

        keys_of = self.handler.keys_of

        def model_errors(batch_error):
            batch, error = batch_error
            message = exception_message(error)
            for chunk in batch:
                for key in keys_of(chunk):
                    yield error_row(key[3], "model_error", message, ids=key[:3])

        failed_rows = failed.failed_inferences | "FailedBatches" >> beam.FlatMap(model_errors)
        return {"scored": split.scored, ERRORS: (split[ERRORS], failed_rows) | "ModelErrors" >> beam.Flatten()}


# ---- the job ---------------------------------------------------------------------------------
@dataclasses.dataclass
class ScoreJob:
    model: ModelRef
    input_path: str
    output_dir: str
    input_format: str = "auto"  # auto | logs | tfrecord
    config: Optional[object] = None  # contract.config.PipelineConfig; required for logs
    output_format: str = "jsonl"  # jsonl | csv
    num_shards: int = 0  # 0: the runner decides
    max_batch_size: int = 1024
    signature: str = SERVING_DEFAULT
    output_key: str = OUTPUT_KEY
    beam_args: Sequence[str] = ()


def _log_config(config, input_path: str):
    """The config with ``data.path`` pointing at the logs to score."""
    import tensorflow as tf

    update = {"path": input_path if "://" in input_path else os.path.abspath(input_path)}
    if config.data.format == "generic" and not tf.io.gfile.isdir(input_path):
        update["events"] = None  # the input is the events file itself
    return config.model_copy(update={"data": config.data.model_copy(update=update)})


def _model_raw_features(job: ScoreJob, spec) -> Dict[str, Tuple[str, int]]:
    """The raw features the model parses; checked against the config's feature spec if any."""
    if signature_inputs(job.model.path, job.signature) is None:
        raise ValueError(f"{job.model.path}: the SavedModel has no signature {job.signature!r} (tag '{SERVE_TAG}')")
    expected = signature_inputs(job.model.path, SERVING_RAW)
    if spec is not None:
        kinds = {"string": "bytes_list", "int64": "int64_list"}
        from_spec = {name: (kinds[dtype], 2 if seq else 1) for name, (dtype, seq) in spec.raw_features().items()}
        if expected is not None and expected != from_spec:
            missing, extra = sorted(set(expected) - set(from_spec)), sorted(set(from_spec) - set(expected))
            raise ValueError(
                f"the model's raw features do not match the config's feature spec (model only: {missing}, "
                f"config only: {extra}; or a type differs): score with the config the model was trained with"
            )
        expected = expected or from_spec
    return expected if expected is not None else {name: (kind, 1) for name, kind in ID_FEATURES.items()}


def _model_spec(model_path: str, config_spec):
    """The feature spec the model carries (its trained history length: the logs' histories are
    built at that length); its fields must be the config's."""
    from contract.feature_spec import FeatureSpec

    spec = FeatureSpec.from_model(model_path)
    fields = ("user_fields", "item_fields", "feedback_types")
    if any(getattr(spec, f) != getattr(config_spec, f) for f in fields):
        raise ValueError(
            "the model's fields do not match the config's feature spec (model: "
            + ", ".join(f"{f} {list(getattr(spec, f))}" for f in fields) + "; config: "
            + ", ".join(f"{f} {list(getattr(config_spec, f))}" for f in fields)
            + "): score with the config the model was trained with"
        )
    return spec


def build_scoring(pipeline: beam.Pipeline, job: ScoreJob) -> dict:
    """Adds the scoring steps; returns the PCollections {"scored" (chunks ``(keys, scores)``),
    "errors", "counts"[, "table_quarantine"]}."""
    from ingest import sequences, sources
    from contract.feature_spec import FeatureSpec

    input_format = detect_input_format(job.input_path) if job.input_format == "auto" else job.input_format
    if input_format == "logs" and job.config is None:
        raise ValueError("scoring logs needs --config (the data format, columns, tables and sequence settings)")
    spec = FeatureSpec.from_config(job.config) if job.config is not None else None
    if input_format == "logs":
        spec = _model_spec(job.model.path, spec)
    expected = _model_raw_features(job, spec)
    result = {}
    if input_format == "logs":
        config = _log_config(job.config, job.input_path)
        event_files = frozenset(sources.list_event_files(config.data))
        built = pipeline | "BuildExamples" >> sequences.BuildExamples(config, spec, split=False)
        chunks = built[sequences.ALL]
        # the columns through serving_raw unless another signature is asked for by name
        handler = WindowRowsModelHandler(job.model.path, job.signature, job.output_key, job.max_batch_size, expected,
                                         spec, use_raw=job.signature == SERVING_DEFAULT)
        table, logs = built[sequences.QUARANTINE] | "TableOrLog" >> beam.Partition(
            lambda record, _: int(not _is_table_record(record, event_files)), 2
        )
        read_errors = logs | "QuarantineErrors" >> beam.Map(_error_of_quarantine)
        rows_in = built["counts"] | "RowsIn" >> beam.Map(lambda counts: ("rows_in", counts["log_rows_in"]))
        extra = built["counts"] | "SequenceCounts" >> beam.Map(lambda counts: {"sequence_builder": counts})
        result["table_quarantine"] = table
    else:
        records = (
            pipeline
            | "InputFiles" >> beam.Create(list_input_files(job.input_path))
            | "ReadRecords" >> beam.ParDo(_ReadRecords()).with_outputs(ERRORS, main="records")
        )
        checked = records.records | "Check" >> beam.ParDo(_CheckExamples(expected)).with_outputs(ERRORS, main="examples")
        chunks = checked.examples
        read_errors = (records[ERRORS], checked[ERRORS]) | "ReadErrors" >> beam.Flatten()
        rows_in = (
            (records.records | "BatchSizes" >> beam.Map(len), records[ERRORS] | "OneEach" >> beam.Map(lambda _: 1))
            | "AllRecords" >> beam.Flatten()
            | "CountIn" >> beam.CombineGlobally(sum)
            | "RowsIn" >> beam.Map(lambda n: ("rows_in", n))
        )
        extra = pipeline | "NoExtra" >> beam.Create([{}])
        handler = SignatureModelHandler(job.model.path, job.signature, job.output_key, job.max_batch_size, expected)

    scored = chunks | "Score" >> ScoreExamples(handler)
    result["scored"] = scored["scored"]
    result[ERRORS] = (read_errors, scored[ERRORS]) | "AllErrors" >> beam.Flatten()
    tallies = (
        rows_in,
        result["scored"] | "TallyScored" >> beam.Map(lambda chunk: ("scored", chunk_size(chunk))),
        result[ERRORS] | "TallyErrors" >> beam.Map(lambda e: (f"errors.{e['reason']}", 1)),
    ) | "Tallies" >> beam.Flatten()
    result["counts"] = (
        tallies
        | "Sum" >> beam.CombinePerKey(sum)
        | "ToDict" >> beam.combiners.ToDict()
        | "Summarize" >> beam.Map(summarize, beam.pvalue.AsSingleton(extra), input_format, job.model)
    )
    return result


def summarize(tallies: Dict[str, int], extra: dict, input_format: str, model: ModelRef) -> dict:
    errors = {k.split(".", 1)[1]: v for k, v in sorted(tallies.items()) if k.startswith("errors.")}
    rows_in, scored = tallies.get("rows_in", 0), tallies.get("scored", 0)
    return {
        "input_format": input_format,
        "model": model.name,
        "model_version": model.version,
        "model_path": model.path,
        "rows_in": rows_in,
        "rows_scored": scored,
        "error_rows": sum(errors.values()),
        "errors_by_reason": errors,
        "balanced": rows_in == scored + sum(errors.values()),
        **extra,
    }


def score_lines(chunk, model: ModelRef, output_format: str) -> str:
    """The output lines of a scored chunk, one per row (written as one text element)."""
    keys, scores = chunk
    if output_format == "csv":
        return "\n".join(_csv_line([user, item, ts, score, model.name, model.version]) for (user, item, ts, _), score in zip(keys, scores))
    return "\n".join(
        json.dumps(dict(zip(SCORE_FIELDS, (user, item, ts, score, model.name, model.version))))
        for (user, item, ts, _), score in zip(keys, scores)
    )


def write_outputs(result: dict, job: ScoreJob) -> None:
    shards = {"num_shards": job.num_shards} if job.num_shards else {}
    header = {"header": ",".join(SCORE_FIELDS)} if job.output_format == "csv" else {}
    result["scored"] | "ScoreLines" >> beam.Map(score_lines, job.model, job.output_format) | "WriteScores" >> beam.io.WriteToText(
        os.path.join(job.output_dir, "scores"), file_name_suffix=f".{job.output_format}", **header, **shards
    )
    result[ERRORS] | "ErrorJson" >> beam.Map(json.dumps) | "WriteErrors" >> beam.io.WriteToText(
        os.path.join(job.output_dir, "errors"), file_name_suffix=".jsonl", **shards
    )
    if "table_quarantine" in result:
        result["table_quarantine"] | "TableJson" >> beam.Map(json.dumps) | "WriteTableQuarantine" >> beam.io.WriteToText(
            os.path.join(job.output_dir, "table_quarantine"), file_name_suffix=".jsonl"
        )
    result["counts"] | "CountsJson" >> beam.Map(lambda c: json.dumps(c, indent=2, sort_keys=True)) | "WriteCounts" >> beam.io.WriteToText(
        os.path.join(job.output_dir, COUNTS_FILE), shard_name_template=""
    )


def default_beam_args(config=None) -> List[str]:
    if config is not None:
        return config.beam_pipeline_args()
    from contract.config import BeamConfig

    return BeamConfig().pipeline_args()


def score(job: ScoreJob) -> dict:
    """Runs the scoring job to completion; returns counts.json; raises when rows do not balance."""
    import tensorflow as tf
    from apache_beam.options.pipeline_options import PipelineOptions

    args = list(default_beam_args(job.config)) + list(job.beam_args)
    with beam.Pipeline(options=PipelineOptions(args)) as pipeline:
        write_outputs(build_scoring(pipeline, job), job)
    with tf.io.gfile.GFile(os.path.join(job.output_dir, COUNTS_FILE)) as handle:
        counts = json.load(handle)
    check_counts(counts)
    return counts


def check_counts(counts: dict) -> None:
    if not counts["balanced"]:
        raise RuntimeError(
            f"row accounting does not balance: rows in {counts['rows_in']:,} != scored {counts['rows_scored']:,}"
            f" + errors {counts['error_rows']:,}: {json.dumps(counts)}"
        )
    builder = counts.get("sequence_builder")
    if builder is not None and not builder["balanced"]:
        raise RuntimeError(f"the sequence builder's row accounting does not balance: {json.dumps(builder)}")


def format_counts(counts: dict) -> str:
    line = (f"[score] rows in {counts['rows_in']:,} = scored {counts['rows_scored']:,} + errors {counts['error_rows']:,}"
            f" (model {counts['model']} version {counts['model_version'] or '-'})")
    if counts["errors_by_reason"]:
        line += "\n[score] errors by reason: " + ", ".join(f"{k} {v:,}" for k, v in counts["errors_by_reason"].items())
    table = counts.get("sequence_builder", {}).get("table_rows_quarantined")
    if table:
        line += f"\n[score] items/users table rows quarantined (not input rows): {table:,}"
    return line


# ---- command line ------------------------------------------------------------------------------
def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ctr-pipeline score``."""
    parser.add_argument("--model", required=True,
                        help="a SavedModel directory, a model directory of versions (<serving_root>/<name>: newest "
                             "version), or with --serving-root/--config a model name, optionally name@version")
    parser.add_argument("--serving-root", default=None,
                        help="where pushed models live (<root>/<name>/<version>); default: serving_root of --config")
    parser.add_argument("--input", required=True,
                        help="interaction logs (directory or events file; needs --config) or TFRecord files of raw "
                             "tf.Examples (a file, a glob or a directory of *.tfrecord / *.gz)")
    parser.add_argument("--input-format", choices=("auto", "logs", "tfrecord"), default="auto",
                        help="auto (default): TFRecords when every input file is named *.tfrecord* or *.gz "
                             "(not .csv.gz/.tsv.gz/...), logs otherwise")
    parser.add_argument("--config", default=None,
                        help="pipeline YAML config: data format, columns, tables and sequence settings for logs; "
                             "also the Beam options and the serving root")
    parser.add_argument("--output", required=True, help="output directory (scores-*, errors-*, counts.json)")
    parser.add_argument("--format", dest="output_format", choices=("jsonl", "csv"), default="jsonl",
                        help="format of the score rows (errors are always JSON lines); default jsonl")
    parser.add_argument("--num-shards", type=int, default=0, help="output files per output (default: runner decides)")
    parser.add_argument("--max-batch-size", type=int, default=1024, help="largest batch per model call (default 1024)")
    parser.add_argument("--signature", default=SERVING_DEFAULT,
                        help="SavedModel signature: serialized tf.Example in, score out (default serving_default; "
                             "with the default, logs are scored through the model's serving_raw when it has one)")
    parser.add_argument("--output-key", default=OUTPUT_KEY, help="the signature output holding the score")
    parser.add_argument("--model-name", default=None, help="model name written in the rows (default: from the path)")
    parser.add_argument("--model-version", default=None, help="model version written in the rows (default: from the path)")
    parser.add_argument("--beam-arg", dest="beam_args", action="append", default=[], metavar="ARG",
                        help="a Beam pipeline option, repeatable, e.g. --beam-arg=--runner=DataflowRunner "
                             "(default: the config's beam options, else DirectRunner in_memory)")


def run_score(args: argparse.Namespace) -> int:
    config = None
    if args.config:
        from contract.config import load_config

        config = load_config(args.config)
    serving_root = args.serving_root or (config.serving_root if config is not None else None)
    model = resolve_model(args.model, serving_root)
    model = dataclasses.replace(
        model, name=args.model_name or model.name, version=args.model_version if args.model_version is not None else model.version
    )
    job = ScoreJob(
        model=model, input_path=args.input, output_dir=args.output, input_format=args.input_format, config=config,
        output_format=args.output_format, num_shards=args.num_shards, max_batch_size=args.max_batch_size,
        signature=args.signature, output_key=args.output_key, beam_args=args.beam_args,
    )
    print(f"[score] model {model.name} version {model.version or '-'}: {model.path}", flush=True)
    started = time.perf_counter()
    counts = score(job)
    seconds = time.perf_counter() - started
    print(format_counts(counts))
    rate = counts["rows_in"] / seconds if seconds > 0 else 0.0
    print(f"[score] {seconds:.1f}s ({rate:,.0f} rows/s); outputs in {args.output}", flush=True)
    return 0
