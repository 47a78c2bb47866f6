"""Event files read in parts (ingest.file_parts): the parts of a file give exactly the rows of the
whole file, with the same sources, wherever the cuts fall."""
import gzip

import hypothesis
import hypothesis.strategies as st
import pyarrow as pa
import pyarrow.parquet as pq

from contract.config import DataConfig
from ingest import file_parts, sources

HEADER = b"user_id,item_id,timestamp,clicked,liked,disliked\r\n"
LINES = st.sampled_from([
    b"u1,i1,100,1,0,0\n", b"u2,i2,200,0,1,0\r\n", b"\n", b"   \n", b"u3,i3,300,1\n",  # blank lines, too few fields
    b"u1,i\xff,400,1,0,0\n", b'u1,"i4,500,1,0,0\n', b"u1,i5,not-a-time,1,0,0\n", b"u4,i6,600,1,0,1\n",
])


def _read_in_parts(path, data, part_bytes):
    parts = sources.event_file_parts(path, data, part_bytes)
    counts = [count for part in parts for count in file_parts.newline_counts(part)]
    rows = [row for part in parts for row in sources.read_events(path, data, file_parts.with_lines_before(part, counts))]
    return parts, rows


@hypothesis.settings(max_examples=150, deadline=None, suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(lines=st.lists(LINES, max_size=12), last=st.sampled_from([b"", b"u9,i9,900,1,0,0"]), cut=st.integers(1, 80))
def test_csv_parts_give_the_rows_of_the_whole_file(tmp_path, lines, last, cut):
    """Cuts inside the header, inside a CRLF, right after a newline or past the end; a last line
    without its newline; blank, undecodable and malformed lines keep their line numbers."""
    path = tmp_path / "events.csv"
    path.write_bytes(HEADER + b"".join(lines) + last)
    data = DataConfig(format="generic", path=str(path), columns={"liked": "liked", "disliked": "disliked"})
    whole = list(sources.read_events(str(path), data))
    parts, rows = _read_in_parts(str(path), data, cut)
    assert rows == whole
    size = path.stat().st_size
    assert len(parts) == (-(-size // cut) if size > cut else 1)


def test_header_less_latin1_file_in_parts(tmp_path):
    """MovieLens-1M: no header, latin-1; every cut of a small file gives the whole file's rows."""
    path = tmp_path / "ratings.dat"
    path.write_bytes(b"1::10::5::978300760\n\n2::20::1::978300761\n3::30::9::978300762\n4::40::4::97830\xe9\n")
    data = DataConfig(format="movielens-1m", path=str(tmp_path))
    whole = list(sources.read_events(str(path), data))
    assert [type(row).__name__ for row in whole] == ["Event", "Event", "Quarantined", "Quarantined"]
    for cut in range(1, path.stat().st_size + 2):
        assert _read_in_parts(str(path), data, cut)[1] == whole, cut


def test_parquet_parts_are_runs_of_row_groups_numbered_as_in_the_file(tmp_path):
    path = str(tmp_path / "events.parquet")
    table = pa.table({"user_id": [f"u{n % 3}" for n in range(10)], "item_id": [f"i{n}" for n in range(10)],
                      "timestamp": [100 + n if n != 4 else None for n in range(10)], "clicked": [n % 2 for n in range(10)]})
    pq.write_table(table, path, row_group_size=3)  # row groups of 3, 3, 3, 1 rows
    data = DataConfig(format="generic", path=path)
    whole = list(sources.read_events(path, data))
    parts, rows = _read_in_parts(path, data, 1)
    assert [(p.start, p.stop, p.rows_before) for p in parts] == [(0, 1, 0), (1, 2, 3), (2, 3, 6), (3, None, 9)]
    assert rows == whole and rows[4].source == f"{path}:row 5" and rows[4].reason == "missing_field"
    assert len(_read_in_parts(path, data, 1 << 30)[0]) == 1


def test_a_gzip_file_is_one_part(tmp_path):
    path = tmp_path / "events.csv.gz"
    path.write_bytes(gzip.compress(HEADER + b"u1,i1,100,1,0,0\n" * 50))
    data = DataConfig(format="generic", path=str(path), columns={"liked": "liked", "disliked": "disliked"})
    assert sources.event_file_parts(str(path), data, 10) == [file_parts.FilePart(str(path))]
