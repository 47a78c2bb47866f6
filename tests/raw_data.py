"""Small raw datasets for tests, built with the project's own history builder (no ../shared)."""
from __future__ import annotations

import numpy as np

from transforms import history as hist
from transforms.features import CLICK_PROB, LABEL, TIMESTAMP, FeatureSpec


def raw_examples(spec: FeatureSpec, users: int = 12, events_per_user: int = 15, items: int = 25, seed: int = 0, start: int = 1_600_000_000):
    """Raw feature dicts (one per event) of a random log, histories built by transforms.history."""
    rng = np.random.default_rng(seed)
    attributes = {
        f"i{i}": {f: f"{f}{rng.integers(0, 4)}" for f in spec.item_fields[1:]} for i in range(items)
    }
    examples = []
    for u in range(users):
        profile = {f: f"{f}{rng.integers(0, 3)}" for f in spec.user_fields[1:]}
        times = np.sort(start + rng.integers(0, 30 * 86400, size=events_per_user))
        events = []
        for t in times:
            item = f"i{rng.integers(0, items)}"
            clicked = int(rng.random() < 0.5)
            events.append({
                "item_id": item, TIMESTAMP: int(t), "clicked": clicked,
                "liked": int(clicked and rng.random() < 0.4), "disliked": int(clicked and rng.random() < 0.2),
                **attributes[item],
            })
        state = hist.HistoryState(spec.max_length, spec.feedback_types)
        for event, histories in hist.examples_with_histories(sorted(events, key=hist.event_order_key), state):
            features = {"user_id": f"u{u}", **profile, **{f: event[f] for f in spec.item_fields}}
            features[TIMESTAMP] = event[TIMESTAMP]
            features[LABEL] = event["clicked"]
            features[CLICK_PROB] = 0.5
            features.update(hist.history_features(spec, histories))
            examples.append(features)
    return examples
