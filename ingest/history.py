"""Behaviour histories of one user (numpy, vectorised over the times asked for).

The single implementation of "the most recent T items of each feedback type strictly before t":
the Beam sequence builder (training, batch scoring) and the serving client both call it, so the
features a model is trained on and the features it is served are built by the same code.

An event is a mapping with ``item_id``, ``timestamp`` (int seconds), ``clicked``, ``liked``,
``disliked`` (0/1) and the item's attribute values under the item field names.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Deque, Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

from contract.features import DISLIKED, FEEDBACK_TYPES, ITEM_ID, LABEL, LIKED, TIMESTAMP
from contract.feature_spec import FeatureSpec

Event = Mapping[str, object]


def feedback_types_of(event: Event) -> Tuple[str, ...]:
    """The sequences an event joins: click or unclick, plus like and/or dislike."""
    kinds = ["click" if int(event[LABEL]) else "unclick"]
    if int(event.get(LIKED, 0)):
        kinds.append("like")
    if int(event.get(DISLIKED, 0)):
        kinds.append("dislike")
    return tuple(kinds)


def event_order_key(event: Event) -> Tuple[int, str]:
    """A user's events are ordered by (timestamp, item_id)."""
    return int(event[TIMESTAMP]), str(event[ITEM_ID])


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


@dataclasses.dataclass(frozen=True)
class Ragged:
    """Variable-length rows: row ``i`` is ``values[offsets[i]:offsets[i + 1]]``."""

    values: np.ndarray
    offsets: np.ndarray  # int32, one more than there are rows

    def row(self, index: int) -> list:
        return self.values[self.offsets[index]:self.offsets[index + 1]].tolist()


@dataclasses.dataclass(frozen=True)
class HistoryTable:
    """One feedback type's histories at many times, each past event stored once.

    ``columns`` maps the raw history features (``hist_<fb>_<field>``, ``hist_<fb>_timestamp``)
    to one value per past event; row i of ``positions`` indexes the events that form the
    history at the i-th time, oldest first. Consecutive times share most of their history, so a
    window's rows cost one value per event here, not one per event and row.
    """

    columns: Dict[str, np.ndarray]
    positions: Ragged

    def gathered(self) -> Dict[str, Ragged]:
        """Each history feature, one row per time (``histories_at``)."""
        return {name: Ragged(values[self.positions.values], self.positions.offsets) for name, values in self.columns.items()}


def history_tables(spec: FeatureSpec, past: Mapping[str, Sequence[Event]], times: np.ndarray) -> Dict[str, HistoryTable]:
    """Feedback type -> its ``HistoryTable`` at each of ``times``.

    ``past[fb]``: the user's events of feedback type ``fb`` in ``event_order_key`` order (at least
    the last ``max_length`` before the earliest time). The history at time t holds the most recent
    ``max_length`` of them with a timestamp strictly before t, most recent last: events of the
    same second never see each other. Vectorised over ``times``.
    """
    times = np.asarray(times, dtype=np.int64)
    tables: Dict[str, HistoryTable] = {}
    for kind in spec.feedback_types:
        events = past.get(kind, ())
        stamps = np.fromiter((int(e[TIMESTAMP]) for e in events), dtype=np.int64, count=len(events))
        ends = np.searchsorted(stamps, times, side="left")  # events strictly before each time
        starts = np.maximum(ends - spec.max_length, 0)
        lengths = ends - starts
        offsets = np.zeros(len(times) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        take = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        columns = {spec.history(kind, field): np.array([str(e.get(field, "")) for e in events], dtype=object)
                   for field in spec.item_fields}
        columns[spec.history_timestamp(kind)] = stamps
        tables[kind] = HistoryTable(columns, Ragged(take, offsets))
    return tables


def histories_at(spec: FeatureSpec, past: Mapping[str, Sequence[Event]], times: np.ndarray) -> Dict[str, Ragged]:
    """Raw sequence features (``hist_<fb>_<field>``, ``hist_<fb>_timestamp``) at each of ``times``
    (see ``history_tables``), one row per time."""
    return {name: ragged for table in history_tables(spec, past, times).values() for name, ragged in table.gathered().items()}


def split_by_feedback(spec: FeatureSpec, sorted_events: Iterable[Event]) -> Dict[str, List[Event]]:
    """The events of each feedback type, keeping their order."""
    by_kind: Dict[str, List[Event]] = {kind: [] for kind in spec.feedback_types}
    for event in sorted_events:
        for kind in feedback_types_of(event):
            if kind in by_kind:
                by_kind[kind].append(event)
    return by_kind


def user_histories_at(spec: FeatureSpec, events: Iterable[Event], timestamp: int) -> Dict[str, list]:
    """Raw sequence features of a user at ``timestamp`` from their (unsorted) past events.

    Only events strictly before ``timestamp`` count. Used by the serving client.
    """
    past = split_by_feedback(spec, sorted(events, key=event_order_key))
    return {name: ragged.row(0) for name, ragged in histories_at(spec, past, np.array([timestamp])).items()}
