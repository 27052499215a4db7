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
    return re.sub(r"(?:\.0+)+$", "", token.replace(",", "")) if trim_versions else token
