"""The user's own documents: PDF, HTML, Word and markdown read from generated files with known
text on known pages (characters recovered, page numbers and headings exact, boilerplate gone),
a real PDF shipped in a pip package, groups.yaml, and --skip-bad."""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import pytest
from docfixtures import FACTS, HTML_BOILERPLATE, TITLES, page_text, write_docs, write_pdf

from kinject.core.errors import KinjectError
from kinject.knowledge.corpus import Document, chunk_documents, citation, clean, read_chunks
from kinject.knowledge.readers import Tally, markdown_marks, page_ranges, read_path, read_pdf


def _words(text: str) -> str:
    return " ".join(text.split())


def _recovered(known: str, got: str) -> float:
    """Share of the known characters found, in order, in the extracted text (whitespace ignored)."""
    a, b = _words(known), _words(got)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return sum(m.size for m in matcher.get_matching_blocks()) / len(a)


def _page_of(doc: Document, offset: int) -> int:
    return [m.page for m in doc.marks if m.start <= offset][-1]


def _section_of(doc: Document, offset: int) -> str:
    return [m.section for m in doc.marks if m.start <= offset][-1]


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Document]:
    folder = write_docs(tmp_path_factory.mktemp("docs") / "docs")
    tally = Tally()
    out = {d.source: d for d in read_path(folder, tally=tally)}
    assert tally.files == {"pdf": 3, "html": 2, "docx": 1, "markdown": 1} and tally.pages == 7
    return out


def test_pdf_pages_are_recovered_with_their_numbers(docs: dict[str, Document]) -> None:
    for file, title in TITLES.items():
        doc = docs[file]
        assert doc.title == title and doc.id == f"file/{file}"
        pages = sorted({m.page for m in doc.marks})
        assert pages == list(range(1, len(pages) + 1))
        for page in pages:
            start = next(m.start for m in doc.marks if m.page == page)
            end = next((m.start for m in doc.marks if m.page == page + 1), len(doc.text))
            got = doc.text[start:end]
            known = "\n".join(ln.lstrip("# ") for ln in page_text(file, page).split("\n"))
            assert _recovered(known, got) >= 0.99, (file, page, got)
            assert not re.search(r"Page \d", got) and title not in got  # running header and footer dropped


def test_every_fact_is_on_its_page_and_under_its_heading(docs: dict[str, Document]) -> None:
    for fact in FACTS:
        doc = docs[fact.file]
        flat = _words(doc.text)
        assert fact.sentence in flat, (fact.file, fact.sentence)
        # map the offset in the whitespace-normalised text back to the document text
        at = flat.index(fact.sentence)
        offset = next(i for i in range(len(doc.text)) if len(_words(doc.text[:i + 1])) > at)
        assert _page_of(doc, offset) == fact.page
        assert _section_of(doc, offset) == fact.section, fact


def test_html_keeps_the_article_and_drops_the_frame(docs: dict[str, Document]) -> None:
    for file in ("router_faq.html", "holiday_policy.html"):
        for junk in HTML_BOILERPLATE:
            assert junk not in docs[file].text, (file, junk)
    assert docs["router_faq.html"].title == "Nimbus R5 router FAQ"


def test_word_headings_and_tables(docs: dict[str, Document]) -> None:
    doc = docs["onboarding.docx"]
    assert doc.title == "Onboarding at Kestrel Works"
    assert "Badge | Who\nBlue | Employees" in doc.text


def test_chunks_cite_file_page_and_heading(docs: dict[str, Document], tiny_lm) -> None:
    _, tok = tiny_lm
    chunks = chunk_documents(docs.values(), tok, max_tokens=256, min_tokens=1)
    assert all(c.text.strip() and c.source for c in chunks)
    for fact in FACTS:
        chunk = next(c for c in chunks if c.source == fact.file and fact.sentence in _words(c.text))
        assert chunk.page_start <= fact.page <= chunk.page_end
        cite = citation(chunk)
        assert cite.startswith(fact.file)
        if fact.page:
            assert f"p. {fact.page}" in cite or f"pp. {chunk.page_start}–" in cite
        if fact.section and fact.section in chunk.section:
            assert cite.endswith(chunk.section)
        # the fact's own sentence: its own page and heading, wherever the chunk starts
        exact = citation(chunk, re.search(r"\s+".join(map(re.escape, fact.sentence.split())), chunk.text).span())
        assert exact == fact.file + (f" p. {fact.page}" if fact.page else "") + (
            f" · {fact.section}" if fact.section else ""), (exact, fact)


def test_chunk_marks_survive_the_parquet_round_trip(docs: dict[str, Document], tiny_lm, tmp_path: Path) -> None:
    from kinject.knowledge.corpus import write_chunks

    _, tok = tiny_lm
    chunks = chunk_documents(docs.values(), tok, max_tokens=256, min_tokens=1)
    assert any(len(c.marks) > 1 for c in chunks) and all(not c.marks or c.marks[0].start == 0 for c in chunks)
    write_chunks(tmp_path / "chunks.parquet", chunks)
    (tmp_path / "meta.json").write_text("{}")
    assert read_chunks(tmp_path) == chunks


def test_markdown_marks_and_page_ranges() -> None:
    text = clean("Intro\n\n# Top\n\nText.\n\n```\n# not a heading\n```\n\nSub\n---\n\nMore.\n\n## Deep\n\nEnd.")
    marks = markdown_marks(text)
    assert [m.section for m in marks] == ["Top", "Top › Sub", "Top › Deep"]  # setext "---" is level 2
    assert text[marks[1].start:].startswith("Sub\n---")
    assert page_ranges([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8"


def test_groups_yaml_gives_access_groups_by_glob(tmp_path: Path) -> None:
    folder = tmp_path / "kb"
    (folder / "hr").mkdir(parents=True)
    (folder / "hr" / "pay.md").write_text("Pay day is the 25th.")
    (folder / "hr" / "leave.txt").write_text("Leave is 27 days.")
    (folder / "public.md").write_text("The office opens at nine.")
    (folder / "staff.jsonl").write_text(json.dumps({"id": "a", "text": "Badge rules."}) + "\n"
                                        + json.dumps({"id": "b", "text": "Board minutes.", "groups": ["board"]}))
    (folder / "groups.yaml").write_text("'hr/': [hr, admin]\n'*.jsonl': staff\nhr/pay.md: [payroll]\n")
    got = {d.id: d.groups for d in read_path(folder)}
    assert got == {"file/hr/leave.txt": ("admin", "hr"), "file/hr/pay.md": ("admin", "hr", "payroll"),
                   "file/public.md": (), "a": ("staff",), "b": ("board",)}
    (folder / "groups.yaml").write_text("'finance/*': [finance]\n")
    with pytest.raises(KinjectError, match=r"groups\.yaml: 'finance/\*' matches no file"):
        list(read_path(folder))
    (folder / "groups.yaml").write_text("hr/: []\n")
    with pytest.raises(KinjectError, match="groups.yaml: entry 'hr/' must map a glob to a non-empty list"):
        list(read_path(folder))


def test_a_bad_file_fails_the_folder_unless_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "good.md").write_text("# Notes\n\nThe pump is blue.")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "scan.pdf").write_bytes(_scan_pdf(tmp_path))
    (folder / "photo.png").write_bytes(b"\x89PNG")
    with pytest.raises(KinjectError, match=r"empty\.txt: empty file \(0 bytes\)"):
        list(read_path(folder))
    tally = Tally()
    docs = list(read_path(folder, skip_bad=True, tally=tally))
    assert [d.id for d in docs] == ["file/good.md"]
    assert [name for name, _ in tally.skipped] == ["empty.txt", "scan.pdf"]
    assert "no text layer on pages 1-2; OCR it first" in tally.skipped[1][1]
    notes = tally.notes()
    assert notes[0].startswith("skipped 2 bad file(s)") and "ignored 1 file(s) of other types (.png ×1)" in notes[1]


def _scan_pdf(tmp_path: Path) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    for _ in range(2):
        pdf.add_page()
        pdf.rect(20, 20, 120, 160, style="F")  # an image-like page: no text layer
    pdf.output(str(tmp_path / "scan.pdf"))
    return (tmp_path / "scan.pdf").read_bytes()


def test_pdf_text_layer_and_dehyphenation(tmp_path: Path) -> None:
    write_pdf(tmp_path / "a.pdf", "Header", ["The inter-\nnational office opens at nine.", "Second page text here."])
    doc = read_pdf(tmp_path / "a.pdf", "a.pdf")
    assert "international office" in doc.text and [m.page for m in doc.marks] == [1, 2]


# ---------------------------------------------------------------------------- a real PDF


REAL_PDF = "resources/GeoBase_NHNC1_Data_Model_UML_EN.pdf"


@pytest.fixture(scope="module")
def real_pdf() -> Path:
    """A 19-page data-model document exported from Word (running headers, page numbers, UML
    diagrams) that pypdf's sdist ships as a test resource: pulled like every other asset."""
    from kinject.runtime.assets import pull
    from kinject.runtime.catalog import Asset, Package

    asset = Asset(name="test-real-pdf", kind="dataset", description="a real PDF for the reader tests",
                  packages=(Package("pypdf", "7.1.1", "pypdf-7.1.1.tar.gz",
                                    "2eff4e2fc5fb22a6d6711e6f1166cdc9ab5765d90cd0d77dfea3f4aa91a27b1d",
                                    (REAL_PDF,), sdist=True),))
    return pull(asset) / REAL_PDF


@pytest.mark.slow
def test_a_real_pdf_reads_page_by_page_without_boilerplate_chunks(real_pdf: Path, tiny_lm) -> None:
    _, tok = tiny_lm
    doc = read_pdf(real_pdf, real_pdf.name)
    pages = [m.page for m in doc.marks]
    assert pages == sorted(pages) and pages[0] == 1 and pages[-1] == 19
    assert "National Hydro Network, Data Model – Edition 1.0" not in doc.text  # the running header
    assert not re.search(r"^GeoBase® \d+$", doc.text, re.M)  # the running footer with its page number
    chunks = chunk_documents([doc], tok, max_tokens=256, min_tokens=32)
    assert len(chunks) > 19 and all(c.page_start >= 1 and c.page_end <= 19 for c in chunks)
    boilerplate = re.compile(r"^(GeoBase®? ?[\divx]*|National Hydro Network, Data Model.*|\d+)$")
    for c in chunks:  # no empty chunk, none made of running headers, footers and page numbers only
        assert c.text.strip() and not all(boilerplate.match(ln.strip()) for ln in c.text.splitlines() if ln.strip())
    # diagram labels ("0..*", "starts") may make a short chunk; prose makes nearly all of them
    assert sum(len(re.findall(r"[A-Za-z]{3,}", c.text)) < 5 for c in chunks) <= len(chunks) // 20
    assert "mandatory data (black boxes)" in _words(doc.text)
