"""The per-(user, time window) steps of the sequence builder (``ingest.sequences``).

A window's events are sorted and deduplicated (``dedupe_window``), its history from earlier
windows, and from the spans earlier runs ingested, arrives as a carried ``HistoryState``
(``carried_states``), and its examples are built columnar (``rows_of_window``). With daily
retraining each user's state after the run is kept (``STATE``, ``state_record``) for the next.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Optional, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from tfx_bsl.coders import example_coder

from contract.feature_spec import FeatureSpec
from contract.features import CLICK_PROB, ITEM_ID, LABEL, TIMESTAMP, USER_ID
from ingest import history as hist

QUARANTINE = "quarantine"  # the tag of quarantined rows
STATE = "state"  # with data.span_pattern: each user's history state after the ingested spans


def window_key(window_seconds: float):
    def key(event):
        return (event[USER_ID], int(event[TIMESTAMP] // window_seconds)), event

    return key


def dedupe_window(keyed_batches, spec: FeatureSpec):
    """Sorts one (user, window)'s events (they arrive as the read batches' lists); a repeated
    (user, item, timestamp) is quarantined.

    Yields ("events", (key, sorted events)), ("tail", (user, (window, state))) and quarantine.
    """
    (user, window), batches = keyed_batches
    ordered: List[dict] = []
    for event in sorted((e for batch in batches for e in batch), key=lambda e: (hist.event_order_key(e), e["source"])):
        if ordered and hist.event_order_key(ordered[-1]) == hist.event_order_key(event):
            yield beam.pvalue.TaggedOutput(
                QUARANTINE,
                {
                    "source": event["source"],
                    "reason": "duplicate_event",
                    "detail": f"user {user!r} item {event[ITEM_ID]!r} at {event[TIMESTAMP]} already seen at {ordered[-1]['source']}",
                    "raw": json.dumps(event),
                },
            )
            continue
        ordered.append(event)
    tail = hist.HistoryState(spec.max_length, spec.feedback_types)
    tail.extend(ordered)
    yield beam.pvalue.TaggedOutput("tail", (user, (window, tail.snapshot())))
    yield (user, window), ordered


def carried_states(user_groups, spec: FeatureSpec, keep_state: bool):
    """For each window of a user: the history state carried in from all earlier windows, and from
    the spans ingested before (``prior``: the state an earlier run left). With ``keep_state``, also
    the user's state after all of them (output ``STATE``): what the next span's run starts from."""
    user, groups = user_groups
    prior = list(groups["prior"])
    carried = hist.HistoryState.from_snapshot(prior[0], spec.max_length, spec.feedback_types) if prior else \
        hist.HistoryState(spec.max_length, spec.feedback_types)
    for window, tail in sorted(groups["tails"], key=lambda wt: wt[0]):
        yield (user, window), carried.snapshot()
        carried = carried.merged_with(hist.HistoryState.from_snapshot(tail, spec.max_length, spec.feedback_types))
    if keep_state:
        yield beam.pvalue.TaggedOutput(STATE, (user, carried.snapshot()))


def after_carried_history(joined):
    """Quarantines a window's events older than the latest event of the history carried into it.

    Within one run a window's carry comes from earlier windows only, so this fires only for a
    span's events older than what an earlier span already ingested for the user (a late
    delivery): a history is built from the events before an example's time, and that user's
    older events are no longer at hand.
    """
    (user, window), groups = joined
    (events,) = groups["events"]
    (carry,) = groups["carry"] or [{}]
    latest = max((int(e[TIMESTAMP]) for past in carry.values() for e in past), default=None)
    if latest is None or int(events[0][TIMESTAMP]) >= latest:
        yield joined
        return
    kept = []
    for event in events:
        if int(event[TIMESTAMP]) >= latest:
            kept.append(event)
            continue
        yield beam.pvalue.TaggedOutput(QUARANTINE, {
            "source": event["source"],
            "reason": "before_ingested_history",
            "detail": f"user {user!r}: timestamp {event[TIMESTAMP]} is before {latest}, the latest of their events an earlier span ingested",
            "raw": json.dumps(event),
        })
    if kept:
        yield (user, window), {"events": [kept], "carry": groups["carry"]}


def state_record(user_state) -> str:
    """One user's carried history state as a JSON line (``state-*.jsonl``)."""
    user, snapshot = user_state
    return json.dumps({USER_ID: user, "history": snapshot}, sort_keys=True)


def parse_state_record(line: str):
    record = json.loads(line)
    return record[USER_ID], record["history"]


@dataclasses.dataclass
class WindowRows:
    """The examples of one (user, window), columnar.

    ``keys``: ``(timestamp, user_id, item_id)`` per row, in row order; ``scalars``: one value per
    row of each scalar raw feature (user and item fields, ``timestamp``, the label); ``click_prob``
    the generator's true click probability per row where the log has one; ``histories``: the
    window's ``history.HistoryTable`` per feedback type (each past event once, rows index them).
    ``serialized()`` gives the raw tf.Examples; batch scoring feeds the columns to the model as
    they are (``serving.batch_score``).
    """

    keys: List[Tuple[int, str, str]]
    scalars: Dict[str, np.ndarray]
    click_prob: Optional[List[Optional[float]]]
    histories: Dict[str, hist.HistoryTable]

    def __len__(self) -> int:
        return len(self.keys)

    def serialized(self) -> List[bytes]:
        """The raw tf.Examples, in row order: one C++ encoding of an Arrow record batch (tfx_bsl)."""
        columns = {name: _scalar_column(values, "string" if values.dtype == object else "int64")
                   for name, values in self.scalars.items()}
        if self.click_prob is not None:
            columns[CLICK_PROB] = pa.array([[] if p is None else [p] for p in self.click_prob], type=pa.list_(pa.float32()))
        for table in self.histories.values():
            for name, ragged in table.gathered().items():
                arrow_type = _ARROW_TYPES["string" if ragged.values.dtype == object else "int64"]
                columns[name] = pa.ListArray.from_arrays(pa.array(ragged.offsets), pa.array(ragged.values, type=arrow_type))
        return example_coder.RecordBatchToExamples(pa.RecordBatch.from_arrays(list(columns.values()), list(columns)))


def rows_of_window(joined, spec: FeatureSpec, users: Optional[dict]) -> WindowRows:
    """The ``WindowRows`` of one (user, window): its sorted events and the carried history state.

    Vectorised: the window's histories come from one ``history.history_tables`` call.
    """
    (user, _), groups = joined
    (events,) = groups["events"]
    (carry,) = groups["carry"] or [{}]
    past = {kind: list(carry.get(kind, ())) + window for kind, window in hist.split_by_feedback(spec, events).items()}
    times = np.fromiter((int(e[TIMESTAMP]) for e in events), dtype=np.int64, count=len(events))
    profile = (users or {}).get(user, {})
    scalars = {USER_ID: np.full(len(events), user, dtype=object)}
    for field in spec.user_fields[1:]:
        scalars[field] = np.full(len(events), profile.get(field, ""), dtype=object)
    for field in spec.item_fields:
        scalars[field] = np.array([str(e.get(field, "")) for e in events], dtype=object)
    scalars[TIMESTAMP] = times
    scalars[LABEL] = np.fromiter((int(e[LABEL]) for e in events), dtype=np.int64, count=len(events))
    click_prob = None
    if any(e.get(CLICK_PROB) is not None for e in events):
        click_prob = [None if e.get(CLICK_PROB) is None else float(e[CLICK_PROB]) for e in events]
    keys = [(int(t), user, str(e[ITEM_ID])) for t, e in zip(times, events)]
    return WindowRows(keys, scalars, click_prob, hist.history_tables(spec, past, times))


_ARROW_TYPES = {"string": pa.binary(), "int64": pa.int64()}


def _scalar_column(values, dtype: str) -> pa.Array:
    """One value per row, as the one-element lists a tf.Example feature holds."""
    offsets = pa.array(np.arange(len(values) + 1, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values, type=_ARROW_TYPES[dtype]))
