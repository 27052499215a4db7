"""What retrieved chunks state, as `ask`'s exact checks compare it: the codes, versions and years a
question names (check 2) and the numbers an answer states (check 4), in whatever spelling the
documents write them (1.93.0, v1.93, 2024-12-06, 1,200, twenty-five). Pure text functions: no
text makes them raise (property-tested)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from kinject.core.numbers import DECIMAL, canonical_number, spelled_numbers, trimmed_version
from kinject.knowledge.corpus import citation
from kinject.rag.retrieval import Hit

_CODE = re.compile(r"(?<![\w.-])[A-Za-z0-9]+(?:[-.][A-Za-z0-9]+)*(?![\w-])")
"""A candidate code: letters and digits joined by hyphens or dots (SK-4481, v2.0.0-rc1)."""
_NOT_A_CODE = re.compile(r"^\d+(?:st|nd|rd|th|s)$"  # 2nd, 1990s
                         r"|^\d+(?:[.,]\d+)?[A-Za-z]{1,3}$"  # 230V, 3pm, 100km
                         r"|^\d+(?:st|nd|rd|th)?-[A-Za-z]+$", re.I)  # 2-year, 1st-floor


def _is_code(token: str) -> bool:
    """E42, SK-4481, COVID-19, v1.94.0, AB-CD: letters and digits, two digits or a hyphen at least
    (CO2, H2O, 3D, R5 are often spelt out or written apart in the documents), and not a number with
    a unit or an ordinal, nor a compound word (zstd-compressed, first-in)."""
    digits = sum(ch.isdigit() for ch in token)
    hyphened = "-" in token and (digits or token.isupper())  # not a compound word: zstd-compressed
    return any(ch.isalpha() for ch in token) and (digits >= 2 or hyphened) and not _NOT_A_CODE.match(token)


_NUMBER = re.compile(r"(?:(?<![\w.])|(?<=\b[vV]))\d+(?:,\d{3}(?!\d)|[.:]\d+)*")
"""A number as written: 14, 1,200, 2.4, 7:30, and one token for a version, address or time of
several parts (1.93.0, v2.0.0, 192.168.0.1, 12:30:45); a comma not before three digits separates
two; digits inside a word are no number (E19, H2O)."""
CITE = re.compile(r"\[\s*(?:source\s*)?(\d{1,4}(?:\s*[,–-]\s*\d{1,4})*)\s*\]", re.I)
"""A citation marker: [1], [1, 2], [1-3], [Source 2] (a longer number is no source's)."""


def _squash(text: str) -> str:
    """Lower case, no spaces or hyphens: "SK 4481", "sk-4481" and "SK4481" are one code; a version
    without its "v": "v1.94.0" is "1.94.0" ("Version 1.94.0")."""
    return re.sub(r"[\s-]+", "", re.sub(r"\bv(?=\d)", "", text.lower()))


def unknown_codes(question: str, hits: Sequence[Hit]) -> list[str]:
    """Codes of the question (letters and digits in one token, two digits or a hyphen at least:
    E42, SK-4481) that no chunk mentions, in its text, title, file name or heading: whatever the
    chunks say, it is about something else."""
    codes = [c for c in dict.fromkeys(_CODE.findall(question)) if _is_code(c)]
    where = _squash(" ".join(f"{h.chunk.text} {h.chunk.title} {h.chunk.source} {h.chunk.section}" for h in hits))
    return [c for c in codes if _squash(c) not in where]


_YEAR = re.compile(r"(?:1[89]|20)\d\d")
_DOTTED = re.compile(r"(?<![\d.])\d+(?:\.\d+)+")
"""A dotted number anywhere, glued to letters too ("python3.12", "SQLite3.38")."""


def _names(stated: str, named: str) -> bool:
    """Whether a number of the chunks names the question's: as written, one release (3.38 =
    3.38.0), a later part of it (3.12 in 3.12.4) or, for one dot, the same decimal (2.5 = 2.50);
    3.38.5 is not 3.38.0 (one dot also reads as a decimal, so 3.10 = 3.1: it errs toward answering)."""
    if stated == named or stated.startswith(named + ".") or trimmed_version(stated) == trimmed_version(named):
        return True
    return (stated.count(".") == named.count(".") == 1 and all(DECIMAL.fullmatch(n) for n in (stated, named))
            and canonical_number(stated) == canonical_number(named))


def unknown_versions(question: str, hits: Sequence[Hit]) -> list[str]:
    """Versions and years the question names ("Python 3.14", "SQLite 3.38.0", "the 2024
    election") that no chunk states, in its text, title, heading or citation: a changelog that
    never mentions 3.14 cannot say which release added it, whatever release it names. A decade
    ("the 2020s") is no year."""
    named = [m[0] for m in _NUMBER.finditer(question) if not question[m.end():m.end() + 1].isalnum()
             and (("." in m[0] and ":" not in m[0]) or _YEAR.fullmatch(m[0]))]
    if not named:
        return []
    text = " ".join(f"{h.chunk.text} {h.chunk.title} {h.chunk.section} {citation(h.chunk)}" for h in hits)
    found = _NUMBER.findall(text)
    stated = set(found) | {n.replace(",", "") for n in found} | set(_DOTTED.findall(text))
    return [n for n in dict.fromkeys(named) if not any(_names(m, n) for m in stated if m[:1].isdigit())]


def _leading(number: str) -> list[str]:
    """The shorter names of a version or time: "1.93.0" also says 1.93 and 1, "12:30:45" says 12:30
    ("Rust 1.93" is the release 1.93.0); a decimal says only itself (1.5 kg is not 1 kg)."""
    return [] if DECIMAL.fullmatch(number) else \
        [canonical_number(number[:m.start()]) for m in re.finditer(r"[.:]", number)]


def stated_numbers(text: str, leading: bool = False) -> set[str]:
    """The numbers of a text, digits or spelled out (two to ninety-nine), in one spelling each;
    with `leading`, also the shorter names of its versions and times (what a source supports)."""
    digits = _NUMBER.findall(text)
    found = {canonical_number(n) for n in digits} | ({p for n in digits for p in _leading(n)} if leading else set())
    return found | {value for value, _ in spelled_numbers(text)}


def unsupported_numbers(answer: str, question: str, hits: Sequence[Hit]) -> list[str]:
    """Numbers the answer states that neither the chunks (text, title, citation) nor the question
    contain (a made-up price, power, frequency); its citation markers are not numbers. A version,
    date, address, time, range or measure (1.93.0, 2024-12-06, 10.0.0.1, 12:30:45, 3-5, 230V)
    counts as stated where the sources state it, and no text makes it raise."""
    known = stated_numbers(question, True).union(*(stated_numbers(f"{h.chunk.text} {h.chunk.title} {citation(h.chunk)}", True)
                                             for h in hits))
    said = CITE.sub(" ", answer)
    stated = _NUMBER.findall(said)
    return [n for n in dict.fromkeys(stated) if canonical_number(n) not in known] + sorted(
        stated_numbers(said) - known - {canonical_number(n) for n in stated})
