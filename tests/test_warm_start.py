"""Warm start (models.warm_start): a model of day B starts from the model of day A, whose
vocabularies differ. Rows follow their tokens, every other variable is copied, and on inputs made
of tokens both days know the restored model predicts what the base predicted."""
import dataclasses
import json
import re
import types

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from contract.feature_spec import FeatureSpec
from models import multiworker, registry, trainer, warm_start
from tests import model_harness as h

SPEC = FeatureSpec(
    user_fields=("user_id", "gender"), item_fields=("item_id", "category"), max_length=4, gap_buckets=3,
    embedding_dim=4, oov_buckets=2, feedback_types=("click", "unclick"),
)


def _tokens(*names):
    return [name.encode() for name in names]


# day A's and day B's vocabularies: shared tokens at other positions, new tokens, dropped tokens
VOCAB_A = {
    "user_id": _tokens("u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"),
    "gender": _tokens("f", "m"),
    "item_id": _tokens("i0", "i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8", "i9"),
    "category": _tokens("c0", "c1", "c2"),
}
VOCAB_B = {
    "user_id": _tokens("u6", "u10", "u2", "u11", "u0", "u4"),
    "gender": _tokens("m", "f", "x"),
    "item_id": _tokens("i9", "i3", "i12", "i0", "i5", "i7", "i11"),
    "category": _tokens("c2", "c0", "c1"),
}
SHARED = {field: [t for t in VOCAB_B[field] if t in VOCAB_A[field]] for field in SPEC.scalar_fields}
MATCHED = {"user_id": 4, "gender": 2, "item_id": 5, "category": 3}
PARAMS = {
    "dnn": {"mlp_units": [8, 4], "dropout": 0.0},
    "tf4ctr": {"simple_units": [8], "mlp_units": [8], "dropout": 0.0},  # batch norm on: its statistics too
}


class FakeTransformOutput:
    """The one method of tft.TFTransformOutput warm start reads: a vocabulary's tokens in file order."""

    def __init__(self, vocabularies, spec=SPEC):
        self.files = {spec.vocabulary_name(field): tokens for field, tokens in vocabularies.items()}

    def vocabulary_by_name(self, name):
        return self.files[name]


def _sizes(vocabularies):
    return {field: len(tokens) for field, tokens in vocabularies.items()}


def _build(architecture, vocabularies, seed, params=None, spec=SPEC):
    """A model with its variables created (fresh values depend on ``seed``)."""
    tf_keras.utils.set_random_seed(seed)
    model = registry.build(architecture, spec, _sizes(vocabularies), params or PARAMS[architecture])
    warm_start.create_variables(model, *h.random_batch(spec, _sizes(vocabularies), batch=8))
    return model


def _trained_base(architecture, directory, params=None):
    """Day A's model with non-trivial weights, its warm-start files saved to ``directory``."""
    model = _build(architecture, VOCAB_A, seed=0, params=params)
    rng = np.random.default_rng(0)
    for variable in model.weights:
        values = rng.uniform(0.5, 1.5, variable.shape) if "moving_variance" in variable.name else rng.normal(0.0, 0.5, variable.shape)
        variable.assign(values.astype(variable.dtype.as_numpy_dtype))
    warm_start.save(model, FakeTransformOutput(VOCAB_A), SPEC, directory)
    return model


def _values(model):
    return {path: variable.numpy() for path, variable in warm_start.model_variables(model).items()}


def _shared_token_batch(seed=3):
    """The same examples indexed by day A's and by day B's vocabularies, every token one both know."""
    features, _ = h.random_batch(SPEC, _sizes(SHARED), batch=16, seed=seed)  # k in 1..S: the k-th shared token
    by_a, by_b = dict(features), dict(features)
    for field in SPEC.scalar_fields:
        index_a = np.array([0] + [1 + VOCAB_A[field].index(t) for t in SHARED[field]])  # 0 (pad) stays 0
        index_b = np.array([0] + [1 + VOCAB_B[field].index(t) for t in SHARED[field]])
        names = [field] + ([SPEC.history(kind, field) for kind in SPEC.feedback_types] if field in SPEC.item_fields else [])
        for name in names:
            by_a[name] = tf.constant(index_a[features[name].numpy()], tf.int64)
            by_b[name] = tf.constant(index_b[features[name].numpy()], tf.int64)
    return by_a, by_b


def _assert_rows_follow_tokens(rows, fresh, old, field, oov_rows_copied=True):
    a, b = VOCAB_A[field], VOCAB_B[field]
    np.testing.assert_array_equal(rows[0], old[0])  # pad
    for position, token in enumerate(b):
        expected = old[1 + a.index(token)] if token in a else fresh[1 + position]
        np.testing.assert_array_equal(rows[1 + position], expected, err_msg=f"{field} {token!r}")
    np.testing.assert_array_equal(rows[1 + len(b):], old[1 + len(a):] if oov_rows_copied else fresh[1 + len(b):])


@pytest.mark.parametrize("architecture, table_sets", [("dnn", ["embeddings"]), ("tf4ctr", ["embeddings", "E_es"])])
def test_restore_matches_rows_by_token_and_copies_every_other_variable(architecture, table_sets, tmp_path):
    base = _trained_base(architecture, str(tmp_path))
    with trainer.distribution_strategy().scope():  # as in the Trainer: mirrored variables
        model = _build(architecture, VOCAB_B, seed=1)
    fresh, old = _values(model), _values(base)
    by_a, by_b = _shared_token_batch()
    expected = base(by_a, training=False)["probability"].numpy()
    assert len(set(np.round(expected, 5))) > 1, "degenerate: every example got the same score"
    assert not np.allclose(model(by_b, training=False)["probability"].numpy(), expected, atol=1e-4)

    summary = warm_start.restore(model, str(tmp_path), FakeTransformOutput(VOCAB_B), SPEC)  # day B's vocabularies only

    restored = _values(model)
    tables = {f"{s}/tables/{field}/embeddings": field for s in table_sets for field in SPEC.scalar_fields}
    assert set(summary["embedding_tables"]) == set(tables)
    for path, field in tables.items():
        _assert_rows_follow_tokens(restored[path], fresh[path], old[path], field)
        assert summary["embedding_tables"][path] == {
            "field": field, "tokens_matched": MATCHED[field], "vocabulary_size": len(VOCAB_B[field]),
            "base_vocabulary_size": len(VOCAB_A[field]), "oov_rows_copied": True,
        }
    assert summary["skipped"] == {}
    assert sorted(summary["copied"]) == sorted(set(restored) - set(tables))
    assert "embeddings/tables/hour/embeddings" in summary["copied"]  # fixed-size tables are copied as they are
    for path in summary["copied"]:
        np.testing.assert_array_equal(restored[path], old[path], err_msg=path)
    np.testing.assert_allclose(model(by_b, training=False)["probability"].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_a_changed_oov_bucket_count_leaves_the_oov_rows_fresh(tmp_path):
    base = _trained_base("dnn", str(tmp_path))
    spec = dataclasses.replace(SPEC, oov_buckets=1)
    model = _build("dnn", VOCAB_B, seed=1, spec=spec)
    fresh, old = _values(model), _values(base)
    summary = warm_start.restore(model, str(tmp_path), FakeTransformOutput(VOCAB_B, spec), spec)
    path = "embeddings/tables/item_id/embeddings"
    _assert_rows_follow_tokens(_values(model)[path], fresh[path], old[path], "item_id", oov_rows_copied=False)
    assert summary["embedding_tables"][path]["oov_rows_copied"] is False


def test_variables_missing_from_the_base_or_of_another_shape_stay_fresh_and_are_listed(tmp_path):
    _trained_base("dnn", str(tmp_path), params={"mlp_units": [8], "dropout": 0.0})
    model = _build("dnn", VOCAB_B, seed=1, params={"mlp_units": [8, 4], "dropout": 0.0})
    fresh = _values(model)
    summary = warm_start.restore(model, str(tmp_path), FakeTransformOutput(VOCAB_B), SPEC)
    assert summary["skipped"] == {
        "head/mlp/blocks/1/0/kernel": "not in the base",
        "head/mlp/blocks/1/0/bias": "not in the base",
        "head/logit/kernel": "shape [8, 1] in the base, [4, 1] here",
    }
    restored = _values(model)
    for path in summary["skipped"]:
        np.testing.assert_array_equal(restored[path], fresh[path])
    assert "head/mlp/blocks/0/0/kernel" in summary["copied"] and "head/logit/bias" in summary["copied"]


def test_a_base_of_another_architecture_is_refused_naming_it(tmp_path):
    _trained_base("dnn", str(tmp_path))
    model = _build("tf4ctr", VOCAB_B, seed=1)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        warm_start.restore(model, str(tmp_path), FakeTransformOutput(VOCAB_B), SPEC)


def test_the_trainer_warm_starts_from_the_blessed_versions_files_and_says_so(tmp_path, capsys):
    """``fn_args.base_model`` is the base Model artifact's ``<uri>/Format-Serving``; its files are in ``<uri>/WarmStart``."""
    base_model = str(tmp_path / "Model" / "7" / "Format-Serving")
    _trained_base("dnn", warm_start.directory_of(base_model))
    assert warm_start.directory_of(base_model) == str(tmp_path / "Model" / "7" / warm_start.WARM_START_DIR)
    data = tf.data.Dataset.from_tensors(h.random_batch(SPEC, _sizes(VOCAB_B), batch=8))
    tft_output = FakeTransformOutput(VOCAB_B)

    def start(base):
        tf_keras.utils.set_random_seed(1)
        model = registry.build("dnn", SPEC, _sizes(VOCAB_B), PARAMS["dnn"])
        model.compile(optimizer=tf_keras.optimizers.Adam())
        trainer.create_variables(model, data)  # as the Trainer does before a warm start
        return trainer.start_from_base(model, base, tft_output, SPEC)

    assert start(None) is None
    assert "[dnn] warm start: no blessed version yet, training from scratch" in capsys.readouterr().out
    assert start(str(tmp_path / "Old" / "Format-Serving")) is None  # trained before warm start existed
    assert "training from scratch" in capsys.readouterr().out
    summary = start(base_model)
    line = capsys.readouterr().out
    assert f"[dnn] warm start from {warm_start.directory_of(base_model)}: {len(summary['copied'])} variables copied" in line
    assert "item_id 5/7" in line
    json.dumps(summary)  # recorded in the training stats


def test_every_worker_gets_the_warm_start_base(monkeypatch):
    received = []
    monkeypatch.setattr(trainer, "train", lambda fn_args, strategy: received.append(fn_args))
    monkeypatch.setenv(multiworker.TF_CONFIG, json.dumps(multiworker.local_tf_configs(2)[1]))
    fn_args = types.SimpleNamespace(
        train_files=[], eval_files=[], transform_output="t", serving_model_dir="s", model_run_dir="r",
        custom_config={}, data_accessor=None, base_model="/models/7/Format-Serving",
    )
    multiworker.train_as_worker(fn_args, strategy=None)
    assert received[0].base_model == "/models/7/Format-Serving"


@pytest.mark.parametrize("architecture", registry.names())
def test_create_variables_creates_every_variable_training_would(architecture):
    """Some models (FADIDN, DUMN) build their auxiliary-loss layers only on the training path: a
    warm start that built the model by a serving call would leave those fresh."""
    features, labels = h.random_batch(batch=8)  # the harness's spec: DUMN needs every feedback type
    model = h.build(architecture, {"dropout": 0.0})
    warm_start.create_variables(model, features, labels)
    before = set(warm_start.model_variables(model))
    model.loss_terms(features, labels, training=True)  # what a training step computes
    assert set(warm_start.model_variables(model)) == before
