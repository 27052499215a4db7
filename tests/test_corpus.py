"""Cleaning, sentence-aware chunking, readers, and atomic corpus folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kinject.core.errors import KinjectError
from kinject.knowledge.corpus import (
    Document,
    build_corpus,
    chunk_document,
    clean,
    clean_wikitext,
    read_chunks,
    sentences,
)
from kinject.tasks.registry import read_source

TEXT = ("Mitochondria are organelles. They make ATP for the cell! Do plants have them? Yes, plants have "
        "mitochondria too. Chloroplasts capture light.\n\nA second paragraph starts here. It has two sentences.")


def test_clean_and_sentences() -> None:
    assert clean("  a \t b\u00a0c \r\n\n\n\n d  ") == "a b c\n\nd"
    spans = sentences(TEXT)
    got = [TEXT[a:b] for a, b in spans]
    assert got[:3] == ["Mitochondria are organelles.", "They make ATP for the cell!", "Do plants have them?"]
    assert got[-1] == "It has two sentences."


def test_chunks_respect_token_limit_offsets_and_sentences(tiny_lm) -> None:
    _, tok = tiny_lm
    doc = Document("d1", "Cells", TEXT * 3)
    chunks = chunk_document(doc, tok, max_tokens=40, min_tokens=1, small="keep")
    assert len(chunks) > 3
    for c in chunks:
        assert c.n_tokens == len(tok(c.text, add_special_tokens=False)["input_ids"]) <= 40
        assert doc.text[c.start:c.end] == c.text
        assert c.text[-1] in ".!?"  # cut at sentence ends
    again = chunk_document(doc, tok, max_tokens=40, min_tokens=1, small="keep")
    assert [c.id for c in again] == [c.id for c in chunks]  # stable ids
    other = chunk_document(Document("d2", "Cells", TEXT * 3), tok, max_tokens=40, min_tokens=1, small="keep")
    assert {c.id for c in other}.isdisjoint({c.id for c in chunks})


def test_long_sentence_is_cut_by_tokens(tiny_lm) -> None:
    _, tok = tiny_lm
    doc = Document("d", "t", "word " * 300 + "end.")
    chunks = chunk_document(doc, tok, max_tokens=50, min_tokens=1)
    assert all(c.n_tokens <= 50 for c in chunks) and len(chunks) >= 6


def test_small_chunk_policies(tiny_lm) -> None:
    _, tok = tiny_lm
    first = "A long first sentence about mitochondria and cells and membranes."
    doc = Document("d", "t", first + " Tiny.")
    fits_first = len(tok(first, add_special_tokens=False)["input_ids"])
    keep = chunk_document(doc, tok, max_tokens=fits_first, min_tokens=5, small="keep")
    assert [c.text for c in keep] == [first, "Tiny."]
    drop = chunk_document(doc, tok, max_tokens=fits_first, min_tokens=5, small="drop")
    assert [c.text for c in drop] == [first]
    merged = chunk_document(doc, tok, max_tokens=64, min_tokens=30, small="merge")
    assert [c.text for c in merged] == [doc.text]


def test_wikitext_cleaning() -> None:
    wikitext = ("{{Infobox cell|name=x}}'''Mitochondria''' are [[organelle|organelles]] in [[cell (biology)|cells]]."
                "<ref>{{cite web|url=http://x}}</ref> [[File:Mito.png|thumb|A mitochondrion]]\n"
                "{| class=wikitable\n|-\n| a || b\n|}\n== History ==\nFirst seen in 1857.[[Category:Organelles]]")
    text = clean_wikitext(wikitext)
    assert text.startswith("Mitochondria are organelles in cells.")
    for junk in ("{{", "[[", "<ref", "cite", "http", "wikitable", "Category", "thumb", "'''"):
        assert junk not in text
    assert "History" in text and "First seen in 1857." in text


def test_readers_text_jsonl_and_mediawiki(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "cell_biology.md").write_text("# Cells\n\nCells are the unit of life.")
    (folder / "kb.jsonl").write_text(json.dumps({"id": "x1", "title": "Secret", "text": "Hidden fact.",
                                                 "groups": ["staff"]}) + "\n")
    (folder / "dump.xml").write_text(
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><page><title>Ribosome</title><ns>0</ns>'
        "<id>7</id><revision><text>'''Ribosomes''' make [[protein]]s.</text></revision></page>"
        "<page><title>Talk:Ribosome</title><ns>1</ns><id>8</id><revision><text>chat</text></revision></page>"
        "<page><title>Ribo</title><ns>0</ns><id>9</id><redirect title='Ribosome'/><revision><text>#REDIRECT "
        "[[Ribosome]]</text></revision></page></mediawiki>")
    docs = {d.id: d for d in read_source(str(folder))}
    assert set(docs) == {"file/cell_biology.md", "x1", "wiki/7"}
    assert docs["x1"].groups == ("staff",) and docs["wiki/7"].text == "Ribosomes make proteins."
    assert docs["file/cell_biology.md"].title == "cell biology"


@pytest.mark.parametrize("name, data, message", [
    ("bin.txt", b"\x00\x01\x02binary", "looks like a binary file"),
    ("latin.txt", "caf\xe9".encode("latin-1"), "not UTF-8 text"),
    ("bad.xml", b"<mediawiki><page>", "unreadable MediaWiki XML dump"),
    ("bad.jsonl", b'{"text": 5}\n', ":1: expected an object with a string field 'text'"),
    ("sheet.xlsx", b"PK", "unsupported file type '.xlsx'"),
])
def test_reader_errors_name_the_file(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(KinjectError) as err:
        list(read_source(str(path)))
    assert str(path) in str(err.value) and message in str(err.value)


def test_build_corpus_is_atomic_and_validates(tmp_path: Path, tiny_lm) -> None:
    _, tok = tiny_lm
    out = tmp_path / "kb"
    docs = [Document("a", "A", TEXT), Document("b", "B", "Golgi packages proteins. It ships them out.")]
    chunks = build_corpus(docs, tok, out, max_tokens=64, min_tokens=1)
    assert [c.id for c in read_chunks(out)] == [c.id for c in chunks]
    assert json.loads((out / "meta.json").read_text())["documents"] == 2
    with pytest.raises(KinjectError, match="the corpus is empty"):
        build_corpus([Document("e", "E", "")], tok, out, max_tokens=64)
    with pytest.raises(KinjectError, match="--chunk-tokens 8 is too small"):
        build_corpus(docs, tok, out, max_tokens=8)
    with pytest.raises(KinjectError, match="beyond the model context"):
        build_corpus(docs, tok, out, max_tokens=1024, context_limit=512)
    assert [c.id for c in read_chunks(out)] == [c.id for c in chunks]  # the previous corpus is intact
    assert [p.name for p in tmp_path.iterdir()] == ["kb"]
    with pytest.raises(KinjectError, match="is not a corpus folder"):
        read_chunks(tmp_path)
    rebuilt = build_corpus(docs[:1], tok, out, max_tokens=64, min_tokens=1)  # an earlier corpus is replaced
    assert [c.id for c in read_chunks(out)] == [c.id for c in rebuilt] != [c.id for c in chunks]
    (out / "notes.txt").write_text("mine")  # a folder with other files is never replaced (nor deleted)
    with pytest.raises(KinjectError, match="holds 'notes.txt'"):
        build_corpus(docs, tok, out, max_tokens=64, min_tokens=1)
    assert (out / "notes.txt").read_text() == "mine"


def test_unknown_source_and_topic() -> None:
    with pytest.raises(KinjectError, match="is not wiki-summaries, sciq, newfacts, or an existing file/folder"):
        list(read_source("nowhere/at/all"))
    with pytest.raises(KinjectError, match="unknown wiki-summaries topic 'Cooking'.*Biology and health sciences"):
        list(read_source("wiki-summaries", topics=["Cooking"]))


# ---------------------------------------------------------------------------- near-duplicates

_PAGES = [
    "The pump lifts water forty metres when its valve is open. Clean the intake filter each spring. A blocked "
    "filter makes the motor overheat, and the thermal switch then stops it until it cools.",
    "Boilers of this series need a yearly service by a registered engineer. The flue may run three metres at "
    "most. Condensate drains into the nearest waste pipe through a trap that must stay filled.",
    "Routers accept sixty-four wired devices. Firmware updates arrive monthly and install overnight; the status "
    "light blinks amber meanwhile. Reset by holding the recessed button for ten seconds.",
    "Kettles boil one litre in under three minutes. Descale with citric acid whenever white flakes appear. The "
    "base swivels freely, so left-handed users pour just as easily as everyone else.",
]


def _file_doc(source: str, text: str) -> Document:
    return Document(f"file/{source}", Path(source).stem, text, source=source)


def test_a_print_page_and_a_saved_copy_are_skipped_and_said(tiny_lm) -> None:
    from kinject.knowledge.corpus import Repeats, chunk_documents

    _, tok = tiny_lm
    pages = [_file_doc(f"book/ch{i}.html", text) for i, text in enumerate(_PAGES)]
    docs = [*pages, _file_doc("book/print.html", "\n\n".join(p.text for p in pages)),
            _file_doc("old/ch1.html", pages[1].text), _file_doc("notes.md", "A different note about gardens "
                                                                            "and the care of roses in winter.")]
    repeats = Repeats()
    chunks = chunk_documents(docs, tok, max_tokens=40, min_tokens=1, small="keep", repeats=repeats)
    kept = {c.source for c in chunks}
    assert kept == {"book/ch0.html", "book/ch1.html", "book/ch2.html", "book/ch3.html", "notes.md"}
    notes = "\n".join(repeats.notes())
    assert "book/print.html repeats 4 other files" in notes
    assert "old/ch1.html repeats book/ch1.html" in notes
    assert repeats.chunks == sum(repeats.totals[n] for n in ("book/print.html", "old/ch1.html"))
    # stable: the same folder read in another order keeps the same chunks
    again = chunk_documents(list(reversed(docs)), tok, max_tokens=40, min_tokens=1, small="keep")
    assert {c.id for c in again} == {c.id for c in chunks}


def test_shared_sentences_and_built_in_data_are_not_duplicates(tiny_lm) -> None:
    from kinject.knowledge.corpus import Repeats, chunk_documents

    _, tok = tiny_lm
    shared = "Keep the manual with the device and read the safety notes before you start."
    docs = [_file_doc("a.md", shared + " The pump weighs fourteen kilograms and fits a standard flange."),
            _file_doc("b.md", shared + " The boiler needs a flue of at most three metres and a drain.")]
    repeats = Repeats()
    assert len(chunk_documents(docs, tok, max_tokens=200, min_tokens=1, repeats=repeats)) == 2
    assert not repeats.notes()
    built_in = [Document("sciq/1", "s", shared), Document("sciq/2", "s", shared)]  # no source file
    assert len(chunk_documents(built_in, tok, max_tokens=200, min_tokens=1)) == 2
