"""The items and users tables: generic CSV/Parquet tables, MovieLens's ``u.item``/``u.user`` and
``movies.dat``/``users.dat``, KuaiRand's items derived from the log (``ingest.sources`` describes
the attributes and the quarantine reasons)."""
from __future__ import annotations

import bisect
import functools
import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from contract.config import DataConfig, attribute_names
from contract.features import ITEM_ID, USER_ID
from ingest.log_files import (
    KUAIRAND, Quarantined, Record, Reject, RowReader, TextLayout, generic_rows, list_event_files,
    quarantine, split_on, table_files, text_rows,
)  # fmt: skip
from ingest.log_values import INTEGER

Table = Dict[str, Dict[str, str]]
_KEY = {"item": ITEM_ID, "user": USER_ID}  # a table kind -> its key column (the headerless layouts name it so)


def _table_row(record: Record, key: str, kind: str, table: Table, attributes_of) -> Tuple[str, Dict[str, str]]:
    if isinstance(record, Reject):
        raise record
    if not record[key]:
        raise Reject("missing_field", f"empty: {key}")
    if record[key] in table:
        raise Reject(f"duplicate_{kind}", f"{kind} {record[key]!r} appeared in an earlier row, which is kept")
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
            except Reject as reject:
                quarantined.append(quarantine(source, reject, raw))
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
    if not INTEGER.fullmatch(record["age"]):
        raise Reject("invalid_attribute", f"age {record['age']!r} is not an integer")
    age = _AGE_CODES[bisect.bisect_right(_AGE_BOUNDS, int(record["age"]))]
    return {"gender": record["gender"], "age": age, "occupation": record["occupation"], "zip": record["zip"][:3]}


def _ml1m_user(record: Dict[str, str]) -> Dict[str, str]:
    return {**record, "zip": record["zip"][:3]}


def _ml1m_item(record: Dict[str, str]) -> Dict[str, str]:
    year = _YEAR_IN_TITLE.search(record["title"])
    return {"genre": record["genres"].split("|")[0], "year": year.group(1) if year else ""}


def _ml100k_item_parser(directory: str) -> Tuple[TextLayout, Callable[[Dict[str, str]], Dict[str, str]]]:
    genres = _ml100k_genres(directory)
    names = (ITEM_ID, "title", "release_date", "video_release_date", "url") + genres

    def attributes(record: Dict[str, str]) -> Dict[str, str]:
        year = _YEAR_AT_END.search(record["release_date"])
        genre = next((name for name in genres if record[name] == "1"), "")
        return {"genre": genre, "year": year.group(1) if year else ""}

    return TextLayout(split_on("|"), "latin-1", names), attributes


_ML_USER_COLUMNS = (USER_ID, "gender", "age", "occupation", "zip")


def _movielens_table(data: DataConfig, kind: str, selected: Sequence[str]) -> Tuple[Table, List[Quarantined]]:
    if data.format == "movielens-100k" and kind == "item":
        file, (layout, attributes_of) = "u.item", _ml100k_item_parser(data.path)
    elif data.format == "movielens-100k":
        layout = TextLayout(split_on("|"), "latin-1", (USER_ID, "age", "gender", "occupation", "zip"))
        file, attributes_of = "u.user", _ml100k_user
    elif kind == "item":
        layout = TextLayout(split_on("::"), "latin-1", (ITEM_ID, "title", "genres"))
        file, attributes_of = "movies.dat", _ml1m_item
    else:
        layout = TextLayout(split_on("::"), "latin-1", _ML_USER_COLUMNS)
        file, attributes_of = "users.dat", _ml1m_user
    rows = functools.partial(text_rows, layout=layout)
    return _load_table([os.path.join(data.path, file)], rows, _KEY[kind], kind, attributes_of, selected)


_DURATION_BOUNDS_S = (7, 15, 30, 60, 120, 300)
_DURATION_LABELS = ("<7s", "7-15s", "15-30s", "30-60s", "1-2min", "2-5min", ">=5min")


def _duration_bucket(text: str) -> str:
    if not re.fullmatch(r"[0-9]+", text):
        raise Reject("invalid_attribute", f"duration_ms {text!r} is not a non-negative integer")
    if int(text) == 0:
        return "unknown"
    return _DURATION_LABELS[bisect.bisect_right(_DURATION_BOUNDS_S, int(text) / 1000)]


def _add_duration(table: Table, record: Dict[str, str]) -> None:
    bucket = _duration_bucket(record["duration_ms"])
    first = table.setdefault(record["video_id"], {"duration": bucket})["duration"]
    if bucket != first:
        detail = f"video {record['video_id']!r}: duration bucket {bucket!r} differs from the earlier {first!r} (kept)"
        raise Reject("conflicting_item_attribute", detail)


def _kuairand_items(data: DataConfig) -> Tuple[Table, List[Quarantined]]:
    table: Table = {}
    quarantined: List[Quarantined] = []
    for path in list_event_files(data):
        for source, raw, record in text_rows(path, ("video_id", "duration_ms"), KUAIRAND):
            if isinstance(record, Reject) or not record["video_id"]:
                continue  # read_events quarantines this row
            try:
                _add_duration(table, record)
            except Reject as reject:
                quarantined.append(quarantine(source, reject, raw))
    return table, quarantined


def _generic_table(
    data: DataConfig, kind: str, selected: Sequence[str]
) -> Tuple[Optional[Table], List[Quarantined]]:
    files = table_files(data, kind)
    if not files:
        return None, []
    key = getattr(data.columns, _KEY[kind])
    return _load_table(files, generic_rows(data), key, kind, lambda record: record, selected)


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
