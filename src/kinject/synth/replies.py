"""Reading generator replies and comparing texts, for the synthetic-data recipes. This module
owns the lenient JSON reader for model replies (code fences, prose around the JSON, raw
newlines in strings) and the pure text measures that validation rests on: the numbers and
names a text states, content words and how many of them another text covers, and word-sequence
similarity. Everything here is pure; `kinject.synth.paraphrase` and `kinject.synth.questions` build their
checks from it.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from typing import Any

_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)(?:```|$)", re.S)


def parse_json_reply(reply: str) -> Any | None:
    """The JSON value in a model reply, leniently: code fences, prose around it, raw newlines in
    strings are all accepted; `None` when there is no complete JSON object or array."""
    text = reply.strip()
    m = _FENCE.search(text)
    candidates = [m.group(1).strip(), text] if m else [text]
    decoder = json.JSONDecoder(strict=False)
    for cand in candidates:
        # only the outermost value: a truncated reply must not yield one of its inner objects
        for start in sorted(i for i in (cand.find("{"), cand.find("[")) if i >= 0):
            try:
                return decoder.raw_decode(cand, start)[0]
            except ValueError:
                continue
    return None


def string_list(value: Any) -> list[str] | None:
    """A list of strings out of a list whose entries are strings or one-field objects."""
    if not isinstance(value, list):
        return None
    out = []
    for v in value:
        if isinstance(v, dict):
            v = next((x for x in v.values() if isinstance(x, str)), None)
        if isinstance(v, str):
            out.append(v)
    return out


_WORD = re.compile(r"[A-Za-z0-9][\w'’-]*")
_NUMBER = re.compile(r"\d+(?:[.,:/]\d+)*")
_NOT_NAMES = {"I", "A", "An", "The"}


def norm(text: str) -> str:
    """Whitespace collapsed and lower-cased: how texts are compared for sameness."""
    return " ".join(text.split()).lower()


def numbers(text: str) -> set[str]:
    """Numbers as written (thousands separators dropped): '1,200' and '1200' are the same."""
    return {re.sub(r"(?<=\d),(?=\d{3}\b)", "", n) for n in _NUMBER.findall(text)}


def names(text: str) -> set[str]:
    """Capitalised words that are not just sentence starts, and acronyms (DNA, mRNA) anywhere."""
    found: set[str] = set()
    for m in _WORD.finditer(text):
        w = re.sub(r"['’]s$", "", m.group())
        if w in _NOT_NAMES or not any(c.isupper() for c in w) or w.isdigit():
            continue
        before = text[:m.start()].rstrip(" \"'(“‘[")
        sentence_start = not before or before[-1] in ".!?:;\n"
        if any(c.isupper() for c in w[1:]) or not sentence_start:
            found.add(w)
    # a sentence-initial word is a name when it also appears capitalised mid-sentence: covered above
    return found


def similarity(a: str, b: str) -> float:
    """Word-sequence similarity in [0, 1] (difflib ratio on lower-cased words)."""
    return difflib.SequenceMatcher(None, _WORD.findall(a.lower()), _WORD.findall(b.lower()), autojunk=False).ratio()


_STOP = set("the a an of in on at to for from by with and or but is are was were be been it its this that these "
            "those as into than then there their they he she his her which who whom what when where how not no "
            "can may also more most other some such only has have had do does did".split())


_WORD3 = re.compile(r"[a-z][a-z'-]{2,}")


def content_words(text: str) -> list[str]:
    """Lower-cased words of 3+ letters that are not function words."""
    return [w for w in _WORD3.findall(text.lower()) if w not in _STOP]


def coverage(words: Sequence[str], text: str) -> float:
    """Share of `words` found in `text`, compared on their first five letters (plurals, endings)."""
    stems = {w[:5] for w in _WORD3.findall(text.lower())}
    return sum(w[:5] in stems for w in words) / len(words) if words else 1.0
