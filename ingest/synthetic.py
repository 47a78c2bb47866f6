"""Seeded synthetic interaction logs whose click probability is known.

``generate`` writes three generic-format CSV files (read them with ``data_config(path)``):
``events.csv`` (user_id, item_id, timestamp, clicked, liked, disliked, click_prob,
click_prob_static), ``items.csv`` (item_id, category, brand, price_bucket) and ``users.csv``
(user_id, age_bucket, region, activity), plus ``request.json``, a ``ctr-pipeline predict`` request
for the most active user (see ``example_request``). The same arguments always give byte-identical
files.

The click model behind them (the generative story, its weights ``Mechanisms`` and the
simulation) is ``ingest.click_model``.

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

import json
import os
from typing import Dict, Tuple

import numpy as np
import pandas as pd

from contract.auc import auc
from contract.features import CLICK_PROB, DISLIKED, ITEM_ID, LABEL, LIKED, TIMESTAMP, USER_ID
from ingest import click_model
from ingest.click_model import DEFAULT_MECHANISMS, KNOWN_ANSWER_MECHANISMS, Mechanisms

REQUEST_FILE = "request.json"
REQUEST_EVENTS = 30
REQUEST_CANDIDATES = 10
STATIC_COLUMN = "click_prob_static"  # the no-sequence oracle (see the module docstring)
STATIC_SAMPLES = 64  # re-simulated histories per user behind it (``generate``'s default)
DATED_EVENTS, DATED_PATTERN = "events", "{YYYY}-{MM}-{DD}"  # generate(dated_folders=True)

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


def _tables(items: click_model.Items, users: click_model.Users) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """The items and users tables, as written to items.csv and users.csv."""
    activity_names = np.array(list(click_model.ACTIVITY))
    items_table = pd.DataFrame(
        {
            ITEM_ID: [f"i{n}" for n in range(len(items.category))],
            "category": [f"c{c}" for c in items.category],
            "brand": [f"b{b}" for b in items.brand],
            "price_bucket": [f"p{p}" for p in items.price],
        }
    )
    users_table = pd.DataFrame(
        {
            USER_ID: [f"u{n}" for n in range(len(users.age))],
            "age_bucket": np.array(click_model.AGE_BUCKETS)[users.age],
            "region": np.array(click_model.REGIONS)[users.region],
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
    user_id = events[USER_ID].value_counts(sort=False).idxmax()
    mine = events[events[USER_ID] == user_id]
    item_fields = items_table.set_index(ITEM_ID)
    recent = mine.tail(num_events).join(item_fields, on=ITEM_ID)
    unseen = events.loc[~events[ITEM_ID].isin(mine[ITEM_ID]), ITEM_ID].value_counts()
    candidates = items_table[items_table[ITEM_ID].isin(unseen.index[:num_candidates])]
    profile = users_table[users_table[USER_ID] == user_id].iloc[0]
    event_columns = [ITEM_ID, TIMESTAMP, LABEL, LIKED, DISLIKED, *item_fields.columns]
    return {
        "user": {k: str(v) for k, v in profile.items()},
        TIMESTAMP: int(mine[TIMESTAMP].max()) + 1,
        "events": [{k: (int(v) if k in (TIMESTAMP, LABEL, LIKED, DISLIKED) else str(v)) for k, v in row.items()}
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
    dated_folders: bool = False,
) -> Dict[str, float]:
    """Writes events.csv, items.csv, users.csv and request.json into ``output_dir``; returns a
    summary: sizes, rates, ``oracle_auc`` (of ``click_prob``) and ``no_sequence_oracle_auc`` (of
    ``click_prob_static``, estimated from ``static_samples`` re-simulated histories per user).
    With ``dated_folders`` the events go to ``events/<YYYY-MM-DD>/events.csv`` instead, one
    folder per UTC day (daily retraining: ``data_config(path, dated_folders=True)``)."""
    if min(num_users, num_items, events_per_user, days, static_samples) < 1:
        raise ValueError("num_users, num_items, events_per_user, days and static_samples must all be >= 1")
    os.makedirs(output_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    items, users = click_model.make_items(rng, num_items), click_model.make_users(rng, num_users)
    counts, timestamp = click_model.make_timeline(rng, users, events_per_user, days)
    item, clicked, liked, disliked, prob = click_model.simulate(rng, items, users, counts, timestamp, days, mechanisms)
    static = click_model.static_oracle(seed, items, users, counts, timestamp, days, mechanisms, item, static_samples)
    prob, static = np.round(prob, 6), np.round(static, 6)
    user = np.repeat(np.arange(num_users), counts)
    events = pd.DataFrame(
        {
            USER_ID: np.char.add("u", user.astype(str)),
            ITEM_ID: np.char.add("i", item.astype(str)),
            TIMESTAMP: timestamp,
            LABEL: clicked,
            LIKED: liked,
            DISLIKED: disliked,
            CLICK_PROB: prob,
            STATIC_COLUMN: static,
        }
    ).iloc[np.lexsort((user, timestamp))]
    if dated_folders:
        _write_dated_folders(events, os.path.join(output_dir, DATED_EVENTS))
    else:
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


def _write_dated_folders(events: pd.DataFrame, events_dir: str) -> None:
    days = pd.to_datetime(events[TIMESTAMP], unit="s", utc=True).dt.strftime("%Y-%m-%d")
    for day, rows in events.groupby(days, sort=True):
        os.makedirs(os.path.join(events_dir, day), exist_ok=True)
        rows.to_csv(os.path.join(events_dir, day, "events.csv"), index=False, float_format="%.6f")


def oracles_on_test_split(events: pd.DataFrame, train: float = 0.8, eval_: float = 0.1) -> Dict[str, float]:
    """Both oracle AUCs on the rows a time split puts into test (the pipeline's rule: rows sorted
    by (timestamp, user_id, item_id), test from rank floor((train + eval) * n)), from the events
    table as ``generate`` wrote it (``events.csv``)."""
    ordered = events.sort_values([TIMESTAMP, USER_ID, ITEM_ID], kind="stable")
    test = ordered.iloc[int(np.floor((train + eval_) * len(ordered))):]
    result = {"test_rows": int(len(test)), "oracle_auc": auc(test[LABEL], test[CLICK_PROB])}
    if STATIC_COLUMN in test:
        result["no_sequence_oracle_auc"] = auc(test[LABEL], test[STATIC_COLUMN])
    return result


def data_config(path: str, dated_folders: bool = False) -> dict:
    """The ``data:`` config section that reads the files ``generate`` wrote into ``path``."""
    dated = {"events": DATED_EVENTS, "span_pattern": DATED_PATTERN} if dated_folders else {"events": "events.csv"}
    return {
        "format": "generic",
        "path": path,
        **dated,
        "items": "items.csv",
        "users": "users.csv",
        "file_format": "csv",
        "timestamp_format": "seconds",
        "columns": {
            USER_ID: USER_ID,
            ITEM_ID: ITEM_ID,
            TIMESTAMP: TIMESTAMP,
            LABEL: LABEL,
            LIKED: LIKED,
            DISLIKED: DISLIKED,
            CLICK_PROB: CLICK_PROB,
        },
        "item_attributes": ["category", "brand", "price_bucket"],
        "user_attributes": ["age_bucket", "region", "activity"],
    }
