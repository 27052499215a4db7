"""The offline cloze generator: typed spans, same-type distractors, no leaks, balanced gold, determinism."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kinject.knowledge.corpus import Chunk, chunk_id
from kinject.knowledge.furniture import (
    clean_sentence,
    code_ranges,
    has_address,
    is_bibliography,
    is_contents,
    is_furniture,
    is_garbled,
    is_licence,
    is_navigation,
    is_page_header,
    question_title,
)
from kinject.knowledge.spans import extract_spans
from kinject.tasks.cloze import (
    BLANK,
    MAX_SHARE,
    Cloze,
    Pool,
    after_code,
    balance_kinds,
    chunk_sentences,
    cloze_questions,
    is_timestamp,
    kind_cap,
    leaks,
    mentions,
    pick_distractors,
)

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
    built = "This Debian Reference (version 2.100) (2023-02-04 11:59:01 UTC) is a post-installation guide."
    assert [sp.text for sp in extract_spans(built) if sp.kind == "date" and is_timestamp(built, sp)] == ["2023-02-04"]
    moved = "Morocco plans to move back to permanent UTC on 2026-11-01 at 02:00, without transitions."
    assert not any(is_timestamp(moved, sp) for sp in extract_spans(moved))
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


FURNITURE = {  # real-looking lines of the folders the first questions were cut from
    is_licence: ["Copyright 2001–2022 Example Software, Inc.",
                 "Permission is hereby granted, free of charge, to any person obtaining a copy of this software.",
                 'THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR '
                 "IMPLIED WARRANTIES ARE DISCLAIMED.",
                 "This manual is licensed under the GNU General Public License, version 2 or later."],
    is_bibliography: ["Klabnik, S. and Nichols, C. (2019). The Rust Programming Language. No Starch Press.",
                      "Nichols. “The Slice Type.” The Rust Programming Language.",
                      "Lamport, L. Time, clocks, and the ordering of events in a distributed system. Communications "
                      "of the ACM, 21(7): 558–565, 1978.",
                      "Smith et al. Measuring pump efficiency in the field, pp. 12–19."],
    is_contents: ["Chapter 4: Function reference 37", "4.2 Installing packages ........ 37",
                  "1.1 What is this FAQ? … 1 1.2 What is Debian GNU/Linux? … 1",
                  "apt-get, 12, 45, 78 aptitude, 13, 46 dpkg, 3, 9", "Interacting with prospective Debian developers 89"],
    is_page_header: ["CHAPTER 4. FUNCTION REFERENCE 23", "Page 3 of 12 The pump must be primed before use.",
                     "9.2.2 lintian-brush lintian-brush contains a set of scripts that fix issues.",
                     "Getting started with the AquaLift 7 pump",
                     "1 There are a few notable ones that are worth giving explanations here."],
    is_navigation: ["Previous topic 4. More Control Flow Tools Next topic 6. Modules",
                    "See the Configuration guide for more details.",
                    "For more information, consult the user guide of your theme."],
    has_address: ["Full documentation is available at https://www.python-httpx.org/logging/ for all users.",
                  "Send comments and additions to doc-debian@packages.debian.org at any time.",
                  "All security updates are served through security.debian.org to every mirror."],
    is_garbled: ["Theentiresystem,oranyindividualcomponentofit,can beupgradedinplace without reformatting.",
                 "Making it available to the project does not suffice.This requirement exists to ensure builds.",
                 "def test_average(self): self.assertEqual(average([20, 30, 70]), 40.0)",
                 "Target name | C++ library | OpenBSD Platform aarch64 | libc++ | 64-bit ARM",
                 # from the Debian Reference PDF and the SQLite docs: an admonition's label run into
                 # the text before it, a table's caption and cells, a table read without separators
                 "Wed 19 mai 2021 15:19:24 UTC Tip When filing a bug report, run the command in a C locale.",
                 "Dial-up link (IP: PPP) 576 standard Ethernet link 1500 standard and default Table 5.6: Basic "
                 "guide lines of the optimal MTU value.",
                 "pciutils V:225, I:990 210 Linux PCI Utilities: lspci(8) usbutils V:71, I:855 325 Linux USB utilities.",
                 "Example Typenames From TheCREATE TABLE Statement INTINTEGERTINYINTSMALLINTMEDIUMINT affinity.",
                 "100644 blob 289b046a443c0647624607d471289b2c7dcd470b INSTALL is listed first."],
}
SUBJECT = ["The target must not introduce license incompatibilities with the Rust project.",
           "The Debian Project was created by Ian Murdock in 1993.",
           "Debian 2.1 shipped for the i386, m68k, alpha, and sparc architectures.",
           "The AquaLift 7 pump weighs 14 kilograms without its hoses.",
           "Often, the first argument of a method is called self.",
           "The nav configuration setting in your mkdocs.yml file defines the site navigation.",
           "An iterable object representing the table of contents for a page.",
           "It had a population of 452,563 as of July 2025, and 816,614 (2026) in the region.",
           "The next release will drop support for Python 3.8 on all platforms.",
           "Django 6.1 supports Python 3.12, 3.13, 3.14, and 3.15 (as of 6.1.3).",
           "In 1965 Brazil ended DST on 03-31 at 24:00 not 00:00, and in 1966 it ended DST on 03-01 at 01:00.",
           "Please note the hint in the Table of the week section before you start.",
           "Open the Note Editor to add a comment to the file.",
           "Set the Warning Level option to 3 to see all messages.",
           "Set the PYTHONDONTWRITEBYTECODE environment variable before the tests run."]


@pytest.mark.parametrize("predicate", list(FURNITURE), ids=lambda f: f.__name__)
def test_furniture_predicates_catch_real_furniture(predicate) -> None:
    for line in FURNITURE[predicate]:
        assert predicate(line) and is_furniture(line), line


def test_subject_sentences_are_not_furniture() -> None:
    for line in SUBJECT:
        assert not is_furniture(line), [f.__name__ for f in FURNITURE if f(line)]


def test_links_are_reduced_to_their_text() -> None:
    assert clean_sentence("The format is based on [Keep a Changelog](https://keepachangelog.com/en/1.0.0/).") \
        == "The format is based on Keep a Changelog."
    assert clean_sentence("Read the Lintian manual (https://lintian.debian.org/manual/index.html) first.") \
        == "Read the Lintian manual first."
    assert clean_sentence("See `fetch modes <https://docs.example.org/fetch>`_ and the notes.") \
        == "See fetch modes and the notes."
    assert clean_sentence("Silence the unicode_literals warning. (#708, encode/httpcore#648)") \
        == "Silence the unicode_literals warning."
    assert clean_sentence("The allocator was removed in version 1.32.0[39]. It uses the system one⁴.") \
        == "The allocator was removed in version 1.32.0. It uses the system one."


def test_question_title_is_the_documents_real_title() -> None:
    assert question_title("2. Using the Python Interpreter¶") == "Using the Python Interpreter"
    assert question_title("The rustc book") == "The rustc book"
    assert question_title("2025 in science") == "2025 in science"
    assert question_title("Keyboard shortcuts") == "" and question_title("  ") == ""
    assert question_title("Chapter 6. Maintenance and Updates: The APT Tools") == "Maintenance and Updates: The APT Tools"
    assert question_title("Appendix B. Short Remedial Course") == "Short Remedial Course"
    assert question_title("Chapter and verse") == "Chapter and verse"


def _doc(title: str, text: str) -> Chunk:
    return Chunk(chunk_id(title, text), title, title, text, 80, 0, len(text))


def test_furniture_is_never_asked_and_links_never_quoted() -> None:
    chunks = corpus()
    licence = _doc("License", "Copyright © 2014, Tom Christie. All rights reserved. The project was started "
                   "by Tom Christie in 2014 in Brighton.")
    contents = _doc("Pump manual", "Contents 1 Safety … 1 2 Installation … 4 3 Maintenance … 9. Chapter 4: "
                    "Function reference 37. Chapter 5: Troubleshooting 52.")
    refs = _doc("Exploit Mitigations", "Klabnik, S. and Nichols, C. (2019). The Rust Programming Language. No "
                "Starch Press. Nichols. “The Slice Type.” The Rust Programming Language, 2018 edition.")
    linked = _doc("2. Release notes¶", "The format follows [Keep a Changelog](https://keepachangelog.com/) since "
                  "Maria Lindqvist took over in 2021. Version 3 was written by Tomasz Nowak in Florence in 2023.")
    items = cloze_questions(chunks + [licence, contents, refs, linked], per_chunk=3, seed=0)
    assert not {licence.id, contents.id, refs.id} & {it.source_chunks[0] for it in items}
    for it in items:
        for text in (it.question, *it.choices):
            assert not any(bad in text for bad in ("Copyright", "©", "http", "](", "…", "Chapter")), text
    asked = [it for it in items if it.source_chunks == (linked.id,)]
    assert asked and all(it.question.startswith("Release notes: ") for it in asked)


def test_identifiers_and_decades_are_no_numbers_and_releases_are_never_made_up() -> None:
    assert extract_spans("See tracking issue #64888 and the notes of RFC 2056 for the details of it.") == []
    assert not extract_spans("The 1980s saw the first free software licences appear.")
    releases = Pool.from_sentences(["The tz release 2025a came out early in the year with many fixes."])
    span = extract_spans("The tz release 2025b came out in the spring with many fixes.")[0]
    assert span.kind == "release"
    assert pick_distractors(span, "The tz release ___ came out in the spring.", releases, random.Random(0)) is None
    written = {"2024a", "2024b", "2024c", "2025a", "2025c", "2025d", "2026a", "2026b"}
    more = Pool.from_sentences([f"The tz release {r} came out with many fixes to the data." for r in written])
    for i in range(20):
        picked = pick_distractors(span, "The tz release ___ came out in the spring.", more, random.Random(i))
        assert picked is not None and set(picked) <= written


def test_kind_cap_keeps_any_type_under_its_share() -> None:
    counts = Counter(code=600, number=100, name=80, year=50)
    cap = kind_cap(counts)
    assert cap == 123 and cap <= MAX_SHARE * (cap + 230) < cap + 1
    assert kind_cap(Counter(code=600, number=30)) == 30  # two types alone: split evenly
    assert kind_cap(Counter(code=600)) == 600  # no other type to make room for
    assert kind_cap(Counter(number=12, person=1)) == 12  # a small folder keeps its questions


def test_balance_swaps_in_spares_then_thins_evenly() -> None:
    c = corpus(1)[0]
    q = {k: Cloze(c, f"{k}?", k, ("a", "b", "c"), k) for k in ("code", "number", "name", "year")}
    drawn = [[q["code"], q["number"]]] * 30 + [[q["code"], q["name"]]] * 30 + [[q["code"]]] * 60 + [[q["year"]]] * 20
    kept = balance_kinds(drawn, per_chunk=1)
    counts = Counter(x.kind for x in kept)
    assert counts["number"] + counts["name"] >= 20 and counts["year"] == 20  # spares swapped in
    assert max(counts.values()) <= MAX_SHARE * sum(counts.values())
    codes = [i for i, x in enumerate(kept) if x.kind == "code"]
    assert codes[-1] > len(kept) * 0.8  # thinned across the documents, not cut from the last ones


def test_no_answer_type_dominates_a_code_heavy_folder() -> None:
    names = ["MAIL_RETRIES", "CACHE_TIMEOUT", "SESSION_ENGINE", "LOG_LEVEL", "DEBUG_TOOLBAR", "STATIC_ROOT",
             "MEDIA_URL", "SECRET_KEY", "TIME_ZONE", "ALLOWED_HOSTS", "CSRF_COOKIE", "DATA_UPLOAD"]
    code = [_doc(f"Settings {i}", f"The {n} option must be defined before the application is deployed. Its "
                 f"companion {names[(i + 5) % len(names)]} is optional in most projects.")
            for i, n in enumerate(names * 3)]
    items = cloze_questions(corpus() + code, per_chunk=2, seed=0)
    counts = Counter(it.subject for it in items)
    assert counts["code"] and max(counts.values()) <= MAX_SHARE * len(items), counts


def test_admonition_labels_are_not_part_of_the_sentence() -> None:
    assert clean_sentence("Caution In previous releases, GCC required special attention.") \
        == "In previous releases, GCC required special attention."
    assert clean_sentence("Note: The expansion of generic top-level domains is underway.") \
        == "The expansion of generic top-level domains is underway."
    assert clean_sentence("Notes on the design follow in chapter two.") == "Notes on the design follow in chapter two."
    assert clean_sentence("Warning Messages appear in the log when it fails.") \
        == "Warning Messages appear in the log when it fails."
    assert clean_sentence("Tip Both the new and the old locale use English messages.") \
        == "Both the new and the old locale use English messages."


def test_code_ranges_cover_fenced_blocks_even_cut_by_a_chunk() -> None:
    text = "Run it:\n```\n$ aa-status\n15 profiles are in enforce mode.\n```\nThe state can be switched."
    (a, b), = code_ranges(text)
    assert text[a:b].startswith("```") and text[a:b].endswith("```") and "15 profiles" in text[a:b]
    tail = "15 profiles are in enforce mode.\n```\nThe state of each profile can be switched."
    assert code_ranges(tail) == [(0, tail.index("```") + 3)]  # the chunk began inside the block
    head = "AppArmor is functional after the installation, as aa-status says:\n```\n# aa-status\n32 profiles"
    assert code_ranges(head) == [(head.index("```"), len(head))]  # the block runs past the chunk
    assert code_ranges("No code here at all.") == []


def test_prose_right_after_a_closing_fence_is_a_sentence_of_its_own() -> None:
    text = ("Run it as follows:\n```\n$ aa-status\n15 profiles are in enforce mode.\n```\n"
            "The state of each profile can be switched in 2 ways. It takes a second.")
    chunk = Chunk("c1", "d1", "AppArmor", text, 60, 0, 0)
    assert chunk_sentences(chunk) == ["The state of each profile can be switched in 2 ways.", "It takes a second."]
    # the words before a block and a sentence the block interrupts are fragments, not sentences
    for text in ("Install it with\n```\npip install x\n```\nand then run it at 9 o'clock every day.",
                 "Use it like so ```x = 1``` in 3 files or more.", "Text before. ``` unclosed code runs 15 lines"):
        assert chunk_sentences(Chunk("c2", "d1", "T", text, 30, 0, 0)) == [] or text.startswith("Text"), text
    assert chunk_sentences(Chunk("c3", "d1", "T", "Text before. ``` unclosed code runs 15 lines", 9, 0, 0)) == []
    assert after_code("a b", (0, 3), []) == (0, 3) and after_code("```\nx\n```", (0, 9), [(0, 9)]) is None


def test_no_question_is_cut_from_a_fenced_block() -> None:
    output = ("```\nBisecting: 337 revisions left to test after this (roughly 9 steps).\n"
              "Ralf Brenner found 15 profiles in enforce mode on 3 March 2021.\n```")
    chunks = [Chunk(c.id, c.doc_id, c.title, f"{output}\n\n{c.text}\n\n{output}", 120, 0, 0) for c in corpus()]
    items = cloze_questions(chunks, per_chunk=3)
    assert len(items) >= len(chunks)  # the prose still gives its questions
    for it in items:
        assert not {"337", "Bisecting", "profiles", "Brenner", "```"} & set(it.question.replace(".", " ").split())
        assert "Ralf Brenner" not in it.choices and "3 March 2021" not in it.choices
