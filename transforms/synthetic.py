"""Seeded synthetic interaction logs whose click probability is known.

``generate`` writes three generic-format CSV files (read them with ``data_config(path)``):
``events.csv`` (user_id, item_id, timestamp, clicked, liked, disliked, click_prob),
``items.csv`` (item_id, category, brand, price_bucket) and ``users.csv`` (user_id, age_bucket,
region, activity), plus ``request.json``, a ``ctr-pipeline predict`` request for the most active
user (see ``example_request``). The same arguments always give byte-identical files.

The generative story, chosen so that a model reading behaviour sequences with their time gaps
can beat one that sees only the user and the target item:

* Items belong to one of 20 categories (skewed sizes) and one of 8 brands of that category; a
  brand sets a typical price level (``price_bucket`` p0..p4); each item has a latent popularity.
* Users have an age bucket, a region and an activity level (low / medium / high: about 0.4x, 1x
  and 1.6x ``events_per_user`` impressions). Their long-term category preferences depend on the
  age bucket plus a personal part and DRIFT linearly from a start to an end vector over the
  period; they also have brand tastes and a preferred price level that depends on the region.
* Timeline: each user's impressions fall into sessions (about 8 impressions each) that start on
  a random day of the ``days``-day period at an hour drawn from an evening-heavy daily profile;
  impressions in a session are 1 to about 60 seconds apart. A user's timestamps strictly
  increase (no same-second impressions, so no duplicate events).
* Exposure: with probability 0.35, when the user has recent clicks, the item comes from a
  category drawn in proportion to the user's short-term interest (a recommender following the
  session); otherwise from all items in proportion to popularity.
* Click: ``intent = sigmoid(b + long-term affinity(t) + short-term interest - dislike penalty +
  popularity + hour effect)`` where
  - long-term affinity = drifted category preference + brand taste - price mismatch;
  - short-term interest = log1p of the user's own earlier clicks in the item's category and
    brand, each weighted exp(-gap / 1 hour), so time gaps matter (computed only from earlier,
    observable events of that user);
  - dislike penalty = the user's earlier dislikes in the category, weighted exp(-gap / 3 days);
  - hour effect = 0.3 * cos(2 pi (hour - 21) / 24) (evening impressions click more).
  Misclicks: ``click_prob = intent + (1 - intent) * 0.04``; this noisy probability is what is
  written, and ``clicked ~ Bernoulli(click_prob)``.
* Like/dislike happen only on clicks: an intended click is liked with probability
  sigmoid(-1 + 1.5 * affinity) and disliked with sigmoid(-2.5 - 1.5 * affinity); a misclick is
  liked with probability 0.02 and disliked with 0.5.

With the defaults the click rate is about 0.4 and the oracle AUC (of ``click_prob`` against the
label) about 0.8; ``generate`` reports both.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Tuple

import numpy as np
import pandas as pd

from pipeline.auc import auc

START = 1704067200  # 2024-01-01 00:00 UTC
CATEGORIES = 20
BRANDS_PER_CATEGORY = 8
PRICE_LEVELS = 5
AGE_BUCKETS = ("18-24", "25-34", "35-44", "45-54", "55+")
REGIONS = ("north", "south", "east", "west", "center", "islands")
ACTIVITY = {"low": (0.3, 0.4), "medium": (0.4, 1.0), "high": (0.3, 1.6)}  # name: (share, events factor)
SESSION_LENGTH = 8  # mean impressions per session
FOLLOW_PROB = 0.35  # exposure follows the short-term interest
SHORT_DECAY_S = 3600.0
DISLIKE_DECAY_S = 3 * 86400.0
MISCLICK = 0.04
BIAS = -0.9
WEIGHTS = {"category": 1.2, "brand": 0.6, "dislike": 1.5, "popularity": 0.4, "hour": 0.3, "price": 0.3}
REQUEST_FILE = "request.json"
REQUEST_EVENTS = 30
REQUEST_CANDIDATES = 10


@dataclasses.dataclass(frozen=True)
class _Items:
    category: np.ndarray
    brand: np.ndarray  # global brand index, category * BRANDS_PER_CATEGORY + local brand
    price: np.ndarray
    popularity: np.ndarray  # latent, standard normal


@dataclasses.dataclass(frozen=True)
class _Users:
    age: np.ndarray
    region: np.ndarray
    activity: np.ndarray
    start_pref: np.ndarray  # [U, CATEGORIES] category preference at the start of the period
    end_pref: np.ndarray  # [U, CATEGORIES] ... at its end
    brand_taste: np.ndarray  # [U, brands]
    price_pref: np.ndarray  # [U] preferred price level


def _skewed(rng: np.random.Generator, size: int, n: int, power: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** power
    return rng.choice(n, size=size, p=weights / weights.sum())


def _make_items(rng: np.random.Generator, num_items: int) -> _Items:
    category = _skewed(rng, num_items, CATEGORIES, 0.7)
    brand = category * BRANDS_PER_CATEGORY + _skewed(rng, num_items, BRANDS_PER_CATEGORY, 0.5)
    brand_price = rng.integers(0, PRICE_LEVELS, CATEGORIES * BRANDS_PER_CATEGORY)
    price = np.clip(brand_price[brand] + rng.integers(-1, 2, num_items), 0, PRICE_LEVELS - 1)
    return _Items(category, brand, price, rng.standard_normal(num_items))


def _make_users(rng: np.random.Generator, num_users: int) -> _Users:
    age = rng.integers(0, len(AGE_BUCKETS), num_users)
    region = rng.integers(0, len(REGIONS), num_users)
    shares = [share for share, _ in ACTIVITY.values()]
    activity = rng.choice(len(ACTIVITY), size=num_users, p=shares)
    age_pref = rng.normal(0.0, 0.7, (len(AGE_BUCKETS), CATEGORIES))
    start_pref = age_pref[age] + rng.normal(0.0, 0.8, (num_users, CATEGORIES))
    end_pref = start_pref + rng.normal(0.0, 0.8, (num_users, CATEGORIES))
    brand_taste = rng.normal(0.0, 0.5, (num_users, CATEGORIES * BRANDS_PER_CATEGORY))
    region_price = rng.uniform(0, PRICE_LEVELS - 1, len(REGIONS))
    price_pref = np.clip(region_price[region] + rng.normal(0.0, 0.7, num_users), 0, PRICE_LEVELS - 1)
    return _Users(age, region, activity, start_pref, end_pref, brand_taste, price_pref)


def _session_hours(rng: np.random.Generator, size: int) -> np.ndarray:
    hours = np.arange(24)
    weights = 1.0 + 0.8 * np.cos(2 * np.pi * (hours - 21) / 24)
    return rng.choice(24, size=size, p=weights / weights.sum())


def _make_timeline(rng: np.random.Generator, users: _Users, events_per_user: int, days: int):
    """Per-user impression counts and timestamps, the flat ones sorted by (user, time)."""
    factors = np.array([factor for _, factor in ACTIVITY.values()])
    counts = np.maximum(2, rng.poisson(events_per_user * factors[users.activity]))
    sessions = np.maximum(1, np.round(counts / SESSION_LENGTH)).astype(np.int64)
    session_offset = np.concatenate([[0], np.cumsum(sessions)[:-1]])
    session_start = (
        START
        + rng.integers(0, days, sessions.sum()) * 86400
        + _session_hours(rng, sessions.sum()) * 3600
        + rng.integers(0, 3600, sessions.sum())
    )
    user = np.repeat(np.arange(len(counts)), counts)
    session = session_offset[user] + (rng.random(len(user)) * sessions[user]).astype(np.int64)
    gaps = 1 + np.floor(rng.exponential(15.0, len(user))).astype(np.int64)
    order = np.argsort(session, kind="stable")
    ends = np.cumsum(gaps[order])
    first = np.searchsorted(session[order], session[order])  # position of each session's first event
    offset = np.empty_like(gaps)
    offset[order] = ends - ends[first] + gaps[order][first] - gaps[order]
    timestamp = session_start[session] + offset
    order = np.lexsort((timestamp, user))
    return counts, _strictly_increasing(user, timestamp[order])


def _strictly_increasing(user: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Moves later of equal (or colliding) timestamps of a user forward so they strictly increase."""
    rank = np.arange(len(user)) - np.searchsorted(user, user)
    span = int(timestamp.max() - START) + len(user) + 1
    shifted = timestamp - START - rank + user * span  # non-decreasing within a user
    return np.maximum.accumulate(shifted) - user * span + rank + START


class _DecayedCounts:
    """Per (user, key) sums of events weighted exp(-age / decay), decayed lazily."""

    def __init__(self, num_users: int, num_keys: int, decay: float):
        self.value = np.zeros((num_users, num_keys))
        self.time = np.zeros((num_users, num_keys))
        self.decay = decay

    def rows(self, users: np.ndarray, now: np.ndarray) -> np.ndarray:
        return self.value[users] * np.exp((self.time[users] - now[:, None]) / self.decay)

    def at(self, users: np.ndarray, keys: np.ndarray, now: np.ndarray) -> np.ndarray:
        return self.value[users, keys] * np.exp((self.time[users, keys] - now) / self.decay)

    def add(self, users: np.ndarray, keys: np.ndarray, now: np.ndarray, amount: np.ndarray) -> None:
        self.value[users, keys] = self.at(users, keys, now) + amount
        self.time[users, keys] = now


class _Exposure:
    """Draws impressed items: by popularity, or by popularity within a chosen category."""

    def __init__(self, items: _Items):
        weight = np.exp(0.8 * items.popularity)
        self.order = np.lexsort((np.arange(len(weight)), items.category))
        sorted_category = items.category[self.order]
        cumulative = np.cumsum(weight[self.order])
        category_end = np.array([cumulative[sorted_category <= c].max(initial=0.0) for c in range(CATEGORIES)])
        category_start = np.concatenate([[0.0], category_end[:-1]])
        self.category_start, self.category_end = category_start, category_end
        self.cumulative = cumulative

    def draw(self, rng: np.random.Generator, interest: np.ndarray) -> np.ndarray:
        """``interest``: [n, CATEGORIES]; rows summing to > 0 may follow it."""
        low = np.zeros(len(interest))
        high = np.full(len(interest), self.cumulative[-1])
        total = interest.sum(axis=1)
        follow = (total > 0.05) & (rng.random(len(interest)) < FOLLOW_PROB)
        if follow.any():
            share = np.cumsum(interest[follow], axis=1) / total[follow, None]
            category = (share < rng.random(follow.sum())[:, None]).sum(axis=1)
            category = np.minimum(category, CATEGORIES - 1)
            low[follow], high[follow] = self.category_start[category], self.category_end[category]
        point = low + rng.random(len(interest)) * (high - low)
        position = np.minimum(np.searchsorted(self.cumulative, point, side="right"), len(self.order) - 1)
        return self.order[position]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _simulate(rng, items: _Items, users: _Users, counts: np.ndarray, timestamp: np.ndarray, days: int):
    """Walks all users' impressions in step; returns flat item, clicked, liked, disliked, prob."""
    size = len(timestamp)
    item = np.zeros(size, dtype=np.int64)
    clicked, liked, disliked = (np.zeros(size, dtype=np.int8) for _ in range(3))
    prob = np.zeros(size)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    short_category = _DecayedCounts(len(counts), CATEGORIES, SHORT_DECAY_S)
    short_brand = _DecayedCounts(len(counts), CATEGORIES * BRANDS_PER_CATEGORY, SHORT_DECAY_S)
    dislikes = _DecayedCounts(len(counts), CATEGORIES, DISLIKE_DECAY_S)
    exposure = _Exposure(items)
    w = WEIGHTS
    for step in range(counts.max()):
        user = np.flatnonzero(counts > step)
        at = first[user] + step
        now = timestamp[at].astype(float)
        chosen = exposure.draw(rng, short_category.rows(user, now))
        category, brand = items.category[chosen], items.brand[chosen]
        drift = ((now - START) / (days * 86400.0)).clip(0, 1)
        preference = (1 - drift) * users.start_pref[user, category] + drift * users.end_pref[user, category]
        price_gap = np.abs(items.price[chosen] - users.price_pref[user])
        affinity = preference + users.brand_taste[user, brand] - w["price"] * price_gap
        hour = (timestamp[at] // 3600) % 24
        logit = (
            BIAS
            + affinity
            + w["category"] * np.log1p(short_category.at(user, category, now))
            + w["brand"] * np.log1p(short_brand.at(user, brand, now))
            - w["dislike"] * dislikes.at(user, category, now)
            + w["popularity"] * items.popularity[chosen]
            + w["hour"] * np.cos(2 * np.pi * (hour - 21) / 24)
        )
        intent = _sigmoid(logit)
        click_prob = intent + (1 - intent) * MISCLICK
        draw = rng.random(len(user))
        click, intended = draw < click_prob, draw < intent
        like_prob = np.where(intended, _sigmoid(-1.0 + 1.5 * affinity), 0.02)
        dislike_prob = np.where(intended, _sigmoid(-2.5 - 1.5 * affinity), 0.5)
        reaction = rng.random(len(user))
        like, dislike = click & (reaction < like_prob), click & (reaction > 1 - dislike_prob)
        short_category.add(user, category, now, click)
        short_brand.add(user, brand, now, click)
        dislikes.add(user, category, now, dislike)
        item[at], prob[at] = chosen, click_prob
        clicked[at], liked[at], disliked[at] = click, like, dislike
    return item, clicked, liked, disliked, prob


def _tables(items: _Items, users: _Users) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """The items and users tables, as written to items.csv and users.csv."""
    activity_names = np.array(list(ACTIVITY))
    items_table = pd.DataFrame(
        {
            "item_id": [f"i{n}" for n in range(len(items.category))],
            "category": [f"c{c}" for c in items.category],
            "brand": [f"b{b}" for b in items.brand],
            "price_bucket": [f"p{p}" for p in items.price],
        }
    )
    users_table = pd.DataFrame(
        {
            "user_id": [f"u{n}" for n in range(len(users.age))],
            "age_bucket": np.array(AGE_BUCKETS)[users.age],
            "region": np.array(REGIONS)[users.region],
            "activity": activity_names[users.activity],
        }
    )
    return items_table, users_table


def example_request(events: pd.DataFrame, items_table: pd.DataFrame, users_table: pd.DataFrame,
                    num_events: int = REQUEST_EVENTS, num_candidates: int = REQUEST_CANDIDATES) -> dict:
    """A ``ctr-pipeline predict`` request (``serving.client``'s JSON) for the user with the most
    events, one second after their last one: their profile, their last ``num_events`` events with
    feedback and item fields, and the ``num_candidates`` items with the most impressions in the
    logs that the user has not seen, as candidates."""
    user_id = events["user_id"].value_counts(sort=False).idxmax()
    mine = events[events["user_id"] == user_id]
    item_fields = items_table.set_index("item_id")
    recent = mine.tail(num_events).join(item_fields, on="item_id")
    unseen = events.loc[~events["item_id"].isin(mine["item_id"]), "item_id"].value_counts()
    candidates = items_table[items_table["item_id"].isin(unseen.index[:num_candidates])]
    profile = users_table[users_table["user_id"] == user_id].iloc[0]
    event_columns = ["item_id", "timestamp", "clicked", "liked", "disliked", *item_fields.columns]
    return {
        "user": {k: str(v) for k, v in profile.items()},
        "timestamp": int(mine["timestamp"].max()) + 1,
        "events": [{k: (int(v) if k in ("timestamp", "clicked", "liked", "disliked") else str(v)) for k, v in row.items()}
                   for row in recent[event_columns].to_dict("records")],
        "candidates": candidates.astype(str).to_dict("records"),
    }


def generate(
    output_dir: str,
    num_users: int = 2000,
    num_items: int = 2000,
    events_per_user: int = 100,
    seed: int = 0,
    days: int = 60,
) -> Dict[str, float]:
    """Writes events.csv, items.csv, users.csv and request.json into ``output_dir``; returns a summary."""
    if min(num_users, num_items, events_per_user, days) < 1:
        raise ValueError("num_users, num_items, events_per_user and days must all be >= 1")
    os.makedirs(output_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    items, users = _make_items(rng, num_items), _make_users(rng, num_users)
    counts, timestamp = _make_timeline(rng, users, events_per_user, days)
    item, clicked, liked, disliked, prob = _simulate(rng, items, users, counts, timestamp, days)
    prob = np.round(prob, 6)
    user = np.repeat(np.arange(num_users), counts)
    events = pd.DataFrame(
        {
            "user_id": np.char.add("u", user.astype(str)),
            "item_id": np.char.add("i", item.astype(str)),
            "timestamp": timestamp,
            "clicked": clicked,
            "liked": liked,
            "disliked": disliked,
            "click_prob": prob,
        }
    ).iloc[np.lexsort((user, timestamp))]
    events.to_csv(os.path.join(output_dir, "events.csv"), index=False, float_format="%.6f")
    items_table, users_table = _tables(items, users)
    items_table.to_csv(os.path.join(output_dir, "items.csv"), index=False)
    users_table.to_csv(os.path.join(output_dir, "users.csv"), index=False)
    with open(os.path.join(output_dir, REQUEST_FILE), "w", encoding="utf-8") as handle:
        json.dump(example_request(events, items_table, users_table), handle, indent=1)
    return {
        "events": int(len(events)),
        "users": num_users,
        "items": num_items,
        "click_rate": float(clicked.mean()),
        "mean_click_prob": float(prob.mean()),
        "like_rate": float(liked.mean()),
        "dislike_rate": float(disliked.mean()),
        "oracle_auc": auc(clicked, prob),
    }


def data_config(path: str) -> dict:
    """The ``data:`` config section that reads the files ``generate`` wrote into ``path``."""
    return {
        "format": "generic",
        "path": path,
        "events": "events.csv",
        "items": "items.csv",
        "users": "users.csv",
        "file_format": "csv",
        "timestamp_format": "seconds",
        "columns": {
            "user_id": "user_id",
            "item_id": "item_id",
            "timestamp": "timestamp",
            "clicked": "clicked",
            "liked": "liked",
            "disliked": "disliked",
            "click_prob": "click_prob",
        },
        "item_attributes": ["category", "brand", "price_bucket"],
        "user_attributes": ["age_bucket", "region", "activity"],
    }
