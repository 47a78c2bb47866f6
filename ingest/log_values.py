"""Parsing the values of a log row: feedback (rating, flags, KuaiRand's label) and click_prob
(timestamps: ``ingest.timestamps``). Each raises ``Reject`` with the quarantine reason of
``ingest.sources``."""
from __future__ import annotations

import math
import re
from typing import Dict, Tuple

from contract.features import CLICK_PROB, DISLIKED, LABEL, LIKED
from ingest.log_files import Reject

INTEGER = re.compile(r"[+-]?[0-9]+")


def _flag(values: Dict[str, str], field: str) -> int:
    value = values[field].lower()
    if value in ("1", "true"):
        return 1
    if value in ("0", "false"):
        return 0
    raise Reject("invalid_flag", f"{field} {values[field]!r} is not 0, 1, true or false")


def _number(field: str, text: str) -> float:
    """A float, or ``unparsable_<field>`` for text that is not a number (NaN included)."""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if math.isnan(number):
        raise Reject(f"unparsable_{field}", f"{field} {text!r} is not a number")
    return number


def flag_feedback(values: Dict[str, str]) -> Tuple[int, int, int]:
    clicked, liked, disliked = (_flag(values, f) if f in values else 0 for f in (LABEL, LIKED, DISLIKED))
    return clicked, liked, disliked


def rating_feedback(values: Dict[str, str]) -> Tuple[int, int, int]:
    rating = _number("rating", values["rating"])
    if not 1 <= rating <= 5:
        raise Reject("rating_out_of_range", f"rating {values['rating']!r} is outside 1..5")
    return int(rating >= 4), int(rating == 5), int(rating <= 2)


def label_feedback(values: Dict[str, str]) -> Tuple[int, int, int]:
    """KuaiRand: is_click gives the click, label 1 a like and label 0 a dislike."""
    liked = _flag(values, "label")
    return _flag(values, LABEL), liked, 1 - liked


def parse_click_prob(text: str) -> float:
    prob = _number(CLICK_PROB, text)
    if not 0 <= prob <= 1:
        raise Reject("click_prob_out_of_range", f"click_prob {text!r} is outside [0, 1]")
    return prob
