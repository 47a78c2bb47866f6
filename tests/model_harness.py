"""Checks every model must pass, on batches of transformed features built from a FeatureSpec.

A model test calls these with its own model; they assert behaviour users rely on (ranges,
masking, learning, gradients reaching parameters), so a broken model fails them.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import Callable, Dict, Iterable

import numpy as np
import tensorflow as tf
import tf_keras

from models import registry
from contract.features import CONTEXT_SIZES, LABEL
from contract.feature_spec import FeatureSpec

SPEC = FeatureSpec(
    user_fields=("user_id", "gender", "age"),
    item_fields=("item_id", "category", "brand"),
    max_length=8,
    gap_buckets=6,
    embedding_dim=8,
)
VOCAB_SIZES = {"user_id": 30, "gender": 2, "age": 7, "item_id": 40, "category": 6, "brand": 9}


def random_batch(spec: FeatureSpec = SPEC, vocab_sizes=VOCAB_SIZES, batch: int = 32, seed: int = 0, min_length: int = 0):
    """(features, labels) of transformed features; sequences left-padded with random lengths."""
    rng = np.random.default_rng(seed)
    features: Dict[str, np.ndarray] = {}
    for field in spec.scalar_fields:
        features[field] = rng.integers(1, vocab_sizes[field] + 1, size=batch)
    for field, size in CONTEXT_SIZES.items():
        features[field] = rng.integers(0, size, size=batch)
    steps = spec.max_length
    for feedback in spec.feedback_types:
        lengths = rng.integers(min_length, steps + 1, size=batch)
        real = np.arange(steps)[None, :] >= (steps - lengths)[:, None]
        for field in spec.item_fields:
            ids = rng.integers(1, vocab_sizes[field] + 1, size=(batch, steps))
            features[spec.history(feedback, field)] = np.where(real, ids, 0)
        gaps = rng.integers(1, spec.gap_buckets + 1, size=(batch, steps))
        features[spec.history_gap(feedback)] = np.where(real, gaps, 0)
    labels = rng.integers(0, 2, size=batch)
    as_tensors = {k: tf.constant(v, tf.int64) for k, v in features.items()}
    return as_tensors, tf.constant(labels, tf.int64)


def build(name: str, params=None, spec: FeatureSpec = SPEC):
    tf_keras.utils.set_random_seed(0)
    return registry.build(name, spec, VOCAB_SIZES, params)


def assert_output_shape_and_range(model, features):
    out = model(features, training=False)
    batch = int(features["user_id"].shape[0])
    assert out["probability"].shape == (batch,) and out["logit"].shape == (batch,)
    prob = out["probability"].numpy()
    assert np.all(np.isfinite(prob)) and np.all((prob > 0) & (prob < 1)), prob
    np.testing.assert_allclose(prob, tf.sigmoid(out["logit"]).numpy(), rtol=1e-5)


def assert_saturated_logit_stays_inside_0_1(model, features, labels, final_biases: Callable) -> None:
    """DIN once output exactly 1.0 in float32 and TFMA's logloss became nan. With the bias of the
    layer(s) making the logit (``final_biases(model)``) forced to +-1e4, float32's sigmoid of the
    logit is exactly 1.0 / 0.0; the probability, on the call path and on the candidates path,
    stays finite and strictly inside (0, 1), while the training loss still sees the logit."""
    model(features, training=False)  # builds the weights
    row = {name: value[:1] for name, value in features.items() if name not in model.spec.item_fields}
    candidates = {name: features[name] for name in model.spec.item_fields}
    for bias in (1e4, -1e4):
        for variable in final_biases(model):
            variable.assign(tf.fill(variable.shape, bias))
        out = model(features, training=False)
        assert np.all(tf.sigmoid(out["logit"]).numpy() == (1.0 if bias > 0 else 0.0))  # saturated
        for prob in (out["probability"].numpy(), model.score_candidates(row, candidates).numpy()):
            assert np.all(np.isfinite(prob)) and np.all((prob > 0) & (prob < 1)), prob
        assert eval_loss(model, features, labels) > 1000  # BCE of a 1e4 logit, not of a clipped probability


def scramble_padding(features, spec: FeatureSpec = SPEC, seed: int = 1):
    """The same batch with random attribute ids and gaps written into every pad position.

    Pad positions are those whose ``item_id`` is 0; a model that derives its masks from ids and
    honours them everywhere gives the same output for both batches.
    """
    rng = np.random.default_rng(seed)
    scrambled = dict(features)
    for feedback in spec.feedback_types:
        pad = features[spec.history(feedback, "item_id")].numpy() == 0
        for name in spec.transformed_sequence_names(feedback)[1:]:
            values = features[name].numpy()
            noise = rng.integers(1, 6, size=values.shape)
            scrambled[name] = tf.constant(np.where(pad, noise, values), tf.int64)
    return scrambled


def assert_padding_changes_nothing(model, features, seed: int = 1):
    before = model(features, training=False)["probability"].numpy()
    after = model(scramble_padding(features, seed=seed), training=False)["probability"].numpy()
    np.testing.assert_allclose(before, after, rtol=1e-5, atol=1e-6)


def eval_loss(model, features, labels) -> float:
    return float(model.compute_loss((features, labels), training=False))


def assert_fit_step_lowers_loss(model, features, labels, learning_rate: float = 1e-2, steps: int = 1):
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate))
    before = eval_loss(model, features, labels)
    model.fit(tf.data.Dataset.from_tensors((features, labels)).repeat(steps), epochs=1, verbose=0)
    after = eval_loss(model, features, labels)
    assert after < before, f"loss did not go down after {steps} step(s): {before} -> {after}"


def aux_loss_gradients(model, features, labels, term: str) -> Dict[str, float]:
    """Gradient norm of auxiliary loss ``term`` alone, per trainable variable name."""
    with tf.GradientTape() as tape:
        _, terms = model.loss_terms(features, labels, training=True)
        assert term in terms, f"{term} not returned; got {sorted(terms)}"
        loss = terms[term]
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    return {v.name: (0.0 if g is None else float(tf.norm(tf.convert_to_tensor(g)))) for v, g in zip(variables, grads)}


def assert_gradient_reaches(grad_norms: Dict[str, float], must_reach: Iterable[str], must_not_reach: Iterable[str] = ()):
    """Every name fragment in ``must_reach`` matches some variable with a non-zero gradient."""
    for fragment in must_reach:
        hits = {n: g for n, g in grad_norms.items() if fragment in n}
        assert hits, f"no variable matches {fragment!r}: {sorted(grad_norms)}"
        assert any(g > 0 for g in hits.values()), f"no gradient reaches {fragment!r}: {hits}"
    for fragment in must_not_reach:
        hits = {n: g for n, g in grad_norms.items() if fragment in n and g > 0}
        assert not hits, f"gradient unexpectedly reaches {hits}"


def logged_metrics(model, features, labels) -> Dict[str, float]:
    """What a ``fit`` epoch of one step on the batch, validated on the same batch, logs (``loss``,
    ``loss_<term>``, ``val_diag_<name>``, ...)."""
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-3))
    data = tf.data.Dataset.from_tensors((features, labels))
    history = model.fit(data, validation_data=data, epochs=1, verbose=0)
    return {k: v[-1] for k, v in history.history.items()}


def logged_loss_terms(model, features, labels) -> Dict[str, float]:
    """The per-term losses a ``fit`` epoch logs (``loss_<term>``)."""
    return {k[len("loss_"):]: v for k, v in logged_metrics(model, features, labels).items() if k.startswith("loss_")}


def reference_layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray, epsilon: float) -> np.ndarray:
    """The pre-LN in numpy: ``x`` normalised over its last axis, times ``gain`` plus ``bias``."""
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + epsilon) * gain + bias


def repeat_recency_batch(batch: int, seed: int, spec: FeatureSpec = SPEC, vocab_sizes=VOCAB_SIZES, min_length: int = 4):
    """A known-answer case: (features, labels). Every target item is one of the (distinct) items
    of its click history, and the label is 1 exactly when that position's time gap is in the
    lower half of the gap buckets (a recent repeat). Mean pooling mixes the gaps of every position
    and cannot tell (AUC ~0.5); an attention that finds the target's position reads its gap."""
    features, _ = random_batch(spec, vocab_sizes, batch=batch, seed=seed, min_length=min_length)
    rng = np.random.default_rng(seed + 1000)
    items = features[spec.history("click", "item_id")].numpy().copy()
    gaps = features[spec.history_gap("click")].numpy()
    targets, labels = np.empty(batch, np.int64), np.empty(batch, np.int64)
    for row in range(batch):
        real = np.flatnonzero(items[row])
        items[row, real] = rng.choice(np.arange(1, vocab_sizes["item_id"] + 1), size=len(real), replace=False)
        position = rng.choice(real)
        targets[row] = items[row, position]
        labels[row] = int(gaps[row, position] <= spec.gap_buckets // 2)
    features[spec.history("click", "item_id")] = tf.constant(items, tf.int64)
    features["item_id"] = tf.constant(targets, tf.int64)
    return features, tf.constant(labels, tf.int64)


def train_on(model, features, labels, epochs: int, learning_rate: float = 3e-3, batch_size: int = 128):
    """Trains ``model`` on the batch for ``epochs`` shuffled passes; returns the fit history."""
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate))
    data = tf.data.Dataset.from_tensor_slices((features, labels)).shuffle(4096, seed=0).batch(batch_size)
    return model.fit(data, epochs=epochs, verbose=0)


def held_out_auc(model, features, labels) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels.numpy(), model(features, training=False)["probability"].numpy()))


def diagnostics(model, features, labels) -> Dict[str, float]:
    """The model's declared diagnostics on a batch (as the validation split would log them)."""
    output, _ = model.loss_terms(features, labels, training=False)
    return {name: float(value) for name, value in output.diagnostics.items()}


def assert_builds_in_a_graph_with_unknown_batch(model, features):
    """The first call happens in a graph with unknown batch size, as in the Trainer."""
    signature = {k: tf.TensorSpec([None] + list(v.shape[1:]), v.dtype) for k, v in features.items()}
    probability = tf.function(lambda f: model(f, training=True)["probability"], input_signature=[signature])(features)
    assert probability.shape == (int(features["user_id"].shape[0]),)


def run_standard_checks(name: str, params=None, fit_steps: int = 1, learning_rate: float = 1e-2) -> Callable:
    """Graph build, shape/range, padding, learning in ``fit_steps`` steps: the checks shared by all models."""
    features, labels = random_batch()
    # without dropout (the default's 0.1) the fit step is deterministic: the loss must fall
    model = build(name, {"dropout": 0.0, **(params or {})})
    assert_builds_in_a_graph_with_unknown_batch(model, features)
    assert_output_shape_and_range(model, features)
    assert_padding_changes_nothing(model, features)
    assert_serving_path_skips_the_loss_terms(model, features)
    assert_fit_step_lowers_loss(model, features, labels, learning_rate, steps=fit_steps)
    return model


def assert_serving_path_skips_the_loss_terms(model, features):
    """``losses=False`` (what ``call`` and so every export uses) computes no auxiliary term and
    gives the logits of the training-time forward pass."""
    serving = model.forward(features, training=False, losses=False)
    assert serving.aux_losses == {}, f"the serving path computed {sorted(serving.aux_losses)}"
    full = model.forward(features, training=False)
    assert set(full.aux_losses) <= set(model.loss_weights())
    np.testing.assert_allclose(serving.logit.numpy(), full.logit.numpy(), rtol=1e-6, atol=1e-6)


# ---- SavedModel round trip through both serving signatures --------------------------------------
def transform_dir(spec: FeatureSpec = SPEC) -> str:
    """A real transform graph (tf.Transform analysis of a small random log), made once per session."""
    from tests import tft_fixture

    return tft_fixture.analyzed(spec, seed=0)[0]


def dense_raw_tensors(examples, spec: FeatureSpec = SPEC, mixed_padding: bool = False) -> Dict[str, tf.Tensor]:
    """Raw-signature inputs: scalars [B]; histories [B, L] right-padded with "" / 0 (with
    ``mixed_padding``: one slot wider, odd rows padded on the left)."""
    out = {}
    for name, (dtype, is_sequence) in spec.raw_features().items():
        pad = "" if dtype == "string" else 0
        if is_sequence:
            width = max(1, max(len(e[name]) for e in examples)) + int(mixed_padding)
            rows = [
                [pad] * (width - len(e[name])) + list(e[name]) if mixed_padding and n % 2 else list(e[name]) + [pad] * (width - len(e[name]))
                for n, e in enumerate(examples)
            ]
        else:
            rows = [e[name] for e in examples]
        out[name] = tf.constant(rows, tf.string if dtype == "string" else tf.int64)
    return out


def assert_export_roundtrip(name: str, params=None, tmp_dir: str = None):
    """Exported signatures give the in-memory model's predictions for the same raw input."""
    import tempfile

    import tensorflow_transform as tft

    from models.export import SERVING_CANDIDATES, SERVING_DEFAULT, SERVING_RAW, export_serving_model
    from models.trainer import vocabulary_sizes
    from tests import raw_data, tft_fixture

    tft_dir = transform_dir()
    tft_output = tft.TFTransformOutput(tft_dir)
    tf_keras.utils.set_random_seed(0)
    # embeddings spread wider than the 1e-4 init, so that the untrained model's scores differ by
    # more than float noise (as a trained model's do) and a mismatch between paths shows
    model = registry.build(name, SPEC, vocabulary_sizes(tft_output, SPEC), {"embedding_init_std": 0.05, **(params or {})})
    examples = raw_data.raw_examples(SPEC, users=4, seed=7)  # unseen users/items reach OOV buckets
    transformed = tft_fixture.transform(tft_dir, examples, SPEC)
    transformed.pop(LABEL)
    expected = model({k: tf.constant(v) for k, v in transformed.items()}, training=False)["probability"].numpy()
    export_dir = export_serving_model(model, tft_output, SPEC, os.path.join(tmp_dir or tempfile.mkdtemp(), name))
    loaded = tf.saved_model.load(export_dir)
    serialized = tf.constant([raw_data.to_tf_example({k: v for k, v in e.items() if k != LABEL}, SPEC) for e in examples])
    from_examples = loaded.signatures[SERVING_DEFAULT](examples=serialized)["probability"].numpy()
    from_raw = loaded.signatures[SERVING_RAW](**dense_raw_tensors(examples))["probability"].numpy()
    from_mixed = loaded.signatures[SERVING_RAW](**dense_raw_tensors(examples, mixed_padding=True))["probability"].numpy()
    np.testing.assert_allclose(from_examples, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(from_raw, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(from_mixed, expected, rtol=1e-5, atol=1e-6)
    assert len(set(np.round(expected, 6))) > 1, "degenerate: every example got the same score"
    # one user (the example with the longest click history) and the items of every example as candidates
    user = max(examples, key=lambda e: len(e[SPEC.history_timestamp("click")]))
    as_candidates = [{**user, **{f: e[f] for f in SPEC.item_fields}} for e in examples]
    per_candidate = loaded.signatures[SERVING_RAW](**dense_raw_tensors(as_candidates))["probability"].numpy()
    shared = {k: v[:1] for k, v in dense_raw_tensors([user]).items() if k not in SPEC.item_fields}
    items = {f: tf.constant([e[f] for e in examples]) for f in SPEC.item_fields}
    from_candidates = loaded.signatures[SERVING_CANDIDATES](**shared, **items)["probability"].numpy()
    np.testing.assert_allclose(from_candidates, per_candidate, rtol=1e-5, atol=1e-6)
    assert len(set(np.round(per_candidate, 6))) > 1, "degenerate: every candidate got the same score"
