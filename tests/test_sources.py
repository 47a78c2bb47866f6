"""Readers of interaction logs: tiny handwritten fixtures in every supported format."""
import datetime
import gzip
import os

import hypothesis
import hypothesis.strategies as st
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contract.config import DataConfig, attribute_names
from ingest import sources
from ingest.sources import Event, Quarantined

FLAG_HEADER = "user_id,item_id,timestamp,clicked,liked,disliked,click_prob"
KUAIRAND_HEADER = (
    "user_id\tvideo_id\tdate\thourmin\ttime_ms\tis_click\tis_follow\tis_comment\tis_forward\tlong_view"
    "\tplay_time_ms\tduration_ms\tcomment_stay_time\tis_profile_enter\tlabel\ttimestamp"
)


def write(path, content, encoding="utf-8"):
    """Writes text (or bytes) to ``path``, gzip-compressed when the name ends with .gz."""
    data = content if isinstance(content, bytes) else content.encode(encoding)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as handle:
        handle.write(data)
    return path


def generic(tmp_path, **overrides):
    """A generic config of ``tmp_path``/events.csv, its like/dislike flags mapped unless ``columns`` says otherwise."""
    columns = {"liked": "liked", "disliked": "disliked", **overrides.pop("columns", {})}
    settings = {"format": "generic", "path": str(tmp_path), "events": "events.csv", "columns": columns}
    return DataConfig(**{**settings, **overrides})


def read_all(data):
    return [row for path in sources.list_event_files(data) for row in sources.read_events(path, data)]


def read_csv_rows(tmp_path, header, rows, **overrides):
    path = write(str(tmp_path / "events.csv"), "\n".join([header, *rows]) + "\n")
    return path, list(sources.read_events(path, generic(tmp_path, **overrides)))


# ---- generic ------------------------------------------------------------------------------------


def test_generic_csv_with_flags_and_tables(tmp_path):
    events = write(str(tmp_path / "events.csv"), "user_id,item_id,timestamp,clicked,liked,disliked\n"
                   "u1,i1,100,1,1,0\n"
                   "u1, i2 ,200,0,0,0\n"
                   " \t \n"
                   "u2,i1,300,true,false,TRUE\n")  # fmt: skip
    write(str(tmp_path / "items.csv"), "item_id,category,brand,price\ni1,c1,b1,9.99\ni2,c2,,5\n")
    write(str(tmp_path / "users.csv"), "user_id,region\nu1,north\nu2,south\n")
    data = generic(tmp_path, items="items.csv", users="users.csv",
                   item_attributes=["brand", "category"], user_attributes=["region"])  # fmt: skip

    assert read_all(data) == [
        Event("u1", "i1", 100, 1, 1, 0, None, f"{events}:2"),
        Event("u1", "i2", 200, 0, 0, 0, None, f"{events}:3"),
        Event("u2", "i1", 300, 1, 0, 1, None, f"{events}:5"),
    ]
    assert sources.load_items(data) == ({"i1": {"brand": "b1", "category": "c1"}, "i2": {"brand": "", "category": "c2"}}, [])
    assert sources.load_users(data) == ({"u1": {"region": "north"}, "u2": {"region": "south"}}, [])
    assert attribute_names(data) == (["region"], ["brand", "category"])


def test_event_as_dict():
    event = Event("u1", "i1", 100, 1, 0, 0, 0.25, "f:2")
    assert event.as_dict() == {
        "user_id": "u1", "item_id": "i1", "timestamp": 100, "clicked": 1, "liked": 0, "disliked": 0,
        "click_prob": 0.25, "source": "f:2",
    }  # fmt: skip


def test_generic_custom_column_names_and_click_prob(tmp_path):
    columns = {"user_id": "uid", "item_id": "iid", "timestamp": "ts", "clicked": "click",
               "liked": None, "disliked": None, "click_prob": "p"}  # fmt: skip
    path, rows = read_csv_rows(tmp_path, "p,ts,extra,iid,uid,click", ["0.25,50,x,i9,u9,1"], columns=columns)
    assert rows == [Event("u9", "i9", 50, 1, 0, 0, 0.25, f"{path}:2")]


@pytest.mark.parametrize(
    "rating, feedback",
    [("1", (0, 0, 1)), ("2", (0, 0, 1)), ("3", (0, 0, 0)), ("4", (1, 0, 0)), ("5", (1, 1, 0)), ("4.5", (1, 0, 0))],
)
def test_rating_mapping(tmp_path, rating, feedback):
    _, rows = read_csv_rows(tmp_path, "user_id,item_id,timestamp,rating", [f"u1,i1,100,{rating}"],
                            columns={"rating": "rating"})  # fmt: skip
    assert (rows[0].clicked, rows[0].liked, rows[0].disliked) == feedback


def test_rating_wins_over_flag_columns(tmp_path):
    header = "user_id,item_id,timestamp,rating,clicked"
    _, rows = read_csv_rows(tmp_path, header, ["u1,i1,100,5,0"], columns={"rating": "rating"})
    assert (rows[0].clicked, rows[0].liked, rows[0].disliked) == (1, 1, 0)


@pytest.mark.parametrize(
    "text, timestamp_format, seconds",
    [
        ("978300760", "auto", 978300760),
        ("1649581149287", "auto", 1649581149),  # > 1e11: milliseconds
        ("1649581149999", "milliseconds", 1649581149),  # floored
        ("1649581149", "seconds", 1649581149),
        ("2022-04-10T08:59:09Z", "auto", 1649581149),
        ("2022-04-10 08:59:09", "auto", 1649581149),  # naive = UTC
        ("2022-04-10T10:59:09+02:00", "iso8601", 1649581149),
        ("2022-04-10T08:59:09.750", "auto", 1649581149),
        ("2022-04-10", "auto", 1649548800),
        ("0", "auto", 0),
    ],
)
def test_timestamps(tmp_path, text, timestamp_format, seconds):
    _, rows = read_csv_rows(tmp_path, "user_id,item_id,timestamp,clicked", [f"u1,i1,{text},1"],
                            columns={"liked": None, "disliked": None}, timestamp_format=timestamp_format)  # fmt: skip
    assert rows[0].timestamp == seconds


FLAG_CASES = [
    ("u1,i1,100,1,0,0", "wrong_column_count", "6 fields, expected 7"),
    ("u1,i1,100,1,0,0,0.5,extra", "wrong_column_count", "8 fields"),
    (",i1,100,1,0,0,0.5", "missing_field", "user_id"),
    ("u1, ,100,1,0,0,0.5", "missing_field", "item_id"),
    ("u1,i1,,1,0,0,0.5", "missing_field", "timestamp"),
    ("u1,i1,100,,0,0,0.5", "missing_field", "clicked"),
    ("u1,i1,100,1,0,,", "missing_field", "disliked, click_prob"),
    ("u1,i1,yesterday,1,0,0,0.5", "unparsable_timestamp", "'yesterday'"),
    ("u1,i1,2022-13-01,1,0,0,0.5", "unparsable_timestamp", "'2022-13-01'"),
    ("u1,i1,-5,1,0,0,0.5", "negative_timestamp", "'-5'"),
    ("u1,i1,1969-12-31T23:59:59,1,0,0,0.5", "negative_timestamp", "1969"),
    ("u1,i1,4102444801,1,0,0,0.5", "absurd_timestamp", "4102444801"),
    ("u1,i1,99999999999999999,1,0,0,0.5", "absurd_timestamp", "99999999999999999"),
    ("u1,i1,100,2,0,0,0.5", "invalid_flag", "clicked '2'"),
    ("u1,i1,100,1,yes,0,0.5", "invalid_flag", "liked 'yes'"),
    ("u1,i1,100,1,0,0.0,0.5", "invalid_flag", "disliked '0.0'"),
    ("u1,i1,100,1,0,0,high", "unparsable_click_prob", "'high'"),
    ("u1,i1,100,1,0,0,nan", "unparsable_click_prob", "'nan'"),
    ("u1,i1,100,1,0,0,1.5", "click_prob_out_of_range", "'1.5'"),
    ("u1,i1,100,1,0,0,-0.1", "click_prob_out_of_range", "'-0.1'"),
    ("u1,i1,100,1,0,0,0.5\x00", "malformed_row", "NUL"),
]
RATING_CASES = [
    ("u1,i1,100,five", "unparsable_rating", "'five'"),
    ("u1,i1,100,nan", "unparsable_rating", "'nan'"),
    ("u1,i1,100,6", "rating_out_of_range", "'6'"),
    ("u1,i1,100,0", "rating_out_of_range", "'0'"),
    ("u1,i1,100,", "missing_field", "rating"),
]


@pytest.mark.parametrize("row, reason, detail", FLAG_CASES)
def test_quarantine_reasons_with_flags(tmp_path, row, reason, detail):
    path, rows = read_csv_rows(tmp_path, FLAG_HEADER, [row], columns={"click_prob": "click_prob"})
    assert rows == [Quarantined(f"{path}:2", reason, rows[0].detail, row)]
    assert detail in rows[0].detail


@pytest.mark.parametrize("row, reason, detail", RATING_CASES)
def test_quarantine_reasons_with_rating(tmp_path, row, reason, detail):
    path, rows = read_csv_rows(tmp_path, "user_id,item_id,timestamp,rating", [row], columns={"rating": "rating"})
    assert rows == [Quarantined(f"{path}:2", reason, rows[0].detail, row)]
    assert detail in rows[0].detail


def test_undecodable_row(tmp_path):
    path = write(str(tmp_path / "events.csv"), FLAG_HEADER.encode() + b"\nu1,i\xff1,100,1,0,0,0.5\nu1,i1,100,1,0,0,0.5\n")
    rows = list(sources.read_events(path, generic(tmp_path, columns={"click_prob": "click_prob"})))
    assert [type(row) for row in rows] == [Quarantined, Event]
    assert (rows[0].source, rows[0].reason, rows[0].raw) == (f"{path}:2", "undecodable_row", "u1,i\\xff1,100,1,0,0,0.5")


def test_every_row_is_an_event_or_quarantined(tmp_path):
    good = ["u1,i1,100,1,0,0,0.5", "u2,i2,2022-04-10T08:59:09Z,0,0,1,0.1"]
    bad = [row for row, _, _ in FLAG_CASES]
    _, rows = read_csv_rows(tmp_path, FLAG_HEADER, good + bad + good, columns={"click_prob": "click_prob"})
    assert sum(isinstance(row, Event) for row in rows) == 4
    assert [row.reason for row in rows if isinstance(row, Quarantined)] == [reason for _, reason, _ in FLAG_CASES]


FIELD = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=8)
LINE = st.lists(FIELD | st.integers(-10, 10**13).map(str), min_size=5, max_size=8).map(",".join) | FIELD


@hypothesis.settings(max_examples=100, deadline=None, suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(st.lists(LINE, min_size=1, max_size=10))
def test_arbitrary_lines_are_never_lost(tmp_path, lines):
    path = write(str(tmp_path / "events.csv"), FLAG_HEADER + "\n" + "\n".join(lines) + "\n")
    results = list(sources.read_events(path, generic(tmp_path, columns={"click_prob": "click_prob"})))
    assert [r.source for r in results] == [f"{path}:{n}" for n, line in enumerate(lines, start=2) if line.strip()]


def test_gzip_csv(tmp_path):
    path = write(str(tmp_path / "logs" / "part-1.csv.gz"), "user_id,item_id,timestamp,clicked\nu1,i1,100,1\n")
    data = DataConfig(format="generic", path=str(tmp_path / "logs"))  # like/dislike flags unmapped: absent
    assert read_all(data) == [Event("u1", "i1", 100, 1, 0, 0, None, f"{path}:2")]


def test_parquet(tmp_path):
    moment = datetime.datetime(2022, 4, 10, 8, 59, 9, 287000, tzinfo=datetime.timezone.utc)
    table = pa.table(
        {
            "user_id": ["u1", "u2", "u3"],
            "item_id": [10, 20, 30],
            "timestamp": pa.array([moment, None, moment], pa.timestamp("ms", tz="UTC")),
            "clicked": [True, True, False],
            "liked": [1.0, 0.0, 0.0],
            "disliked": [0, 0, 1],
        }
    )
    path = str(tmp_path / "events.parquet")
    pq.write_table(table, path)
    rows = read_all(DataConfig(format="generic", path=path, columns={"liked": "liked", "disliked": "disliked"}))
    assert rows[0] == Event("u1", "10", 1649581149, 1, 1, 0, None, f"{path}:row 1")
    assert (rows[1].source, rows[1].reason, rows[1].detail) == (f"{path}:row 2", "missing_field", "empty: timestamp")
    assert rows[2] == Event("u3", "30", 1649581149, 0, 0, 1, None, f"{path}:row 3")


def test_generic_table_quarantine(tmp_path):
    write(str(tmp_path / "events.csv"), "user_id,item_id,timestamp,clicked\n")
    write(str(tmp_path / "items" / "a.csv"), "item_id,genre\ni1,g1\n,g2\ni2\n")
    items_b = write(str(tmp_path / "items" / "b.csv"), "item_id,genre\ni1,g3\ni3,g3\n")
    data = generic(tmp_path, items="items", item_attributes=["genre"], columns={"liked": None, "disliked": None})
    table, quarantined = sources.load_items(data)
    assert table == {"i1": {"genre": "g1"}, "i3": {"genre": "g3"}}
    assert [(q.reason, q.raw) for q in quarantined] == [
        ("missing_field", ",g2"), ("wrong_column_count", "i2"), ("duplicate_item", "i1,g3"),
    ]  # fmt: skip
    assert quarantined[2].source == f"{items_b}:2"
    assert sources.load_users(data) == (None, [])


def test_list_event_files(tmp_path):
    parts = [write(str(tmp_path / name), "user_id,item_id,timestamp,clicked\n") for name in ("b.csv", "a.csv.gz")]
    for ignored in (".hidden.csv", "_SUCCESS", "notes.txt", "items.csv"):
        write(str(tmp_path / ignored), "x\n")
    data = DataConfig(format="generic", path=str(tmp_path), items="./items.csv")
    assert sources.list_event_files(data) == sorted(parts)


def test_list_event_files_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        sources.list_event_files(DataConfig(format="generic", path=str(tmp_path / "nowhere")))
    with pytest.raises(FileNotFoundError, match="no CSV or Parquet file"):
        sources.list_event_files(DataConfig(format="generic", path=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="ratings"):
        sources.list_event_files(DataConfig(format="movielens-1m", path=str(tmp_path)))
    with pytest.raises(ValueError, match="must be a directory"):
        path = write(str(tmp_path / "e.csv"), "x\n")
        sources.list_event_files(DataConfig(format="generic", path=path, events="e.csv"))


def test_missing_column_is_a_clear_error(tmp_path):
    path = write(str(tmp_path / "events.csv"), "user_id,item_id,timestamp,clicked\nu1,i1,1,1\n")
    with pytest.raises(ValueError, match=r"events.csv: column\(s\) \['liked', 'disliked'\] not found"):
        list(sources.read_events(path, generic(tmp_path)))


def test_unreadable_header_is_a_clear_error(tmp_path):
    path = write(str(tmp_path / "events.csv"), b"user_id,item\xff_id,timestamp,clicked\nu1,i1,1,1\n")
    with pytest.raises(ValueError, match="events.csv: cannot read the header row"):
        list(sources.read_events(path, generic(tmp_path)))


def test_attribute_names_errors(tmp_path):
    with pytest.raises(ValueError, match="data.item_attributes is set but data.items"):
        attribute_names(generic(tmp_path, item_attributes=["genre"]))
    with pytest.raises(ValueError, match=r"\['budget'\] not available in format movielens-1m"):
        attribute_names(DataConfig(format="movielens-1m", path=str(tmp_path), item_attributes=["budget"]))
    with pytest.raises(ValueError, match="user_attributes"):
        attribute_names(DataConfig(format="kuairand", path=str(tmp_path), user_attributes=["age"]))


# ---- MovieLens ----------------------------------------------------------------------------------


def test_movielens_100k(tmp_path):
    ratings = write(str(tmp_path / "u.data"), "1\t10\t5\t881250949\n2\t20\t3\t891717742\n1\t20\t1\t878887116\n"
                    "1\t30\t7\t878887117\n1\t30\t4\n")  # fmt: skip
    write(str(tmp_path / "u.genre"), "unknown|0\nAction|1\nComedy|2\n\n")
    write(str(tmp_path / "u.item"), "10|Movie A (1995)|01-Jan-1995||http://a|0|0|1\n"
          "20|Movie B|||http://b|0|0|0\n"
          "30|Caf\xe9 (1996)|15-Mar-1996||http://c|0|1|1\n", encoding="latin-1")  # fmt: skip
    write(str(tmp_path / "u.user"), "1|17|M|student|85711\n2|18|F|other|T8H1N\n3|56|M|retired|\n"
          "4|35|F|writer|02139\n5|x|M|other|12345\n1|30|F|other|11111\n")  # fmt: skip
    data = DataConfig(format="movielens-100k", path=str(tmp_path))

    rows = read_all(data)
    assert rows[:3] == [
        Event("1", "10", 881250949, 1, 1, 0, None, f"{ratings}:1"),
        Event("2", "20", 891717742, 0, 0, 0, None, f"{ratings}:2"),
        Event("1", "20", 878887116, 0, 0, 1, None, f"{ratings}:3"),
    ]
    assert [row.reason for row in rows[3:]] == ["rating_out_of_range", "wrong_column_count"]
    assert sources.load_items(data) == (
        {"10": {"genre": "Comedy", "year": "1995"}, "20": {"genre": "", "year": ""}, "30": {"genre": "Action", "year": "1996"}},
        [],
    )
    users, quarantined = sources.load_users(data)
    assert users == {
        "1": {"gender": "M", "age": "1", "occupation": "student", "zip": "857"},
        "2": {"gender": "F", "age": "18", "occupation": "other", "zip": "T8H"},
        "3": {"gender": "M", "age": "56", "occupation": "retired", "zip": ""},
        "4": {"gender": "F", "age": "35", "occupation": "writer", "zip": "021"},
    }
    assert [(q.reason, q.raw) for q in quarantined] == [
        ("invalid_attribute", "5|x|M|other|12345"), ("duplicate_user", "1|30|F|other|11111"),
    ]  # fmt: skip


def test_movielens_100k_standard_genres_and_attribute_subset(tmp_path):
    write(str(tmp_path / "u.data"), "1\t10\t5\t881250949\n")
    flags = ["0"] * 19
    flags[4] = flags[8] = "1"
    write(str(tmp_path / "u.item"), "|".join(["10", "Kids (1990)", "01-Jan-1990", "", "http://k", *flags]) + "\n")
    data = DataConfig(format="movielens-100k", path=str(tmp_path), item_attributes=["genre"], user_attributes=["age"])
    assert attribute_names(data) == (["age"], ["genre"])
    assert sources.load_items(data) == ({"10": {"genre": "Children's"}}, [])


def test_movielens_1m(tmp_path):
    first = write(str(tmp_path / "ratings.dat"), "1::10::4::978300760\n")
    second = write(str(tmp_path / "ratings_users2-3.dat.gz"), "2::20::2::978302109\n3::20::4\n")
    write(str(tmp_path / "users.dat"), "1::F::1::10::48067\n2::M::56::16::70072\n2::M::25::1::11111\n")
    write(str(tmp_path / "movies.dat"), "10::Caf\xe9 Society (1995)::Comedy|Drama\n20::No Year::Action\n",
          encoding="latin-1")  # fmt: skip
    data = DataConfig(format="movielens-1m", path=str(tmp_path))

    assert sources.list_event_files(data) == [first, second]
    rows = read_all(data)
    assert rows[:2] == [
        Event("1", "10", 978300760, 1, 0, 0, None, f"{first}:1"),
        Event("2", "20", 978302109, 0, 0, 1, None, f"{second}:1"),
    ]
    assert (rows[2].source, rows[2].reason) == (f"{second}:2", "wrong_column_count")
    assert sources.load_items(data) == ({"10": {"genre": "Comedy", "year": "1995"}, "20": {"genre": "Action", "year": ""}}, [])
    users, quarantined = sources.load_users(data)
    assert users == {
        "1": {"gender": "F", "age": "1", "occupation": "10", "zip": "480"},
        "2": {"gender": "M", "age": "56", "occupation": "16", "zip": "700"},
    }
    assert [q.reason for q in quarantined] == ["duplicate_user"]


# ---- KuaiRand -----------------------------------------------------------------------------------


def kuairand_row(user, video, time_ms, is_click, duration_ms, label):
    return "\t".join([user, video, "20220410", "1700", time_ms, is_click, "0", "0", "0", "1", "5000",
                      duration_ms, "0", "0", label, "2022-04-10 08:59:09"])  # fmt: skip


def test_kuairand(tmp_path):
    rows = [
        kuairand_row("111", "v1", "1649581149287", "1", "45916", "1"),
        kuairand_row("111", "v2", "1649664552983", "0", "0", "1"),
        kuairand_row("222", "v1", "1649664993737", "1", "45000", "0"),
        kuairand_row("222", "v3", "1649791379969", "0", "400000", "0"),
        kuairand_row("333", "v3", "1649791379970", "1", "5000", "1"),
        kuairand_row("333", "v4", "1649791379971", "1", "abc", "2"),
        kuairand_row("333", "", "1649791379972", "1", "6000", "1"),
    ]
    path = write(str(tmp_path / "log.tsv"), KUAIRAND_HEADER + "\n" + "\n".join(rows) + "\n")
    data = DataConfig(format="kuairand", path=str(tmp_path))

    results = read_all(data)
    assert results[:5] == [
        Event("111", "v1", 1649581149, 1, 1, 0, None, f"{path}:2"),
        Event("111", "v2", 1649664552, 0, 1, 0, None, f"{path}:3"),
        Event("222", "v1", 1649664993, 1, 0, 1, None, f"{path}:4"),
        Event("222", "v3", 1649791379, 0, 0, 1, None, f"{path}:5"),
        Event("333", "v3", 1649791379, 1, 1, 0, None, f"{path}:6"),
    ]
    assert [(q.source, q.reason) for q in results[5:]] == [(f"{path}:7", "invalid_flag"), (f"{path}:8", "missing_field")]
    assert "label '2'" in results[5].detail

    items, quarantined = sources.load_items(data)
    assert items == {"v1": {"duration": "30-60s"}, "v2": {"duration": "unknown"}, "v3": {"duration": ">=5min"}}
    assert [(q.source, q.reason) for q in quarantined] == [
        (f"{path}:6", "conflicting_item_attribute"), (f"{path}:7", "invalid_attribute"),
    ]  # fmt: skip
    assert sources.load_users(data) == (None, [])
    assert attribute_names(data) == ([], ["duration"])


@pytest.mark.parametrize(
    "duration_ms, bucket",
    [("1", "<7s"), ("6999", "<7s"), ("7000", "7-15s"), ("29999", "15-30s"), ("30000", "30-60s"),
     ("60000", "1-2min"), ("299999", "2-5min"), ("300000", ">=5min")],
)  # fmt: skip
def test_kuairand_duration_buckets(tmp_path, duration_ms, bucket):
    write(str(tmp_path / "log.tsv.gz"), KUAIRAND_HEADER + "\n" + kuairand_row("1", "v", "1649581149287", "1", duration_ms, "1") + "\n")
    assert sources.load_items(DataConfig(format="kuairand", path=str(tmp_path))) == ({"v": {"duration": bucket}}, [])
