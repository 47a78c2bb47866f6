"""preprocessing_fn through tf.Transform: train-only vocabularies, shared indices, padding, gaps."""
import dataclasses

import numpy as np
import pytest
import tensorflow_transform as tft

from tests import tft_fixture
from tests.model_harness import SPEC

pytestmark = pytest.mark.slow  # a tf.Transform analysis (Beam)


def _example(user, item, ts, click_items=(), click_times=(), category="category0"):
    ex = {"user_id": user, "gender": "gender0", "age": "age0", "item_id": item, "category": category, "brand": "brand0",
          "timestamp": ts, "clicked": 1, "click_prob": 0.5}
    for kind in SPEC.feedback_types:
        items, times = (list(click_items), list(click_times)) if kind == "click" else ([], [])
        ex[SPEC.history(kind, "item_id")] = items
        ex[SPEC.history(kind, "category")] = ["category0"] * len(items)
        ex[SPEC.history(kind, "brand")] = ["brand0"] * len(items)
        ex[SPEC.history_timestamp(kind)] = times
    return ex


@pytest.fixture(scope="module")
def analyzed():
    return tft_fixture.analyzed(SPEC, seed=0)  # the graph the export round trips use (one analysis per session)


def test_vocabularies_come_from_train_only_and_unseen_values_are_oov(analyzed):
    tft_dir, train = analyzed
    output = tft.TFTransformOutput(tft_dir)
    vocab = [v.decode() for v in output.vocabulary_by_name(SPEC.vocabulary_name("item_id"))]
    seen = {e["item_id"] for e in train} | {i for e in train for k in SPEC.feedback_types for i in e[SPEC.history(k, "item_id")]}
    assert set(vocab) == seen
    out = tft_fixture.transform(tft_dir, [_example("new-user", "never-seen-item", 1_700_000_000)], SPEC)
    assert out["item_id"][0] == len(vocab) + 1  # the OOV bucket follows the vocabulary; 0 stays pad
    assert out["user_id"][0] == output.vocabulary_size_by_name(SPEC.vocabulary_name("user_id")) + 1


def test_target_and_history_share_indices_and_sequences_are_left_padded(analyzed):
    tft_dir, train = analyzed
    item_a, item_b = train[0]["item_id"], train[1]["item_id"]
    t = 1_700_000_000
    out = tft_fixture.transform(tft_dir, [
        _example("u0", item_a, t, click_items=[item_b, item_a], click_times=[t - 7200, t - 60]),
        _example("u0", item_b, t, click_items=[item_a], click_times=[t - 60]),
    ], SPEC)
    row = out["hist_click_item_id"][0]
    assert row.shape == (SPEC.max_length,)
    assert list(row[:-2]) == [0] * (SPEC.max_length - 2)
    assert row[-1] == out["item_id"][0] and row[-2] == out["item_id"][1]
    assert out["hist_click_item_id"][1][-1] == out["item_id"][0]
    gaps = out["hist_click_gap"][0]
    assert list(gaps[:-2]) == [0] * (SPEC.max_length - 2) and 1 <= gaps[-1] <= gaps[-2] <= SPEC.gap_buckets
    assert not out["hist_unclick_item_id"].any() and not out["hist_unclick_gap"].any()


def test_long_histories_keep_the_most_recent_items(analyzed):
    tft_dir, train = analyzed
    items = [e["item_id"] for e in train[: SPEC.max_length + 3]]
    t = 1_700_000_000
    out = tft_fixture.transform(tft_dir, [_example("u0", items[0], t, items, [t - 1000 + i for i in range(len(items))])], SPEC)
    expected = tft_fixture.transform(tft_dir, [_example("u0", i, t) for i in items[-SPEC.max_length:]], SPEC)["item_id"]
    np.testing.assert_array_equal(out["hist_click_item_id"][0], expected)


def test_hour_and_weekday_are_utc(analyzed):
    tft_dir, train = analyzed
    monday_13h = 86400 * 4 + 3600 * 13  # 1970-01-05 13:00 UTC was a Monday
    out = tft_fixture.transform(tft_dir, [_example("u0", train[0]["item_id"], ts) for ts in (0, monday_13h)], SPEC)
    assert list(out["hour"]) == [0, 13]
    assert list(out["weekday"]) == [3, 0]  # Monday = 0


def test_log_gap_buckets_have_equal_widths_up_to_the_largest_train_gap():
    spec = dataclasses.replace(SPEC, gap_bucketing="log")
    tft_dir, train = tft_fixture.analyzed(spec, seed=0)
    log_gaps = [np.log1p(max(e["timestamp"] - t, 0)) for e in train for k in spec.feedback_types
                for t in e[spec.history_timestamp(k)]]
    boundaries = np.arange(1, spec.gap_buckets) / spec.gap_buckets * max(np.float32(max(log_gaps)), 1.0)
    t = 1_700_000_000
    gaps = [86_400, 3_600, 600, 30]  # oldest first: a day, an hour, ten minutes, half a minute
    out = tft_fixture.transform(tft_dir, [_example("u0", train[0]["item_id"], t, click_items=[train[0]["item_id"]] * 4,
                                                   click_times=[t - g for g in gaps])], spec)
    expected = [int((boundaries <= np.float32(np.log1p(g))).sum()) + 1 for g in gaps]
    assert list(out["hist_click_gap"][0][-4:]) == expected
    assert expected == sorted(expected, reverse=True) and len(set(expected)) == 4  # seconds and days stay apart


def test_slice_features_bucket_history_length_recent_activity_and_new_users(analyzed):
    """The Evaluator's slices (contract.slices) come out of the transform graph."""
    from contract import slices

    tft_dir, train = analyzed
    seen_user, item = train[0]["user_id"], train[0]["item_id"]
    t, day = 1_700_000_000, 86400
    out = tft_fixture.transform(tft_dir, [
        _example(seen_user, item, t),
        _example(seen_user, item, t, click_items=[item] * 3, click_times=[t - 8 * day, t - day, t - 60]),
        _example("never-seen-user", item, t, click_items=[item] * 6, click_times=[t - 60] * 6),
    ], SPEC)
    assert SPEC.max_length >= 6
    assert [slices.value_label(slices.HISTORY_LENGTH, v) for v in out[slices.HISTORY_LENGTH]] == ["0", "1-4", "5-19"]
    # the click 8 days before is outside the 7-day window
    assert [slices.value_label(slices.USER_ACTIVITY, v) for v in out[slices.USER_ACTIVITY]] == ["0", "1-9", "1-9"]
    assert list(out[slices.NEW_USER]) == [0, 0, 1]
