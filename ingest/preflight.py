"""The data check every run starts with (``validate-config`` runs it alone), without TensorFlow
or Beam: the files are found, the headers hold the mapped columns and a sample of rows parses.

``check_data`` returns every problem at once, each naming the config key or file row at fault and
the fix, plus notes (facts the user should know that do not stop a run: optional feedback flags
not mapped, a few sampled rows that the run will quarantine). It reads the rows through the same
``ingest.sources.read_events`` the pipeline uses, so a sampled row it passes is one the run accepts.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import difflib
import itertools
import statistics
from typing import Dict, List, Sequence

from contract.config import ConfigError, DataConfig, check_attribute_columns
from contract.features import DISLIKED, LIKED
from ingest.log_files import generic_columns, list_event_files, table_files
from ingest.sources import Quarantined, event_columns, read_events

SAMPLE_ROWS = 2000  # rows read from the start of the event files
_EARLIEST_PLAUSIBLE = 315532800  # 1980-01-01: a log whose rows mostly read earlier has the wrong time unit
_MOSTLY = 0.5  # a quarantine reason hitting more than this share of the sample is a config problem

_FIXES = {  # quarantine reason -> what to change when it hits most sampled rows
    "unparsable_timestamp": "is data.columns.timestamp the time column? if so, convert it to one of the accepted forms",
    "absurd_timestamp": "timestamps past data.max_timestamp: milliseconds or microseconds read as seconds? "
                        "set data.timestamp_format (auto tells them apart by magnitude)",
    "negative_timestamp": "is data.columns.timestamp the time column?",
    "invalid_flag": "flag columns hold 0, 1, true or false: are data.columns.clicked/liked/disliked the flag "
                    "columns? (a 1..5 rating goes in data.columns.rating)",
    "unparsable_rating": "is data.columns.rating the rating column?",
    "rating_out_of_range": "data.columns.rating must hold ratings 1..5; a 0/1 click flag goes in data.columns.clicked",
    "missing_field": "the mapped columns are empty: map the right ones, or null for an optional one",
    "wrong_column_count": "rows do not split into the header's columns: is the file comma-separated CSV "
                          "(data.file_format)?",
    "malformed_row": "is the file CSV (data.file_format)?",
    "undecodable_row": "CSV files are read as UTF-8: re-encode the file",
}


@dataclasses.dataclass(frozen=True)
class DataCheck:
    problems: List[str]  # each stops a run
    notes: List[str]  # each worth a line, none stops a run

    def raise_problems(self, config_path: str) -> None:
        if self.problems:
            lines = "\n".join(f"  {problem}" for problem in self.problems)
            raise ConfigError(f"{config_path}: the data does not match the config ({len(self.problems)} problem(s)):\n{lines}")


def _did_you_mean(name: str, columns: Sequence[str]) -> str:
    """A column ``name`` abbreviates or extends (time -> timestamp), else one a typo away."""
    close = [column for column in columns if column.startswith(name) or name.startswith(column)]
    close = close or difflib.get_close_matches(name, columns, n=1, cutoff=0.85)
    return f"; did you mean {close[0]!r}?" if close else ""


def _header_problems(data: DataConfig, path: str, columns: Sequence[str]) -> List[str]:
    if len(columns) == 1 and any(separator in columns[0] for separator in ";\t|"):
        return [f"{path}: the header is one column ({columns[0]!r}): the generic format reads comma-separated "
                f"CSV or Parquet; convert the file"]
    problems = []
    for field, column in event_columns(data).items():
        if column not in columns:
            fix = " (null if the log has none)" if field in (LIKED, DISLIKED) else ""
            problems.append(f"data.columns.{field}: column {column!r} is not in {path} (its columns: "
                            f"{', '.join(columns)}){_did_you_mean(column, columns)}{fix}")
    return problems


def _unmapped_flag_notes(data: DataConfig, columns: Sequence[str]) -> List[str]:
    notes = []
    for field in (LIKED, DISLIKED):
        if data.columns.rating is None and getattr(data.columns, field) is None:
            hint = f" (the events have a {field!r} column: map it with `{field}: {field}`)" if field in columns else ""
            notes.append(f"data.columns.{field} is not mapped: no event is {field}, its sequence stays empty{hint}")
    return notes


def _table_problems(data: DataConfig) -> List[str]:
    problems = []
    for kind, key in (("item", data.columns.item_id), ("user", data.columns.user_id)):
        try:
            files = table_files(data, kind)
        except FileNotFoundError as exc:
            problems.append(f"{exc}")
            continue
        for path in files:
            try:
                columns = generic_columns(path, data)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if key not in columns:
                problems.append(f"data.{kind}s: {path} has no {key!r} column (the events' {kind} id, "
                                f"data.columns.{kind}_id){_did_you_mean(key, columns)}")
            try:
                check_attribute_columns(data, kind, path, columns)
            except ConfigError as exc:
                problems.append(str(exc))
    return problems


def _sample(data: DataConfig, files: Sequence[str], rows: int) -> List[object]:
    sample: List[object] = []
    for path in files:
        sample += itertools.islice(read_events(path, data), rows - len(sample))
        if len(sample) >= rows:
            break
    return sample


def _sample_findings(sample: Sequence[object]) -> DataCheck:
    quarantined = [row for row in sample if isinstance(row, Quarantined)]
    by_reason: Dict[str, List[Quarantined]] = collections.defaultdict(list)
    for row in quarantined:
        by_reason[row.reason].append(row)
    problems, notes = [], []
    for reason, rows in sorted(by_reason.items(), key=lambda item: -len(item[1])):
        first = rows[0]
        finding = (f"{len(rows)} of the first {len(sample)} rows would be quarantined as {reason} "
                   f"(first: {first.source}: {first.detail})")
        if len(rows) > _MOSTLY * len(sample):
            problems.append(f"{finding}: {_FIXES.get(reason, 'check data.columns')}")
        else:
            notes.append(finding + "; the run counts and quarantines such rows")
    if sample and not problems and len(quarantined) == len(sample):
        problems.append(f"none of the first {len(sample)} rows is usable: check data.columns and data.timestamp_format")
    events = [row for row in sample if not isinstance(row, Quarantined)]
    if events and statistics.median(event.timestamp for event in events) < _EARLIEST_PLAUSIBLE:
        day = datetime.datetime.fromtimestamp(events[0].timestamp, datetime.timezone.utc).date()
        problems.append(f"the timestamps read as dates before 1980 (first: {events[0].source} is {day}): "
                        f"seconds read as milliseconds or microseconds? set data.timestamp_format")
    return DataCheck(problems, notes)


def check_data(data: DataConfig, sample_rows: int = SAMPLE_ROWS) -> DataCheck:
    """Every problem that would stop or spoil a run of ``data``, found by reading the headers and
    the first ``sample_rows`` rows; the problems are independent of each other where they can be
    (a missing events file stops the rest)."""
    try:
        files = list_event_files(data)
    except (FileNotFoundError, ValueError) as exc:
        return DataCheck([f"{exc}"], [])
    problems: List[str] = []
    notes: List[str] = []
    if data.format == "generic":
        problems += _table_problems(data)
        try:
            headers = {path: generic_columns(path, data) for path in files}
        except ValueError as exc:  # a file the format cannot read
            return DataCheck(problems + [str(exc)], notes)
        header_problems = [p for path, columns in headers.items() for p in _header_problems(data, path, columns)]
        notes += _unmapped_flag_notes(data, headers[files[0]])
        if header_problems:  # rows cannot be read against a wrong column map
            notes.append("the rows were not sampled: fix data.columns first")
            return DataCheck(problems + list(dict.fromkeys(header_problems)), notes)
    try:
        sample = _sample(data, files, sample_rows)
    except (FileNotFoundError, ValueError) as exc:  # a header the built-in layouts cannot read
        return DataCheck(problems + [f"{exc}"], notes)
    if not sample:
        return DataCheck(problems + [f"the event files ({', '.join(files)}) hold no rows"], notes)
    findings = _sample_findings(sample)
    return DataCheck(problems + findings.problems, notes + findings.notes)
