"""Batch scoring: Beam ``RunInference`` model handlers for a SavedModel's signatures and the
``ScoreExamples`` transform (chunks of rows in, chunks of scores and error rows out)."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, RunInference

from contract.serving import SERVING_RAW
from serving.batch_outputs import ERRORS, error_row
from serving.batch_records import diagnose, tf_message


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
    spec: object  # contract.feature_spec.FeatureSpec
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
    message = tf_message(exc) if hasattr(exc, "message") else str(exc)
    return f"{type(exc).__name__}: {message}"


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
