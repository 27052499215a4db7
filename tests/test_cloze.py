"""The offline cloze generator: typed spans, same-type distractors, no leaks, balanced gold, determinism."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kinject.cloze import (BLANK, Pool, chunk_sentences, cloze_questions, extract_spans, is_timestamp, leaks,
                           mentions, pick_distractors)
from kinject.corpus import Chunk, chunk_id

CITIES = ["Tallinn", "Florence", "Genoa", "Arequipa", "Haiphong", "Conakry", "Douala", "Padang", "Bursa", "Kraków",
          "Porto", "Algiers"]
PEOPLE = ["Maria Lindqvist", "Tomasz Nowak", "Aiko Tanaka", "Samuel Okafor", "Elena Rossi", "Jonas Berg",
          "Priya Raman", "Lucas Moreau", "Fatima Haddad", "Daniel Dias"]
MONTHS = ["January", "March", "May", "July", "September", "November"]


def corpus(n: int = 36, seed: int = 1) -> list[Chunk]:
    """Small made-up 'post-cutoff' documents, two or three typed facts each."""
    rng = random.Random(seed)
    chunks = []
    for i in range(n):
        city, person = CITIES[i % len(CITIES)], PEOPLE[i % len(PEOPLE)]
        pop = rng.randint(150_000, 3_000_000)
        year = rng.choice([2025, 2026])
        area = rng.randint(120, 990)
        text = (f"The city is a regional centre with a busy harbour and several universities. "
                f"It had a population of {pop:,} as of {rng.choice(MONTHS)} {year}, after strong growth. "
                f"A new bridge over the river opened on {rng.randint(1, 28)} {rng.choice(MONTHS)} {year}. "
                f"In {year - rng.randint(1, 9)}, the council opened a new museum dedicated to local history. "
                f"Its mayor since {year} is {person}, who was elected after a long campaign. "
                f"The municipality covers {area} km2 of land and water.")
        title = f"{city} ({i})"
        chunks.append(Chunk(chunk_id(title, text), title, title, text, 80, 0, len(text)))
    return chunks


def test_extract_spans_types() -> None:
    s = "As of 1 July 2025, Guinea had 17.5 million people, and Lionel Messi moved to -05 on 2026-11-01 at 02:00."
    kinds = {sp.text: sp.kind for sp in extract_spans(s)}
    assert kinds["1 July 2025"] == "date" and kinds["2026-11-01"] == "date"
    assert kinds["17.5 million"] == "number" and kinds["Lionel Messi"] == "person"
    assert kinds["-05"] == "offset" and kinds["02:00"] == "time"
    assert {sp.kind for sp in extract_spans("In 2025, the Fortune 500 list moved.")} == {"year"}
    code = {sp.text: sp.key for sp in extract_spans("The new MAIL_BACKEND setting uses QuerySet.fetch_mode() calls.")}
    assert code["MAIL_BACKEND"] == ("code", "const") and code["QuerySet.fetch_mode()"] == ("code", "call")
    assert [sp.text for sp in extract_spans("Timekeeping in America/Winnipeg changed.")] == ["America/Winnipeg"]


def test_items_shape_source_and_balanced_gold() -> None:
    chunks = corpus()
    items = cloze_questions(chunks, per_chunk=2, seed=0)
    assert len(items) >= len(chunks)  # two facts per chunk are usually usable
    by_id = {c.id: c for c in chunks}
    for it in items:
        assert len(it.choices) == 4 and len(set(it.choices)) == 4
        assert BLANK in it.question and it.question.count(BLANK) == 1
        assert len(it.source_chunks) == 1 and by_id[it.source_chunks[0]].text == it.source
    counts = Counter(it.gold for it in items)
    assert set(counts) == {0, 1, 2, 3} and max(counts.values()) - min(counts.values()) <= 1
    assert len({it.id for it in items}) == len(items)


def test_distractors_have_the_answers_type() -> None:
    chunks = corpus()
    kinds_of: dict[str, set[str]] = {}
    for c in chunks:
        for s in chunk_sentences(c):
            for sp in extract_spans(s):
                kinds_of.setdefault(sp.text, set()).add(sp.kind)
    items = cloze_questions(chunks, per_chunk=3, seed=0)
    assert {it.subject for it in items} >= {"number", "date", "person"}
    for it in items:
        answer = it.choices[it.gold]
        for choice in it.choices:
            if it.subject in ("number", "year", "date"):  # ordered kinds: same format, maybe synthesised
                got = extract_spans(choice)
                assert len(got) == 1 and got[0].kind == it.subject and got[0].text == choice, (it, choice)
                if it.subject == "number":
                    assert got[0].key[1:7] == extract_spans(answer)[0].key[1:7]
            else:  # names: drawn from the corpus, where they were of the same kind
                assert it.subject in kinds_of[choice], (it.question, choice)


def test_no_leak_in_the_wording() -> None:
    for it in cloze_questions(corpus(), per_chunk=3, seed=3):
        wording = it.question.replace(BLANK, " ")
        for choice in it.choices:
            assert not mentions(wording, choice), (it.question, choice)


def test_leaky_sentences_are_rejected() -> None:
    s = "Elena Rossi praised the harbour, and later Elena Rossi opened the museum in 2025 with friends."
    spans = extract_spans(s)
    person = next(sp for sp in spans if sp.text == "Elena Rossi")
    question = s[:person.start] + BLANK + s[person.end:]
    assert leaks(person, question, [o for o in spans if o is not person])
    s2 = "Its population was 1.60 million at the census and estimated at 1.57 million in 2025 by officials."
    spans2 = extract_spans(s2)
    target = next(sp for sp in spans2 if sp.text == "1.57 million")
    q2 = s2[:target.start] + BLANK + s2[target.end:]
    assert leaks(target, q2, [o for o in spans2 if o is not target])  # a close value of the same unit
    for s3, answer in (("Benin covers an area of 112,622 km2 (43,484 sq mi) in West Africa today.", "112,622 km2"),
                       ("The church has an estimated 1.28 to 1.39 billion members worldwide now.", "1.39 billion"),
                       ("Django 6.1 supports Python 3.12, 3.13, 3.14, and 3.15 as of this release.", "3.12")):
        spans3 = extract_spans(s3)
        target = next(sp for sp in spans3 if sp.text == answer)
        q3 = s3[:target.start] + BLANK + s3[target.end:]
        assert leaks(target, q3, [o for o in spans3 if o is not target], s3), s3  # conversion, range, list


def test_timestamps_are_not_blanked() -> None:
    s = "It had a population of 452,563 as of July 2025, and 816,614 (2026) in the region."
    stamps = {sp.text: is_timestamp(s, sp) for sp in extract_spans(s)}
    assert stamps == {"452,563": False, "July 2025": True, "816,614": False, "2026": True}
    for it in cloze_questions(corpus(), per_chunk=3):
        assert "as of ___" not in it.question


def test_ordered_distractors_balance_the_answers_rank() -> None:
    """The answer is the largest of the four values about 1 time in 4, not always."""
    pool = Pool.from_sentences([f"The town had {n:,} residents in the survey by officials." for n in
                                range(100_000, 900_000, 7_919)])
    span = next(sp for sp in extract_spans("The town had 452,563 residents in the survey by officials.")
                if sp.kind == "number")
    ranks = Counter()
    for i in range(200):
        picked = pick_distractors(span, "The town had ___ residents in the survey by officials.", pool,
                                  random.Random(i))
        assert picked is not None and len(set(picked)) == 3 and span.text not in picked
        values = sorted([span.value] + [float(p.replace(",", "")) for p in picked])
        ranks[values.index(span.value)] += 1
    assert all(30 <= ranks[r] <= 70 for r in range(4)), ranks


def test_deterministic_and_seeded() -> None:
    a = cloze_questions(corpus(), per_chunk=2, seed=0)
    b = cloze_questions(corpus(), per_chunk=2, seed=0)
    c = cloze_questions(corpus(), per_chunk=2, seed=1)
    assert a == b
    assert [(i.question, i.choices) for i in a] != [(i.question, i.choices) for i in c]


def test_empty_and_bad_input() -> None:
    assert cloze_questions([], per_chunk=1) == []
    empty = Chunk("x", "d", "t", "No facts here at all, only words.", 5, 0, 10)
    assert cloze_questions([empty]) == []
    with pytest.raises(ValueError):
        cloze_questions(corpus(2), per_chunk=0)
