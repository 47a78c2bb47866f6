"""The feature vocabulary every package shares: id, label and history names, feedback types.

The logs are read into events with these names, the sequence builder writes raw tf.Examples with
them, the transform, the models, the serving signatures, the client and batch scoring look their
inputs up by them. ``contract.feature_spec.FeatureSpec`` builds a run's full list of names from
them (with the configured attribute fields and the history length).
"""
from __future__ import annotations

from typing import Dict, Tuple

USER_ID = "user_id"  # the first user field
ITEM_ID = "item_id"  # the first item field
TIMESTAMP = "timestamp"  # unix seconds (UTC) of an event or a request
LABEL = "clicked"  # the training label (int64 0/1)
CLICK_PROB = "click_prob"  # synthetic logs: the true click probability (float)
LIKED, DISLIKED = "liked", "disliked"  # an event's other feedback flags (0/1)

# the behaviour sequences, in the DUMN paper's order (click, unclick, like, dislike)
FEEDBACK_TYPES: Tuple[str, ...] = ("click", "unclick", "like", "dislike")
HISTORY_PREFIX = "hist_"  # hist_<feedback>_<item field>, hist_<feedback>_timestamp, hist_<feedback>_gap
GAP = "gap"  # the bucketized time gap of a history position (transformed feature)

CONTEXT_FIELDS: Tuple[str, ...] = ("hour", "weekday")  # transformed from the timestamp
CONTEXT_SIZES: Dict[str, int] = {"hour": 24, "weekday": 7}
PAD_INDEX = 0  # vocabulary index of a padded history position


def history_name(feedback: str, field: str) -> str:
    """``hist_<feedback>_<field>``: a history of an item field, of ``timestamp`` or of ``gap``."""
    return f"{HISTORY_PREFIX}{feedback}_{field}"
