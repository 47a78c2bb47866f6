"""The synthetic log generator: determinism, calibration, difficulty and history dependence; the
known-answer preset and its two oracles (the true click probability, and the no-sequence oracle
``click_prob_static``)."""
import filecmp
import os

import numpy as np
import pandas as pd
import pytest

from contract.auc import auc

from contract.config import DataConfig
from ingest import click_model, sources, synthetic

FILES = ("events.csv", "items.csv", "users.csv", synthetic.REQUEST_FILE)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("synthetic"))
    summary = synthetic.generate(path, num_users=500, num_items=600, events_per_user=80, seed=3)
    events = pd.read_csv(os.path.join(path, "events.csv"), dtype={"user_id": str, "item_id": str})
    items = pd.read_csv(os.path.join(path, "items.csv"), dtype=str)
    events = events.merge(items, on="item_id", how="left").sort_values(["user_id", "timestamp"], ignore_index=True)
    return path, summary, events


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        synthetic.generate(str(tmp_path / name), num_users=40, num_items=50, events_per_user=15, seed=seed)
    for file in FILES:
        assert filecmp.cmp(tmp_path / "a" / file, tmp_path / "b" / file, shallow=False)
    assert not filecmp.cmp(tmp_path / "a" / "events.csv", tmp_path / "c" / "events.csv", shallow=False)


def test_summary_matches_the_files(dataset):
    _, summary, events = dataset
    assert summary["events"] == len(events)
    assert (summary["users"], summary["items"]) == (500, 600)
    assert summary["click_rate"] == pytest.approx(events.clicked.mean())
    assert summary["oracle_auc"] == pytest.approx(auc(events.clicked.to_numpy(), events.click_prob.to_numpy()))
    assert summary["no_sequence_oracle_auc"] == pytest.approx(auc(events.clicked, events[synthetic.STATIC_COLUMN]))


def test_files_read_back_through_the_sources_readers(dataset):
    path, summary, events = dataset
    data = DataConfig.model_validate(synthetic.data_config(path))
    rows = [row for file in sources.list_event_files(data) for row in sources.read_events(file, data)]
    assert all(isinstance(row, sources.Event) for row in rows) and len(rows) == summary["events"]
    assert sum(row.click_prob for row in rows) == pytest.approx(events.click_prob.sum())
    items, item_problems = sources.load_items(data)
    users, user_problems = sources.load_users(data)
    assert item_problems == user_problems == []
    assert {row.item_id for row in rows} <= set(items) and {row.user_id for row in rows} <= set(users)
    assert set(next(iter(items.values()))) == {"category", "brand", "price_bucket"}
    assert set(next(iter(users.values()))) == {"age_bucket", "region", "activity"}


def test_example_request_is_a_valid_predict_request_for_the_most_active_user(dataset):
    from contract.config import parse_config
    from serving.client import parse_user_request
    from contract.feature_spec import FeatureSpec

    path, _, events = dataset
    config = parse_config({"pipeline_name": "t", "data": synthetic.data_config(path)})
    with open(os.path.join(path, synthetic.REQUEST_FILE), encoding="utf-8") as handle:
        request = parse_user_request(handle.read(), FeatureSpec.from_config(config))
    user_id = request.user["user_id"]
    mine = events[events.user_id == user_id]
    assert len(mine) == events.user_id.value_counts().max()
    assert request.timestamp == mine.timestamp.max() + 1
    last = mine.tail(synthetic.REQUEST_EVENTS)
    assert [e["item_id"] for e in request.events] == last.item_id.tolist()
    assert [e["clicked"] for e in request.events] == last.clicked.tolist()
    assert [e["category"] for e in request.events] == last.category.tolist()
    candidates = [c["item_id"] for c in request.candidates]
    assert len(candidates) == synthetic.REQUEST_CANDIDATES == len(set(candidates))
    assert not set(candidates) & set(mine.item_id)


def test_labels_follow_click_prob(dataset):
    _, _, events = dataset
    prob, clicked = events.click_prob.to_numpy(), events.clicked.to_numpy()
    for low, high in [(0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0)]:
        band = (prob >= low) & (prob < high)
        standard_error = np.sqrt((prob[band] * (1 - prob[band])).sum()) / band.sum()
        assert abs(clicked[band].mean() - prob[band].mean()) < 4 * standard_error + 1e-9


def test_click_rate_and_oracle_auc_in_target_range(dataset):
    _, summary, _ = dataset
    assert 0.3 <= summary["click_rate"] <= 0.5
    assert 0.75 <= summary["oracle_auc"] <= 0.85


def test_misclick_floor(dataset):
    _, _, events = dataset
    assert events.click_prob.min() >= click_model.MISCLICK - 1e-6


def test_recent_click_in_same_category_raises_click_rate_and_gap_matters(dataset):
    _, _, events = dataset
    click_time = events.timestamp.where(events.clicked == 1)
    previous = click_time.groupby([events.user_id, events.category]).shift(1)
    previous = previous.groupby([events.user_id, events.category]).ffill()  # last earlier click there
    gap = events.timestamp - previous
    recent = events.clicked[gap <= 600].mean()
    old = events.clicked[gap > 86400].mean()
    never = events.clicked[gap.isna()].mean()
    assert recent > old + 0.1
    assert old > never


def test_feedback_and_timeline_are_consistent(dataset):
    _, _, events = dataset
    assert not ((events.liked | events.disliked) & (events.clicked == 0)).any()
    assert not (events.liked & events.disliked).any()
    assert 0 < events.liked.mean() and 0 < events.disliked.mean()
    assert (events.groupby("user_id").timestamp.diff().dropna() > 0).all()
    span_days = (events.timestamp.max() - events.timestamp.min()) / 86400
    assert 55 < span_days < 62
    assert events.groupby("user_id").timestamp.diff().median() < 60  # impressions seconds apart in sessions


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="must all be >= 1"):
        synthetic.generate(str(tmp_path), num_users=0)
    with pytest.raises(ValueError, match="must all be >= 1"):
        synthetic.generate(str(tmp_path), static_samples=0)
    with pytest.raises(ValueError, match="unknown preset"):
        synthetic.preset_arguments("huge")


# ---- the no-sequence oracle and the known-answer preset -------------------------------------------


def test_default_logs_have_little_sequence_headroom(dataset):
    """The default mechanisms (the demo's): the history adds only a few points of AUC."""
    _, summary, _ = dataset
    assert 0 < summary["oracle_auc"] - summary["no_sequence_oracle_auc"] < 0.05


def test_no_sequence_oracle_is_calibrated(dataset):
    """``click_prob_static`` is E[click | everything but the feedback history]: the labels follow it
    too (within a band's sampling error plus a small allowance for its Monte Carlo error)."""
    _, _, events = dataset
    static, clicked = events[synthetic.STATIC_COLUMN].to_numpy(), events.clicked.to_numpy()
    assert static.min() >= click_model.MISCLICK - 1e-6 and static.max() <= 1
    assert static.mean() == pytest.approx(clicked.mean(), abs=0.01)
    for low, high in [(0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0)]:
        band = (static >= low) & (static < high)
        standard_error = np.sqrt((static[band] * (1 - static[band])).sum()) / band.sum()
        assert abs(clicked[band].mean() - static[band].mean()) < 4 * standard_error + 0.01


def test_known_answer_preset_is_ml1m_sized_with_strong_sequence_mechanisms():
    arguments = synthetic.preset_arguments("known-answer")
    assert arguments["num_users"] >= 5000 and arguments["events_per_user"] >= 80
    assert arguments["static_samples"] >= 256
    strong, default = arguments["mechanisms"], click_model.DEFAULT_MECHANISMS
    assert strong.category > default.category and strong.brand > default.brand and strong.dislike > default.dislike
    assert synthetic.preset_arguments("known-answer", num_users=30, seed=None)["num_users"] == 30  # None: the preset's
    demo = synthetic.preset_arguments("demo")  # `ctr-pipeline generate-data`'s defaults, unchanged
    assert (demo["num_users"], demo["num_items"], demo["events_per_user"], demo["days"], demo["seed"]) == (400, 500, 50, 60, 0)
    assert demo["mechanisms"] == default


@pytest.fixture(scope="module")
def known_answer(tmp_path_factory):
    """A small instance of the known-answer logs."""
    path = str(tmp_path_factory.mktemp("known_answer"))
    arguments = synthetic.preset_arguments("known-answer", num_users=200, num_items=600, seed=4)
    arguments["static_samples"] = 128
    summary = synthetic.generate(path, **arguments)
    events = pd.read_csv(os.path.join(path, "events.csv"), dtype={"user_id": str, "item_id": str})
    return path, summary, events


def test_known_answer_full_oracle_far_above_the_no_sequence_oracle(known_answer):
    _, summary, events = known_answer
    full = auc(events.clicked, events.click_prob)
    static = auc(events.clicked, events[synthetic.STATIC_COLUMN])
    assert (full, static) == (pytest.approx(summary["oracle_auc"]), pytest.approx(summary["no_sequence_oracle_auc"]))
    assert 0.8 <= full <= 0.9
    assert full - static >= 0.08
    assert 0.3 <= summary["click_rate"] <= 0.45


def test_oracles_on_the_time_split_test_rows(known_answer):
    """The pipeline's time split: rows by (timestamp, user_id, item_id), the last 10% are test."""
    _, _, events = known_answer
    result = synthetic.oracles_on_test_split(events)
    ordered = events.sort_values(["timestamp", "user_id", "item_id"])
    test = ordered.iloc[int(0.9 * len(events)):]
    assert result["test_rows"] == len(test) == len(events) - int(0.9 * len(events))
    assert result["oracle_auc"] == pytest.approx(auc(test.clicked, test.click_prob))
    assert result["no_sequence_oracle_auc"] == pytest.approx(auc(test.clicked, test[synthetic.STATIC_COLUMN]))
    assert result["oracle_auc"] - result["no_sequence_oracle_auc"] >= 0.05
    assert "no_sequence_oracle_auc" not in synthetic.oracles_on_test_split(events.drop(columns=[synthetic.STATIC_COLUMN]))


def test_known_answer_same_seed_same_files_other_seed_other_files(tmp_path):
    arguments = synthetic.preset_arguments("known-answer", num_users=30, num_items=60, events_per_user=20)
    arguments["static_samples"] = 16
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        synthetic.generate(str(tmp_path / name), **{**arguments, "seed": seed})
    for file in FILES:
        assert filecmp.cmp(tmp_path / "a" / file, tmp_path / "b" / file, shallow=False)
    assert not filecmp.cmp(tmp_path / "a" / "events.csv", tmp_path / "c" / "events.csv", shallow=False)
    header = open(tmp_path / "a" / "events.csv", encoding="utf-8").readline().strip().split(",")
    assert header[-2:] == ["click_prob", synthetic.STATIC_COLUMN]


def test_recent_same_category_clicks_and_dislikes_drive_the_known_answer_clicks(known_answer):
    """The mechanisms are visible in the labels: a same-category click seconds to minutes before
    lifts the click rate far more than one a day before; a recent same-category dislike cuts it."""
    path, _, events = known_answer
    items = pd.read_csv(os.path.join(path, "items.csv"), dtype=str)
    events = events.merge(items, on="item_id", how="left").sort_values(["user_id", "timestamp"], ignore_index=True)
    by = [events.user_id, events.category]

    def since_last(flag):
        last = events.timestamp.where(flag == 1).groupby(by).shift(1).groupby(by).ffill()
        return events.timestamp - last

    click_gap, dislike_gap = since_last(events.clicked), since_last(events.disliked)
    recent, old = events.clicked[click_gap <= 600].mean(), events.clicked[click_gap > 86400].mean()
    assert recent > old + 0.25
    assert events.clicked[dislike_gap <= 3600].mean() < events.clicked[dislike_gap.isna()].mean() - 0.1
