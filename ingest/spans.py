"""Daily retraining: the dated folders of an events directory as TFX spans.

With ``data.span_pattern`` (e.g. ``{YYYY}-{MM}-{DD}``) each folder of the events directory whose
name matches the pattern is one span. Its number follows TFX's input-config conventions: a date
pattern gives the days since 1970-01-01 (``2024-01-02`` is span 19724), ``{SPAN}`` the number
written in the name. Folders that do not match are ignored, and so are files beside them.

A run ingests the spans after the last one an earlier run ingested (``spans_to_ingest``); the
histories of earlier spans come in as the state that run left (``ingest.sequences``), so no span
is read twice and no event of a later span reaches an earlier example.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import re
from typing import List, Optional

from contract.config import NUMBER_PART, span_pattern_problem

_GROUPS = {"{YYYY}": r"(?P<YYYY>\d{4})", "{MM}": r"(?P<MM>\d{2})", "{DD}": r"(?P<DD>\d{2})", NUMBER_PART: r"(?P<SPAN>\d+)"}
_EPOCH = datetime.date(1970, 1, 1)


@dataclasses.dataclass(frozen=True)
class Span:
    number: int
    name: str  # the folder's name
    path: str


def _regex(pattern: str) -> re.Pattern:
    problem = span_pattern_problem(pattern)
    if problem:
        raise ValueError(f"data.span_pattern {pattern!r}: {problem}")
    text = re.escape(pattern)
    for part, group in _GROUPS.items():
        text = text.replace(re.escape(part), group)
    return re.compile(text)


def span_number(pattern: str, name: str) -> Optional[int]:
    """The span number of a folder name, or None when the name does not match ``pattern``."""
    match = _regex(pattern).fullmatch(name)
    if match is None:
        return None
    if "SPAN" in match.groupdict():
        return int(match["SPAN"])
    try:
        day = datetime.date(int(match["YYYY"]), int(match["MM"]), int(match["DD"]))
    except ValueError:
        return None  # 2024-13-40 matches the digits but is no date
    return (day - _EPOCH).days


def list_spans(events_dir: str, pattern: str) -> List[Span]:
    """The span folders of ``events_dir``, oldest first; raises when there is none."""
    if not os.path.isdir(events_dir):
        raise FileNotFoundError(f"data.span_pattern is set, so the events must be a directory of span folders: {events_dir} is not a directory")
    spans = []
    for name in os.listdir(events_dir):
        number = span_number(pattern, name)
        if number is not None and os.path.isdir(os.path.join(events_dir, name)):
            spans.append(Span(number, name, os.path.join(events_dir, name)))
    if not spans:
        raise FileNotFoundError(f"no folder in {events_dir} matches data.span_pattern {pattern!r}")
    numbers = [s.number for s in spans]
    repeated = sorted({s.name for s in spans if numbers.count(s.number) > 1})
    if repeated:
        raise ValueError(f"folders {repeated} in {events_dir} name the same span")
    return sorted(spans, key=lambda s: s.number)


def spans_to_ingest(spans: List[Span], last_ingested: Optional[int]) -> List[Span]:
    """The spans after ``last_ingested`` (all of them when nothing was ingested before)."""
    return [s for s in spans if last_ingested is None or s.number > last_ingested]
