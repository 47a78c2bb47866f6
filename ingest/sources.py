"""Readers of interaction logs: every row becomes an ``Event`` or a ``Quarantined`` record.

This module is the readers' API: ``read_events``, ``list_event_files``, ``event_file_parts``,
``load_items``, ``load_users``, ``Event``, ``Quarantined``. Rows and files are read in ``log_files``, values
parsed in ``log_values`` and ``timestamps``, the items/users tables built in ``log_tables``.

Nothing is dropped silently: a row that cannot be used is returned as ``Quarantined`` with a
short reason code, a human-readable detail naming the field and value at fault, and the raw row.
Blank lines carry no row and are skipped. A problem with a whole file (missing column in the
header, unreadable header, no files at all) raises ``ValueError`` / ``FileNotFoundError``
naming the path instead.

Formats (``DataConfig.format``):

``generic``
    CSV with a header row (UTF-8, comma separated, one row per line) or Parquet. ``path`` is a
    directory or the events file itself; ``events``/``items``/``users`` are relative to it (to
    its directory when it is a file), each a file or a directory of files (hidden files and names
    starting with ``_`` are ignored; with ``file_format: auto`` only ``.csv``, ``.csv.gz``,
    ``.parquet`` and ``.pq`` files are read). Without ``events`` the events are ``path`` itself,
    minus any items/users table found there. Columns come from ``data.columns``; a configured
    column missing from a header is an error. The optional flags ``liked``/``disliked`` are read
    only when mapped (unmapped: every event 0; ``ingest.preflight`` says so in one line).
    With ``columns.rating`` set the feedback comes from the rating and the flag columns are not
    read. Items/users tables are keyed by the events' ``user_id``/``item_id`` column names and
    ``item_attributes``/``user_attributes`` are their columns, read as strings.
``movielens-100k``
    ``u.data`` (tab: user, item, rating, seconds), ``u.item`` and ``u.user`` (pipe, latin-1).
    Items: ``genre`` = the first genre flag set (names from ``u.genre`` when present, else the
    standard list), ``""`` when none; ``year`` = year of the release date, ``""`` when missing.
    Users: ``gender``, ``age`` bucketed into ML-1M's codes (1, 18, 25, 35, 45, 50, 56),
    ``occupation``, ``zip`` = its first 3 characters.
``movielens-1m``
    ``ratings*.dat`` or ``ratings*.dat.gz`` (``::``, latin-1: user, item, rating, seconds),
    ``users.dat`` (``gender``, ``age`` code, ``occupation`` code, ``zip`` first 3 characters),
    ``movies.dat`` (``genre`` = first of the pipe-separated genres, ``year`` from "(1995)" at the
    end of the title, ``""`` when absent).
``kuairand``
    ``*.tsv`` / ``*.tsv.gz`` with a header: ``user_id``, ``video_id`` (the item), ``time_ms``,
    ``is_click`` (clicked), ``label`` (1 = like, 0 = hate/dislike). No users table. The items
    table is derived from the log because ``duration_ms`` is constant per video: ``duration`` =
    ``unknown`` for 0 (KuaiRand's "not recorded"), else a doubling bucket ``<7s``, ``7-15s``,
    ``15-30s``, ``30-60s``, ``1-2min``, ``2-5min``, ``>=5min``. Log rows without a video id are
    left to ``read_events`` (which quarantines them); the first valid row of a video fixes its
    bucket.

For the built-in formats the attributes above are all used when ``item_attributes`` /
``user_attributes`` are empty; a non-empty list selects a subset (an unknown name is an error).

Feedback: with a rating (1..5), rating >= 4 is a click, 5 also a like, <= 2 also a dislike.
With flags, ``clicked``/``liked``/``disliked`` are read as given (absent from the config -> 0).

Timestamps become integer unix seconds (UTC, floored), read as ``ingest.timestamps`` says:
``timestamp_format: auto`` reads a decimal number as epoch seconds, milliseconds or microseconds
by its magnitude and anything else as ISO-8601 / RFC 3339 (naive times are UTC); ``seconds``,
``milliseconds``, ``microseconds`` and ``iso8601`` read only that. MovieLens timestamps are
seconds, KuaiRand's milliseconds, whatever ``timestamp_format`` says.

Quarantine reasons. Each row gets the first problem found, checking in this order:

====================== ==========================================================================
``undecodable_row``    bytes that are not valid in the file's encoding (UTF-8; latin-1 for
                       MovieLens never fails)
``malformed_row``      a CSV line the csv module rejects (e.g. one holding a NUL character)
``wrong_column_count`` a line with more or fewer fields than the header (or the fixed layout)
``missing_field``      an empty required value: user_id, item_id, timestamp, the feedback
                       columns read (rating, or clicked/liked/disliked, or label) and click_prob
                       when configured; for tables an empty id; the detail lists all of them
``unparsable_timestamp`` not an epoch number nor ISO-8601 / RFC 3339 (as ``timestamp_format`` allows)
``negative_timestamp`` before 1970-01-01
``absurd_timestamp``   later than ``data.max_timestamp``
``unparsable_rating``  not a number
``rating_out_of_range`` outside 1..5
``invalid_flag``       a clicked/liked/disliked/label value not in {0, 1, true, false}
``unparsable_click_prob`` not a number
``click_prob_out_of_range`` outside [0, 1]
====================== ==========================================================================

Items/users tables add ``duplicate_item`` / ``duplicate_user`` (an id seen before: the first row
is kept), ``invalid_attribute`` (ML-100K age not an integer; KuaiRand duration_ms not a
non-negative integer) and, for the KuaiRand items derived from the log,
``conflicting_item_attribute`` (a row whose duration bucket differs from the video's first one;
the event itself stays valid, only its attribute value is ignored).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Dict, Iterator, Optional, Tuple, Union

from contract.config import ColumnMap, DataConfig
from contract.features import CLICK_PROB, DISLIKED, ITEM_ID, LABEL, LIKED, TIMESTAMP, USER_ID
from ingest.file_parts import FilePart
from ingest.log_files import (  # noqa: F401 (list_event_files, event_file_parts: the readers' API is this module)
    KUAIRAND, Quarantined, Reject, RowReader, TextLayout, event_file_parts, generic_rows, list_event_files, quarantine, split_on,
    text_rows,
)  # fmt: skip
from ingest.log_tables import load_items, load_users  # noqa: F401 (the readers' API is this module)
from ingest.log_values import flag_feedback, label_feedback, parse_click_prob, rating_feedback
from ingest.timestamps import parse_timestamp


@dataclasses.dataclass(frozen=True)
class Event:
    """One validated interaction."""

    user_id: str
    item_id: str
    timestamp: int  # unix seconds, UTC
    clicked: int
    liked: int
    disliked: int
    click_prob: Optional[float]  # synthetic logs only
    source: str  # "path:line" (1-based) or, for Parquet, "path:row N" (1-based)

    def as_dict(self) -> dict:
        return dict(self.__dict__)  # the fields (flat values); dataclasses.asdict deep-copies, slowly


# ---- events ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _EventFormat:
    rows: RowReader
    columns: Dict[str, str]  # canonical field -> column name
    feedback: Callable[[Dict[str, str]], Tuple[int, int, int]]
    timestamp_format: str


def _generic_columns(columns: ColumnMap) -> Dict[str, str]:
    fields = [USER_ID, ITEM_ID, TIMESTAMP]
    fields += ["rating"] if columns.rating else [LABEL, LIKED, DISLIKED]
    fields += [CLICK_PROB]
    return {field: getattr(columns, field) for field in fields if getattr(columns, field)}


_RATING_COLUMNS = (USER_ID, ITEM_ID, "rating", TIMESTAMP)  # MovieLens: user, item, rating, seconds
_IDENTITY = {name: name for name in _RATING_COLUMNS}
_KUAIRAND_COLUMNS = {  # canonical field -> KuaiRand's column
    USER_ID: "user_id", ITEM_ID: "video_id", TIMESTAMP: "time_ms", LABEL: "is_click", "label": "label",
}  # fmt: skip


def _event_format(data: DataConfig) -> _EventFormat:
    if data.format == "generic":
        feedback = rating_feedback if data.columns.rating else flag_feedback
        return _EventFormat(generic_rows(data), _generic_columns(data.columns), feedback, data.timestamp_format)
    if data.format == "kuairand":
        rows = functools.partial(text_rows, layout=KUAIRAND)
        return _EventFormat(rows, _KUAIRAND_COLUMNS, label_feedback, "milliseconds")
    separator = "\t" if data.format == "movielens-100k" else "::"
    layout = TextLayout(split_on(separator), "latin-1", _RATING_COLUMNS)
    return _EventFormat(functools.partial(text_rows, layout=layout), _IDENTITY, rating_feedback, "seconds")


def event_columns(data: DataConfig) -> Dict[str, str]:
    """Canonical field -> the events' column it is read from (``ingest.preflight`` checks the headers)."""
    return _event_format(data).columns


def _event(values: Dict[str, str], event_format: _EventFormat, max_timestamp: int, source: str) -> Event:
    empty = [field for field, value in values.items() if not value]
    if empty:
        raise Reject("missing_field", f"empty: {', '.join(empty)}")
    timestamp = parse_timestamp(values[TIMESTAMP], event_format.timestamp_format, max_timestamp)
    clicked, liked, disliked = event_format.feedback(values)
    click_prob = parse_click_prob(values[CLICK_PROB]) if CLICK_PROB in values else None
    return Event(values[USER_ID], values[ITEM_ID], timestamp, clicked, liked, disliked, click_prob, source)


def read_events(path: str, data: DataConfig, part: Optional[FilePart] = None) -> Iterator[Union[Event, Quarantined]]:
    """Streams one event file, or one part of it (``ingest.file_parts``): one ``Event`` or
    ``Quarantined`` per row, with the source it has in the whole file."""
    event_format = _event_format(data)
    for source, raw, record in event_format.rows(path, list(event_format.columns.values()), part=part):
        if isinstance(record, Reject):
            yield quarantine(source, record, raw)
            continue
        values = {field: record[column] for field, column in event_format.columns.items()}
        try:
            yield _event(values, event_format, data.max_timestamp, source)
        except Reject as reject:
            yield quarantine(source, reject, raw)
