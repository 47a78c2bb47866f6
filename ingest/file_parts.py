"""Event files cut into parts that Beam reads in parallel: one large file is not one worker's job.

A part is a byte range of an uncompressed text file or a run of row groups of a Parquet file;
a gzip file cannot be entered in the middle and is one part. A text line belongs to the part
where its first byte lies, so the parts of a file hold each of its lines exactly once, whatever
the cut points (``ingest.log_files.text_rows`` reads a part).

Parts are planned ahead of the reading (not split dynamically by the runner) because every row
keeps its "path:line" source, the one the whole-file reader gives it: a text part's first line
number is the count of newlines before the part, which ``count_newlines`` finds for each part in
parallel and ``with_lines_before`` adds up. A Parquet part's first row number comes from the
file's metadata.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable, List, Optional, Tuple

import pyarrow.parquet as pq

_CHUNK = 1 << 20  # bytes read at a time when counting newlines


@dataclasses.dataclass(frozen=True)
class FilePart:
    """Lines whose first byte is in [start, stop) of a text file, or row groups [start, stop) of
    a Parquet file; ``stop=None`` runs to the end of the file."""

    path: str
    start: int = 0
    stop: Optional[int] = None
    rows_before: int = 0  # lines (text, header included) or rows (Parquet) before the part
    parquet: bool = False  # start/stop are row groups


def text_parts(path: str, part_bytes: int) -> List[FilePart]:
    """Byte ranges of about ``part_bytes`` (the whole file when it is gzip-compressed)."""
    size = os.path.getsize(path)
    if path.endswith(".gz") or size <= part_bytes:
        return [FilePart(path)]
    starts = list(range(0, size, part_bytes))
    stops: List[Optional[int]] = starts[1:] + [None]
    return [FilePart(path, start, stop) for start, stop in zip(starts, stops)]


def parquet_parts(path: str, part_bytes: int) -> List[FilePart]:
    """Runs of whole row groups of about ``part_bytes`` (their uncompressed size) each."""
    metadata = pq.ParquetFile(path).metadata
    parts, start, rows_before, held_bytes, held_rows = [], 0, 0, 0, 0
    for group in range(metadata.num_row_groups):
        held_bytes += metadata.row_group(group).total_byte_size
        held_rows += metadata.row_group(group).num_rows
        if held_bytes >= part_bytes and group + 1 < metadata.num_row_groups:
            parts.append(FilePart(path, start, group + 1, rows_before, parquet=True))
            start, rows_before, held_bytes, held_rows = group + 1, rows_before + held_rows, 0, 0
    return parts + [FilePart(path, start, None, rows_before, parquet=True)]


def count_newlines(part: FilePart) -> int:
    """Newline bytes in a text part's byte range."""
    left = None if part.stop is None else part.stop - part.start
    count = 0
    with open(part.path, "rb") as handle:
        handle.seek(part.start)
        while left is None or left > 0:
            chunk = handle.read(_CHUNK if left is None else min(_CHUNK, left))
            if not chunk:
                break
            count += chunk.count(b"\n")
            left = None if left is None else left - len(chunk)
    return count


NewlineCount = Tuple[str, int, int]  # (path, part start, newlines in the part)


def newline_counts(part: FilePart) -> Iterable[NewlineCount]:
    """What ``with_lines_before`` needs of this part: nothing for Parquet, nor for the last part of
    a text file (no part comes after it), which is all of a file read as one part."""
    if not part.parquet and part.stop is not None:
        yield part.path, part.start, count_newlines(part)


def with_lines_before(part: FilePart, counts: Iterable[NewlineCount]) -> FilePart:
    """The part with ``rows_before`` set, for a text part: the newlines of its file's earlier parts."""
    if part.parquet:
        return part
    before = sum(count for path, start, count in counts if path == part.path and start < part.start)
    return dataclasses.replace(part, rows_before=before)
