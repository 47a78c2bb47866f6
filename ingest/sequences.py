"""Beam: interaction logs -> one raw tf.Example per event with its behaviour histories.

Scaling: each event file is read in parts (``ingest.file_parts``: byte ranges, Parquet row
groups), so one large file is read by several workers. Events are grouped by (user, time window),
never by user alone, so one worker holds at most one window of one user's events. A window's
history from earlier windows arrives as a carried ``HistoryState`` (the last T events of each
feedback type: O(4T) per window), computed from the per-window tails (``ingest.windows``). A
user with years of history never needs all of it in one place; with daily retraining, neither
does a run need the days before it (their state is carried in).

Nothing vanishes: every log row becomes an example or a quarantine record with its reason, and
``counts.json`` is checked: rows in = examples out + rows quarantined.

Split (``split.method``, in ``ingest.splits``): by time, exact without a global sort, or by a
salted hash of user_id.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, Optional, Tuple

import apache_beam as beam

from contract.feature_spec import FeatureSpec
from contract.features import ITEM_ID, USER_ID
from ingest import file_parts, sources
from ingest.splits import SplitByTime, user_split
from ingest.windows import (
    QUARANTINE, STATE, after_carried_history, carried_states, dedupe_window, parse_state_record, rows_of_window, state_record,
    window_key,
)

SPLITS = ("train", "eval", "test")
ALL = "all"  # the unsplit output of ``BuildExamples(split=False)``


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
        self.window_key = window_key(window_seconds)

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


# ---- the whole transform ---------------------------------------------------------------------------
class BuildExamples(beam.PTransform):
    """Logs -> {"train"|"eval"|"test": serialized raw tf.Examples, "quarantine": dicts, "counts": dict}.

    With ``split=False`` (batch scoring) the examples are not split: the output ``"all"`` holds
    one ``WindowRows`` per (user, window) instead of the three splits (a batch per element keeps
    Beam's per-element cost off every row, and the rows stay columns until a model needs them);
    the counts then report ``examples: {"all": n}``.

    Daily retraining (``data.span_pattern``): ``spans`` are the span folders to read (default:
    all), ``prior_state`` the file pattern of the state an earlier run left (``STATE``, JSON lines
    of ``state_record``); the histories start from it, and the output ``STATE`` holds each user's
    state after these spans, for the next run.
    """

    def __init__(self, config, spec: FeatureSpec, split: bool = True, spans=None, prior_state: Optional[str] = None):
        super().__init__()
        self.config, self.spec, self.split = config, spec, split
        self.spans, self.prior_state = spans, prior_state
        self.keep_state = config.data.span_pattern is not None

    def expand(self, pipeline):
        data = self.config.data
        items, item_rows = sources.load_items(data)
        users, user_rows = sources.load_users(data)
        items_side = pipeline | "Items" >> beam.Create([items])
        users_side = pipeline | "Users" >> beam.Create([users])
        part_bytes = self.config.beam.read_part_bytes
        parts = (
            pipeline
            | "LogFiles" >> beam.Create(sources.list_event_files(data, self.spans))
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
            | "SortDedupe" >> beam.FlatMap(dedupe_window, self.spec).with_outputs(QUARANTINE, "tail", main="events")
        )
        if self.prior_state:
            prior = pipeline | "PriorState" >> beam.io.ReadFromText(self.prior_state) | "ParseState" >> beam.Map(parse_state_record)
        else:
            prior = pipeline | "NoPriorState" >> beam.Create([])
        carried = (
            {"tails": windows.tail, "prior": prior}
            | "TailsByUser" >> beam.CoGroupByKey()
            | "Carry" >> beam.FlatMap(carried_states, self.spec, self.keep_state).with_outputs(STATE, main="carry")
        )
        joined = {"events": windows.events, "carry": carried.carry} | "Join" >> beam.CoGroupByKey()
        if self.prior_state:  # only a carry from an earlier run can hold events later than a window's
            checked = joined | "AfterCarriedHistory" >> beam.FlatMap(after_carried_history).with_outputs(QUARANTINE, main="joined")
            joined, late = checked.joined, checked[QUARANTINE]
        else:
            late = pipeline | "NoLateEvents" >> beam.Create([])
        window_rows = (
            joined
            | "Rows" >> beam.Map(
                lambda joined, users: rows_of_window(joined, self.spec, users), beam.pvalue.AsSingleton(users_side)
            )
        )
        if not self.split:
            outputs = {ALL: window_rows}
            return self._with_quarantine_and_counts(pipeline, read, windows, late, outputs, item_rows + user_rows)
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
        if self.keep_state:
            outputs[STATE] = carried[STATE]
        return self._with_quarantine_and_counts(pipeline, read, windows, late, outputs, item_rows + user_rows)

    def _with_quarantine_and_counts(self, pipeline, read, windows, late, outputs, table_rows):
        outputs[QUARANTINE] = (
            read[QUARANTINE],
            windows[QUARANTINE],
            late,
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


def write_outputs(outputs, examples_uri: str, quarantine_dir: str, counts_path: str, state_dir: Optional[str] = None) -> None:
    """Writes the splits in TFX's Examples layout (Split-<name>/*.gz), quarantine and counts, and
    with ``state_dir`` the users' history states (``state-*.jsonl``)."""
    if state_dir is not None:
        outputs[STATE] | "StateJson" >> beam.Map(state_record) | "WriteState" >> beam.io.WriteToText(
            os.path.join(state_dir, "state"), file_name_suffix=".jsonl"
        )
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
