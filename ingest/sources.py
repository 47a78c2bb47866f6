"""Readers of interaction logs: every row becomes an ``Event`` or a ``Quarantined`` record.

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
    column missing from a header is an error (set e.g. ``liked: null`` when the log has none).
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

Timestamps become integer unix seconds (UTC). ``timestamp_format: auto`` reads an integer as
seconds, or as milliseconds when it exceeds 1e11, and anything else as ISO-8601 (Python's
``datetime.fromisoformat`` plus a trailing ``Z``; naive times are UTC). Milliseconds and
fractional ISO seconds are floored. MovieLens timestamps are seconds, KuaiRand's milliseconds,
whatever ``timestamp_format`` says.

Quarantine reasons. Each row gets the first problem found, checking in this order:

====================== ==========================================================================
``undecodable_row``    bytes that are not valid in the file's encoding (UTF-8; latin-1 for
                       MovieLens never fails)
``malformed_row``      a CSV line the csv module rejects (e.g. one holding a NUL character)
``wrong_column_count`` a line with more or fewer fields than the header (or the fixed layout)
``missing_field``      an empty required value: user_id, item_id, timestamp, the feedback
                       columns read (rating, or clicked/liked/disliked, or label) and click_prob
                       when configured; for tables an empty id; the detail lists all of them
``unparsable_timestamp`` not an integer (seconds/milliseconds) or not ISO-8601
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

import bisect
import csv
import dataclasses
import datetime
import functools
import glob
import gzip
import json
import math
import os
import re
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import pyarrow.parquet as pq

from contract.features import DISLIKED, ITEM_ID, LABEL, LIKED, USER_ID
from contract.config import ColumnMap, DataConfig, attribute_names

Table = Dict[str, Dict[str, str]]


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


@dataclasses.dataclass(frozen=True)
class Quarantined:
    """A row that could not be used."""

    source: str
    reason: str  # snake_case code, see the module docstring
    detail: str  # names the field and value at fault
    raw: str  # the row as read


class _Reject(Exception):
    """Raised while parsing a row; becomes a ``Quarantined`` record."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


Record = Union[Dict[str, str], _Reject]  # column name -> stripped value, or why the row is unusable
Row = Tuple[str, str, Record]  # (source, raw, record)
RowReader = Callable[[str, Sequence[str]], Iterator[Row]]  # (path, needed columns) -> rows


def _quarantine(source: str, reject: _Reject, raw: str) -> Quarantined:
    return Quarantined(source, reject.reason, reject.detail, raw)


# ---- reading rows ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TextLayout:
    split: Callable[[str], List[str]]
    encoding: str = "utf-8"
    names: Optional[Tuple[str, ...]] = None  # columns of a header-less file; None: read the header


def _split_csv(text: str) -> List[str]:
    return next(csv.reader([text]))


def _split_on(separator: str) -> Callable[[str], List[str]]:
    return lambda text: text.split(separator)


_CSV = _TextLayout(_split_csv)
_KUAIRAND = _TextLayout(_split_on("\t"))


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _header(path: str, line: bytes, layout: _TextLayout, needed: Sequence[str]) -> Tuple[str, ...]:
    try:
        fields = layout.split(line.decode(layout.encoding).lstrip("\ufeff").rstrip("\r\n"))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: cannot read the header row: {exc}") from None
    names = tuple(name.strip() for name in fields)
    _check_columns(path, names, needed)
    return names


def _check_columns(path: str, names: Sequence[str], needed: Sequence[str]) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{path}: column(s) {repeated} appear more than once in the header")
    missing = [name for name in needed if name not in names]
    if missing:
        raise ValueError(f"{path}: column(s) {missing} not found; the file has {list(names)}")


def _text_rows(path: str, needed: Sequence[str], layout: _TextLayout) -> Iterator[Row]:
    with _open_binary(path) as handle:
        names = layout.names
        for number, line in enumerate(handle, start=1):
            if names is None:
                names = _header(path, line, layout, needed)
                continue
            source = f"{path}:{number}"
            try:
                text = line.decode(layout.encoding).rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raw = line.decode(layout.encoding, "backslashreplace").rstrip("\r\n")
                detail = f"bytes {exc.start}..{exc.end - 1} of the line are not valid {layout.encoding}"
                yield source, raw, _Reject("undecodable_row", detail)
                continue
            if not text.strip():
                continue
            try:
                fields = layout.split(text)
            except csv.Error as exc:
                yield source, text, _Reject("malformed_row", f"not a valid CSV line: {exc}")
                continue
            if len(fields) != len(names):
                detail = f"{len(fields)} fields, expected {len(names)} ({', '.join(names)})"
                yield source, text, _Reject("wrong_column_count", detail)
            else:
                yield source, text, {name: value.strip() for name, value in zip(names, fields)}


def _as_text(value: object) -> str:
    """A Parquet value as the string a CSV file would hold."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise _Reject("undecodable_row", f"bytes value {value!r} is not valid utf-8") from None
    return str(value).strip()


def _parquet_rows(path: str, needed: Sequence[str]) -> Iterator[Row]:
    columns = list(dict.fromkeys(needed))
    parquet_file = pq.ParquetFile(path)
    _check_columns(path, parquet_file.schema_arrow.names, columns)
    number = 0
    for batch in parquet_file.iter_batches(columns=columns):
        for row in batch.to_pylist():
            number += 1
            source = f"{path}:row {number}"
            raw = json.dumps(row, default=str, ensure_ascii=False)
            try:
                yield source, raw, {name: _as_text(value) for name, value in row.items()}
            except _Reject as reject:
                yield source, raw, reject


def _kind_from_name(name: str) -> Optional[str]:
    name = name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return None


def _generic_rows(data: DataConfig) -> RowReader:
    def read(path: str, needed: Sequence[str]) -> Iterator[Row]:
        kind = data.file_format if data.file_format != "auto" else _kind_from_name(path)
        if kind is None:
            raise ValueError(f"{path}: cannot tell CSV from Parquet by the name; set data.file_format")
        return _parquet_rows(path, needed) if kind == "parquet" else _text_rows(path, needed, _CSV)

    return read


# ---- files -------------------------------------------------------------------------------------


def _generic_base(data: DataConfig) -> str:
    """The directory that ``events``/``items``/``users`` are relative to."""
    return data.path if os.path.isdir(data.path) else os.path.dirname(data.path)


def _data_files(target: str, data: DataConfig, what: str, exclude: Sequence[str] = ()) -> List[str]:
    if os.path.isfile(target):
        return [target]
    if not os.path.isdir(target):
        raise FileNotFoundError(f"{what}: {target} does not exist")
    excluded = {os.path.abspath(path) for path in exclude}
    files = sorted(
        os.path.join(target, name)
        for name in os.listdir(target)
        if not name.startswith((".", "_"))
        and os.path.isfile(os.path.join(target, name))
        and (data.file_format != "auto" or _kind_from_name(name))
        and os.path.abspath(os.path.join(target, name)) not in excluded
    )
    if not files:
        raise FileNotFoundError(f"{what}: no CSV or Parquet file in {target}")
    return files


def _table_files(data: DataConfig, kind: str) -> List[str]:
    relative = getattr(data, f"{kind}s")
    if relative is None:
        return []
    return _data_files(os.path.join(_generic_base(data), relative), data, f"data.{kind}s")


def _generic_event_files(data: DataConfig) -> List[str]:
    if data.events is None:
        target = data.path
    elif os.path.isdir(data.path):
        target = os.path.join(data.path, data.events)
    else:
        raise ValueError(f"data.events is set, so data.path must be a directory, not the file {data.path}")
    tables = _table_files(data, "item") + _table_files(data, "user")
    return _data_files(target, data, "data.events", exclude=tables)


def _matching(directory: str, patterns: Sequence[str]) -> List[str]:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"data.path: {directory} is not a directory")
    found = {f for pattern in patterns for f in glob.glob(os.path.join(glob.escape(directory), pattern))}
    if not found:
        raise FileNotFoundError(f"data.path: no file matching {' or '.join(patterns)} in {directory}")
    return sorted(found)


_EVENT_FILE_PATTERNS = {
    "movielens-100k": ("u.data",),
    "movielens-1m": ("ratings*.dat", "ratings*.dat.gz"),
    "kuairand": ("*.tsv", "*.tsv.gz"),
}


def list_event_files(data: DataConfig) -> List[str]:
    """The event files to read, sorted; raises when there are none."""
    if data.format == "generic":
        return _generic_event_files(data)
    return _matching(data.path, _EVENT_FILE_PATTERNS[data.format])


# ---- parsing values ----------------------------------------------------------------------------

_INTEGER = re.compile(r"[+-]?[0-9]+")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _iso_seconds(text: str) -> int:
    try:
        moment = datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "Zz" else text)
    except ValueError:
        raise _Reject("unparsable_timestamp", f"timestamp {text!r} is neither an integer nor ISO-8601") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return (moment - _EPOCH) // datetime.timedelta(seconds=1)


def _timestamp(text: str, timestamp_format: str, max_timestamp: int) -> int:
    if timestamp_format == "auto":
        if not _INTEGER.fullmatch(text):
            timestamp_format = "iso8601"
        else:
            timestamp_format = "milliseconds" if int(text) > 10**11 else "seconds"
    if timestamp_format == "iso8601":
        seconds = _iso_seconds(text)
    elif not _INTEGER.fullmatch(text):
        raise _Reject("unparsable_timestamp", f"timestamp {text!r} is not an integer number of {timestamp_format}")
    else:
        seconds = int(text) // 1000 if timestamp_format == "milliseconds" else int(text)
    if seconds < 0:
        raise _Reject("negative_timestamp", f"timestamp {text!r} is before 1970")
    if seconds > max_timestamp:
        raise _Reject("absurd_timestamp", f"timestamp {text!r} is after data.max_timestamp={max_timestamp}")
    return seconds


def _flag(values: Dict[str, str], field: str) -> int:
    value = values[field].lower()
    if value in ("1", "true"):
        return 1
    if value in ("0", "false"):
        return 0
    raise _Reject("invalid_flag", f"{field} {values[field]!r} is not 0, 1, true or false")


def _flag_feedback(values: Dict[str, str]) -> Tuple[int, int, int]:
    clicked, liked, disliked = (_flag(values, f) if f in values else 0 for f in (LABEL, LIKED, DISLIKED))
    return clicked, liked, disliked


def _rating_feedback(values: Dict[str, str]) -> Tuple[int, int, int]:
    try:
        rating = float(values["rating"])
    except ValueError:
        raise _Reject("unparsable_rating", f"rating {values['rating']!r} is not a number") from None
    if math.isnan(rating):
        raise _Reject("unparsable_rating", f"rating {values['rating']!r} is not a number")
    if not 1 <= rating <= 5:
        raise _Reject("rating_out_of_range", f"rating {values['rating']!r} is outside 1..5")
    return int(rating >= 4), int(rating == 5), int(rating <= 2)


def _label_feedback(values: Dict[str, str]) -> Tuple[int, int, int]:
    """KuaiRand: is_click gives the click, label 1 a like and label 0 a dislike."""
    liked = _flag(values, "label")
    return _flag(values, LABEL), liked, 1 - liked


def _click_prob(text: str) -> float:
    try:
        prob = float(text)
    except ValueError:
        raise _Reject("unparsable_click_prob", f"click_prob {text!r} is not a number") from None
    if math.isnan(prob):
        raise _Reject("unparsable_click_prob", f"click_prob {text!r} is not a number")
    if not 0 <= prob <= 1:
        raise _Reject("click_prob_out_of_range", f"click_prob {text!r} is outside [0, 1]")
    return prob


# ---- events ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _EventFormat:
    rows: RowReader
    columns: Dict[str, str]  # canonical field -> column name
    feedback: Callable[[Dict[str, str]], Tuple[int, int, int]]
    timestamp_format: str


def _generic_columns(columns: ColumnMap) -> Dict[str, str]:
    fields = ["user_id", "item_id", "timestamp"]
    fields += ["rating"] if columns.rating else ["clicked", "liked", "disliked"]
    fields += ["click_prob"]
    return {field: getattr(columns, field) for field in fields if getattr(columns, field)}


_RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
_IDENTITY = {name: name for name in _RATING_COLUMNS}
_KUAIRAND_COLUMNS = {
    "user_id": "user_id", "item_id": "video_id", "timestamp": "time_ms", "clicked": "is_click", "label": "label",
}  # fmt: skip


def _event_format(data: DataConfig) -> _EventFormat:
    if data.format == "generic":
        feedback = _rating_feedback if data.columns.rating else _flag_feedback
        return _EventFormat(_generic_rows(data), _generic_columns(data.columns), feedback, data.timestamp_format)
    if data.format == "kuairand":
        rows = functools.partial(_text_rows, layout=_KUAIRAND)
        return _EventFormat(rows, _KUAIRAND_COLUMNS, _label_feedback, "milliseconds")
    separator = "\t" if data.format == "movielens-100k" else "::"
    layout = _TextLayout(_split_on(separator), "latin-1", _RATING_COLUMNS)
    return _EventFormat(functools.partial(_text_rows, layout=layout), _IDENTITY, _rating_feedback, "seconds")


def _event(values: Dict[str, str], event_format: _EventFormat, max_timestamp: int, source: str) -> Event:
    empty = [field for field, value in values.items() if not value]
    if empty:
        raise _Reject("missing_field", f"empty: {', '.join(empty)}")
    timestamp = _timestamp(values["timestamp"], event_format.timestamp_format, max_timestamp)
    clicked, liked, disliked = event_format.feedback(values)
    click_prob = _click_prob(values["click_prob"]) if "click_prob" in values else None
    return Event(values[USER_ID], values[ITEM_ID], timestamp, clicked, liked, disliked, click_prob, source)


def read_events(path: str, data: DataConfig) -> Iterator[Union[Event, Quarantined]]:
    """Streams one event file: one ``Event`` or ``Quarantined`` per row."""
    event_format = _event_format(data)
    for source, raw, record in event_format.rows(path, list(event_format.columns.values())):
        if isinstance(record, _Reject):
            yield _quarantine(source, record, raw)
            continue
        values = {field: record[column] for field, column in event_format.columns.items()}
        try:
            yield _event(values, event_format, data.max_timestamp, source)
        except _Reject as reject:
            yield _quarantine(source, reject, raw)


# ---- attributes and tables ---------------------------------------------------------------------


def _table_row(record: Record, key: str, kind: str, table: Table, attributes_of) -> Tuple[str, Dict[str, str]]:
    if isinstance(record, _Reject):
        raise record
    if not record[key]:
        raise _Reject("missing_field", f"empty: {key}")
    if record[key] in table:
        raise _Reject(f"duplicate_{kind}", f"{kind} {record[key]!r} appeared in an earlier row, which is kept")
    return record[key], attributes_of(record)


def _load_table(
    files: Sequence[str],
    rows: RowReader,
    key: str,
    kind: str,
    attributes_of: Callable[[Dict[str, str]], Dict[str, str]],
    selected: Sequence[str],
) -> Tuple[Table, List[Quarantined]]:
    table: Table = {}
    quarantined: List[Quarantined] = []
    for path in files:
        for source, raw, record in rows(path, [key, *selected]):
            try:
                row_key, attributes = _table_row(record, key, kind, table, attributes_of)
            except _Reject as reject:
                quarantined.append(_quarantine(source, reject, raw))
                continue
            table[row_key] = {name: attributes[name] for name in selected}
    return table, quarantined


_ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
_AGE_BOUNDS = (18, 25, 35, 45, 50, 56)
_AGE_CODES = ("1", "18", "25", "35", "45", "50", "56")  # ML-1M's age codes
_YEAR_AT_END = re.compile(r"([0-9]{4})$")
_YEAR_IN_TITLE = re.compile(r"\(([0-9]{4})\)\s*$")


def _ml100k_genres(directory: str) -> Tuple[str, ...]:
    """Genre names in flag order, from ``u.genre`` ("name|index" lines) when it exists."""
    path = os.path.join(directory, "u.genre")
    if not os.path.exists(path):
        return _ML100K_GENRES
    with open(path, encoding="latin-1") as handle:
        pairs = [line.strip().rsplit("|", 1) for line in handle if line.strip()]
    return tuple(name for name, _ in sorted(pairs, key=lambda pair: int(pair[1])))


def _ml100k_user(record: Dict[str, str]) -> Dict[str, str]:
    if not _INTEGER.fullmatch(record["age"]):
        raise _Reject("invalid_attribute", f"age {record['age']!r} is not an integer")
    age = _AGE_CODES[bisect.bisect_right(_AGE_BOUNDS, int(record["age"]))]
    return {"gender": record["gender"], "age": age, "occupation": record["occupation"], "zip": record["zip"][:3]}


def _ml1m_user(record: Dict[str, str]) -> Dict[str, str]:
    return {**record, "zip": record["zip"][:3]}


def _ml1m_item(record: Dict[str, str]) -> Dict[str, str]:
    year = _YEAR_IN_TITLE.search(record["title"])
    return {"genre": record["genres"].split("|")[0], "year": year.group(1) if year else ""}


def _ml100k_item_parser(directory: str) -> Tuple[_TextLayout, Callable[[Dict[str, str]], Dict[str, str]]]:
    genres = _ml100k_genres(directory)
    names = ("item_id", "title", "release_date", "video_release_date", "url") + genres

    def attributes(record: Dict[str, str]) -> Dict[str, str]:
        year = _YEAR_AT_END.search(record["release_date"])
        genre = next((name for name in genres if record[name] == "1"), "")
        return {"genre": genre, "year": year.group(1) if year else ""}

    return _TextLayout(_split_on("|"), "latin-1", names), attributes


_ML_USER_COLUMNS = ("user_id", "gender", "age", "occupation", "zip")


def _movielens_table(data: DataConfig, kind: str, selected: Sequence[str]) -> Tuple[Table, List[Quarantined]]:
    if data.format == "movielens-100k" and kind == "item":
        file, (layout, attributes_of) = "u.item", _ml100k_item_parser(data.path)
    elif data.format == "movielens-100k":
        layout = _TextLayout(_split_on("|"), "latin-1", ("user_id", "age", "gender", "occupation", "zip"))
        file, attributes_of = "u.user", _ml100k_user
    elif kind == "item":
        layout = _TextLayout(_split_on("::"), "latin-1", ("item_id", "title", "genres"))
        file, attributes_of = "movies.dat", _ml1m_item
    else:
        layout = _TextLayout(_split_on("::"), "latin-1", _ML_USER_COLUMNS)
        file, attributes_of = "users.dat", _ml1m_user
    rows = functools.partial(_text_rows, layout=layout)
    return _load_table([os.path.join(data.path, file)], rows, f"{kind}_id", kind, attributes_of, selected)


_DURATION_BOUNDS_S = (7, 15, 30, 60, 120, 300)
_DURATION_LABELS = ("<7s", "7-15s", "15-30s", "30-60s", "1-2min", "2-5min", ">=5min")


def _duration_bucket(text: str) -> str:
    if not re.fullmatch(r"[0-9]+", text):
        raise _Reject("invalid_attribute", f"duration_ms {text!r} is not a non-negative integer")
    if int(text) == 0:
        return "unknown"
    return _DURATION_LABELS[bisect.bisect_right(_DURATION_BOUNDS_S, int(text) / 1000)]


def _add_duration(table: Table, record: Dict[str, str]) -> None:
    bucket = _duration_bucket(record["duration_ms"])
    first = table.setdefault(record["video_id"], {"duration": bucket})["duration"]
    if bucket != first:
        detail = f"video {record['video_id']!r}: duration bucket {bucket!r} differs from the earlier {first!r} (kept)"
        raise _Reject("conflicting_item_attribute", detail)


def _kuairand_items(data: DataConfig) -> Tuple[Table, List[Quarantined]]:
    table: Table = {}
    quarantined: List[Quarantined] = []
    for path in list_event_files(data):
        for source, raw, record in _text_rows(path, ("video_id", "duration_ms"), _KUAIRAND):
            if isinstance(record, _Reject) or not record["video_id"]:
                continue  # read_events quarantines this row
            try:
                _add_duration(table, record)
            except _Reject as reject:
                quarantined.append(_quarantine(source, reject, raw))
    return table, quarantined


def _generic_table(
    data: DataConfig, kind: str, selected: Sequence[str]
) -> Tuple[Optional[Table], List[Quarantined]]:
    files = _table_files(data, kind)
    if not files:
        return None, []
    key = getattr(data.columns, f"{kind}_id")
    return _load_table(files, _generic_rows(data), key, kind, lambda record: record, selected)


def load_items(data: DataConfig) -> Tuple[Optional[Table], List[Quarantined]]:
    """item_id -> {attribute: value}, or None when there is no items table; and its bad rows."""
    _, selected = attribute_names(data)
    if data.format == "generic":
        return _generic_table(data, "item", selected)
    if data.format == "kuairand":
        return _kuairand_items(data)
    return _movielens_table(data, "item", selected)


def load_users(data: DataConfig) -> Tuple[Optional[Table], List[Quarantined]]:
    """user_id -> {attribute: value}, or None when there is no users table; and its bad rows."""
    selected, _ = attribute_names(data)
    if data.format == "generic":
        return _generic_table(data, "user", selected)
    if data.format == "kuairand":
        return None, []
    return _movielens_table(data, "user", selected)
