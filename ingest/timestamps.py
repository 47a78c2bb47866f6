"""Log timestamps -> integer unix seconds (UTC), or ``Reject`` with a quarantine reason.

``data.timestamp_format`` chooses what is read:

``auto`` (the default)
    A decimal number is unix epoch time, its unit chosen by magnitude; anything else is read as
    ISO-8601 / RFC 3339. A basic-format date of digits only (``20140209``) is a number here.
``seconds``, ``milliseconds``, ``microseconds``
    A decimal number in that unit, nothing else.
``iso8601``
    ISO-8601 / RFC 3339 only (``20140209`` is 2014-02-09).

Epoch numbers: an optional sign, digits and an optional ``.`` fraction (``1391904000``,
``1391904000.0``, ``1391904000500``); no exponent, no digit grouping. Under ``auto`` the unit
follows the magnitude: below 1e11 seconds, below 1e14 milliseconds, else microseconds. That is
right for every time from 1973-03-03T09:46:40Z (1e11 ms, 1e14 us) to 5138-11-16T09:46:40Z
(1e11 s); logs in milliseconds or microseconds before 1973-03-03 need the explicit unit.

ISO-8601 / RFC 3339: a date, optionally followed by ``T``, ``t`` or a space and a time of day,
the time optionally followed by an offset; each part in extended or basic format:

- date: calendar ``2014-02-09`` / ``20140209``, week ``2014-W06-7`` / ``2014W067``, ordinal
  ``2014-040`` / ``2014040``; years 0001-9999.
- time: ``hh``, ``hh:mm``, ``hh:mm:ss`` / ``hhmm``, ``hhmmss``; the last element may carry a
  fraction after ``.`` or ``,`` with any number of digits (truncated to microseconds);
  ``24:00`` / ``24:00:00`` is the end of the day; second 60 (a leap second) is the next
  minute's :00, as in POSIX time.
- offset: ``Z`` / ``z``, ``+hh:mm``, ``+hhmm``, ``+hh`` (or ``-``); RFC 3339's ``-00:00`` is UTC.
  A time without an offset, and a date alone, are UTC.

Every result is floored to whole seconds. It must lie in [0, ``data.max_timestamp``]:
``negative_timestamp`` before 1970, ``absurd_timestamp`` after; anything unreadable is
``unparsable_timestamp``, its detail naming the value, the problem and the accepted forms.
"""
from __future__ import annotations

import datetime
import decimal
import re
from typing import Optional

from ingest.log_files import Reject

UNITS = {"seconds": 1, "milliseconds": 1_000, "microseconds": 1_000_000}  # per second
_AUTO_LIMITS = ((10**11, "seconds"), (10**14, "milliseconds"))  # below the limit: the unit

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)
_ISO = re.compile(
    r"(?P<date>[0-9]{4}(?:-[0-9]{2}-[0-9]{2}|[0-9]{4}|-W[0-9]{2}-[0-9]|W[0-9]{3}|-?[0-9]{3}))"
    r"(?:[Tt ](?P<hour>[0-9]{2})(?:(?P<sep>:?)(?P<minute>[0-9]{2})(?:(?P=sep)(?P<second>[0-9]{2}))?)?"
    r"(?:[.,](?P<fraction>[0-9]+))?"
    r"(?P<offset>[Zz]|(?P<sign>[+-])(?P<offset_hour>[0-9]{2})(?::?(?P<offset_minute>[0-9]{2}))?)?)?",
    re.ASCII,
)
_EPOCH_DAY = datetime.date(1970, 1, 1).toordinal()
_MICROS = {"hour": 3_600_000_000, "minute": 60_000_000, "second": 1_000_000}

_NUMBER_FORMS = "1391904000, 1391904000.5, 1391904000500"
_ISO_FORMS = "2014-02-09, 2014-02-09T00:00:00.5Z, 2014-02-09 02:00+02:00, 20140209T020000+0200"
ACCEPTED = {
    "auto": f"unix epoch seconds, milliseconds or microseconds as a decimal number (e.g. {_NUMBER_FORMS}; "
            f"the unit by magnitude: below 1e11 seconds, below 1e14 milliseconds, else microseconds) "
            f"or an ISO-8601 / RFC 3339 date or date and time (e.g. {_ISO_FORMS}; no offset = UTC)",
    "iso8601": f"an ISO-8601 / RFC 3339 date or date and time (e.g. {_ISO_FORMS}; no offset = UTC)",
    **{unit: f"unix epoch {unit} as a decimal number (digits, an optional sign and . fraction)" for unit in UNITS},
}  # fmt: skip


def parse_timestamp(text: str, timestamp_format: str, max_timestamp: int) -> int:
    """Unix seconds (UTC, floored) of ``text`` read as ``timestamp_format`` (see the module doc)."""
    if timestamp_format != "iso8601" and _NUMBER.fullmatch(text):
        value = decimal.Decimal(text)
        unit = timestamp_format if timestamp_format in UNITS else _auto_unit(abs(value))
        return _checked_seconds(text, value, unit, max_timestamp)
    if timestamp_format in UNITS:
        _unparsable(text, timestamp_format, f"is not a decimal number of {timestamp_format}")
    micros = _iso_micros(text, timestamp_format)
    return _checked_seconds(text, decimal.Decimal(micros), "microseconds", max_timestamp, "")


def _auto_unit(magnitude: decimal.Decimal) -> str:
    return next((unit for limit, unit in _AUTO_LIMITS if magnitude < limit), "microseconds")


def _checked_seconds(text: str, value: decimal.Decimal, unit: str, max_timestamp: int, shown: Optional[str] = None) -> int:
    """``value`` (in ``unit``) floored to seconds, within [0, max_timestamp]. ``shown``: how the
    detail says the unit was read (default: " (read as <unit>)")."""
    shown = f" (read as {unit})" if shown is None else shown
    if value < 0:
        raise Reject("negative_timestamp", f"timestamp {text!r}{shown} is before 1970")
    if value >= (max_timestamp + 1) * UNITS[unit]:  # compared before flooring: no huge integers
        raise Reject("absurd_timestamp", f"timestamp {text!r}{shown} is after data.max_timestamp={max_timestamp}")
    return int(value) // UNITS[unit]  # int() truncates, which floors a non-negative value


def _unparsable(text: str, timestamp_format: str, problem: str):
    raise Reject("unparsable_timestamp", f"timestamp {text!r} {problem}; accepted: {ACCEPTED[timestamp_format]}")


def _iso_micros(text: str, timestamp_format: str) -> int:
    """Microseconds since the epoch of an ISO-8601 / RFC 3339 text (``Reject`` if it is none)."""
    match = _ISO.fullmatch(text)
    if not match:
        iso = "an ISO-8601 / RFC 3339 date or time"
        problem = f"is neither a decimal number nor {iso}" if timestamp_format == "auto" else f"is not {iso}"
        _unparsable(text, timestamp_format, problem if text else "is empty")
    try:
        day = _date(match["date"])
        micros = _time_micros(match) - _offset_micros(match)
    except ValueError as error:
        _unparsable(text, timestamp_format, f"is not a valid date or time ({error})")
    return (day.toordinal() - _EPOCH_DAY) * 86_400_000_000 + micros


def _date(text: str) -> datetime.date:
    digits = text.replace("-", "")
    year = int(digits[:4])
    if "W" in digits:
        return datetime.date.fromisocalendar(year, int(digits[5:7]), int(digits[7]))
    if len(digits) == 8:
        return datetime.date(year, int(digits[4:6]), int(digits[6:]))
    ordinal = int(digits[4:])
    days_in_year = datetime.date(year, 12, 31).timetuple().tm_yday
    if not 1 <= ordinal <= days_in_year:
        raise ValueError(f"day of year {ordinal} is outside 1..{days_in_year}")
    return datetime.date(year, 1, 1) + datetime.timedelta(days=ordinal - 1)


def _time_micros(match: re.Match) -> int:
    """The time of day in microseconds (0 for a date alone); the fraction belongs to the last
    element written and is truncated to microseconds."""
    elements = {name: int(match[name]) for name in ("hour", "minute", "second") if match[name] is not None}
    if not elements:
        return 0
    if elements.get("minute", 0) > 59 or elements.get("second", 0) > 60:
        raise ValueError("minute must be in 0..59 and second in 0..60")
    digits = (match["fraction"] or "").rstrip("0")[:18]  # 18 digits are exact to the microsecond
    end_of_day = elements["hour"] == 24 and not digits and elements.get("minute", 0) == elements.get("second", 0) == 0
    if elements["hour"] > 23 and not end_of_day:
        raise ValueError("hour must be in 0..23, or 24:00:00 for the end of the day")
    last = list(elements)[-1]
    fraction = _MICROS[last] * int(digits) // 10 ** len(digits) if digits else 0
    return sum(_MICROS[name] * value for name, value in elements.items()) + fraction


def _offset_micros(match: re.Match) -> int:
    if match["offset"] in (None, "Z", "z"):
        return 0
    hours, minutes = int(match["offset_hour"]), int(match["offset_minute"] or 0)
    if hours > 23 or minutes > 59:
        raise ValueError(f"offset {match['offset']} is outside -23:59..+23:59")
    sign = -1 if match["sign"] == "-" else 1
    return sign * (hours * 3600 + minutes * 60) * 1_000_000
