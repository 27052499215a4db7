"""One spelling per number, for every place that compares numbers in text: free-form grading
(does the answer state the reference's number?) and `ask`'s checks (does a source state the
answer's number?). Text only, never float(): it reads whatever text was retrieved or generated."""

from __future__ import annotations

import re

DECIMAL = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
"""A plain number: digits, thousands separators, at most one decimal point."""


def canonical_number(token: str, trim_versions: bool = False) -> str:
    """"1,200" = "1200", "14.0" = "14", "05" = "5". A token of several parts (version 1.93.0,
    address 192.168.0.1, time 7:30) names one thing and stays as written; with `trim_versions`,
    less its trailing ".0" parts ("0.14.0" = "0.14", how a reference and an answer name one release)."""
    if DECIMAL.fullmatch(token):
        whole, _, frac = token.replace(",", "").partition(".")
        whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
        return f"{whole}.{frac}" if frac else whole
    return trimmed_version(token.replace(",", "")) if trim_versions else token


def trimmed_version(token: str) -> str:
    """A version less its trailing ".0" parts: 3.38.0 and 3.38 name one release (3.10 stays 3.10)."""
    return re.sub(r"(?:\.0+)+$", "", token)


_UNITS = "two three four five six seven eight nine".split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_SPELLED = re.compile(r"\b(?:(%s)(?:[- ](%s))?|(%s))\b" % (
    "|".join(_TENS), "|".join(["one", *_UNITS]), "|".join([*_UNITS, *_TEENS])))


def _spelled_value(m: re.Match[str]) -> str:
    tens, unit, small = m.groups()
    if small:
        return str(10 + _TEENS.index(small) if small in _TEENS else _UNITS.index(small) + 2)
    return str(10 * (_TENS.index(tens) + 2) + (["one", *_UNITS].index(unit) + 1 if unit else 0))


def spelled_numbers(text: str) -> list[tuple[str, int]]:
    """The numbers `text` spells out from two to ninety-nine ("twenty-five" is 25; "one" is too
    often not a number: "one of the"), each with the offset where its words end (a caller may
    ignore "five" in "five hundred")."""
    return [(_spelled_value(m), m.end()) for m in _SPELLED.finditer(text.lower())]


def spelled_number(token: str) -> str | None:
    """The number a token spells out whole ("five", "twenty-five"), as digits; else None."""
    m = _SPELLED.fullmatch(token.strip().lower())
    return _spelled_value(m) if m else None
