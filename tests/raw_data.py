"""Small raw datasets for tests, built with the project's own history builder (no ../shared)."""
from __future__ import annotations

from typing import Dict

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2

from ingest import history as hist
from contract.features import CLICK_PROB, LABEL, TIMESTAMP
from contract.feature_spec import FeatureSpec


def raw_examples(spec: FeatureSpec, users: int = 12, events_per_user: int = 15, items: int = 25, seed: int = 0, start: int = 1_600_000_000):
    """Raw feature dicts (one per event) of a random log, histories built by ingest.history."""
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
        events.sort(key=hist.event_order_key)
        past = hist.split_by_feedback(spec, events)
        histories = hist.histories_at(spec, past, np.array([e[TIMESTAMP] for e in events]))
        for row, event in enumerate(events):
            features = {"user_id": f"u{u}", **profile, **{f: event[f] for f in spec.item_fields}}
            features[TIMESTAMP] = event[TIMESTAMP]
            features[LABEL] = event["clicked"]
            features[CLICK_PROB] = 0.5
            features.update({name: ragged.row(row) for name, ragged in histories.items()})
            examples.append(features)
    return examples


def to_tf_example(features: Dict[str, object], spec: FeatureSpec) -> bytes:
    """Serializes one raw feature dict (values or lists of values) as a tf.Example."""

    def feature(name, value):
        values = value if isinstance(value, list) else [value]
        dtype = spec.raw_dtype(name)
        if dtype == "string":
            return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[str(v).encode("utf-8") for v in values]))
        if dtype == "float":
            return feature_pb2.Feature(float_list=feature_pb2.FloatList(value=values))
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=values))

    return example_pb2.Example(
        features=feature_pb2.Features(feature={k: feature(k, v) for k, v in features.items()})
    ).SerializeToString()
