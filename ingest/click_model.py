"""The click model of ``ingest.synthetic``'s logs: what is simulated, and how.

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

The no-sequence oracle (``static_oracle``; ``ingest.synthetic`` says what it is for) re-walks
each user's timeline with ``samples`` independent histories on its own random streams and
weights each history's click probability of the logged item by how likely that history was to
expose the item (self-normalised importance sampling).
"""
from __future__ import annotations

import dataclasses

import numpy as np

START = 1704067200  # 2024-01-01 00:00 UTC
CATEGORIES = 20
BRANDS_PER_CATEGORY = 8
PRICE_LEVELS = 5
AGE_BUCKETS = ("18-24", "25-34", "35-44", "45-54", "55+")
REGIONS = ("north", "south", "east", "west", "center", "islands")
ACTIVITY = {"low": (0.3, 0.4), "medium": (0.4, 1.0), "high": (0.3, 1.6)}  # name: (share, events factor)
SESSION_LENGTH = 8  # mean impressions per session
MISCLICK = 0.04


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


@dataclasses.dataclass(frozen=True)
class Items:
    category: np.ndarray
    brand: np.ndarray  # global brand index, category * BRANDS_PER_CATEGORY + local brand
    price: np.ndarray
    popularity: np.ndarray  # latent, standard normal


@dataclasses.dataclass(frozen=True)
class Users:
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


def make_items(rng: np.random.Generator, num_items: int) -> Items:
    category = _skewed(rng, num_items, CATEGORIES, 0.7)
    brand = category * BRANDS_PER_CATEGORY + _skewed(rng, num_items, BRANDS_PER_CATEGORY, 0.5)
    brand_price = rng.integers(0, PRICE_LEVELS, CATEGORIES * BRANDS_PER_CATEGORY)
    price = np.clip(brand_price[brand] + rng.integers(-1, 2, num_items), 0, PRICE_LEVELS - 1)
    return Items(category, brand, price, rng.standard_normal(num_items))


def make_users(rng: np.random.Generator, num_users: int) -> Users:
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
    return Users(age, region, activity, start_pref, end_pref, brand_taste, price_pref)


def _session_hours(rng: np.random.Generator, size: int) -> np.ndarray:
    hours = np.arange(24)
    weights = 1.0 + 0.8 * np.cos(2 * np.pi * (hours - 21) / 24)
    return rng.choice(24, size=size, p=weights / weights.sum())


def make_timeline(rng: np.random.Generator, users: Users, events_per_user: int, days: int):
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

    def __init__(self, items: Items, follow_prob: float):
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


def _static_terms(items: Items, users: Users, m: Mechanisms, user, item, now, days):
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


def _intent(terms, history: _History, moment: _Moment, items: Items, m: Mechanisms, item):
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


def _walk(rng, items: Items, users: Users, counts: np.ndarray, timestamp: np.ndarray, days: int,
          m: Mechanisms, owners: np.ndarray, replicas: int = 1, probe_terms=None):
    """Walks the impressions of the users ``owners`` (sorted) in step, ``replicas`` independent
    histories each (history row ``r * len(owners) + i`` lives on owner i's timeline).

    Without ``probe_terms``: returns flat (over all impressions) item, clicked, liked, disliked,
    prob. With ``probe_terms`` (``_static_terms`` of the logged item of every impression, flat):
    returns, per impression, the click probability of that item under each replica's history,
    weighted by how likely that history was to expose it (``_Exposure.relative_likelihood``),
    summed over replicas, and the summed weights (for ``static_oracle``)."""
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


def simulate(rng, items: Items, users: Users, counts: np.ndarray, timestamp: np.ndarray, days: int,
              m: Mechanisms):
    """The logs: all users' impressions; flat item, clicked, liked, disliked, prob."""
    return _walk(rng, items, users, counts, timestamp, days, m, np.arange(len(counts)))


SHADOW_ROWS = 65536  # histories walked at once by ``static_oracle`` (1.6 kB each: bounds its memory)


def static_oracle(seed: int, items: Items, users: Users, counts, timestamp, days, m: Mechanisms,
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
