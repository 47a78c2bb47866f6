"""The slices the Evaluator reports metrics on: where a model fails, not only how well on average.

The transform adds three int64 [B] features for them (``transforms/preprocessing.py``); TFMA
slices on transformed features, so the Evaluator computes every per-slice metric. The models
ignore these features. ``hour`` is the model's own context feature.

- ``slice_history_length``: bucket of the click history's length as the model sees it (at most
  ``max_length`` positions): the short-history users are where sequence models have least to go on;
- ``slice_user_activity``: bucket of the user's events of every feedback type in the 7 days
  before the request (within the histories the model sees): dormant vs busy users;
- ``slice_new_user``: 1 when the user id is not in the train split's vocabulary (a user the model
  has no embedding for), else 0.
"""
from __future__ import annotations

from typing import Dict, Tuple

HISTORY_LENGTH = "slice_history_length"
USER_ACTIVITY = "slice_user_activity"
NEW_USER = "slice_new_user"
HOUR = "hour"
SLICE_FEATURES: Tuple[str, ...] = (HISTORY_LENGTH, USER_ACTIVITY, NEW_USER, HOUR)
TRANSFORM_SLICE_FEATURES: Tuple[str, ...] = (HISTORY_LENGTH, USER_ACTIVITY, NEW_USER)  # added by the transform

# bucket i holds counts in [EDGES[i - 1], EDGES[i]); bucket 0 is "none"
HISTORY_LENGTH_EDGES: Tuple[int, ...] = (1, 5, 20)
USER_ACTIVITY_EDGES: Tuple[int, ...] = (1, 10, 50)
ACTIVITY_WINDOW_SECONDS = 7 * 86400


def bucket_labels(edges: Tuple[int, ...]) -> Tuple[str, ...]:
    """("0", "1-4", "5-19", "20+") for edges (1, 5, 20)."""
    lows = (0,) + edges
    return tuple(
        f"{low}" if high == low + 1 else (f"{low}-{high - 1}" if high is not None else f"{low}+")
        for low, high in zip(lows, edges + (None,))
    )


def value_label(feature: str, value: int) -> str:
    """How the report names a slice value: a bucket's range, new/seen, or the hour."""
    labels: Dict[str, Tuple[str, ...]] = {
        HISTORY_LENGTH: bucket_labels(HISTORY_LENGTH_EDGES),
        USER_ACTIVITY: bucket_labels(USER_ACTIVITY_EDGES),
        NEW_USER: ("seen", "new"),
    }
    if feature in labels and 0 <= value < len(labels[feature]):
        return labels[feature][value]
    return f"{value:02d}h" if feature == HOUR else str(value)


TITLES: Dict[str, str] = {
    HISTORY_LENGTH: "click history length",
    USER_ACTIVITY: "events in the 7 days before",
    NEW_USER: "user new to the train split",
    HOUR: "hour of day (UTC)",
}
