"""`kinject ask` on the text of real documents: the number and code checks read any retrieved
text without raising and count versions, dates, addresses and measures the sources state as
stated; lists, tables and headings are units of their own; quoting keeps a more specific answer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kinject.knowledge.corpus import Chunk
from kinject.rag.answer import (
    Thresholds,
    answer_question,
    check_chunks,
    evidence_sentences,
    more_specific,
    states_anything,
    units,
    used_sources,
)
from kinject.rag.retrieval import Hit
from kinject.rag.stated import unknown_codes, unknown_versions, unsupported_numbers

RELEASE = "## Version 1.94.0 (2026-03-05)\n\n- Stabilize `foo` [#123](https://github.com/x/y/pull/123)\n- Remove bar"


def _hit(text: str, title: str = "T", section: str = "") -> Hit:
    return Hit(Chunk("c", "d", title, text, 5, 0, len(text), (), "notes.md", 0, 0, section), 0.5)


_PART = st.from_regex(r"\A[0-9]{1,5}\Z")
_NUMBER_LIKE = st.builds(
    lambda pre, parts, seps, post: pre + "".join(p + s for p, s in zip(parts, seps)) + parts[-1] + post,
    st.sampled_from(["", "v", "V", "#", "$", "~", "-", "rc"]),
    st.lists(_PART, min_size=1, max_size=5),
    st.lists(st.sampled_from([".", ",", ":", "-", "–", "/", " ", ".."]), min_size=5, max_size=5),
    st.sampled_from(["", "%", "V", "ms", "GB", "-rc1", "th", "s", ".", "x", "0"]))
"""Versions, dates, ranges, times, addresses, thousands and measures, and their near misses."""
_TEXT_WITH_NUMBERS = st.lists(st.one_of(_NUMBER_LIKE, st.sampled_from([" ", "\n", "- ", "[1]", "twenty-five", "("]),
                                        st.text(max_size=5)), max_size=8).map("".join)


@settings(max_examples=300, deadline=None)
@given(answer=st.text(), question=st.text(), chunk=st.text(), title=st.text(max_size=10))
def test_the_checks_read_any_text_without_raising(answer: str, question: str, chunk: str, title: str) -> None:
    hits = [_hit(chunk, title)]
    assert isinstance(unsupported_numbers(answer, question, hits), list)
    assert isinstance(unknown_codes(question, hits), list)
    assert isinstance(unknown_versions(question, hits), list)
    assert used_sources(answer, [chunk]) == [0]
    assert isinstance(states_anything(answer, hits), bool)
    assert isinstance(more_specific(answer, chunk, question, hits, False), bool)
    for (a, b), said in evidence_sentences(hits[0]):
        assert 0 <= a < b <= len(chunk) and said


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(), _TEXT_WITH_NUMBERS), question=st.one_of(st.text(), _TEXT_WITH_NUMBERS))
def test_what_a_chunk_states_is_never_made_up_or_unknown(text: str, question: str) -> None:
    """An answer that repeats its chunk states no number the chunk lacks; a question that repeats it
    names no code the chunk lacks."""
    assert unsupported_numbers(text, question, [_hit(text)]) == []
    assert unknown_codes(text, [_hit(text)]) == []
    assert unknown_versions(text, [_hit(text)]) == []
    assert unsupported_numbers(question, question, [_hit("")]) == []


@settings(max_examples=300, deadline=None)
@given(number=_NUMBER_LIKE, other=_NUMBER_LIKE)
def test_number_like_strings_are_checked_without_raising(number: str, other: str) -> None:
    hits = [_hit(f"Release {number} is out.")]
    assert unsupported_numbers(f"It is {number} [1].", "Which release?", hits) == []
    assert isinstance(unsupported_numbers(f"It is {other}.", "Which release?", hits), list)
    assert isinstance(unknown_codes(f"What is new in {other}?", hits), list)


def test_a_version_or_year_no_chunk_mentions_is_a_fact_the_chunks_lack() -> None:
    """"Which release added Python 3.14?" over a changelog that never says 3.14: whatever release
    the chunks name, it is not the answer. Shorter and longer names of one version count
    (3.38 / 3.38.0), another patch release does not (3.38.5); heading and title count."""
    notes = _hit("- Officially support Python 3.7 and 3.12.0 (#3001)", "Release Notes", "Version 1.6 (2024-04-20)")
    assert unknown_versions("Which MkDocs version added official support for Python 3.14?", [notes]) == ["3.14"]
    assert unknown_versions("Which release added Python 3.12, and was it in 2024?", [notes]) == []
    assert unknown_versions("Did 1.6.0 support Python 3.7?", [notes]) == []
    assert unknown_versions("Who won the 2018 FIFA World Cup, and what changed in 3.10.2?", [_hit("Python 3.1")]) \
        == ["2018", "3.10.2"]
    assert unknown_versions("What changed in 3.10?", [_hit("Python 3.1")]) == []  # one dot: also a decimal
    assert unknown_versions("Can it run for 12 hours at 7:30 for 1,200 users?", [notes]) == []  # no version
    assert unknown_versions("What did SQLite 3.38.0 add?", [_hit("unixepoch()", "SQLite Release 3.38 On 2022")]) == []
    assert unknown_versions("What did SQLite 3.38.0 add?", [_hit("SQLite 3.38.5 fixes a bug.")]) == ["3.38.0"]
    assert unknown_versions("Is the 2.50 kg pump from the 2020s, at 2000 rpm, for python 3.12?",
                            [_hit("It weighs 2.5 kg at 2,000 rpm; run python3.12 -m venv.")]) == []
    refused = check_chunks("What changed in v1.94.0?", [notes], Thresholds(chunk=0.35, sentence=0.0), None)
    assert refused.why == "no retrieved chunk mentions v1.94.0"  # once, as a code
    refused = check_chunks("Which MkDocs version added support for Python 3.14?", [notes],
                           Thresholds(chunk=0.35, sentence=0.0), None)
    assert refused.check == "code" and "3.14" in refused.why


def test_versions_dates_addresses_and_measures_in_the_chunk_count_as_stated() -> None:
    hits = [_hit("Rust 1.93.0 was released on 2024-12-06 (06/12/2024) at 12:30:45; v2.0.0-rc1 follows. The "
                 "gateway is 192.168.0.1, it draws 230V, answers in 5ms, stores 1.5GB, takes 3-5 or 10–20 "
                 "minutes, costs 1,200,000 and 99.5% are happy.")]
    assert unsupported_numbers("1.93.0", "Which release?", hits) == []  # the reported traceback
    assert unsupported_numbers("Rust 1.93 came out on 6 December 2024 at 12:30 [1].", "When?", hits) == []
    assert unsupported_numbers("Version 2.0.0 (v2.0.0-rc1) is at 192.168.0.1, 230 V, 5 ms, 1.5 GB.", "?", hits) == []
    assert unsupported_numbers("3 to 5, 10-20 minutes, 1200000 for 99.50 %.", "?", hits) == []
    assert unsupported_numbers("Rust 1.94.0 uses 192.168.0.2 at 12:31.", "?", hits) == ["1.94.0", "192.168.0.2",
                                                                                           "12:31"]
    assert unsupported_numbers("1.9 or 1.5 GB", "?", hits) == ["1.9"]  # a version's parts, not a decimal's
    assert unknown_codes("What is new in v1.93.0 and 2.0.0-rc1?", hits) == []
    assert unknown_codes("What is new in v1.94.0?", hits) == ["v1.94.0"]


def test_the_off_topic_check_reads_the_closest_chunk_not_the_retrievers_first() -> None:
    """BM25's first hit is not always the one the embedder finds closest: the check that calls a
    question off-topic takes the best of the retrieved chunks, and cites it."""
    weak = Hit(_hit("Installing from a tarball.").chunk, 0.20)
    close = Hit(Chunk("c2", "d2", "git-daemon(1)", "The daemon listens on port 9418 by default.", 9, 0, 44, (),
                      "git/git-daemon.html", 0, 0, ""), 0.65)
    limits = Thresholds(chunk=0.35, sentence=0.0)
    assert check_chunks("On which TCP port does git-daemon listen?", [weak, close], limits, None) is None
    refused = check_chunks("What is the capital of Canada?", [weak, Hit(close.chunk, 0.30)], limits, None)
    assert refused.check == "off-topic" and "0.30" in refused.why and "git-daemon" in refused.why


def test_release_notes_work_end_to_end_through_the_checks() -> None:
    hit = _hit(RELEASE, title="Changelog", section="Version 1.94.0 (2026-03-05)")
    found = evidence_sentences(hit)
    assert [s for _, s in found] == ["Stabilize `foo` #123", "Remove bar"]  # the heading is the section
    assert [RELEASE[a:b] for (a, b), _ in found] == ["Stabilize `foo` [#123](https://github.com/x/y/pull/123)",
                                                     "Remove bar"]
    question = "What did version 1.94.0 stabilize?"
    assert unknown_codes(question, [hit]) == [] and unknown_codes("And v1.94.0?", [hit]) == []
    assert unsupported_numbers("Version 1.94.0 (2026-03-05) stabilized `foo` in #123 [1].", question, [hit]) == []
    assert unsupported_numbers("Version 1.94.1 stabilized foo.", question, [hit]) == ["1.94.1"]
    assert [s for _, s in evidence_sentences(_hit(RELEASE))][0] == "Version 1.94.0 (2026-03-05)"  # not a section


def test_list_items_table_rows_and_headings_are_units_of_their_own() -> None:
    text = ("# Install\nRun the installer first. Then\nreboot.\n\n- See [the docs](https://x.org/a) or "
            "https://x.org/b for more\n* Second item. Two sentences\n1. Step one\n2) Step two\n• From a PDF\n"
            "wrapped line\n\n| Port | 8080 |\nPort | Value\n")
    got = [text[a:b] for a, b in units(text)]
    assert got == ["Install", "Run the installer first.", "Then\nreboot.",
                   "See [the docs](https://x.org/a) or https://x.org/b for more", "Second item.", "Two sentences",
                   "Step one", "Step two", "From a PDF\nwrapped line", "| Port | 8080 |", "Port | Value"]
    said = dict(evidence_sentences(_hit(text, title="Guide")))
    assert said[units(text)[3]] == "See the docs or for more"  # no URL dilutes the words
    assert said[units(text)[2]] == "Then reboot."


def test_quoting_keeps_an_answer_that_names_more_than_the_quote() -> None:
    """The real-folder failure: the answer names the command, the quote does not."""
    mime = [_hit("Packages describe their MIME types in XML files. They go under /usr/share/mime. After "
                 "installing one, you must run the update-mime-database command.")]
    question = "What must be run after installing a MIME type?"
    answer = "You must run the update-mime-database command [1]."
    plain = "Packages describe their MIME types in XML files."
    assert more_specific(answer, plain, question, mime, closer=False)
    assert not more_specific("You must run the update-mime-cache command.", plain, question, mime, True)  # no chunk's
    assert not more_specific("Run a command.", plain, question, mime, True)  # nothing exact
    assert not more_specific(answer, "They go under /usr/share/mime.", question, mime, closer=False)  # each its own
    assert more_specific(answer, "They go under /usr/share/mime.", question, mime, closer=True)
    pump = [_hit("The maximum delivery head of the AquaLift 7 pump is 38 metres. The pump weighs 14 kilograms.")]
    head = "The maximum delivery head of the AquaLift 7 pump is 38 metres."
    weight = "The AquaLift 7 pump weighs 14 kilograms."
    assert not more_specific(weight, head, "What is the maximum delivery head of the AquaLift 7?", pump, False)


class _Vectors:
    """An embedder whose vectors are given per text (the question's as a query)."""

    dim = 3

    def __init__(self, table: dict[str, tuple[float, float, float]]) -> None:
        self.table = table

    def texts(self, texts: list[str]) -> np.ndarray:
        return np.array([self.table[t] for t in texts], np.float32)

    queries = texts


_COMMAND = "You must run the update-mime-database command."
_PLAIN, _NAMED = "MIME types are described by a shared database.", "MIME types are described by xdg-mime."


@pytest.mark.parametrize("answer, best, vector, check", [
    (_COMMAND, _PLAIN, (0.6, 0, 0.8), "answered"),  # names the command, the quote nothing
    ("MIME types are registered in XML files.", _PLAIN, (0.6, 0, 0.8), "quoted"),  # names nothing
    (_COMMAND, _NAMED, (0.6, 0, 0.8), "quoted"),  # each names its own, the quote is nearer the question
    (_COMMAND, _NAMED, (0.95, 0, 0.312), "answered")])  # the answer is nearer
def test_ask_quotes_only_an_answer_that_is_not_more_specific(monkeypatch: pytest.MonkeyPatch, answer: str, best: str,
                                                             vector: tuple[float, float, float], check: str) -> None:
    """Each answer restates the second sentence (similarity >= 0.8), which scores 0.3 under the
    best against the question: it is replaced by the best one, quoted with its neighbour as the
    model read it, unless it is `more_specific`."""
    import kinject.rag.answer as ask

    second = "MIME types are registered in XML files."
    third = "Afterwards you must run the update-mime-database command."
    question = "What must be run after installing a MIME type?"
    embedder = _Vectors({question: (1, 0, 0), best: (0.9, 0.436, 0), second: (0.6, 0, 0.8), answer: vector,
                         third: (0.5, 0.866, 0)})
    hits = [_hit(f"{best} {second} {third}")]
    retriever = type("R", (), {"embedder": embedder, "search": lambda self, qs, k, groups: [hits]})()
    monkeypatch.setattr(ask, "generate_answer", lambda lm, prompt, max_new_tokens: answer)
    got = answer_question(retriever, lambda: None, question, 1, Thresholds(0.0, 0.5))
    assert (got.check, got.text) == (check, answer if check == "answered" else f"{best} {second}")
