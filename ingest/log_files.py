"""Reading the rows of log files and finding the files (the formats: ``ingest.sources``).

A row is read as ``(source, raw, record)``: ``record`` maps each column to its stripped value, or
is the ``Reject`` saying why the row is unusable (undecodable, malformed, wrong column count);
callers turn a ``Reject`` into a ``Quarantined`` record. A problem with a whole file raises
``ValueError`` / ``FileNotFoundError`` naming the path.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import glob
import gzip
import json
import math
import os
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import pyarrow as pa
import pyarrow.parquet as pq

from contract.config import DataConfig
from ingest.file_parts import FilePart, parquet_parts, text_parts
from ingest.spans import Span, list_spans


@dataclasses.dataclass(frozen=True)
class Quarantined:
    """A row that could not be used."""

    source: str
    reason: str  # snake_case code, see the ingest.sources docstring
    detail: str  # names the field and value at fault
    raw: str  # the row as read


class Reject(Exception):
    """Raised while parsing a row; becomes a ``Quarantined`` record."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


Record = Union[Dict[str, str], Reject]  # column name -> stripped value, or why the row is unusable
Row = Tuple[str, str, Record]  # (source, raw, record)
RowReader = Callable[..., Iterator[Row]]  # (path, needed columns, part=None) -> rows


def quarantine(source: str, reject: Reject, raw: str) -> Quarantined:
    return Quarantined(source, reject.reason, reject.detail, raw)


# ---- reading rows ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TextLayout:
    split: Callable[[str], List[str]]
    encoding: str = "utf-8"
    names: Optional[Tuple[str, ...]] = None  # columns of a header-less file; None: read the header


def _split_csv(text: str) -> List[str]:
    return next(csv.reader([text]))


def split_on(separator: str) -> Callable[[str], List[str]]:
    return lambda text: text.split(separator)


_CSV = TextLayout(_split_csv)
KUAIRAND = TextLayout(split_on("\t"))


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _header(path: str, line: bytes, layout: TextLayout, needed: Sequence[str]) -> Tuple[str, ...]:
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


def text_rows(path: str, needed: Sequence[str], layout: TextLayout, part: Optional[FilePart] = None) -> Iterator[Row]:
    """The rows of a text file, or of the lines starting in ``part``'s byte range (numbered as in
    the whole file: ``part.rows_before`` is the count of newlines before the range)."""
    start, stop = (part.start, part.stop) if part else (0, None)
    with _open_binary(path) as handle:
        names, number, position = layout.names, 0, 0
        if names is None:
            first = handle.readline()
            if not first:
                return
            names, number, position = _header(path, first, layout, needed), 1, len(first)
        if start > 0:  # the first line starting at or after ``start``: past the newline before it
            handle.seek(start - 1)
            position = start - 1 + len(handle.readline())
            number = part.rows_before + (1 if position > start else 0)
        while stop is None or position < stop:
            line = handle.readline()
            if not line:
                return
            position += len(line)
            number += 1
            row = _text_row(f"{path}:{number}", line, names, layout)
            if row is not None:
                yield row


def _text_row(source: str, line: bytes, names: Sequence[str], layout: TextLayout) -> Optional[Row]:
    """One line as a row; None for a blank line (it carries no row)."""
    try:
        text = line.decode(layout.encoding).rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raw = line.decode(layout.encoding, "backslashreplace").rstrip("\r\n")
        detail = f"bytes {exc.start}..{exc.end - 1} of the line are not valid {layout.encoding}"
        return source, raw, Reject("undecodable_row", detail)
    if not text.strip():
        return None
    try:
        fields = layout.split(text)
    except csv.Error as exc:
        return source, text, Reject("malformed_row", f"not a valid CSV line: {exc}")
    if len(fields) != len(names):
        detail = f"{len(fields)} fields, expected {len(names)} ({', '.join(names)})"
        return source, text, Reject("wrong_column_count", detail)
    return source, text, {name: value.strip() for name, value in zip(names, fields)}


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
            raise Reject("undecodable_row", f"bytes value {value!r} is not valid utf-8") from None
    return str(value).strip()


def _parquet_rows(path: str, needed: Sequence[str], part: Optional[FilePart] = None) -> Iterator[Row]:
    """The rows of a Parquet file, or of ``part``'s row groups (numbered as in the whole file)."""
    columns = list(dict.fromkeys(needed))
    parquet_file = pq.ParquetFile(path)
    _check_columns(path, parquet_file.schema_arrow.names, columns)
    groups, number = None, 0
    if part is not None:
        stop = parquet_file.metadata.num_row_groups if part.stop is None else part.stop
        groups, number = list(range(part.start, stop)), part.rows_before
    for batch in parquet_file.iter_batches(columns=columns, row_groups=groups):
        for row in batch.to_pylist():
            number += 1
            source = f"{path}:row {number}"
            raw = json.dumps(row, default=str, ensure_ascii=False)
            try:
                yield source, raw, {name: _as_text(value) for name, value in row.items()}
            except Reject as reject:
                yield source, raw, reject


def _kind_from_name(name: str) -> Optional[str]:
    name = name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return None


def _generic_kind(path: str, data: DataConfig) -> str:
    kind = data.file_format if data.file_format != "auto" else _kind_from_name(path)
    if kind is None:
        raise ValueError(f"{path}: cannot tell CSV from Parquet by the name; set data.file_format")
    return kind


def generic_rows(data: DataConfig) -> RowReader:
    def read(path: str, needed: Sequence[str], part: Optional[FilePart] = None) -> Iterator[Row]:
        if _generic_kind(path, data) == "parquet":
            return _parquet_rows(path, needed, part)
        return text_rows(path, needed, _CSV, part)

    return read


def event_file_parts(path: str, data: DataConfig, part_bytes: int) -> List[FilePart]:
    """An event file cut into parts of about ``part_bytes`` (``ingest.file_parts``)."""
    if data.format == "generic" and _generic_kind(path, data) == "parquet":
        return parquet_parts(path, part_bytes)
    return text_parts(path, part_bytes)


def generic_columns(path: str, data: DataConfig) -> Tuple[str, ...]:
    """The column names of a generic CSV or Parquet file: its header row or its schema."""
    if _generic_kind(path, data) == "parquet":
        try:
            return tuple(pq.ParquetFile(path).schema_arrow.names)
        except pa.ArrowException as exc:
            raise ValueError(f"{path}: not a readable Parquet file ({exc}); is data.file_format right?") from None
    with _open_binary(path) as handle:
        return _header(path, handle.readline(), _CSV, ())


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


def table_files(data: DataConfig, kind: str) -> List[str]:
    relative = getattr(data, f"{kind}s")
    if relative is None:
        return []
    return _data_files(os.path.join(_generic_base(data), relative), data, f"data.{kind}s")


def generic_events_dir(data: DataConfig) -> str:
    """The generic format's events file or directory."""
    if not os.path.exists(data.path):
        raise FileNotFoundError(f"data.path: {data.path} does not exist")
    if data.events is None:
        target = data.path
    elif os.path.isdir(data.path):
        target = os.path.join(data.path, data.events)
    else:
        raise ValueError(f"data.events is set, so data.path must be a directory, not the file {data.path}")
    return target


def _generic_event_files(data: DataConfig, spans: Optional[Sequence[Span]]) -> List[str]:
    target = generic_events_dir(data)
    tables = table_files(data, "item") + table_files(data, "user")
    if data.span_pattern is None:
        return _data_files(target, data, "data.events", exclude=tables)
    chosen = list_spans(target, data.span_pattern) if spans is None else spans
    return [path for span in chosen for path in _data_files(span.path, data, f"span {span.name}", exclude=tables)]


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


def list_event_files(data: DataConfig, spans: Optional[Sequence[Span]] = None) -> List[str]:
    """The event files to read, sorted; raises when there are none. With ``data.span_pattern``:
    the files of ``spans`` (default: every span folder), oldest span first."""
    if data.format == "generic":
        return _generic_event_files(data, spans)
    return _matching(data.path, _EVENT_FILE_PATTERNS[data.format])
