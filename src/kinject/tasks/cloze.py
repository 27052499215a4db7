"""Offline, deterministic cloze questions: blank a date, number or name of a sentence.

A new-knowledge task needs questions about text no model has seen, and must exist without
any LLM. Per chunk we pick a sentence holding a typed span (a year, a date, a number with its
unit, a capitalised name, a code identifier...: see `kinject.knowledge.spans`), replace it by `___` and
offer it with three distractors of the *same* type drawn from the same corpus, so that nothing
but knowledge of the sentence tells the options apart:

* type agreement: a year competes with years, `1.57 million` with other `<x.xx> million`
  values of the same magnitude, a person-like name with person-like names, a setting name
  (`MAILERS`) with other ALL_CAPS identifiers;
* no ordering cue: for ordered types (years, dates, numbers, versions) the answer's rank among
  the four values is drawn uniformly, so "the largest" or "the most recent" wins 1 time in 4;
* no frequency cue: categorical distractors are drawn with probability proportional to their
  corpus frequency, the distribution answers come from, and close to the answer in length;
* no leak: a question is dropped when the answer (or one of its words) or a close value of the
  same type appears elsewhere in its wording; a distractor that appears in the wording is never
  used (a model would copy it).
* subject, not furniture: licence and copyright lines, reference lists, contents and index
  pages, running headers, navigation, cross-references, URLs and text a PDF extractor ran
  together are never cut nor drawn from; links are reduced to their text;
* a mix of skills: no answer type passes `MAX_SHARE` of a task while others exist (a folder of
  documentation would otherwise be mostly identifiers).

Prompts follow `kinject.tasks.task` cloze/plain rendering: `Question: <title>: <sentence with
___>\\nAnswer:` scored against ` <option text>` for each option. Everything here is pure.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kinject.knowledge.corpus import Chunk, sentences
from kinject.knowledge.furniture import (
    FURNITURE_SHARE,
    FURNITURE_TITLES,
    MONTHS,
    clean_sentence,
    code_ranges,
    is_bibliography,
    is_contents,
    is_furniture,
    is_licence,
    question_title,
)
from kinject.knowledge.spans import NUMBER as _NUMBER
from kinject.knowledge.spans import Span, common_words, content_tokens, extract_spans
from kinject.tasks.task import Item

BLANK = "___"
N_CHOICES = 4
MIN_WORDS, MAX_WORDS = 6, 60
MAX_SHARE = 0.35
"""No answer type may exceed this share of a task while others exist: 584 of 1,080 questions on a
documentation folder blanked identifiers, a test of one skill rather than of the documents."""
MIN_CAP = 20
"""A type is never cut below this many questions: a small folder keeps what it has (20 questions
of one type are not yet a task about one skill)."""
SPARES = 2
"""Questions drawn per chunk beyond those kept, for `balance_kinds` to swap in."""
KIND_WEIGHT = {"year": 1.0, "time": 1.0, "offset": 1.5}
"""How likely a kind is to be blanked when a sentence holds several (default 3): a bare year
("as of ___") is the weakest question, so sentences are rather cut at their fact."""


# ---------------------------------------------------------------------------- distractors


def _format_number(value: float, like: Span) -> str:
    """`value` written like the answer: same currency, separators, decimals, scale and unit."""
    m = _NUMBER.fullmatch(like.text)
    assert m is not None
    scale_f = {"": 1, "thousand": 1e3, "million": 1e6, "billion": 1e9, "trillion": 1e12}[m["scale"] or ""]
    d = int(like.key[5])
    body = f"{value / scale_f:,.{d}f}" if like.key[4] else f"{value / scale_f:.{d}f}"
    return like.text[:m.start("num")] + body + like.text[m.end("num"):]


def _round_sig(value: float, sig: int, decimals: int) -> float:
    if value <= 0:
        return value
    digits = sig - math.floor(math.log10(value)) - 1
    return round(value, min(digits, decimals) if decimals else min(digits, 0))


def _synth(span: Span, direction: int, rng: random.Random) -> tuple[str, float] | None:
    """A value of the same type and format as `span`, above (+1) or below (-1) it. Only plain
    numbers, dates and times are made up: a made-up release ("1981a") is no string anyone wrote."""
    v = span.value
    if v is None:
        return None
    if span.kind == "year":
        y = int(v) + direction * rng.randint(1, 6)
        return (str(y), float(y)) if 1000 <= y <= 2099 else None
    if span.kind == "date":
        fmt = span.key[1]
        d0 = dt.date.fromordinal(int(v))
        if fmt == "my":
            months = d0.year * 12 + d0.month - 1 + direction * rng.randint(1, 14)
            d = dt.date(months // 12, months % 12 + 1, 15)
            return f"{MONTHS[d.month - 1]} {d.year}", float(d.toordinal())
        d = d0 + dt.timedelta(days=direction * rng.randint(5, 300))
        text = {"iso": d.isoformat(), "mdy": f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
                "dmy": f"{d.day} {MONTHS[d.month - 1]} {d.year}"}[fmt]
        return text, float(d.toordinal())
    if span.kind == "time":
        t = int(v) + direction * 60 * rng.randint(1, 4)
        return (f"{t // 60:02d}:{t % 60:02d}", float(t)) if 0 <= t <= 24 * 60 else None
    if span.kind == "offset":
        t = int(v) + direction * 60 * rng.randint(1, 3)
        if abs(t) > 14 * 60:
            return None
        sign = "-" if t < 0 else "+"
        text = f"{sign}{abs(t) // 60:02d}" + (f":{abs(t) % 60:02d}" if span.key[1] == "hh:mm" else "")
        return text, float(t)
    if span.kind == "version":
        parts = [int(p) for p in span.text.split(".")]
        i = len(parts) - 1
        parts[i] += direction * rng.randint(1, 3)
        if parts[i] < 0:
            return None
        return ".".join(map(str, parts)), parts[0] * 1e6 + (parts + [0, 0])[1] * 1e3 + (parts + [0, 0])[2]
    if span.kind == "number":
        factor = math.exp(direction * rng.uniform(0.12, 0.9))
        decimals, sig = int(span.key[5]), int(span.key[6])
        new = _round_sig(v * factor, sig if sig < 4 and not decimals else 12, decimals)
        if new <= 0 or new == v or (span.key[3] in ("%", "percent", "per cent") and new >= 100):
            return None
        text = _format_number(new, span)
        got = extract_spans(text)  # same format and roundness as the answer, or try again
        if len(got) != 1 or got[0].kind != "number" or got[0].key[1:7] != span.key[1:7]:
            return None
        return text, new
    return None


def _near(span: Span, value: float) -> bool:
    """Is `value` close enough to `span.value` to be a rival (and a hint when in the question)?"""
    assert span.value is not None
    v = span.value
    if span.kind == "year":
        return abs(value - v) <= 12
    if span.kind == "date":
        return abs(value - v) <= 800
    if span.kind == "number":
        return v > 0 and value > 0 and abs(math.log(value / v)) <= math.log(4)
    if span.kind == "release":
        return abs(value - v) <= 26 * 3
    return True


def _weighted_order(values: Sequence[str], weights: Sequence[float], rng: random.Random) -> list[str]:
    """A random order where heavier values tend to come first (Efraimidis–Spirakis keys)."""
    keyed = [(rng.random() ** (1.0 / w), v) for v, w in zip(values, weights)]
    return [v for _, v in sorted(keyed, reverse=True)]


@dataclass
class Pool:
    """Every typed span of a corpus: texts per key with their frequency, values of ordered kinds."""

    texts: dict[tuple[str, ...], Counter[str]]
    values: dict[str, float]
    common: frozenset[str] = frozenset()

    @classmethod
    def from_sentences(cls, sents: Sequence[str]) -> Pool:
        """The pool of typed spans in these sentences."""
        texts: dict[tuple[str, ...], Counter[str]] = {}
        values: dict[str, float] = {}
        common = common_words(sents)
        for s in sents:
            for sp in extract_spans(s, common):
                texts.setdefault(sp.key, Counter())[sp.text] += 1
                if sp.value is not None:
                    values[sp.text] = sp.value
        return cls(texts, values, common)

    def candidates(self, span: Span) -> Counter[str]:
        """Texts of the same key; a categorical name may fall back to its kind at any length."""
        own = Counter(self.texts.get(span.key, Counter()))
        if span.kind == "number":  # the noun after the number is a preference, not a requirement
            for key, counter in self.texts.items():
                if key[:7] == span.key[:7] and key != span.key:
                    own.update({t: c for t, c in counter.items() if t not in own})
        if span.value is None and span.kind in ("person", "place", "org", "award", "event", "name", "zone"):
            n = int(span.key[1]) if span.key[1].isdigit() else None
            for key, counter in self.texts.items():
                if key[0] == span.kind and key != span.key and (n is None or not key[1].isdigit()
                                                                 or abs(int(key[1]) - n) <= 1):
                    own.update({t: c for t, c in counter.items() if t not in own})
        return own


def mentions(text: str, needle: str) -> bool:
    """Does `needle` occur in `text` as a whole word sequence (case-insensitive)?"""
    return re.search(rf"(?<![\w]){re.escape(needle.lower())}(?![\w])", text.lower()) is not None


def _usable(text: str, answer: str, q_lower: str, q_tokens: set[str], categorical: bool) -> bool:
    if text.lower() == answer.lower() or mentions(q_lower, text):
        return False
    if categorical:
        if content_tokens(text) & q_tokens:
            return False
        a, b = text.lower(), answer.lower()
        if a in b or b in a:
            return False
    return True


def pick_distractors(span: Span, question: str, pool: Pool, rng: random.Random) -> list[str] | None:
    """Three options of the answer's type that are not in the question; None if too few exist."""
    q_lower = question.lower()
    q_tokens = content_tokens(question)
    cands = pool.candidates(span)
    need = N_CHOICES - 1
    if span.value is None:  # categorical: frequency-weighted, then closest in length
        names = sorted(t for t in cands if _usable(t, span.text, q_lower, q_tokens, True))
        if len(names) < need:
            return None
        order = _weighted_order(names, [cands[t] for t in names], rng)[:max(need * 3, 8)]
        chosen: list[str] = []
        for t in sorted(order, key=lambda t: (abs(len(t) - len(span.text)), order.index(t))):
            if all(t.lower() not in c.lower() and c.lower() not in t.lower() for c in chosen):
                chosen.append(t)
            if len(chosen) == need:
                return chosen
        return None
    below_n = rng.randrange(N_CHOICES)  # the answer's rank among the four values, uniform
    above_n = need - below_n
    used = {span.value}
    below: list[str] = []
    above: list[str] = []
    known = sorted(t for t in cands if t in pool.values and _near(span, pool.values[t])
                   and _usable(t, span.text, q_lower, q_tokens, False))
    for t in _weighted_order(known, [1.0] * len(known), rng):
        v = pool.values[t]
        if v in used:
            continue
        side = below if v < span.value else above
        if len(side) < (below_n if side is below else above_n):
            side.append(t)
            used.add(v)
    for side, n, direction in ((below, below_n, -1), (above, above_n, 1)):
        tries = 0
        while len(side) < n and tries < 60:
            tries += 1
            got = _synth(span, direction, rng)
            if got is None or got[1] in used or not _usable(got[0], span.text, q_lower, q_tokens, False):
                continue
            if any(got[0] == t for t in below + above):
                continue
            side.append(got[0])
            used.add(got[1])
    if len(below) < below_n or len(above) < above_n:
        return None
    return below + above


# ---------------------------------------------------------------------------- questions


def leaks(span: Span, question: str, others: Sequence[Span], sentence: str = "") -> bool:
    """Would the wording give the answer away (or hint at it through a close value)?

    `others` are the sentence's other typed spans; `sentence` (the unblanked sentence, without
    the title) lets version numbers be compared with the sentence alone."""
    q = question.replace(BLANK, " ")
    if mentions(q, span.text):
        return True
    if span.kind == "number":
        before, after = question.split(BLANK, 1)
        if re.match(r"\s*\(\s*[~≈]?\s*[$€£]?\d", after):
            return True  # a unit conversion follows: "___ (43,484 sq mi)"
        if re.search(r"\d\s*(?:to|-|–|—|or)\s*[~≈]?$", before):
            return True  # the other end of a range: "1.28 to ___"
    if span.value is None:
        return bool(content_tokens(span.text) & content_tokens(q))
    if span.kind == "version":  # a neighbour in a list of versions: "Python ___, 3.13, and 3.14"
        rest = sentence[:span.start] + sentence[span.end:] if sentence else q
        return re.search(r"(?<![\w.])\d+\.\d+", rest) is not None
    if span.kind == "number":  # another quantity of the same currency/scale/unit close to the answer
        return any(o.kind == "number" and o.key[1:4] == span.key[1:4] and o.value is not None
                   and _near(span, o.value) for o in others)
    return any(o.key == span.key and o.value is not None and _near(span, o.value) for o in others)


def is_timestamp(sentence: str, span: Span) -> bool:
    """A year or date that only says when a figure held ("as of 2025", "816,614 (2025)") or when a
    file was built ("2023-02-04 11:59:01 UTC"): what it dates is the fact, and 2025 against 2026
    would be a coin toss even for a reader."""
    if span.kind not in ("year", "date"):
        return False
    before, after = sentence[:span.start], sentence[span.end:]
    return (re.search(r"\bas of (?:the )?(?:mid[- ]|early |late |end of )?$", before, re.I) is not None
            or (before.endswith("(") and after.startswith(")"))
            or re.match(r"\s*T?\d{1,2}:\d{2}:\d{2}", after) is not None)


_CROSS_REF = re.compile(
    r"(?:\b(?:visit|consult|refer to|read)(?: the| our)?|\bsee\b[^.;:()]{0,60}|\(see\b[^)]*|\bsection [\d.]+,?)"
    r"\s*[”“\"]?$", re.I)


def is_cross_reference(sentence: str, span: Span) -> bool:
    """A name the sentence points the reader to ("see ___ for details", "(see ___ — dict)"):
    the title of another page, not what this one says."""
    return _CROSS_REF.search(sentence, 0, span.start) is not None


def blank_question(title: str, sentence: str, span: Span) -> str:
    """`title: sentence-with-___`, the stem the continuation `Answer: <option>` is scored after."""
    body = " ".join((sentence[:span.start] + BLANK + sentence[span.end:]).split())
    return f"{title.strip()}: {body}" if title.strip() else body


def usable_sentence(sentence: str) -> bool:
    """A prose sentence of the document's subject, of a length a question can quote."""
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    return not re.search(r"[{}=<>]|^\W|::|\.\.\s", sentence) and not is_furniture(sentence)


@dataclass(frozen=True)
class Cloze:
    """One generated question before its options are placed."""

    chunk: Chunk
    question: str
    answer: str
    distractors: tuple[str, ...]
    kind: str


SpanFilter = Callable[[Chunk, str, Span], bool]
"""Which (chunk, sentence, span) may be blanked, e.g. only the post-cutoff statements of a text."""


def after_code(text: str, span: tuple[int, int], code: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """The sentence that follows a block inside `span`: a sentence splitter runs the line after a
    closing fence into the block's last line. Only a new line that opens a sentence (a capital or
    a digit) counts; the words before a block ("Install it with") and a sentence the block
    interrupts ("… and then run it") are fragments, left out with the block."""
    a, b = span
    end = max((y for x, y in code if x < b and y > a), default=None)  # where the last block in it ends
    if end is None:
        return span
    if end >= b:
        return None
    gap = len(text[end:b]) - len(text[end:b].lstrip())
    start = end + gap
    return (start, b) if "\n" in text[end:start] and (text[start].isupper() or text[start].isdigit()) else None


def chunk_sentences(chunk: Chunk) -> list[str]:
    """The chunk's prose sentences as a reader sees them (see `clean_sentence`); fenced blocks
    (code, a shell session's output) are left out, a sentence on the line after one kept."""
    code = code_ranges(chunk.text)
    parts = [p for span in sentences(chunk.text) if (p := after_code(chunk.text, span, code))]
    return [clean_sentence(chunk.text[a:b]) for a, b in parts]


def furniture_chunk(chunk: Chunk, sents: Sequence[str]) -> bool:
    """A licence, contents or reference page, by its title or by the share of its sentences."""
    if question_title(chunk.title).lower() in FURNITURE_TITLES:
        return True
    marked = sum(is_licence(s) or is_bibliography(s) or is_contents(s) for s in sents)
    return marked >= max(2.0, FURNITURE_SHARE * len(sents))


def cloze_for_chunk(chunk: Chunk, pool: Pool, per_chunk: int, seed: int,
                    keep: SpanFilter | None = None) -> list[Cloze]:
    """Up to `per_chunk` questions from one chunk, from different sentences where possible."""
    rng = random.Random(f"kinject-cloze:{seed}:{chunk.id}")
    options: list[tuple[str, Span, list[Span]]] = []
    sents = chunk_sentences(chunk)
    if furniture_chunk(chunk, sents):
        return []
    title = question_title(chunk.title)
    for sent in sents:
        if not usable_sentence(sent):
            continue
        spans = extract_spans(sent, pool.common)
        options += [(sent, sp, [o for o in spans if o is not sp]) for sp in spans
                    if not is_timestamp(sent, sp) and not is_cross_reference(sent, sp)
                    and (keep is None or keep(chunk, sent, sp))]
    out: list[Cloze] = []
    used_sentences: set[str] = set()
    while options and len(out) < per_chunk:
        fresh = [o for o in options if o[0] not in used_sentences] or options
        weights = [KIND_WEIGHT.get(sp.kind, 3.0) for _, sp, _ in fresh]
        sent, span, others = rng.choices(fresh, weights)[0]
        options.remove((sent, span, others))
        question = blank_question(title, sent, span)
        if leaks(span, question, others, sent):
            continue
        picked = pick_distractors(span, question, pool, rng)
        if picked is None:
            continue
        out.append(Cloze(chunk, question, span.text, tuple(picked), span.kind))
        used_sentences.add(sent)
    return out


def balanced_choices(rows: Sequence[tuple[str, Sequence[str]]],
                     rng: random.Random) -> list[tuple[tuple[str, ...], int]]:
    """(choices, gold) for each (answer, distractors) row: the answer's position balanced over
    A–D (counts differ by at most one) and the distractors in random order, all drawn from `rng`.
    The one answer-placing rule of every multiple-choice task built here (cloze, newfacts and
    the LLM-written questions of `kinject.synth.questions`)."""
    golds = [i % N_CHOICES for i in range(len(rows))]
    rng.shuffle(golds)
    out: list[tuple[tuple[str, ...], int]] = []
    for (answer, distractors), gold in zip(rows, golds):
        others = list(distractors)
        rng.shuffle(others)
        out.append((tuple(others[:gold] + [answer] + others[gold:]), gold))
    return out


def place_options(clozes: Sequence[Cloze], seed: int, prefix: str = "cloze") -> list[Item]:
    """Items with the gold position balanced over A–D (counts differ by at most one)."""
    rng = random.Random(f"kinject-cloze-gold:{seed}")
    placed = balanced_choices([(c.answer, c.distractors) for c in clozes], rng)
    items: list[Item] = []
    seen: Counter[str] = Counter()
    for c, (choices, gold) in zip(clozes, placed):
        seen[c.chunk.id] += 1
        items.append(Item(id=f"{prefix}/{c.chunk.id}/{seen[c.chunk.id] - 1}", question=c.question, choices=choices,
                          gold=gold, subject=c.kind, source=c.chunk.text, source_chunks=(c.chunk.id,)))
    return items


def cloze_items(chunks: Sequence[Chunk], per_chunk: int = 1, seed: int = 0, keep: SpanFilter | None = None,
                pool_chunks: Sequence[Chunk] | None = None, prefix: str = "cloze") -> list[Item]:
    """`cloze_questions` with a span filter (e.g. only post-cutoff statements) and an optional
    larger corpus to draw distractors from; item ids are `<prefix>/<chunk id>/<n>`."""
    if per_chunk < 1:
        raise ValueError("per_chunk must be at least 1")
    pool = corpus_pool(pool_chunks or chunks)
    drawn = [cloze_for_chunk(c, pool, per_chunk + SPARES, seed, keep) for c in chunks]
    return place_options(balance_kinds(drawn, per_chunk), seed, prefix)


def kind_cap(counts: Counter[str], share: float = MAX_SHARE) -> int:
    """The most questions one answer type may keep: at most `share` of all those kept, but never
    fewer than the second most common type has (two types alone split evenly) nor `MIN_CAP`."""
    if len(counts) < 2:
        return max(counts.values(), default=0)
    cap = max(counts.values())
    while cap > MIN_CAP and cap > share * sum(min(n, cap) for n in counts.values()):
        cap -= 1
    return max(cap, sorted(counts.values())[-2])


def balance_kinds(drawn: Sequence[Sequence[Cloze]], per_chunk: int, share: float = MAX_SHARE) -> list[Cloze]:
    """`per_chunk` questions of each chunk's draws, no answer type above `kind_cap`: a chunk
    swaps an over-represented question for one of its spares of another type, and what is still
    over is thinned evenly across the documents (not cut from the last ones)."""
    chosen = [list(d[:per_chunk]) for d in drawn]
    spares = [list(d[per_chunk:]) for d in drawn]
    counts = Counter(q.kind for qs in chosen for q in qs)
    for qs, extra in zip(chosen, spares):
        for i, q in enumerate(qs):
            cap = kind_cap(counts, share)
            alt = next((s for s in extra if counts[s.kind] < cap), None) if counts[q.kind] > cap else None
            if alt is not None:
                qs[i] = alt
                extra.remove(alt)
                counts[q.kind] -= 1
                counts[alt.kind] += 1
    flat = [q for qs in chosen for q in qs]
    cap = kind_cap(counts, share)
    drop: set[int] = set()
    for kind, n in counts.items():
        if n > cap:
            at = [i for i, q in enumerate(flat) if q.kind == kind]
            keep = {at[k * n // cap] for k in range(cap)}
            drop.update(i for i in at if i not in keep)
    return [q for i, q in enumerate(flat) if i not in drop]


def corpus_pool(chunks: Sequence[Chunk]) -> Pool:
    """The distractor pool of a corpus: every typed span of its usable sentences."""
    return Pool.from_sentences([s for c in chunks for s in chunk_sentences(c) if usable_sentence(s)])


def cloze_questions(chunks: Sequence[Chunk], per_chunk: int = 1, seed: int = 0) -> list[Item]:
    """Deterministic 4-option cloze questions, `per_chunk` at most per chunk, each tied to its chunk.

    Same chunks and seed → the same items on any machine (no model, no global random state).
    """
    return cloze_items(chunks, per_chunk, seed)
