"""The newfacts sources (tzdata NEWS, Django RST, Wikipedia 2025-26 statements) and the built-in task."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from kinject.knowledge.corpus import Chunk
from kinject.knowledge.spans import extract_spans
from kinject.tasks.newfacts import django_documents, rst_inline, rst_sections, states_new_fact, tzdata_documents

NEWS = """# Version 2026.6
Upstream version 2026f released 2026-10-28T06:16:49+00:00

## Briefly:

Cuba will not fall back 2026-11-01.

## Changes to future timestamps

Cuba will not fall back to -05 on 2026-11-01 and instead plans to maintain -04
through 2027-11-07.

---

# Version 2024.2
Upstream version 2024b released 2024-09-04T19:27:58+00:00

## Changes to past timestamps

Old news from 2024.
"""

RST = """========================
Django 6.1 release notes
========================

*August 5, 2026*

Python compatibility
====================

Django 6.1 supports Python 3.12, 3.13, 3.14, and 3.15. We **highly recommend** the
latest release.

What's new in Django 6.1
========================

Mailers
-------

The new :setting:`MAILERS` setting configures backends, see
:doc:`the email docs </topics/email>` and :meth:`.QuerySet.fetch_mode`::

    MAILERS = {"default": {}}

* :class:`~django.db.models.query.QuerySet` gained ``fetch_mode``.
* Second bullet.

.. code-block:: python

    print("dropped")

After the code.
"""


def test_tzdata_keeps_2025_26_release_sections_without_briefly() -> None:
    docs = list(tzdata_documents(NEWS))
    assert [d.id for d in docs] == ["newfacts/tzdata/2026.6/changes-to-future-timestamps"]
    assert docs[0].title == "tz 2026f: Changes to future timestamps"
    assert "maintain -04 through 2027-11-07." in docs[0].text and "Briefly" not in docs[0].text


def test_rst_is_reduced_to_prose() -> None:
    assert rst_inline(":class:`~django.db.models.query.QuerySet` and ``x_y`` and :meth:`.QuerySet.fetch_mode`") \
        == "QuerySet and x_y and QuerySet.fetch_mode()"
    assert rst_inline(":doc:`fetch modes </topics/db/fetch-modes>`") == "fetch modes"
    sections = {" / ".join(p): paras for p, paras in rst_sections(RST)}
    assert sections["Python compatibility"][0].startswith("Django 6.1 supports Python 3.12, 3.13, 3.14, and 3.15.")
    mailers = sections["What's new in Django 6.1 / Mailers"]
    assert mailers[0] == ("The new MAILERS setting configures backends, see the email docs and "
                          "QuerySet.fetch_mode():")
    assert mailers[1:] == ["QuerySet gained fetch_mode.", "Second bullet.", "After the code."]
    docs = list(django_documents(RST, "6.1"))
    assert docs[0].text.startswith("Django 6.1 release notes (released August 5, 2026): Python compatibility.")
    assert not any("print(" in d.text or "MAILERS = " in d.text for d in docs)


def _chunk(doc_id: str, text: str) -> Chunk:
    return Chunk("c", doc_id, "T", text, 10, 0, len(text))


def test_only_post_cutoff_wikipedia_statements_are_blanked() -> None:
    s = ("It had 498,715 people at the 2020 census and an estimated 529,110 in 2025, and it lies in "
         "the United States.")
    wiki = _chunk("newfacts/wiki/Atlanta", s)
    ok = {sp.text: states_new_fact(wiki, s, sp) for sp in extract_spans(s)}
    assert ok["529,110"] and ok["2025"]
    assert not ok["498,715"]  # the 2020 figure: old news
    assert not ok["2020"] and not ok.get("United States", False)
    django = _chunk("newfacts/django/6.1/x", s)
    assert all(states_new_fact(django, s, sp) for sp in extract_spans(s))


@pytest.mark.slow
def test_newfacts_task_matches_its_knowledge_base(tmp_path: Path) -> None:
    from kinject.knowledge.corpus import build_corpus, read_chunks
    from kinject.runtime.models import load_tokenizer
    from kinject.tasks.newfacts import NEWFACTS_TOKENIZER, newfacts_documents, newfacts_items
    from kinject.tasks.registry import load_task
    from kinject.tasks.task import render

    task = load_task("newfacts")
    assert len(task.items) >= 150 and len(task.dev) == 5 and task.fmt == "cloze"
    tok, _ = load_tokenizer(NEWFACTS_TOKENIZER)
    build_corpus(newfacts_documents(), tok, tmp_path / "kb")
    kb = {c.id: c for c in read_chunks(tmp_path / "kb")}
    for it in task.items + task.dev:
        assert len(it.source_chunks) == 1 and kb[it.source_chunks[0]].text == it.source
        assert it.question.count("___") == 1 and len(set(it.choices)) == 4
    golds = Counter(it.gold for it in task.items + task.dev)
    assert max(golds.values()) - min(golds.values()) <= 1
    families = Counter(kb[it.source_chunks[0]].doc_id.split("/")[1] for it in task.items)
    assert set(families) == {"wiki", "tzdata", "django"}
    prompt = render(task, task.items[0], shots=2)
    assert prompt.context.count("Question: ") == 3 and prompt.continuations[0] == " " + task.items[0].choices[0]
    # deterministic, and the same from the KB's chunks as from the task's own chunking
    assert sorted(newfacts_items(list(kb.values())), key=lambda it: it.id) == \
        sorted(task.items + task.dev, key=lambda it: it.id)
