"""Yardsticks for the known-answer logs: what one hand-made sequence feature scores on the test split.

    python benchmarks/known_answer_yardstick.py [--logs runs/quality/known-answer-logs]

The click model (``ingest.click_model``) raises the click logit with the user's earlier clicks in
the target's category, each weighted exp(-gap / 1 h). This script computes that feature exactly
(log1p of the decayed count, from the logged events strictly before each impression) and prints
the test-split AUC of

* the feature alone,
* a logistic regression over the no-sequence oracle's logit and the feature (fit on the rows
  before the test split), then with the same-brand clicks added (all a model reading the click
  sequence alone can know of the sequence terms) and with the recent same-category dislikes
  added too (3-day decay: what the dislike sequence adds),

beside the oracle and the no-sequence oracle, and the 16 train-quantile boundaries of the
histories' time gaps (``features.gap_bucketing: quantile``), in seconds, to show what the models
can see of the 1-hour decay. The test split is the last 10% of the events in
time, as ``configs/known_answer.yaml``'s time split makes it. A model that reads the click
sequence with its time gaps should beat the feature alone.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from contract.auc import auc  # noqa: E402
from contract.features import CLICK_PROB, ITEM_ID, LABEL, TIMESTAMP, USER_ID  # noqa: E402

STATIC = "click_prob_static"
DECAY_S = 3600.0  # ingest.click_model.KNOWN_ANSWER_MECHANISMS.short_decay_s
DISLIKE_DECAY_S = 3 * 86400.0  # ... dislike_decay_s
TEST_SHARE = 0.1


def decayed_earlier(events: pd.DataFrame, member: np.ndarray, key: str, decay_s: float) -> np.ndarray:
    """Per row: the sum over the user's earlier events that are ``member`` (a row mask) and share
    the row's ``key`` (category or brand) of exp(-gap / ``decay_s``)."""
    total = np.zeros(len(events))
    for _, rows in events.groupby(USER_ID, sort=False):
        stamps, keys = rows[TIMESTAMP].to_numpy(), rows[key].to_numpy()
        chosen, positions = member[rows.index.to_numpy()], rows.index.to_numpy()
        for j in range(1, len(rows)):
            earlier = chosen[:j] & (keys[:j] == keys[j])
            if earlier.any():
                total[positions[j]] = np.exp(-(stamps[j] - stamps[:j][earlier]) / decay_s).sum()
    return total


def sequence_features(events: pd.DataFrame) -> dict:
    """The click model's three sequence terms, computed exactly from the logged events: earlier
    clicks in the target's category and in its brand (log1p of their 1-hour-decayed count) and
    earlier dislikes in its category (3-day-decayed count)."""
    clicked, disliked = events[LABEL].to_numpy() == 1, events["disliked"].to_numpy() == 1
    return {
        "recent_same_category_clicks": np.log1p(decayed_earlier(events, clicked, "category", DECAY_S)),
        "recent_same_brand_clicks": np.log1p(decayed_earlier(events, clicked, "brand", DECAY_S)),
        "recent_same_category_dislikes": decayed_earlier(events, disliked, "category", DISLIKE_DECAY_S),
    }


def history_gap_quantiles(events: pd.DataFrame, train: np.ndarray, max_length: int = 50, buckets: int = 16) -> list:
    """Inner quantile boundaries (seconds) of the history gaps of the rows before the test split
    (the Transform analyzes the train split alone, a little less), every feedback type's
    last ``max_length`` events strictly before the row, as the Transform computes them (log1p)."""
    log_gaps = []
    for _, rows in events.groupby(USER_ID, sort=False):
        stamps, positions = rows[TIMESTAMP].to_numpy(), rows.index.to_numpy()
        kinds = {"click": rows[LABEL].to_numpy() == 1, "unclick": rows[LABEL].to_numpy() == 0,
                 "like": rows["liked"].to_numpy() == 1, "dislike": rows["disliked"].to_numpy() == 1}
        for j in range(1, len(rows)):
            if not train[positions[j]]:
                continue
            for member in kinds.values():
                earlier = stamps[:j][member[:j] & (stamps[:j] < stamps[j])][-max_length:]
                log_gaps.append(np.log1p(stamps[j] - earlier))
    quantiles = np.quantile(np.concatenate(log_gaps), np.arange(1, buckets) / buckets)
    return [int(round(v)) for v in np.expm1(quantiles)]


def logistic_regression(x: np.ndarray, y: np.ndarray, steps: int = 500, rate: float = 0.5) -> np.ndarray:
    """Weights (bias last) of a logistic regression by full-batch gradient descent on standardised x."""
    mean, std = x.mean(0), x.std(0) + 1e-12
    z = np.c_[(x - mean) / std, np.ones(len(x))]
    w = np.zeros(z.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-z @ w))
        w -= rate * z.T @ (p - y) / len(y)
    return np.r_[w[:-1] / std, w[-1] - (w[:-1] * mean / std).sum()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", default=os.path.join(ROOT, "runs", "quality", "known-answer-logs"),
                        help="known-answer logs (events.csv, items.csv) as benchmarks/quality.py --synthetic writes them")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "known_answer_yardstick.json"))
    args = parser.parse_args()
    events = pd.read_csv(os.path.join(args.logs, "events.csv")).rename(columns={"clicked": LABEL})
    items = pd.read_csv(os.path.join(args.logs, "items.csv"))
    events = events.merge(items, on=ITEM_ID).sort_values([USER_ID, TIMESTAMP]).reset_index(drop=True)
    features = sequence_features(events)
    test = (events[TIMESTAMP] >= events[TIMESTAMP].quantile(1 - TEST_SHARE)).to_numpy()
    labels = events[LABEL].to_numpy()
    static = events[STATIC].clip(1e-6, 1 - 1e-6).to_numpy()
    static_logit = np.log(static / (1 - static))

    def regression_auc(*names: str) -> float:
        """Test AUC of a logistic regression over the no-sequence oracle's logit and ``names``."""
        x = np.column_stack([static_logit, *(features[name] for name in names)])
        w = logistic_regression(x[~test], labels[~test])
        return auc(labels[test], x[test] @ w[:-1])

    result = {
        "logs": os.path.abspath(args.logs),
        "test_rows": int(test.sum()),
        "oracle_auc": auc(labels[test], events[CLICK_PROB].to_numpy()[test]),
        "no_sequence_oracle_auc": auc(labels[test], static[test]),
        "recent_same_category_clicks_auc": auc(labels[test], features["recent_same_category_clicks"][test]),
        "no_sequence_oracle_plus_feature_auc": regression_auc("recent_same_category_clicks"),
        # what a model reading the click sequence alone can know of the sequence terms (DIN, CAMN)
        "no_sequence_oracle_plus_click_terms_auc": regression_auc("recent_same_category_clicks", "recent_same_brand_clicks"),
        # ... and one that also reads the dislikes (DNN, DUMN, TF4CTR)
        "no_sequence_oracle_plus_all_terms_auc": regression_auc(*features),
    }
    result["gap_quantile_boundaries_s"] = history_gap_quantiles(events, ~test)
    for name, value in result.items():
        print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}")
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
