"""Grading free-form answers against reference answers: pure functions, no model.

* `exact_match` and `token_f1` are SQuAD's (lower case, punctuation and articles out, whitespace
  collapsed; the best over the reference and its aliases);
* `contains` asks whether the answer states the reference (or an alias) anywhere: as words,
  not inside a longer word or number ("7" is not in "17"), numbers compared as numbers
  ("1,200" = "1200" = "1200.0", "five" = "5", a version "0.14.0" also said "0.14") and dates as dates
  ("5 March 2026" = "March 5, 2026" = "2026-03-05");
* `abstains` recognises a reply that declines ("Not in the knowledge base.", "I don't know");
* `grade` puts them together: on a question the documents do not answer, only an abstention is
  right, and an answer is a hallucination.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from kinject.core.numbers import canonical_number, spelled_number, spelled_numbers

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation) | set("“”‘’–—…")


def normalize(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation and articles removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(answer: str, references: Sequence[str]) -> float:
    """1.0 when the answer equals a reference after normalisation, else 0.0."""
    return float(any(normalize(answer) == normalize(r) for r in references))


def token_f1(answer: str, references: Sequence[str]) -> float:
    """SQuAD's token F1, the best over the references."""
    said = normalize(answer).split()
    best = 0.0
    for ref in references:
        gold = normalize(ref).split()
        common = sum((Counter(said) & Counter(gold)).values())
        if common:
            precision, recall = common / len(said), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


_MONTHS = {m: i for i, m in enumerate("january february march april may june july august september october "
                                      "november december".split(), 1)}
_MONTHS.update({m[:3]: i for m, i in list(_MONTHS.items())} | {"sept": 9})
_MONTH = r"(%s)\.?" % "|".join(sorted(_MONTHS, key=len, reverse=True))
_DATES = [  # (pattern, order of its groups: d, m, y)
    (re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"), "ymd"),
    (re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?(?:\s+of)?\s+{_MONTH},?\s+(\d{{4}})\b", re.I), "dmy"),
    (re.compile(rf"\b{_MONTH}\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})\b", re.I), "mdy"),
]
_NUMBER = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)*(?![\w]|\.\d)")
_SCALE = re.compile(r"[\s-]+(?:hundred|thousand|million|billion|trillion)\b")


def _numbers(text: str) -> set[str]:
    """The numbers a text states, canonical: digits, and numbers spelled out (`spelled_numbers`)
    unless a scale word follows ("five hundred" is not 5)."""
    said = {canonical_number(n, True) for n in _NUMBER.findall(text)}
    low = text.lower()
    return said | {value for value, end in spelled_numbers(low) if not _SCALE.match(low, end)}


def dates(text: str) -> set[tuple[int, int, int]]:
    """The calendar dates a text states, as (year, month, day)."""
    found = set()
    for pattern, order in _DATES:
        for m in pattern.finditer(text):
            parts = dict(zip(order, m.groups()))
            month = parts["m"] if parts["m"].isdigit() else _MONTHS[parts["m"].lower().rstrip(".")]
            found.add((int(parts["y"]), int(month), int(parts["d"])))
    return found


def _states(answer: str, reference: str) -> bool:
    ref = reference.strip()
    if not ref:
        return False
    if when := dates(ref):
        return bool(when & dates(answer))
    # a reference spelled out is its number too ("one" as well: in a reference it is the number)
    spelled = spelled_number(ref) or ("1" if ref.lower() == "one" else None)
    if _NUMBER.fullmatch(ref) or spelled:
        if canonical_number(spelled or ref, True) in _numbers(answer):
            return True
        if not spelled:
            return False
    words = normalize(ref)
    if not words:  # a reference of punctuation alone ("--", "%"): as written
        return ref.lower() in answer.lower()
    return re.search(rf"(?<!\w){re.escape(words)}(?!\w)", normalize(answer)) is not None


def contains(answer: str, references: Sequence[str]) -> float:
    """Whether the answer states one of the references (see the module docstring)."""
    return float(any(_states(answer, r) for r in references))


_DECLINES = re.compile(
    r"not in the knowledge ?base|\bi (?:do not|don't|cannot|can't) (?:know|answer|find|say)|\bno information\b|"
    r"^\W*unknown\W*$|\bnot (?:stated|mentioned|given|provided|specified)\b|\bcannot be (?:answered|determined)\b",
    re.I)


def abstains(answer: str) -> bool:
    """Whether a reply declines to answer (an empty reply declines too)."""
    return not answer.strip() or _DECLINES.search(answer) is not None


@dataclass(frozen=True)
class Grade:
    """One free-form answer graded against its references."""

    em: float
    f1: float
    contains: float
    abstained: bool
    answerable: bool

    @property
    def correct(self) -> bool:
        """The headline: an answerable question answered with the fact (`contains`), or an
        unanswerable one declined."""
        return bool(self.contains) and not self.abstained if self.answerable else self.abstained

    @property
    def hallucinated(self) -> bool:
        """An answer, not an abstention, to a question the documents do not answer."""
        return not self.answerable and not self.abstained


def grade(answer: str, references: Sequence[str], answerable: bool = True) -> Grade:
    """Exact match, token F1 and containment of an answer, and whether it declined."""
    declined = abstains(answer)
    if not answerable:
        return Grade(0.0, 0.0, 0.0, declined, False)
    return Grade(exact_match(answer, references), token_f1(answer, references),
                 0.0 if declined else contains(answer, references), declined, True)
