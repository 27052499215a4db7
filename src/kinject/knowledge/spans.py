"""Typed spans of a sentence: dates, numbers, names, versions, codes — what a cloze question can blank.

Split from `kinject.tasks.cloze`, which draws same-type distractors for these spans and words the
questions: finding the spans is a task of its own (regex heuristics over one sentence), pure and
deterministic like the rest.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

from kinject.knowledge.furniture import LEADING_WORDS as _LEADING
from kinject.knowledge.furniture import LOWER as _LO
from kinject.knowledge.furniture import MONTHS
from kinject.knowledge.furniture import UPPER as _UP

_MONTH = "|".join(MONTHS)
_CAP = rf"(?:[{_UP}][{_LO}'’\-]*[{_LO}]|[{_UP}]{{2,6}})"
_CONNECT = r"(?:of|the|de|da|del|der|du|van|von|la|le|di|y|al|bin)"


@dataclass(frozen=True)
class Span:
    """A typed piece of a sentence that can be blanked."""

    kind: str
    key: tuple[str, ...]
    """Finer type: only values with the same key are interchangeable as options."""
    text: str
    start: int
    end: int
    value: float | None = None
    """Position on a line for ordered kinds (years, dates, numbers, versions, times)."""


# ---------------------------------------------------------------------------- span extraction

_ISO = re.compile(r"(?<![\w-])(\d{4})-(\d{2})-(\d{2})(?![\w-])")
_MDY = re.compile(rf"\b({_MONTH}) (\d{{1,2}}), (\d{{4}})\b")
_DMY = re.compile(rf"\b(\d{{1,2}}) ({_MONTH}) (\d{{4}})\b")
_MY = re.compile(rf"\b({_MONTH}) (\d{{4}})\b")
_RELEASE = re.compile(r"(?<![\w.])((?:19|20)\d\d)([a-rt-z])(?![\w])")  # "2025b", not the decade "1980s"
_TIME = re.compile(r"(?<![\w:.-])([01]\d|2[0-4]):([0-5]\d)(?![\w:])")
_OFFSET = re.compile(r"(?<![\w:/.+-])([+-])(\d{2})(?::(\d{2}))?(?![\w:.-])")
_ZONE = re.compile(r"\b(Africa|America|Antarctica|Asia|Atlantic|Australia|Europe|Indian|Pacific)/[A-Za-z_]+"
                   r"(?:/[A-Za-z_]+)?\b")
_VERSION = re.compile(rf"\b([{_UP}][A-Za-z+#]+) (\d+\.\d+(?:\.\d+)?)(?![\w.]|\.\d)")
_UNIT_SYMBOL = (r"%|percent|per cent|km2|km²|sq mi|square kilometres|square kilometers|square miles|km|"
                r"kilometres|kilometers|miles|metres|meters|kg|tonnes|hectares|MB|GB|TB|°C|°F|bits|bytes")
NUMBER = re.compile(
    r"(?<![\w.,/:°′#-])(?P<cur>US\$|\$|€|£)?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"(?:[ \u00a0](?P<scale>thousand|million|billion|trillion))?"
    rf"(?:[ \u00a0]?(?P<unit>{_UNIT_SYMBOL}))?(?![\w/:°′″-]|[.,]\d)")
"""A quantity: currency, digits, scale and unit (`kinject.tasks.cloze` writes distractors in its format)."""
_YEAR = re.compile(r"(?<![\w$€£.,:/°#-])(1[0-9]{3}|20[0-9]{2})(?![\w%:/°′]|[.,-]\d)"
                   rf"(?!\s?(?:{_UNIT_SYMBOL}|thousand|million|billion|trillion)(?![A-Za-z]))")
_NOUN = re.compile(r"\s+([a-z]{3,})")
_LABEL = re.compile(r"\b(?:RFC|PEP|ISO|CVE|[Bb]ug|[Ii]ssue|No\.|[Nn]umber)\s*$")
"""A number it labels is an identifier ("RFC 2056", "bug 12345"), not a year or a quantity."""
_CODE = re.compile(r"(?<![\w./-])(?:[A-Za-z_][A-Za-z0-9_]*\.)*[A-Za-z_][A-Za-z0-9_]*(?:\(\))?(?![\w/-])")
_ROMAN = re.compile(r"(?=[IVXL])X{0,3}(?:IX|IV|V?I{0,3})|L?X{0,3}(?:IX|IV|V?I{0,3})")
_REFERENCE = {"Figure", "Fig", "Table", "Section", "Chapter", "Equation", "Example", "Page", "Step", "Part",
              "Appendix", "Exercise", "Problem", "Lesson", "Unit"}
_FILE_EXT = {"tab", "txt", "html", "json", "zi", "c", "h", "md", "rst", "cfg", "toml", "yaml", "yml", "csv", "ini",
             "js", "css", "zip", "gz", "tar", "xml", "sh", "py"}
_CAMEL = re.compile(r"^[A-Z][a-z0-9]{2,}(?:[A-Z][a-z0-9]+)+$")
_MULTI = re.compile(rf"(?<![\w'’-]){_CAP}(?:\s+(?:{_CONNECT}\s+)*{_CAP})+(?![\w-])")
_SINGLE = re.compile(rf"\b(?:in|at|near|from|across|throughout) (?P<name>{_CAP})(?![\w'’-]|\s+[{_UP}])")

_ORG = {"Company", "Corporation", "Corp", "Inc", "Ltd", "University", "College", "Institute", "Association", "Party",
        "Committee", "Council", "Union", "Agency", "Museum", "Foundation", "Bank", "Group", "Society", "League",
        "Club", "Organization", "Organisation", "Nations", "Fund", "Commission", "Court", "Church", "Communion",
        "Army", "Navy", "Force", "Ministry", "Department", "Office", "Parliament", "Congress", "Senate", "Assembly",
        "Federation", "Network", "Studios", "Records", "Press", "Times", "Journal", "Magazine", "Airlines",
        "Motors", "Software", "Project", "Team", "FC", "UN", "NASA", "Bureau", "Board", "Authority", "Service"}
_PLACE = {"River", "Sea", "Ocean", "Gulf", "Bay", "Lake", "Mountains", "Mount", "Island", "Islands", "Peninsula",
          "Valley", "Desert", "City", "County", "Province", "State", "States", "Republic", "Kingdom", "Region",
          "Territory", "Territories", "Coast", "Strait", "Basin", "Park", "Voivodeship", "Prefecture", "District",
          "Asia", "Africa", "America", "Europe", "Oceania", "Antarctica", "Canal", "Falls", "Plateau", "Hills",
          "Emirates", "Columbia", "Scotia", "Zealand", "Guinea", "Korea", "Arabia", "Sahara", "Ontario",
          "Delhi", "York", "Angeles", "Francisco", "Janeiro", "Aires", "Paulo", "Kong", "Lumpur", "Salvador"}
_PLACE_FIRST = {"North", "South", "East", "West", "Northern", "Southern", "Eastern", "Western", "Saint", "San",
                "Santa", "Los", "Las", "Lake", "Cape", "Port", "Fort", "Upper", "Lower", "Greater", "Central", "Mount",
                "Rio", "Sierra", "Costa", "Puerto", "Buenos", "Hong", "Kuala", "Ho"}
_AWARD = {"Award", "Awards", "Prize", "Medal", "Honors", "Honours", "Palme", "Trophy", "Oscar", "Globe", "Emmy",
          "Grammy", "Order", "Cross"}
_EVENT = {"Games", "Olympics", "Cup", "Championship", "Championships", "War", "Festival", "Expo", "Summit",
          "Conference", "Census", "Revolution", "Election", "Tournament", "Open", "Series", "Assessment"}
_NOT_PERSON = {"American", "European", "British", "National", "International", "United", "Royal", "World",
               "Global", "Time", "Act", "Python", "Django", "Linux", "Windows", "Apple", "Google", "Microsoft",
               "English", "French", "German", "Spanish", "Chinese", "Japanese", "Indian", "Russian", "Arabic",
               "Christian", "Catholic", "Islamic", "Jewish", "Buddhist", "Ancient", "Modern", "Early", "Late",
               "Old", "Middle", "Great", "Holy", "General", "First", "Second", "Third", "Supreme", "Federal",
               "Wikipedia", "Note", "Caution", "TEMPORARY", "HACK", "CLDR", "UT", "UTC", "DST", "POSIX", "TZ",
               "TZDB", "SQL", "HTML", "JSON", "CSS", "HTTP", "API", "URL", "ID"}
_STOP = {"the", "and", "for", "with", "that", "this", "from", "into", "are", "was", "were", "has", "have", "not",
         "its", "his", "her", "their", "which", "who", "also", "more", "than", "new", "one", "two", "all"}


def _camel_words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", text)]


def content_tokens(text: str) -> set[str]:
    """Lower-cased words of a string (split at non-letters and camelCase) that carry meaning."""
    return {w for w in _camel_words(text) if len(w) >= 4 and w not in _STOP and not w.isdigit()}


def _date_value(y: int, m: int, d: int) -> float | None:
    try:
        return float(dt.date(y, m, d).toordinal())
    except ValueError:
        return None


def _number_span(m: re.Match[str], sentence: str) -> Span | None:
    num, cur, scale, unit = m["num"], m["cur"] or "", m["scale"] or "", m["unit"] or ""
    value = float(num.replace(",", ""))
    if re.search(rf"\b[{_UP}][\w&]*\s$", sentence[:m.start()]) and not (cur or scale or unit):
        return None  # a name's number ("Fortune 500", "Android 17"), not a quantity
    bare = not (cur or scale or unit)
    if bare and not sentence[:m.start()].strip() and re.match(rf"\s+[{_UP}]", sentence[m.end():]):
        return None  # a footnote mark opening the text ("10 CMake is an alternative")
    if bare and "." in num and re.match(r"\.?\s*[”“\"]", sentence[m.end():]):
        return None  # a section cited by its title ("Policy Manual, 4.9 “Main building script”")
    if "." in num and not (cur or scale or unit) and not sentence[:m.start()].strip():
        return None  # "14.2 Reproductive organs": a section number heading the sentence
    if not (cur or scale or unit or "," in num or "." in num) and value < 10:
        return None  # small counts ("3 modes") make poor questions
    if "." in num and not (cur or scale or unit) and value < 100 and re.search(r"[A-Za-z]\s*$", sentence[:m.start()]):
        return None  # bare decimals after a word ("GEOS 3.9", "and 3.11") are versions more often than quantities
    digits = num.replace(",", "").split(".")
    decimals = len(digits[1]) if len(digits) > 1 else 0
    sig = len(digits[0].lstrip("0").rstrip("0")) if decimals == 0 else len((digits[0] + digits[1]).lstrip("0"))
    noun = _NOUN.match(sentence, m.end())
    scale_f = {"": 1, "thousand": 1e3, "million": 1e6, "billion": 1e9, "trillion": 1e12}[scale]
    key = ("number", cur, scale, unit.replace("km²", "km2"), "," if "," in num else "", str(decimals),
           str(min(sig, 4)), noun.group(1) if noun and not unit else "")
    return Span("number", key, m.group(0).strip(), m.start(), m.end(), value * scale_f)


def _entity_kind(words: list[str], before: str, common: frozenset[str] = frozenset()) -> str:
    """person / place / org / award / event / name, from keywords and shape (regex heuristics)."""
    ws = set(words)
    if ws & _AWARD:
        return "award"
    if ws & _EVENT:
        return "event"
    if len(words) == 2 and _ROMAN.fullmatch(words[-1]) and words[0] not in _NOT_PERSON:
        return "person"  # a pope or monarch: "Leo XIV", "Charles III"
    if ws & _ORG or any(w.isupper() and len(w) >= 2 for w in words[1:]):
        return "org"
    if ws & _PLACE or words[0] in _PLACE_FIRST:
        return "place"
    caps = [w for w in words if w[0].isupper()]
    titled = all(re.fullmatch(rf"[{_UP}][{_LO}'’\-]+", w) for w in caps)
    if (titled and 2 <= len(caps) <= 4 and not ws & _NOT_PERSON and not ws & {"of", "the", "la", "del"}
            and not any(w.lower() in common for w in caps)
            and not re.search(r"\b(in|at|near|the|The)\s*$", before)):
        return "person"
    if re.search(r"\b(in|at|near|from|across|throughout)\s*$", before):
        return "place"
    return "name"


def common_words(sents: Sequence[str]) -> frozenset[str]:
    """Words a corpus writes in lower case: capitalised, they start a sentence rather than a name."""
    return frozenset(w for s in sents for w in re.findall(rf"(?<![\w'’-])[{_LO}]{{2,}}(?![\w'’-])", s))


def extract_spans(sentence: str, common: frozenset[str] = frozenset()) -> list[Span]:
    """Every blankable typed span of a sentence, without overlaps (earlier kinds win).

    `common` (see `common_words`) tells a sentence-initial word ("Multiple Cookie headers") from
    the first word of a name, and ordinary words from person names.
    """
    taken: list[tuple[int, int]] = []
    spans: list[Span] = []

    def free(a: int, b: int) -> bool:
        return all(b <= x or a >= y for x, y in taken)

    def add(span: Span | None) -> None:
        if span is not None and span.text and free(span.start, span.end):
            taken.append((span.start, span.end))
            spans.append(span)

    for m in _ZONE.finditer(sentence):
        add(Span("zone", ("zone", m.group(1)), m.group(0), m.start(), m.end()))
    for m in _ISO.finditer(sentence):
        v = _date_value(int(m[1]), int(m[2]), int(m[3]))
        add(Span("date", ("date", "iso"), m.group(0), m.start(), m.end(), v) if v else None)
    for m in _MDY.finditer(sentence):
        v = _date_value(int(m[3]), MONTHS.index(m[1]) + 1, int(m[2]))
        add(Span("date", ("date", "mdy"), m.group(0), m.start(), m.end(), v) if v else None)
    for m in _DMY.finditer(sentence):
        v = _date_value(int(m[3]), MONTHS.index(m[2]) + 1, int(m[1]))
        add(Span("date", ("date", "dmy"), m.group(0), m.start(), m.end(), v) if v else None)
    for m in _MY.finditer(sentence):
        v = _date_value(int(m[2]), MONTHS.index(m[1]) + 1, 15)
        add(Span("date", ("date", "my"), m.group(0), m.start(), m.end(), v) if v else None)
    for m in _RELEASE.finditer(sentence):
        add(Span("release", ("release",), m.group(0), m.start(), m.end(), int(m[1]) * 26 + ord(m[2]) - 97))
    for m in _TIME.finditer(sentence):
        add(Span("time", ("time",), m.group(0), m.start(), m.end(), int(m[1]) * 60 + int(m[2])))
    for m in _OFFSET.finditer(sentence):
        sign = -1 if m[1] == "-" else 1
        fmt = "hh:mm" if m[3] else "hh"
        add(Span("offset", ("offset", fmt), m.group(0), m.start(), m.end(),
                 sign * (int(m[2]) * 60 + int(m[3] or 0))))
    for m in _VERSION.finditer(sentence):
        if m[1] in _REFERENCE:
            taken.append((m.start(), m.end()))  # "Figure 15.3" names a figure, it states no fact
            continue
        parts = [int(p) for p in m[2].split(".")] + [0, 0]
        add(Span("version", ("version", m[1], str(m[2].count("."))), m[2], m.start(2), m.end(2),
                 parts[0] * 1e6 + parts[1] * 1e3 + parts[2]))
    for m in _YEAR.finditer(sentence):
        if _LABEL.search(sentence, 0, m.start()):
            taken.append((m.start(), m.end()))
            continue
        add(Span("year", ("year",), m.group(0), m.start(), m.end(), float(m.group(0))))
    for m in NUMBER.finditer(sentence):
        add(None if _LABEL.search(sentence, 0, m.start()) else _number_span(m, sentence))
    for m in _CODE.finditer(sentence):
        text = m.group(0)
        if re.fullmatch(r"[\d.]+", text):
            continue
        parts = text.removesuffix("()").split(".")
        if any(len(p) < 2 for p in parts):
            continue
        if text.endswith("()"):
            shape = "call"
        elif len(parts) == 2 and parts[-1] in _FILE_EXT and not parts[0][0].isupper():
            shape = "file"
        elif len(parts) > 1:
            shape = "dotted"
        elif "_" in text and text.strip("_").upper() == text.strip("_") and len(text) >= 4:
            shape = "const"
        elif "_" in text.strip("_") and text.lower() == text:
            shape = "snake"
        elif _CAMEL.match(text) and len(text) >= 8:
            shape = "camel"
        else:
            continue
        add(Span("code", ("code", shape), text, m.start(), m.end()))
    for m in _MULTI.finditer(sentence):
        words = m.group(0).split()
        start = m.start()
        while words and (words[0] in _LEADING or re.fullmatch(_CONNECT, words[0])
                         or (start == 0 and words[0].lower() in common)):
            start = sentence.index(words[1], start + len(words[0])) if len(words) > 1 else m.end()
            words = words[1:]
        while words and (re.fullmatch(_CONNECT, words[-1]) or words[-1] in _LEADING):
            words = words[:-1]
        if len([w for w in words if w[0].isupper()]) < 2:
            continue
        if all(w.isupper() for w in words) and any(w.lower() in common or w.lower() in _STOP for w in words):
            continue  # shouted prose ("IN THE", "MIT OR"), not an acronym's name
        text = " ".join(words)
        if sentence[start:start + len(text)] != text:
            continue
        text = re.sub(r"['’]s$", "", text)
        if start == 0 and words[0] in _LEADING:
            continue
        kind = _entity_kind(words, sentence[:start], common)
        add(Span(kind, (kind, str(min(len(words), 4))), text, start, start + len(text)))
    for m in _SINGLE.finditer(sentence):
        name = re.sub(r"['’]s$", "", m["name"])
        if name.lower() in common or name in _LEADING or name in _NOT_PERSON or len(name) < 4 or name.isupper():
            continue
        add(Span("place", ("place", "1"), name, m.start("name"), m.end("name")))
    return sorted(spans, key=lambda s: s.start)
