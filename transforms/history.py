"""Behaviour histories of one user, in plain Python.

The single implementation of "the most recent T items of each feedback type strictly before t":
the Beam sequence builder (training, batch scoring) and the serving client both call it, so the
features a model is trained on and the features it is served are built by the same code.

An event is a mapping with ``item_id``, ``timestamp`` (int seconds), ``clicked``, ``liked``,
``disliked`` (0/1) and the item's attribute values under the item field names.
"""
from __future__ import annotations

import collections
import itertools
from typing import Deque, Dict, Iterable, Iterator, List, Mapping, Sequence, Tuple

from transforms.features import FEEDBACK_TYPES, TIMESTAMP, FeatureSpec

Event = Mapping[str, object]


def feedback_types_of(event: Event) -> Tuple[str, ...]:
    """The sequences an event joins: click or unclick, plus like and/or dislike."""
    kinds = ["click" if int(event["clicked"]) else "unclick"]
    if int(event.get("liked", 0)):
        kinds.append("like")
    if int(event.get("disliked", 0)):
        kinds.append("dislike")
    return tuple(kinds)


def event_order_key(event: Event) -> Tuple[int, str]:
    """A user's events are ordered by (timestamp, item_id)."""
    return int(event[TIMESTAMP]), str(event["item_id"])


class HistoryState:
    """The last ``max_length`` events of each feedback type; memory is O(4 * max_length)."""

    def __init__(self, max_length: int, feedback_types: Sequence[str] = FEEDBACK_TYPES):
        self.max_length = max_length
        self.recent: Dict[str, Deque[Event]] = {
            kind: collections.deque(maxlen=max_length) for kind in feedback_types
        }

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Sequence[Event]], max_length: int, feedback_types: Sequence[str]) -> "HistoryState":
        state = cls(max_length, feedback_types)
        for kind, events in snapshot.items():
            state.recent[kind].extend(events)
        return state

    def add(self, event: Event) -> None:
        """Appends an event; events must arrive in ``event_order_key`` order."""
        for kind in feedback_types_of(event):
            if kind in self.recent:
                self.recent[kind].append(event)

    def extend(self, events: Iterable[Event]) -> None:
        for event in events:
            self.add(event)

    def merged_with(self, later: "HistoryState") -> "HistoryState":
        """The state after this state's events followed by ``later``'s events."""
        merged = HistoryState(self.max_length, tuple(self.recent))
        for kind in self.recent:
            merged.recent[kind].extend(self.recent[kind])
            merged.recent[kind].extend(later.recent.get(kind, ()))
        return merged

    def snapshot(self) -> Dict[str, List[Event]]:
        return {kind: list(events) for kind, events in self.recent.items()}


def examples_with_histories(
    sorted_events: Iterable[Event], state: HistoryState
) -> Iterator[Tuple[Event, Dict[str, List[Event]]]]:
    """Yields (event, histories) for events sorted by ``event_order_key``.

    ``state`` holds the user's earlier events (it is updated in place). Events sharing a
    timestamp all see the same history: none of them sees another (no same-second leakage).
    """
    for _, same_second in itertools.groupby(sorted_events, key=lambda e: int(e[TIMESTAMP])):
        group = list(same_second)
        histories = state.snapshot()
        for event in group:
            yield event, histories
        state.extend(group)


def history_features(spec: FeatureSpec, histories: Mapping[str, Sequence[Event]]) -> Dict[str, list]:
    """Raw sequence features (``hist_<fb>_<field>``, ``hist_<fb>_timestamp``), most recent last."""
    features: Dict[str, list] = {}
    for kind in spec.feedback_types:
        events = histories.get(kind, ())
        for field in spec.item_fields:
            features[spec.history(kind, field)] = [str(e.get(field, "")) for e in events]
        features[spec.history_timestamp(kind)] = [int(e[TIMESTAMP]) for e in events]
    return features


def user_histories_at(
    spec: FeatureSpec, events: Iterable[Event], timestamp: int
) -> Dict[str, list]:
    """Raw sequence features of a user at ``timestamp`` from their (unsorted) past events.

    Only events strictly before ``timestamp`` count. Used by the serving client.
    """
    state = HistoryState(spec.max_length, spec.feedback_types)
    state.extend(sorted((e for e in events if int(e[TIMESTAMP]) < timestamp), key=event_order_key))
    return history_features(spec, state.snapshot())
