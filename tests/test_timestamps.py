"""Log timestamps: every accepted form with its exact unix seconds, every rejected one with its
quarantine reason and message (``ingest.timestamps``), and the quarantine record of a log row."""
import pytest

from ingest.log_files import Reject
from ingest.sources import Event, Quarantined
from ingest.timestamps import ACCEPTED, parse_timestamp
from tests.test_sources import read_csv_rows

MAX = 4102444800  # DataConfig's default max_timestamp (2100-01-01)
DAY = 1391904000  # 2014-02-09T00:00:00Z
AT = DAY + 10 * 3600 + 20 * 60 + 30  # 2014-02-09T10:20:30Z

ACCEPTED_CASES = [  # (text, timestamp_format, unix seconds)
    # ISO-8601 extended format, RFC 3339
    ("2014-02-09T10:20:30Z", "auto", AT),
    ("2014-02-09t10:20:30z", "auto", AT),  # RFC 3339: lower-case t and z
    ("2014-02-09 10:20:30Z", "auto", AT),  # RFC 3339: space separator
    ("2014-02-09T10:20:30", "auto", AT),  # no offset: UTC
    ("2014-02-09 10:20:30", "auto", AT),
    ("2014-02-09T10:20:30+02:00", "auto", AT - 7200),
    ("2014-02-09T10:20:30+0200", "auto", AT - 7200),
    ("2014-02-09T10:20:30+02", "auto", AT - 7200),
    ("2014-02-09T10:20:30-05:30", "auto", AT + 19800),
    ("2014-02-09T10:20:30-00:00", "auto", AT),  # RFC 3339: UTC, local offset unknown
    ("2014-02-09T10:20:30.5+02:00", "auto", AT - 7200),  # RFC 3339 with a fraction
    # fractions: any number of digits, floored to whole seconds
    ("2014-02-09T00:00:00.5Z", "auto", DAY),
    ("2014-02-09T10:20:30.999999999Z", "auto", AT),  # 9 digits
    ("2014-02-09T10:20:30." + "9" * 5000, "auto", AT),
    ("2014-02-09T10:20:30,25Z", "auto", AT),  # ISO's decimal comma
    ("2014-02-09T10:20.5Z", "auto", AT),  # a fraction of the minute
    ("2014-02-09T10.5Z", "auto", DAY + 10 * 3600 + 1800),  # a fraction of the hour
    # reduced time precision, end of day, leap second
    ("2014-02-09T10:20Z", "auto", AT - 30),
    ("2014-02-09T10Z", "auto", DAY + 10 * 3600),
    ("2014-02-08T24:00:00Z", "auto", DAY),
    ("2016-12-31T23:59:60Z", "auto", 1483228800),  # 2017-01-01T00:00:00Z
    # basic format
    ("20140209T102030Z", "auto", AT),
    ("20140209T102030+0200", "auto", AT - 7200),
    ("20140209T102030.123456789-0130", "auto", AT + 5400),
    ("20140209T1020Z", "auto", AT - 30),
    ("20140209", "iso8601", DAY),  # digits only: a date only where the format says ISO
    # dates alone (UTC midnight): calendar, week, ordinal
    ("2014-02-09", "auto", DAY),
    ("2014-W06-7", "auto", DAY),
    ("2014W067", "auto", DAY),
    ("2014-040", "auto", DAY),
    ("2014040", "iso8601", DAY),
    ("2014-02-09T00:00:00Z", "iso8601", DAY),
    # unix epoch: the unit by magnitude under auto
    ("1391904000", "auto", DAY),
    ("+1391904000", "auto", DAY),
    ("1391904000.0", "auto", DAY),
    ("1391904000.999", "auto", DAY),
    (".5", "auto", 0),
    ("0", "auto", 0),
    ("1391904000500", "auto", DAY),  # milliseconds
    ("1391904000500.0", "auto", DAY),
    ("1391904000500000", "auto", DAY),  # microseconds
    ("1391904000500000.0", "auto", DAY),
    ("20140209", "auto", 20140209),  # digits only: epoch seconds under auto
    ("4102444800999", "auto", MAX),  # 2100-01-01T00:00:00.999Z: floored to data.max_timestamp, kept
    # explicit units are read as given, whatever the magnitude
    ("1391904000.5", "seconds", DAY),
    ("1391904", "milliseconds", 1391),
    ("1391904000500", "milliseconds", DAY),
    ("1391904000500", "microseconds", 1391904),
    ("1391904000500000", "microseconds", DAY),
]


@pytest.mark.parametrize("text, timestamp_format, seconds", ACCEPTED_CASES)
def test_accepted_forms(text, timestamp_format, seconds):
    assert parse_timestamp(text, timestamp_format, MAX) == seconds


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("99999999999", 99999999999),  # below 1e11: seconds
        ("100000000000", 100000000),  # 1e11: milliseconds
        ("99999999999999", 99999999999),  # below 1e14: milliseconds
        ("100000000000000", 100000000),  # 1e14: microseconds
    ],
)
def test_auto_unit_boundaries(text, seconds):
    assert parse_timestamp(text, "auto", 10**12) == seconds


UNPARSABLE_CASES = [  # (text, timestamp_format, the problem the message names)
    ("", "auto", "'' is empty"),
    ("yesterday", "auto", "is neither a decimal number nor an ISO-8601 / RFC 3339 date or time"),
    ("2014-13-01", "auto", "month must be in 1..12"),
    ("2014-00-01", "auto", "month must be in 1..12"),
    ("2014-02-30", "auto", "day is out of range for month"),
    ("0000-01-01", "auto", "year 0 is out of range"),
    ("2014-W54-1", "auto", "Invalid week: 54"),
    ("2014-366", "auto", "day of year 366 is outside 1..365"),
    ("2014-02-09T25:00", "auto", "hour must be in 0..23"),
    ("2014-02-09T24:30", "auto", "hour must be in 0..23, or 24:00:00 for the end of the day"),
    ("2014-02-09T10:60", "auto", "minute must be in 0..59"),
    ("2014-02-09T10:20:61", "auto", "second in 0..60"),
    ("2014-02-09T10:20:30+24:00", "auto", "offset +24:00 is outside -23:59..+23:59"),
    ("2014-02-09T10:20:30+02:60", "auto", "offset +02:60 is outside"),
    ("2014-02-09T10:20:30+2:00", "auto", "is neither"),  # one-digit offset hour
    ("2014-02-09T10:2030", "auto", "is neither"),  # extended and basic mixed in the time
    ("2014-02-09T10:20:30 Z", "auto", "is neither"),
    ("2014-02-09Z", "auto", "is neither"),  # an offset needs a time
    ("2014-02", "auto", "is neither"),  # a month is no point in time
    ("1.391904e9", "auto", "is neither"),  # no exponent
    ("1,391,904,000", "auto", "is neither"),
    ("nan", "auto", "is neither"),
    ("inf", "auto", "is neither"),
    ("2014-02-09", "seconds", "is not a decimal number of seconds"),
    ("2014-02-09T00:00:00Z", "milliseconds", "is not a decimal number of milliseconds"),
    ("1391904000", "iso8601", "is not an ISO-8601 / RFC 3339 date or time"),
]


@pytest.mark.parametrize("text, timestamp_format, problem", UNPARSABLE_CASES)
def test_unparsable_forms_name_the_value_the_problem_and_the_accepted_forms(text, timestamp_format, problem):
    with pytest.raises(Reject) as raised:
        parse_timestamp(text, timestamp_format, MAX)
    reason, detail = raised.value.reason, raised.value.detail
    assert reason == "unparsable_timestamp"
    assert detail.startswith(f"timestamp {text!r} ") and problem in detail
    assert detail.endswith(f"; accepted: {ACCEPTED[timestamp_format]}")


@pytest.mark.parametrize(
    "text, reason, detail",
    [
        ("-5", "negative_timestamp", "timestamp '-5' (read as seconds) is before 1970"),
        ("-0.5", "negative_timestamp", "timestamp '-0.5' (read as seconds) is before 1970"),
        ("1969-12-31T23:59:59Z", "negative_timestamp", "timestamp '1969-12-31T23:59:59Z' is before 1970"),
        ("1970-01-01T01:00:00+01:01", "negative_timestamp", "is before 1970"),
        ("4102444801", "absurd_timestamp", "timestamp '4102444801' (read as seconds) is after data.max_timestamp=4102444800"),
        ("4102444801000", "absurd_timestamp", "(read as milliseconds) is after data.max_timestamp"),
        ("1391904000000000000", "absurd_timestamp", "(read as microseconds) is after"),  # nanoseconds are not read
        ("9" * 5000, "absurd_timestamp", "(read as microseconds) is after"),
        ("2100-01-01T00:00:01Z", "absurd_timestamp", "timestamp '2100-01-01T00:00:01Z' is after data.max_timestamp"),
    ],
)
def test_out_of_range(text, reason, detail):
    with pytest.raises(Reject) as raised:
        parse_timestamp(text, "auto", MAX)
    assert raised.value.reason == reason and detail in raised.value.detail


def test_a_log_row_with_a_bad_timestamp_is_quarantined_with_the_accepted_forms(tmp_path):
    rows = ["u1,i1,2014-02-09T00:00:00.5Z,1", "u1,i2,2014-02-30,1", "u1,i3,1391904000500,0"]
    path, read = read_csv_rows(tmp_path, "user_id,item_id,timestamp,clicked", rows, columns={"liked": None, "disliked": None})
    assert [type(row) for row in read] == [Event, Quarantined, Event]
    assert (read[0].timestamp, read[2].timestamp) == (DAY, DAY)
    assert read[1] == Quarantined(f"{path}:3", "unparsable_timestamp", read[1].detail, rows[1])
    assert "'2014-02-30'" in read[1].detail and "day is out of range for month" in read[1].detail
    assert ACCEPTED["auto"] in read[1].detail
