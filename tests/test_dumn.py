"""DUMN: shared checks, each equation on a hand-computed case, the memory's state rules, gradients."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models.dumn import (
    FEEDBACK,
    content_addressing,
    distinct_items,
    memory_read,
    memory_write,
    orthogonal_map,
    triplet_loss,
)
from tests import model_harness as h
from transforms.features import FeatureSpec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIPLET_TERMS = {f"triplet_{fb}" for fb in FEEDBACK}


def memories(model):
    return {fb: model.memories[fb].M.numpy().copy() for fb in FEEDBACK}


def emptied(features, feedback, rows=None):
    """The batch with the ``feedback`` history of ``rows`` (default: every row) made all-pad."""
    out = dict(features)
    for name in h.SPEC.transformed_sequence_names(feedback):
        values = features[name].numpy().copy()
        values[slice(None) if rows is None else rows] = 0
        out[name] = tf.constant(values, tf.int64)
    return out


# ---- shared checks -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        None,
        {"purification": False},
        {"memory": False},
        {"triplet_loss": False},
        {"num_heads": 1, "key_strength": 5.0, "context": True, "memory_slots": 8, "slot_dim": 4},
    ],
)
def test_standard_checks(params):
    h.run_standard_checks("dumn", params)


def test_the_spec_must_carry_all_four_feedback_sequences():
    spec = FeatureSpec(
        user_fields=h.SPEC.user_fields,
        item_fields=h.SPEC.item_fields,
        max_length=4,
        gap_buckets=3,
        feedback_types=("click", "unclick"),
    )
    with pytest.raises(ValueError, match="four feedback sequences"):
        h.build("dumn", spec=spec)


# ---- eq. 6-7: orthogonal mapping ---------------------------------------------------------------
def test_orthogonal_map_hand_case():
    a = tf.constant([[3.0, 4.0], [3.0, 4.0], [3.0, 4.0]])
    b = tf.constant([[1.0, 0.0], [2.0, 2.0], [0.0, 0.0]])
    # row 1: a.b/|b|^2 = 3 -> a - 3*(1,0) = (0, 4)
    # row 2: a.b/|b|^2 = 14/8 = 1.75 -> a - (3.5, 3.5) = (-0.5, 0.5)
    # row 3: b = 0 -> project(a, 0) = 0 -> a itself
    expected = np.array([[0.0, 4.0], [-0.5, 0.5], [3.0, 4.0]])
    np.testing.assert_allclose(orthogonal_map(a, b).numpy(), expected, atol=1e-6)


def test_orthogonal_map_of_a_zero_vector_has_finite_gradients():
    a, b = tf.Variable([[3.0, 4.0]]), tf.Variable([[0.0, 0.0]])
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(orthogonal_map(a, b))
    grad_a, grad_b = tape.gradient(out, [a, b])
    assert np.all(np.isfinite(grad_a.numpy())) and np.all(np.isfinite(grad_b.numpy()))
    np.testing.assert_array_equal(grad_a.numpy(), [[1.0, 1.0]])


def test_a_user_without_dislikes_keeps_f_c_exactly():
    features, labels = h.random_batch(min_length=2)
    features = emptied(features, "dislike", rows=[0, 3])
    model = h.build("dumn")
    short = model.short_term(features)
    f_c, f_d, f_oc = short.f["click"].numpy(), short.f["dislike"].numpy(), short.f_o["click"].numpy()
    assert np.all(np.isfinite(f_oc))
    np.testing.assert_array_equal(f_d[[0, 3]], 0.0)
    np.testing.assert_array_equal(f_oc[[0, 3]], f_c[[0, 3]])  # exactly, not approximately
    # users with dislikes: purified, and orthogonal to f_d
    others = [i for i in range(f_c.shape[0]) if i not in (0, 3)]
    assert np.abs(f_oc[others] - f_c[others]).max() > 0
    cosine = np.sum(f_oc[others] * f_d[others], -1) / (
        np.linalg.norm(f_oc[others], axis=-1) * np.linalg.norm(f_d[others], axis=-1)
    )
    np.testing.assert_allclose(cosine, 0.0, atol=1e-3)
    # and the whole loss has finite gradients for that batch
    with tf.GradientTape() as tape:
        loss = model.compute_loss((features, labels), training=True)
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads if g is not None)


def test_without_purification_f_o_is_f():
    features, _ = h.random_batch(min_length=2)
    short = h.build("dumn", {"purification": False}).short_term(features)
    for fb in FEEDBACK:
        np.testing.assert_array_equal(short.f_o[fb].numpy(), short.f[fb].numpy())


# ---- eq. 9-12, 18: memory addressing, read, write ----------------------------------------------
def test_content_addressing_and_read_hand_case():
    memory = tf.constant([[1.0, 0.0], [0.0, 2.0]])
    key = tf.constant([[3.0, 0.0], [1.0, 1.0]])
    # key 1: cosines (1, 0) -> softmax (e/(e+1), 1/(e+1)); key 2: cosines (1/sqrt2, 1/sqrt2) -> (1/2, 1/2)
    e = math.e
    w = np.array([[e / (e + 1), 1 / (e + 1)], [0.5, 0.5]])
    np.testing.assert_allclose(content_addressing(key, memory).numpy(), w, rtol=1e-6)
    # key strength beta = 2: softmax of (2, 0) -> (e^2/(e^2+1), 1/(e^2+1))
    np.testing.assert_allclose(
        content_addressing(key, memory, 2.0).numpy()[0], [e**2 / (e**2 + 1), 1 / (e**2 + 1)], rtol=1e-6
    )
    # eq. 11: r = sum_j w(j) M(j)
    r = np.array([[e / (e + 1), 2 / (e + 1)], [0.5, 1.0]])
    np.testing.assert_allclose(memory_read(tf.constant(w, tf.float32), memory).numpy(), r, rtol=1e-6)


def test_memory_write_hand_case():
    memory = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    weights = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    erase = tf.constant([[0.5, 1.0], [1.0, 1.0]])
    add = tf.constant([[0.2, -0.4], [1.0, 1.0]])
    writes = tf.constant([True, False])  # the second user does not write
    # E = 1/B * w_1 (x) erase_1 = [[0.25, 0.5], [0, 0]], A = 1/B * w_1 (x) add_1 = [[0.1, -0.2], [0, 0]]
    # M' = (1 - E) * M + A = [[0.75 + 0.1, 0.5 * 0 - 0.2], [0, 1]]
    expected = np.array([[0.85, -0.2], [0.0, 1.0]])
    np.testing.assert_allclose(memory_write(memory, weights, erase, add, writes).numpy(), expected, atol=1e-6)
    # both users write: E = [[0.25, 0.5], [0.5, 0.5]], A = [[0.1, -0.2], [0.5, 0.5]]
    both = memory_write(memory, weights, erase, add, tf.constant([True, True])).numpy()
    np.testing.assert_allclose(both, [[0.85, -0.2], [0.5, 1.0]], atol=1e-6)


# ---- eq. 17, 19: batch-hard triplet loss with cosine distance ----------------------------------
def test_triplet_loss_hand_case():
    s = math.sqrt(0.5)
    anchors = tf.constant([[1.0, 0.0], [0.0, -3.0], [5.0, 5.0]])
    anchor_mask = tf.constant([True, True, False])  # the third user is no anchor
    positives = tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    positive_mask = tf.constant([True, True, True, False])  # pad: would be the farthest from anchor 1
    negatives = tf.constant([[1.0, 1.0], [0.0, -1.0], [1.0, 0.0]])
    negative_mask = tf.constant([True, True, False])  # pad: would be the closest to anchor 1
    # anchor 1 (1,0): positive cosines (1, 0, s): hardest (0,1), d+ = 1;
    #                 negative cosines (s, 0): hardest (1,1), d- = 1 - s;  hinge = 1 - (1 - s) + 0.5
    # anchor 2 (0,-1): positive cosines (0, -1, -s): hardest (0,1), d+ = 2;
    #                 negative cosines (-s, 1): hardest (0,-1), d- = 0;    hinge = 2 - 0 + 0.5
    expected = ((1 - (1 - s) + 0.5) + (2 - 0 + 0.5)) / 2  # = 1.853553
    got = triplet_loss(anchors, anchor_mask, positives, positive_mask, negatives, negative_mask, margin=0.5)
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    assert got.dtype == tf.float32


def test_triplet_loss_hinge_and_empty_cases():
    one = tf.constant([[1.0, 0.0]])
    yes = tf.constant([True])
    # d+ = 0, d- = 1: 0 - 1 + 0.5 < 0 -> 0; with margin 1.5 -> 0.5
    args = (one, yes, tf.constant([[2.0, 0.0]]), yes, tf.constant([[0.0, 1.0]]), yes)
    assert float(triplet_loss(*args, margin=0.5)) == 0.0
    np.testing.assert_allclose(float(triplet_loss(*args, margin=1.5)), 0.5, rtol=1e-6)
    # no real negative (all pads), or no real anchor: no term (0), not NaN
    no = tf.constant([False])
    assert float(triplet_loss(one, yes, one, yes, one, no, margin=0.5)) == 0.0
    assert float(triplet_loss(one, no, one, yes, one, yes, margin=0.5)) == 0.0


def test_mining_over_distinct_items_equals_mining_over_every_position():
    """Repeated items (the same ids at many positions) are mined once: same loss, same gradient."""
    rng = np.random.default_rng(0)
    table = tf.Variable(rng.normal(size=(6, 3)).astype(np.float32))  # item id -> vector (pad row 0 unused)
    ids = tf.constant(rng.integers(1, 6, size=(4, 7, 1)), tf.int64)  # 4 users x 7 positions, 5 distinct items
    mask = tf.constant(rng.random((4, 7)) < 0.7)
    mask = tf.tensor_scatter_nd_update(mask, [[2, i] for i in range(7)], [False] * 7)  # a user without items
    anchors = tf.constant(rng.normal(size=(4, 3)).astype(np.float32))
    anchor_mask = tf.constant([True, True, False, True])

    def losses(distinct):
        with tf.GradientTape() as tape:
            vectors = tf.gather(table, ids[..., 0])  # [4, 7, 3]
            if distinct:
                pos, pos_mask = distinct_items(vectors, ids, mask)
                neg, neg_mask = distinct_items(vectors[::-1], ids[::-1], mask[::-1])
            else:
                pos, pos_mask = tf.reshape(vectors, [-1, 3]), tf.reshape(mask, [-1])
                neg, neg_mask = tf.reshape(vectors[::-1], [-1, 3]), tf.reshape(mask[::-1], [-1])
            loss = triplet_loss(anchors, anchor_mask, pos, pos_mask, neg, neg_mask, margin=0.5)
        return float(loss), tf.convert_to_tensor(tape.gradient(loss, table)).numpy()

    vectors, vector_mask = distinct_items(tf.gather(table, ids[..., 0]), ids, mask)
    real_ids = set(ids.numpy()[mask.numpy()][:, 0].tolist())
    assert int(tf.reduce_sum(tf.cast(vector_mask, tf.int32))) == len(real_ids) == vectors.shape[0] - 1
    assert not bool(vector_mask[-1]), "the last row is the pad"
    (all_loss, all_grad), (distinct_loss, distinct_grad) = losses(False), losses(True)
    assert all_loss > 0
    np.testing.assert_allclose(distinct_loss, all_loss, rtol=1e-6)
    np.testing.assert_allclose(distinct_grad, all_grad, rtol=1e-5, atol=1e-6)
    empty, empty_mask = distinct_items(tf.zeros([2, 3, 3]), tf.zeros([2, 3, 1], tf.int64), tf.zeros([2, 3], tf.bool))
    assert empty.shape == (1, 3) and not bool(tf.reduce_any(empty_mask))


# ---- the memory: model state, written only in training -----------------------------------------
def test_memory_changes_in_a_fit_step_and_not_in_evaluate_or_predict():
    features, labels = h.random_batch()
    model = h.build("dumn")
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-3))
    model(features, training=False)
    start = memories(model)
    assert all(not v.trainable for v in (model.memories[fb].M for fb in FEEDBACK))
    data = tf.data.Dataset.from_tensors((features, labels))
    model.evaluate(data, verbose=0)
    model.predict(features, verbose=0)
    model.compute_loss((features, labels), training=False)
    for fb, value in memories(model).items():
        np.testing.assert_array_equal(value, start[fb], err_msg=f"memory_{fb} written outside training")
    model.fit(data, epochs=1, verbose=0)
    for fb, value in memories(model).items():
        assert np.abs(value - start[fb]).max() > 1e-4, f"memory_{fb} not written by fit"


def test_serving_graph_has_no_memory_write():
    features, _ = h.random_batch()
    model = h.build("dumn")
    model(features, training=False)

    def assign_ops(training):
        fn = tf.function(lambda f: model.forward(f, training=training).logit)
        graph = fn.get_concrete_function(features).graph
        return [op for op in graph.get_operations() if op.type.startswith("Assign")]

    assert not assign_ops(False)
    assert len(assign_ops(True)) == 4


def test_a_user_without_items_of_a_type_does_not_write_that_memory():
    features, labels = h.random_batch(min_length=1)
    features = emptied(features, "like")  # nobody in the batch has likes
    model = h.build("dumn")
    model(features, training=False)
    start = memories(model)
    output = model.forward(features, training=True)
    after = memories(model)
    np.testing.assert_array_equal(after["like"], start["like"])
    assert np.abs(after["click"] - start["click"]).max() > 0
    # no like anchors and no like positives: L_l and L_d (like items are its negatives) are 0
    assert float(output.aux_losses["triplet_like"]) == 0.0
    assert float(output.aux_losses["triplet_dislike"]) == 0.0
    assert float(output.aux_losses["triplet_click"]) > 0.0


def test_triplet_terms_are_the_same_in_evaluation_and_do_not_depend_on_padding():
    features, _ = h.random_batch()
    model = h.build("dumn")
    first = model.forward(features, training=False).aux_losses
    second = model.forward(h.scramble_padding(features), training=False).aux_losses
    assert set(first) == TRIPLET_TERMS
    for term in TRIPLET_TERMS:
        assert np.isfinite(float(first[term])) and float(first[term]) > 0
        np.testing.assert_allclose(float(first[term]), float(second[term]), rtol=1e-6)


# ---- gradients and logged terms -----------------------------------------------------------------
@pytest.mark.parametrize("feedback", FEEDBACK)
def test_triplet_term_trains_its_write_head_and_item_projection(feedback):
    features, labels = h.random_batch()
    grads = h.aux_loss_gradients(h.build("dumn"), features, labels, f"triplet_{feedback}")
    own = f"memory_{feedback}/"
    others = [f"memory_{fb}/" for fb in FEEDBACK if fb != feedback]
    h.assert_gradient_reaches(
        grads,
        [own + "write_key", own + "erase_head", own + "add_head", own + "controller", own + "item_projection",
         "table_item_id", f"purification_{feedback}/self_attention"],
        must_not_reach=[own + "read_key", "prediction_mlp", "pair_", *others],
    )


def test_ctr_loss_trains_the_read_head_but_not_the_write_head():
    features, labels = h.random_batch()
    model = h.build("dumn", {"triplet_loss": False})
    with tf.GradientTape() as tape:
        loss = model.compute_loss((features, labels), training=True)
    grads = tape.gradient(loss, model.trainable_variables)
    norms = {v.name: (0.0 if g is None else float(tf.norm(tf.convert_to_tensor(g)))) for v, g in zip(model.trainable_variables, grads)}
    h.assert_gradient_reaches(
        norms,
        ["memory_click/read_key", "memory_click/controller", "pair_click/g_prime", "prediction_mlp"],
        must_not_reach=["write_key", "erase_head", "add_head", "item_projection"],
    )


@pytest.mark.parametrize(
    "params, expected",
    [
        (None, {"ctr", "regularization"} | TRIPLET_TERMS),
        ({"triplet_loss": False}, {"ctr", "regularization"}),
        ({"memory": False}, {"ctr", "regularization"}),
    ],
)
def test_logged_loss_terms(params, expected):
    features, labels = h.random_batch()
    model = h.build("dumn", params)
    assert set(h.logged_loss_terms(model, features, labels)) == expected
    assert set(model.forward(features, training=False).aux_losses) == expected - {"ctr", "regularization"}


def test_loss_weights_follow_params():
    model = h.build("dumn", {"triplet_click_weight": 0.5, "triplet_dislike_weight": 2.0})
    assert model.loss_weights() == {
        "triplet_click": 0.5, "triplet_unclick": 1.0, "triplet_like": 1.0, "triplet_dislike": 2.0
    }
    assert not h.build("dumn", {"memory": False}).memories


def test_memory_off_means_no_memory_variables():
    features, _ = h.random_batch()
    model = h.build("dumn", {"memory": False})
    model(features, training=False)
    assert not [v for v in model.variables if "memory_" in v.name]
    assert model.loss_weights() == {}


# ---- MirroredStrategy: every replica stores the same, global-batch update ----------------------
_MIRRORED_CHECK = r"""
import os
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import tf_keras
from models.dumn import FEEDBACK
from tests import model_harness as h

features, labels = h.random_batch(batch=32)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = h.build("dumn")
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-2))
    model.forward(features, training=False)  # builds every layer, the triplet heads too (call() skips them)
reference = h.build("dumn")
reference.forward(features, training=False)
reference.set_weights(model.get_weights())
before = {fb: model.memories[fb].M.numpy().copy() for fb in FEEDBACK}
reference.forward(features, training=True)  # the global batch's write with the pre-step weights
model.fit(tf.data.Dataset.from_tensor_slices((features, labels)).batch(32), epochs=1, verbose=0)
for fb in FEEDBACK:
    variable = model.memories[fb].M
    replicas = [v.numpy() for v in variable.values]
    assert len(replicas) == 2, replicas
    np.testing.assert_array_equal(replicas[0], replicas[1])
    assert np.abs(replicas[0] - before[fb]).max() > 1e-4, fb
    np.testing.assert_allclose(replicas[0], reference.memories[fb].M.numpy(), rtol=1e-5, atol=1e-6)
print("MIRRORED_OK")
"""


def test_mirrored_strategy_replicas_store_the_global_batch_update():
    """Two logical CPUs need a fresh TF runtime, so the check runs in a subprocess."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", _MIRRORED_CHECK], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and "MIRRORED_OK" in done.stdout, done.stderr[-4000:]
