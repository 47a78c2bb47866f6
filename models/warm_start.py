"""Warm start: a model starts from the weights of its latest blessed version (daily retraining).

Files. After each export the Trainer writes, in ``<Model artifact>/WarmStart/`` (``directory_of``):
``variables.npz`` (the value of every model variable), ``vocab_<field>.txt`` (each embedding
table's vocabulary, its tokens in file order, one a line) and ``warm_start.json`` (the model class,
the OOV bucket count, which variables are embedding tables of which field; written last, so a
directory without it is incomplete). A base thus needs nothing else at restore time.

Variables are keyed by their path in the model's object graph (``embeddings/tables/item_id/embeddings``,
``head/mlp/blocks/0/0/kernel``: the names a ``tf.train.Checkpoint`` gives them). Keras' own
variable names are no key: TF4CTR's two table sets share them, and unnamed layers are numbered
in the order a process builds them (``dense_4``).

Rules, for each variable of the new model (``restore``):

* An embedding table indexed by a field's vocabulary (the table of every spec field in every
  ``models.inputs.FeatureEmbeddings`` layer of the model, TF4CTR's second set included): its rows
  are matched by vocabulary TOKEN, since tf.Transform recomputes the vocabularies on each day's
  data. A token in both vocabularies gets its old row, a new token keeps its fresh initialisation
  (a dropped token's row is lost); the pad row 0 is copied; the OOV rows (after the vocabulary)
  are copied by position when the OOV bucket count is unchanged, else they stay fresh.
* Any other variable (kernels, biases, batch-norm statistics, the hour / weekday / gap tables)
  with the same path and shape in the base is copied.
* A variable missing from the base, or of another shape there, keeps its fresh value; the
  summary lists it with the reason.
* A base of another model class, or one of which no variable applies, is a ValueError.

The optimizer is not restored: training starts with a fresh optimizer (Adam's moments and step
count at zero, the configured learning rate). Metric state is not saved either.
"""
from __future__ import annotations

import collections
import io
import json
import os
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

from contract.feature_spec import FeatureSpec
from contract.features import PAD_INDEX
from models.inputs import FeatureEmbeddings

WARM_START_DIR = "WarmStart"
VARIABLES_FILE = "variables.npz"
INDEX_FILE = "warm_start.json"
# objects whose variables are not the model's state (and are not warm-started)
_NOT_MODEL_STATE = (tf_keras.metrics.Metric, tf_keras.optimizers.Optimizer, tf_keras.optimizers.legacy.Optimizer)


def directory_of(serving_model_dir: str) -> str:
    """The warm-start directory of a Model artifact, given its serving-model directory
    ``<uri>/Format-Serving`` (``fn_args.serving_model_dir`` to save, ``fn_args.base_model`` to restore)."""
    return os.path.join(os.path.dirname(serving_model_dir.rstrip("/")), WARM_START_DIR)


def exists(directory: str) -> bool:
    """Whether ``directory`` holds complete warm-start files."""
    return tf.io.gfile.exists(os.path.join(directory, INDEX_FILE))


def create_variables(model, features, labels) -> None:
    """Creates every variable of a model (the models create them on their first call): one
    forward pass with the loss terms, since some models build their auxiliary-loss layers only
    there. Call it under the distribution strategy's scope, as the model was built."""
    model.loss_terms(features, labels, training=False)


def model_variables(model) -> Dict[str, tf.Variable]:
    """The model's own variables (its ``weights``, batch-norm statistics included; not its metrics'
    nor its optimizer's) by object-graph path: breadth first, each variable's first path."""
    weights = {id(variable) for variable in model.weights}
    found: Dict[str, tf.Variable] = {}
    seen = {id(model)}
    queue = collections.deque([(model, "")])
    while queue:
        parent, prefix = queue.popleft()
        for name, child in tf.train.TrackableView.children(parent).items():
            if id(child) in seen or isinstance(child, _NOT_MODEL_STATE):
                continue
            seen.add(id(child))
            if isinstance(child, tf.Variable):
                if id(child) in weights:
                    found[prefix + name] = child
            else:
                queue.append((child, f"{prefix}{name}/"))
    return found


def vocabulary_tables(model) -> Dict[str, str]:
    """Path -> field of every embedding table indexed by a field's vocabulary: the spec fields'
    tables of each ``FeatureEmbeddings`` layer in the model (not the hour, weekday, gap tables)."""
    fields = {
        id(layer.tables[field].embeddings): field
        for layer in model.submodules if isinstance(layer, FeatureEmbeddings)
        for field in layer.spec.scalar_fields
    }
    return {path: fields[id(variable)] for path, variable in model_variables(model).items() if id(variable) in fields}


def save(model, tft_output, spec: FeatureSpec, directory: str) -> None:
    """Writes the warm-start files of a trained model to ``directory`` (local or remote)."""
    variables = model_variables(model)
    tables = vocabulary_tables(model)
    tf.io.gfile.makedirs(directory)
    buffer = io.BytesIO()
    np.savez(buffer, **{path: variable.numpy() for path, variable in variables.items()})
    _write(os.path.join(directory, VARIABLES_FILE), buffer.getvalue())
    for field in sorted(set(tables.values())):
        tokens = tft_output.vocabulary_by_name(spec.vocabulary_name(field))
        _write(_vocabulary_path(directory, spec, field), b"".join(tf.compat.as_bytes(token) + b"\n" for token in tokens))
    index = {"model_class": _class_name(model), "oov_buckets": spec.oov_buckets, "embedding_tables": tables}
    _write(os.path.join(directory, INDEX_FILE), json.dumps(index, indent=2).encode())


def restore(model, directory: str, tft_output, spec: FeatureSpec) -> dict:
    """Sets the variables of ``model`` (built: ``create_variables``) from the warm-start files in
    ``directory`` by the rules of the module docstring; ``tft_output`` and ``spec`` are this run's.

    Returns the summary: ``copied`` (paths copied as they were), ``skipped`` (path -> why it kept
    its fresh value), ``embedding_tables`` (path -> field, ``tokens_matched``, ``vocabulary_size``
    (this run's), ``base_vocabulary_size``, ``oov_rows_copied``)."""
    index = json.loads(_read(os.path.join(directory, INDEX_FILE)))
    if index["model_class"] != _class_name(model):
        raise ValueError(
            f"the warm-start base {directory} is a {index['model_class']}, not a {_class_name(model)}: set "
            "training.warm_start to false for one run to train this model from scratch"
        )
    variables = model_variables(model)
    if not variables:
        raise ValueError(f"{model.name} has no variables yet: build it (create_variables) before restoring")
    with np.load(io.BytesIO(_read(os.path.join(directory, VARIABLES_FILE)))) as archive:
        base = {path: archive[path] for path in archive.files}
    tables, base_tables = vocabulary_tables(model), index["embedding_tables"]
    fields = set(tables.values())
    vocabularies = {field: [tf.compat.as_bytes(t) for t in tft_output.vocabulary_by_name(spec.vocabulary_name(field))]
                    for field in fields}
    base_vocabularies = {field: _read(_vocabulary_path(directory, spec, field)).split(b"\n")[:-1]
                         for field in fields & set(base_tables.values())}
    summary = {"directory": directory, "copied": [], "skipped": {}, "embedding_tables": {}}
    for path, variable in variables.items():
        old, shape = base.get(path), tuple(variable.shape)
        if old is None:
            summary["skipped"][path] = "not in the base"
        elif path in tables and base_tables.get(path) != tables[path]:
            summary["skipped"][path] = f"not the embedding table of {tables[path]!r} in the base"
        elif path in tables and old.shape[1:] != shape[1:]:
            summary["skipped"][path] = f"embedding width {old.shape[-1]} in the base, {shape[-1]} here"
        elif path in tables:
            field = tables[path]
            rows, counts = remap_rows(
                variable.numpy(), old, vocabularies[field], base_vocabularies[field], spec.oov_buckets, index["oov_buckets"],
            )
            variable.assign(rows)
            summary["embedding_tables"][path] = {"field": field, **counts}
        elif old.shape != shape:
            summary["skipped"][path] = f"shape {list(old.shape)} in the base, {list(shape)} here"
        else:
            variable.assign(old.astype(variable.dtype.as_numpy_dtype))
            summary["copied"].append(path)
    if not summary["copied"] and not summary["embedding_tables"]:
        raise ValueError(f"no variable of the warm-start base {directory} applies to {model.name}")
    return summary


def remap_rows(fresh: np.ndarray, old: np.ndarray, tokens: Sequence[bytes], old_tokens: Sequence[bytes],
               oov_buckets: int, old_oov_buckets: int) -> Tuple[np.ndarray, dict]:
    """The rows of an embedding table (pad row 0, a row per token, then the OOV rows) for the
    vocabulary ``tokens``: ``fresh`` with the pad row, the rows of the tokens also in ``old_tokens``
    and (when the OOV bucket counts are equal) the OOV rows taken from ``old``; and the counts."""
    for rows, vocab, oov, side in ((fresh, tokens, oov_buckets, "new"), (old, old_tokens, old_oov_buckets, "base")):
        if rows.shape[0] != len(vocab) + oov + 1:
            raise ValueError(f"the {side} table has {rows.shape[0]} rows, not 1 + {len(vocab)} tokens + {oov} OOV buckets")
    rows = fresh.copy()
    rows[PAD_INDEX] = old[PAD_INDEX]
    old_index = {token: i for i, token in enumerate(old_tokens)}
    matched = [(i, old_index[token]) for i, token in enumerate(tokens) if token in old_index]
    if matched:
        new_at, old_at = np.array(matched).T
        rows[1 + new_at] = old[1 + old_at]
    oov_rows_copied = oov_buckets == old_oov_buckets
    if oov_rows_copied:
        rows[1 + len(tokens):] = old[1 + len(old_tokens):]
    counts = {"tokens_matched": len(matched), "vocabulary_size": len(tokens), "base_vocabulary_size": len(old_tokens),
              "oov_rows_copied": oov_rows_copied}
    return rows, counts


def describe(summary: Mapping) -> str:
    """One line: variables copied, tokens matched per field of the remapped tables, skipped ones."""
    per_field = {t["field"]: f"{t['tokens_matched']}/{t['vocabulary_size']}" for t in summary["embedding_tables"].values()}
    line = (f"{len(summary['copied'])} variables copied, {len(summary['embedding_tables'])} embedding tables "
            f"remapped by token (tokens matched/vocabulary: {', '.join(f'{f} {n}' for f, n in per_field.items())})")
    if summary["skipped"]:
        line += f", {len(summary['skipped'])} variables kept fresh: {', '.join(summary['skipped'])}"
    return line


def _class_name(model) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _vocabulary_path(directory: str, spec: FeatureSpec, field: str) -> str:
    return os.path.join(directory, f"{spec.vocabulary_name(field)}.txt")


def _write(path: str, content: bytes) -> None:
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(content)


def _read(path: str) -> bytes:
    with tf.io.gfile.GFile(path, "rb") as handle:
        return handle.read()
