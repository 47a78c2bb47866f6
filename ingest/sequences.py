"""Beam: interaction logs -> one raw tf.Example per event with its behaviour histories.

Scaling: each event file is read in parts (``ingest.file_parts``: byte ranges, Parquet row
groups), so one large file is read by several workers. Events are grouped by (user, time window),
never by user alone, so one worker holds at most one window of one user's events. A window's history from earlier windows arrives as a
carried ``HistoryState`` (the last T events of each feedback type: O(4T) per window), computed
from the per-window tails. A user with years of history never needs all of it in one place.

Nothing vanishes: every log row becomes an example or a quarantine record with its reason, and
``counts.json`` is checked: rows in = examples out + rows quarantined.

Split (``split.method``, in ``ingest.splits``): by time, exact without a global sort, or by a
salted hash of user_id.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Dict, List, Optional, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from tfx_bsl.coders import example_coder

from contract.feature_spec import FeatureSpec
from contract.features import CLICK_PROB, ITEM_ID, LABEL, TIMESTAMP, USER_ID
from ingest import file_parts, sources
from ingest import history as hist
from ingest.splits import SplitByTime, user_split

SPLITS = ("train", "eval", "test")
ALL = "all"  # the unsplit output of ``BuildExamples(split=False)``
QUARANTINE = "quarantine"


def quarantine_record(q: sources.Quarantined) -> dict:
    return {"source": q.source, "reason": q.reason, "detail": q.detail, "raw": q.raw}


# ---- reading and validating --------------------------------------------------------------------
class _ReadAndValidate(beam.DoFn):
    """One part of a log file (``ingest.file_parts``) -> its events grouped by (user, time
    window), or quarantined rows.

    Yields ``((user_id, window), [events])``: a part's events are grouped here before Beam groups
    them across parts, so Beam handles one element per (user, window) and read batch instead of
    one per event. At most ``FLUSH_EVENTS`` events are held at once; a (user, window) flushed
    twice arrives as two lists. ``newline_counts`` (a side input) numbers a text part's lines.
    """

    FLUSH_EVENTS = 100_000

    def __init__(self, data_config, window_seconds: float):
        self.data_config = data_config
        self.window_key = _window_key(window_seconds)

    def process(self, part, items, users, newline_counts):
        part = file_parts.with_lines_before(part, newline_counts)
        pending: Dict[Tuple[str, int], List[dict]] = {}
        held = 0
        for record in sources.read_events(part.path, self.data_config, part):
            if isinstance(record, sources.Quarantined):
                yield beam.pvalue.TaggedOutput(QUARANTINE, quarantine_record(record))
                continue
            event = record.as_dict()
            if items is not None and event[ITEM_ID] not in items:
                yield beam.pvalue.TaggedOutput(
                    QUARANTINE, _reference_error(record, "unknown_item", f"{ITEM_ID} {event[ITEM_ID]!r} is not in the items table")
                )
                continue
            if users is not None and event[USER_ID] not in users:
                yield beam.pvalue.TaggedOutput(
                    QUARANTINE, _reference_error(record, "unknown_user", f"{USER_ID} {event[USER_ID]!r} is not in the users table")
                )
                continue
            event.update((items or {}).get(event[ITEM_ID], {}))
            key, event = self.window_key(event)
            pending.setdefault(key, []).append(event)
            held += 1
            if held == self.FLUSH_EVENTS:
                yield from pending.items()
                pending, held = {}, 0
        yield from pending.items()


def _reference_error(event: sources.Event, reason: str, detail: str) -> dict:
    return {"source": event.source, "reason": reason, "detail": detail, "raw": json.dumps(event.as_dict())}


# ---- per (user, window) --------------------------------------------------------------------------
def _window_key(window_seconds: float):
    def key(event):
        return (event[USER_ID], int(event[TIMESTAMP] // window_seconds)), event

    return key


def _dedupe_window(keyed_batches, spec: FeatureSpec):
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


def _carried_states(user_tails, spec: FeatureSpec):
    """For each window of a user: the history state carried in from all earlier windows."""
    user, tails = user_tails
    carried = hist.HistoryState(spec.max_length, spec.feedback_types)
    for window, tail in sorted(tails, key=lambda wt: wt[0]):
        yield (user, window), carried.snapshot()
        carried = carried.merged_with(hist.HistoryState.from_snapshot(tail, spec.max_length, spec.feedback_types))


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


def _rows_of_window(joined, spec: FeatureSpec, users: Optional[dict]) -> WindowRows:
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


# ---- the whole transform ---------------------------------------------------------------------------
class BuildExamples(beam.PTransform):
    """Logs -> {"train"|"eval"|"test": serialized raw tf.Examples, "quarantine": dicts, "counts": dict}.

    With ``split=False`` (batch scoring) the examples are not split: the output ``"all"`` holds
    one ``WindowRows`` per (user, window) instead of the three splits (a batch per element keeps
    Beam's per-element cost off every row, and the rows stay columns until a model needs them);
    the counts then report ``examples: {"all": n}``.
    """

    def __init__(self, config, spec: FeatureSpec, split: bool = True):
        super().__init__()
        self.config, self.spec, self.split = config, spec, split

    def expand(self, pipeline):
        data = self.config.data
        items, item_rows = sources.load_items(data)
        users, user_rows = sources.load_users(data)
        items_side = pipeline | "Items" >> beam.Create([items])
        users_side = pipeline | "Users" >> beam.Create([users])
        part_bytes = self.config.beam.read_part_bytes
        parts = (
            pipeline
            | "LogFiles" >> beam.Create(sources.list_event_files(data))
            | "FileParts" >> beam.FlatMap(sources.event_file_parts, data, part_bytes)
            | "SpreadParts" >> beam.Reshuffle()
        )
        newlines = parts | "CountNewlines" >> beam.FlatMap(file_parts.newline_counts)
        read = parts | "Read" >> beam.ParDo(
            _ReadAndValidate(data, self.config.sequences.window_days * 86400),
            beam.pvalue.AsSingleton(items_side), beam.pvalue.AsSingleton(users_side), beam.pvalue.AsList(newlines),
        ).with_outputs(QUARANTINE, main="events")
        windows = (
            read.events
            | "GroupWindow" >> beam.GroupByKey()
            | "SortDedupe" >> beam.FlatMap(_dedupe_window, self.spec).with_outputs(QUARANTINE, "tail", main="events")
        )
        carry = windows.tail | "TailsByUser" >> beam.GroupByKey() | "Carry" >> beam.FlatMap(_carried_states, self.spec)
        window_rows = (
            {"events": windows.events, "carry": carry}
            | "Join" >> beam.CoGroupByKey()
            | "Rows" >> beam.Map(
                lambda joined, users: _rows_of_window(joined, self.spec, users), beam.pvalue.AsSingleton(users_side)
            )
        )
        if not self.split:
            outputs = {ALL: window_rows}
            return self._with_quarantine_and_counts(pipeline, read, windows, outputs, item_rows + user_rows)
        keyed = window_rows | "PerExample" >> beam.FlatMap(lambda rows: zip(rows.keys, rows.serialized()))
        split = self.config.split
        if split.method == "time":
            assigned = keyed | "SplitByTime" >> SplitByTime(split.train, split.eval)
        else:
            fractions = (split.train, split.eval, split.test)
            assigned = keyed | "SplitByUser" >> beam.Map(
                lambda ke: (user_split(ke[0][1], fractions, split.seed), ke[1])
            )
        parts = assigned | "Partition" >> beam.Partition(lambda se, _: se[0], len(SPLITS))
        outputs = {
            name: parts[i] | f"Examples{name}" >> beam.Map(lambda se: se[1]) | f"Order{name}" >> SeededOrder(split.seed)
            for i, name in enumerate(SPLITS)
        }
        return self._with_quarantine_and_counts(pipeline, read, windows, outputs, item_rows + user_rows)

    def _with_quarantine_and_counts(self, pipeline, read, windows, outputs, table_rows):
        outputs[QUARANTINE] = (
            read[QUARANTINE],
            windows[QUARANTINE],
            pipeline | "TableRows" >> beam.Create([quarantine_record(q) for q in table_rows]),
        ) | "AllQuarantined" >> beam.Flatten()
        outputs["counts"] = self._counts(read, outputs, len(table_rows))
        return outputs

    def _counts(self, read, outputs, table_rows_quarantined: int):
        def tally(label, pcoll, key_fn, size=lambda _: 1):
            return pcoll | f"Tally{label}" >> beam.Map(lambda x: (key_fn(x), size(x)))

        example_count = (lambda _: 1) if self.split else len
        tallies = [
            tally("Events", read.events, lambda _: "events_read", lambda keyed_batch: len(keyed_batch[1])),
            tally("ReadQuarantine", read[QUARANTINE], lambda _: "log_rows_quarantined_at_read"),
            tally("Quarantine", outputs[QUARANTINE], lambda q: f"quarantined.{q['reason']}"),
        ] + [tally(f"Split{name}", outputs[name], lambda _, n=name: f"examples.{n}", example_count)
             for name in self._example_outputs()]
        return (
            tallies
            | "FlattenTallies" >> beam.Flatten()
            | "SumTallies" >> beam.CombinePerKey(sum)
            | beam.combiners.ToDict()
            | "Summarize" >> beam.Map(summarize_counts, table_rows_quarantined, self._example_outputs())
        )

    def _example_outputs(self) -> Tuple[str, ...]:
        return SPLITS if self.split else (ALL,)


def summarize_counts(tallies: Dict[str, int], table_rows_quarantined: int, outputs: Tuple[str, ...] = SPLITS) -> dict:
    """Row accounting of a run: log rows in = examples out + log rows quarantined."""
    examples = {name: tallies.get(f"examples.{name}", 0) for name in outputs}
    quarantined = {k.split(".", 1)[1]: v for k, v in sorted(tallies.items()) if k.startswith("quarantined.")}
    rows_in = tallies.get("events_read", 0) + tallies.get("log_rows_quarantined_at_read", 0)
    log_rows_quarantined = sum(quarantined.values()) - table_rows_quarantined
    return {
        "log_rows_in": rows_in,
        "examples": examples,
        "examples_total": sum(examples.values()),
        "log_rows_quarantined": log_rows_quarantined,
        "table_rows_quarantined": table_rows_quarantined,
        "quarantined_by_reason": quarantined,
        "balanced": rows_in == sum(examples.values()) + log_rows_quarantined,
    }


def order_key(serialized: bytes, seed: int) -> int:
    """A seeded pseudo-random 64-bit key of an example's bytes (the same on every worker)."""
    return int.from_bytes(hashlib.blake2b(serialized, digest_size=8, key=str(seed).encode("utf-8")).digest(), "big")


class SeededOrder(beam.PTransform):
    """Serialized examples in a seeded random order (docs/models.md "Training defaults (v2)": the
    window builder emits a user's examples together, and batch-level mining needs them spread
    out). Each example goes to one of ``shards`` groups by its ``order_key`` and leaves its group
    sorted by that key, so the order is the same for a seed on every run and runner."""

    def __init__(self, seed: int, shards: int = 64):
        super().__init__()
        self.seed, self.shards = seed, shards

    def expand(self, examples):
        seed, shards = self.seed, self.shards
        return (
            examples
            | "Key" >> beam.Map(lambda example: (order_key(example, seed), example))
            | "Shard" >> beam.Map(lambda keyed: (keyed[0] % shards, keyed))
            | "Group" >> beam.GroupByKey()
            | "Sorted" >> beam.FlatMap(lambda shard: [example for _, example in sorted(shard[1], key=lambda ke: ke[0])])
        )


def write_outputs(outputs, examples_uri: str, quarantine_dir: str, counts_path: str) -> None:
    """Writes the splits in TFX's Examples layout (Split-<name>/*.gz), quarantine and counts."""
    for name in SPLITS:
        outputs[name] | f"Write{name}" >> beam.io.WriteToTFRecord(
            os.path.join(examples_uri, f"Split-{name}", "data_tfrecord"), file_name_suffix=".gz"
        )
    outputs[QUARANTINE] | "QuarantineJson" >> beam.Map(json.dumps) | "WriteQuarantine" >> beam.io.WriteToText(
        os.path.join(quarantine_dir, "quarantine"), file_name_suffix=".jsonl"
    )
    outputs["counts"] | "CountsJson" >> beam.Map(lambda c: json.dumps(c, indent=2, sort_keys=True)) | "WriteCounts" >> beam.io.WriteToText(
        counts_path, shard_name_template=""
    )
