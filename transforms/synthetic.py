"""Seeded synthetic interaction logs whose click probability is known.

``generate`` writes three generic-format CSV files (read them with ``data_config(path)``):
``events.csv`` (user_id, item_id, timestamp, clicked, liked, disliked, click_prob,
click_prob_static), ``items.csv`` (item_id, category, brand, price_bucket) and ``users.csv``
(user_id, age_bucket, region, activity), plus ``request.json``, a ``ctr-pipeline predict`` request
for the most active user (see ``example_request``). The same arguments always give byte-identical
files.

The generative story, chosen so that a model reading behaviour sequences with their time gaps
can beat one that sees only the user and the target item (the weights and time scales are a
``Mechanisms``; the values in brackets are the defaults, ``DEFAULT_MECHANISMS``):

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
* Exposure: with probability ``follow_prob`` (0.35), when the user has recent clicks, the item
  comes from a category drawn in proportion to the user's short-term interest (a recommender
  following the session); otherwise from all items in proportion to popularity.
* Click: ``intent = sigmoid(bias (-0.9) + long_term (1.0) * long-term affinity(t) + short-term
  interest - dislike penalty + 0.4 * popularity + hour effect)`` where
  - long-term affinity = drifted category preference + brand taste - price mismatch;
  - short-term interest = ``category`` (1.2) * log1p of the user's own earlier clicks in the
    item's category and ``brand`` (0.6) * log1p of those in its brand, each click weighted
    exp(-gap / ``short_decay_s``, 1 hour), so time gaps matter (computed only from earlier,
    observable events of that user);
  - dislike penalty = ``dislike`` (1.5) * the user's earlier dislikes in the category, weighted
    exp(-gap / ``dislike_decay_s``, 3 days);
  - hour effect = 0.3 * cos(2 pi (hour - 21) / 24) (evening impressions click more).
  Misclicks: ``click_prob = intent + (1 - intent) * 0.04``; this noisy probability is what is
  written, and ``clicked ~ Bernoulli(click_prob)``.
* Like/dislike happen only on clicks: an intended click is liked with probability
  sigmoid(-1 + 1.5 * affinity) and disliked with sigmoid(-2.5 - 1.5 * affinity); a misclick is
  liked with probability 0.02 and disliked with 0.5.

Two oracles. ``click_prob`` is the true click probability (the ceiling of any model).
``click_prob_static`` is the no-sequence oracle: the expected click probability given everything
EXCEPT the user's feedback history (the user's latent tastes, the target item, the exact
timestamp and the user's impression timeline), i.e. ``E[click_prob | user, item, t]`` with the
history marginalised out. It is estimated by self-normalised importance sampling over
``static_samples`` independent re-simulations of each user's history on the same timeline (own
random streams, so the logs themselves do not change): each re-simulated history H_j gives the
click probability p_j of the logged item under H_j, weighted by how likely H_j was to expose that
item (the exposure follows the history, so being shown an item says something about the
history, which a model without sequences can learn too): ``sum_j w_j p_j / sum_j w_j``. It
conditions on more than any real non-sequence model can know (exact latent tastes and drift), so
its AUC is a generous floor: a sequence model above it must be reading the sequences. Its Monte
Carlo noise pulls its AUC slightly below the limit: on a 600-user known-answer instance the AUC
rose 0.0014 from 256 to 512 samples and 0.0021 from 512 to 1024 (at 1024 its calibration bands
matched the labels within sampling error); with the default mechanisms 64 samples are close to
the limit. The column is ignored by the pipeline (``data_config`` maps only ``click_prob``; the
readers pick their columns by name); ``oracles_on_test_split`` gives both AUCs on the rows the
pipeline's time split holds out for test.

Presets (``PRESETS``, ``ctr-pipeline generate-data --preset NAME``; explicit sizes override):

* ``demo``: the CLI's defaults, 400 users x 500 items x 50 events, the default mechanisms, 64
  samples: click rate about 0.42, oracle AUC about 0.81, no-sequence oracle about 0.79 (little
  for sequences to win).
* ``known-answer``: 5,000 users x 3,000 items x 80 events (about 400k events, the size of
  ml1m-seq), ``KNOWN_ANSWER_MECHANISMS``: short-term interest ``category`` 3.0 and ``brand`` 2.0,
  ``dislike`` 4.0, ``follow_prob`` 0.6, the long-term affinity damped to ``long_term`` 0.5, bias
  -1.8; 512 samples. The click rate is about 0.36; the oracle AUC about 0.85 and the no-sequence
  oracle about 0.11 below it (see ``generate``'s summary for the exact figures).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Tuple

import numpy as np
import pandas as pd

from contract.auc import auc

START = 1704067200  # 2024-01-01 00:00 UTC
CATEGORIES = 20
BRANDS_PER_CATEGORY = 8
PRICE_LEVELS = 5
AGE_BUCKETS = ("18-24", "25-34", "35-44", "45-54", "55+")
REGIONS = ("north", "south", "east", "west", "center", "islands")
ACTIVITY = {"low": (0.3, 0.4), "medium": (0.4, 1.0), "high": (0.3, 1.6)}  # name: (share, events factor)
SESSION_LENGTH = 8  # mean impressions per session
MISCLICK = 0.04
REQUEST_FILE = "request.json"
REQUEST_EVENTS = 30
REQUEST_CANDIDATES = 10
STATIC_COLUMN = "click_prob_static"  # the no-sequence oracle (see the module docstring)
STATIC_SAMPLES = 64  # re-simulated histories per user behind it (``generate``'s default)


@dataclasses.dataclass(frozen=True)
class Mechanisms:
    """Weights and time scales of the click model (the module docstring's story)."""

    bias: float = -0.9
    long_term: float = 1.0  # scale of the long-term affinity in the click logit
    category: float = 1.2  # short-term interest: recent clicks in the target's category ...
    brand: float = 0.6  # ... and in its brand
    dislike: float = 1.5  # recent dislikes in the target's category
    popularity: float = 0.4
    hour: float = 0.3
    price: float = 0.3  # price mismatch, inside the long-term affinity
    short_decay_s: float = 3600.0  # time scale of the short-term interest
    dislike_decay_s: float = 3 * 86400.0  # ... and of the dislike penalty
    follow_prob: float = 0.35  # exposure follows the short-term interest


DEFAULT_MECHANISMS = Mechanisms()
# the known-answer benchmark: the history-dependent terms strong and the long-term part damped, so
# that a model reading the sequences (with their time gaps) has a wide margin over one that does not
KNOWN_ANSWER_MECHANISMS = Mechanisms(
    bias=-1.8, long_term=0.5, category=3.0, brand=2.0, dislike=4.0, follow_prob=0.6,
)
# ``generate``'s keyword arguments per preset (``ctr-pipeline generate-data --preset NAME``)
PRESETS: Dict[str, dict] = {
    "demo": {"num_users": 400, "num_items": 500, "events_per_user": 50, "days": 60, "seed": 0,
             "mechanisms": DEFAULT_MECHANISMS, "static_samples": STATIC_SAMPLES},
    "known-answer": {"num_users": 5000, "num_items": 3000, "events_per_user": 80, "days": 60, "seed": 0,
                     "mechanisms": KNOWN_ANSWER_MECHANISMS, "static_samples": 512},
}


def preset_arguments(name: str = "demo", **overrides) -> dict:
    """``generate``'s keyword arguments of a preset, with the ``overrides`` that are not None."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: one of {', '.join(PRESETS)}")
    return {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}


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


class _History:
    """Simulated feedback histories, one per row (a user, or one replica of a user): per category
    and per brand the row's clicks weighted exp(-age / short_decay_s), per category its dislikes
    weighted exp(-age / dislike_decay_s).

    Stored relative to a per-row reference time (an event at time t adds exp((t - ref) / decay)),
    so one factor exp((ref - now) / decay) per row and time scale decays a whole row; a row is
    rebased to the present when its reference falls ``REBASE`` short time scales behind."""

    REBASE = 50.0

    def __init__(self, num_rows: int, m: Mechanisms):
        self.short_decay, self.dislike_decay = m.short_decay_s, m.dislike_decay_s
        self.category = np.zeros((num_rows, CATEGORIES))
        self.category_total = np.zeros(num_rows)
        self.brand = np.zeros((num_rows, CATEGORIES * BRANDS_PER_CATEGORY))
        self.dislikes = np.zeros((num_rows, CATEGORIES))
        self.reference = np.zeros(num_rows)

    def at(self, rows: np.ndarray, now: np.ndarray) -> "_Moment":
        age = self.reference[rows] - now
        return _Moment(rows, now, np.exp(age / self.short_decay), np.exp(age / self.dislike_decay))

    def interest_total(self, moment: "_Moment") -> np.ndarray:
        return self.category_total[moment.rows] * moment.short

    def counts(self, moment: "_Moment", category: np.ndarray, brand: np.ndarray):
        """Decayed clicks in ``category``, in ``brand`` and dislikes in ``category``, per row."""
        rows = moment.rows
        return (self.category[rows, category] * moment.short, self.brand[rows, brand] * moment.short,
                self.dislikes[rows, category] * moment.long)

    def add(self, moment: "_Moment", category: np.ndarray, brand: np.ndarray, click: np.ndarray,
            dislike: np.ndarray) -> None:
        """Records each row's feedback at ``moment`` (its time not before the row's earlier events)."""
        some = click | dislike
        rows, now = moment.rows[some], moment.now[some]
        stale = now - self.reference[rows] > self.REBASE * self.short_decay
        if stale.any():
            moved = self.at(rows[stale], now[stale])
            for table, factor in ((self.category, moved.short), (self.brand, moved.short), (self.dislikes, moved.long)):
                table[moved.rows] *= factor[:, None]
            self.category_total[moved.rows] *= moved.short
            self.reference[moved.rows] = moved.now
        fresh = self.at(rows, now)
        category, brand = category[some], brand[some]
        clicks = click[some] / fresh.short
        self.category[rows, category] += clicks
        self.category_total[rows] += clicks
        self.brand[rows, brand] += clicks
        self.dislikes[rows, category] += dislike[some] / fresh.long


@dataclasses.dataclass(frozen=True)
class _Moment:
    """Rows of a ``_History`` at one time each, with their decay factors."""

    rows: np.ndarray
    now: np.ndarray
    short: np.ndarray
    long: np.ndarray


class _Exposure:
    """Draws impressed items: by popularity, or by popularity within a chosen category."""

    def __init__(self, items: _Items, follow_prob: float):
        weight = np.exp(0.8 * items.popularity)
        self.order = np.lexsort((np.arange(len(weight)), items.category))
        sorted_category = items.category[self.order]
        cumulative = np.cumsum(weight[self.order])
        category_end = np.array([cumulative[sorted_category <= c].max(initial=0.0) for c in range(CATEGORIES)])
        category_start = np.concatenate([[0.0], category_end[:-1]])
        self.category_start, self.category_end = category_start, category_end
        self.cumulative = cumulative
        self.follow_prob = follow_prob

    def draw(self, rng: np.random.Generator, history: _History, moment: _Moment) -> np.ndarray:
        """One item per row; a row with recent clicks may follow them."""
        size = len(moment.rows)
        low = np.zeros(size)
        high = np.full(size, self.cumulative[-1])
        follow = (history.interest_total(moment) > 0.05) & (rng.random(size) < self.follow_prob)
        if follow.any():
            cumulative = np.cumsum(history.category[moment.rows[follow]], axis=1)
            share = cumulative / cumulative[:, -1:]
            category = (share < rng.random(follow.sum())[:, None]).sum(axis=1)
            category = np.minimum(category, CATEGORIES - 1)
            low[follow], high[follow] = self.category_start[category], self.category_end[category]
        point = low + rng.random(size) * (high - low)
        position = np.minimum(np.searchsorted(self.cumulative, point, side="right"), len(self.order) - 1)
        return self.order[position]

    def relative_likelihood(self, history: _History, moment: _Moment, category: np.ndarray) -> np.ndarray:
        """P(draw = an item of ``category`` | history) / P(the same draw by popularity alone): the
        item's own popularity share cancels, so this is per category."""
        follow = np.where(history.interest_total(moment) > 0.05, self.follow_prob, 0.0)
        rows = moment.rows
        share = history.category[rows, category] / np.maximum(history.category_total[rows], 1e-300)
        mass = self.category_end[category] - self.category_start[category]
        return (1 - follow) + follow * share * self.cumulative[-1] / mass


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _static_terms(items: _Items, users: _Users, m: Mechanisms, user, item, now, days):
    """The history-free terms of the click logit (bias + long-term affinity, popularity, hour) and
    the long-term affinity; kept apart so the logit sums its terms in the one fixed order."""
    category, brand = items.category[item], items.brand[item]
    drift = ((now - START) / (days * 86400.0)).clip(0, 1)
    preference = (1 - drift) * users.start_pref[user, category] + drift * users.end_pref[user, category]
    price_gap = np.abs(items.price[item] - users.price_pref[user])
    affinity = preference + users.brand_taste[user, brand] - m.price * price_gap
    hour = (now.astype(np.int64) // 3600) % 24
    terms = (m.bias + m.long_term * affinity, m.popularity * items.popularity[item],
             m.hour * np.cos(2 * np.pi * (hour - 21) / 24))
    return terms, affinity


def _intent(terms, history: _History, moment: _Moment, items: _Items, m: Mechanisms, item):
    category_clicks, brand_clicks, dislikes = history.counts(moment, items.category[item], items.brand[item])
    base, popularity, hour = terms
    return _sigmoid(
        base
        + m.category * np.log1p(category_clicks)
        + m.brand * np.log1p(brand_clicks)
        - m.dislike * dislikes
        + popularity
        + hour
    )


def _walk(rng, items: _Items, users: _Users, counts: np.ndarray, timestamp: np.ndarray, days: int,
          m: Mechanisms, owners: np.ndarray, replicas: int = 1, probe_terms=None):
    """Walks the impressions of the users ``owners`` (sorted) in step, ``replicas`` independent
    histories each (history row ``r * len(owners) + i`` lives on owner i's timeline).

    Without ``probe_terms``: returns flat (over all impressions) item, clicked, liked, disliked,
    prob. With ``probe_terms`` (``_static_terms`` of the logged item of every impression, flat):
    returns, per impression, the click probability of that item under each replica's history,
    weighted by how likely that history was to expose it (``_Exposure.relative_likelihood``),
    summed over replicas, and the summed weights (for ``_static_oracle``)."""
    size = len(timestamp)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])[owners]
    own_counts = counts[owners]
    history = _History(len(owners) * replicas, m)
    exposure = _Exposure(items, m.follow_prob)
    if probe_terms is None:
        item = np.zeros(size, dtype=np.int64)
        clicked, liked, disliked = (np.zeros(size, dtype=np.int8) for _ in range(3))
        prob = np.zeros(size)
    else:
        probe_item, probe_base, probe_popularity, probe_hour = probe_terms
        weighted, weights = np.zeros(size), np.zeros(size)
    for step in range(own_counts.max(initial=0)):
        active = np.flatnonzero(own_counts > step)
        at = first[active] + step
        if replicas == 1:
            row, user, at_row = active, owners[active], at
        else:
            row = (np.arange(replicas)[:, None] * len(owners) + active).reshape(-1)
            user, at_row = np.tile(owners[active], replicas), np.tile(at, replicas)
        now = timestamp[at_row].astype(float)
        moment = history.at(row, now)
        chosen = exposure.draw(rng, history, moment)
        if probe_terms is not None:
            target = probe_item[at_row]
            terms = (probe_base[at_row], probe_popularity[at_row], probe_hour[at_row])
            intent = _intent(terms, history, moment, items, m, target)
            weight = exposure.relative_likelihood(history, moment, items.category[target])
            weighted[at] += (weight * (intent + (1 - intent) * MISCLICK)).reshape(replicas, -1).sum(axis=0)
            weights[at] += weight.reshape(replicas, -1).sum(axis=0)
        terms, affinity = _static_terms(items, users, m, user, chosen, now, days)
        intent = _intent(terms, history, moment, items, m, chosen)
        click_prob = intent + (1 - intent) * MISCLICK
        draw = rng.random(len(row))
        click, intended = draw < click_prob, draw < intent
        like_prob = np.where(intended, _sigmoid(-1.0 + 1.5 * affinity), 0.02)
        dislike_prob = np.where(intended, _sigmoid(-2.5 - 1.5 * affinity), 0.5)
        reaction = rng.random(len(row))
        like, dislike = click & (reaction < like_prob), click & (reaction > 1 - dislike_prob)
        history.add(moment, items.category[chosen], items.brand[chosen], click, dislike)
        if probe_terms is None:
            item[at], prob[at] = chosen, click_prob
            clicked[at], liked[at], disliked[at] = click, like, dislike
    if probe_terms is None:
        return item, clicked, liked, disliked, prob
    return weighted, weights


def _simulate(rng, items: _Items, users: _Users, counts: np.ndarray, timestamp: np.ndarray, days: int,
              m: Mechanisms):
    """The logs: all users' impressions; flat item, clicked, liked, disliked, prob."""
    return _walk(rng, items, users, counts, timestamp, days, m, np.arange(len(counts)))


SHADOW_ROWS = 65536  # histories walked at once by ``_static_oracle`` (1.6 kB each: bounds its memory)


def _static_oracle(seed: int, items: _Items, users: _Users, counts, timestamp, days, m: Mechanisms,
                   item: np.ndarray, samples: int) -> np.ndarray:
    """E[click_prob | user, item, timestamp] with the feedback history marginalised out, by
    self-normalised importance sampling over ``samples`` re-simulated histories per user (module
    docstring); users are walked in fixed blocks, ``samples`` histories each, one seeded stream
    per block (apart from the logs' own stream), so the result depends only on the arguments."""
    user = np.repeat(np.arange(len(counts)), counts)
    (base, popularity, hour), _ = _static_terms(items, users, m, user, item, timestamp.astype(float), days)
    probe_terms = (item, base, popularity, hour)
    weighted, weights = np.zeros(len(item)), np.zeros(len(item))
    block = max(1, SHADOW_ROWS // samples)
    for index, start in enumerate(range(0, len(counts), block)):
        owners = np.arange(start, min(len(counts), start + block))
        rng = np.random.default_rng([seed, 1, index])
        w_p, w = _walk(rng, items, users, counts, timestamp, days, m, owners, samples, probe_terms)
        weighted += w_p
        weights += w
    return weighted / weights


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
    mechanisms: Mechanisms = DEFAULT_MECHANISMS,
    static_samples: int = STATIC_SAMPLES,
) -> Dict[str, float]:
    """Writes events.csv, items.csv, users.csv and request.json into ``output_dir``; returns a
    summary: sizes, rates, ``oracle_auc`` (of ``click_prob``) and ``no_sequence_oracle_auc`` (of
    ``click_prob_static``, estimated from ``static_samples`` re-simulated histories per user)."""
    if min(num_users, num_items, events_per_user, days, static_samples) < 1:
        raise ValueError("num_users, num_items, events_per_user, days and static_samples must all be >= 1")
    os.makedirs(output_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    items, users = _make_items(rng, num_items), _make_users(rng, num_users)
    counts, timestamp = _make_timeline(rng, users, events_per_user, days)
    item, clicked, liked, disliked, prob = _simulate(rng, items, users, counts, timestamp, days, mechanisms)
    static = _static_oracle(seed, items, users, counts, timestamp, days, mechanisms, item, static_samples)
    prob, static = np.round(prob, 6), np.round(static, 6)
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
            STATIC_COLUMN: static,
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
        "no_sequence_oracle_auc": auc(clicked, static),
    }


def oracles_on_test_split(events: pd.DataFrame, train: float = 0.8, eval_: float = 0.1) -> Dict[str, float]:
    """Both oracle AUCs on the rows a time split puts into test (the pipeline's rule: rows sorted
    by (timestamp, user_id, item_id), test from rank floor((train + eval) * n)), from the events
    table as ``generate`` wrote it (``events.csv``)."""
    ordered = events.sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    test = ordered.iloc[int(np.floor((train + eval_) * len(ordered))):]
    result = {"test_rows": int(len(test)), "oracle_auc": auc(test["clicked"], test["click_prob"])}
    if STATIC_COLUMN in test:
        result["no_sequence_oracle_auc"] = auc(test["clicked"], test[STATIC_COLUMN])
    return result


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
