"""Updating a knowledge base of the user's files: after an edit, a deletion and an addition the
rebuild embeds only the changed chunks (and says so), drops the removed ones, and retrieval no
longer returns the deleted text; access groups from groups.yaml reach the index."""

from __future__ import annotations

from pathlib import Path

import pytest
from docfixtures import write_pdf
from typer.testing import CliRunner
from workspace import save_tiny_embedder

from kinject.cli.main import app


def _kinject(*argv: str) -> str:
    res = CliRunner().invoke(app, [str(a) for a in argv])
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


@pytest.fixture
def tools(tiny_lm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("KINJECT_HOME", str(tmp_path / "home"))
    model, tok = tiny_lm
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    save_tiny_embedder(tmp_path / "emb", tok, 32)
    return tmp_path / "tiny", tmp_path / "emb"


def test_edit_delete_add_reembeds_only_changed_chunks(tools: tuple[Path, Path], tmp_path: Path) -> None:
    from kinject.knowledge.corpus import read_chunks
    from kinject.rag.retrieval import DenseRetriever

    tiny, emb = tools
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pump.md").write_text("# Pump\n\nThe pump is primed with water.\n\n## Seal\n\nThe seal is made of rubber.")
    (docs / "boiler.md").write_text("# Boiler\n\nThe boiler flue is nine metres long at most.")
    (docs / "router.txt").write_text("The router listens on port 8443.")
    write_pdf(docs / "guide.pdf", "Guide", ["Page one says hello.", "Page two says goodbye."])
    build = ("corpus", "build", "--tokenizer", tiny, "--chunk-tokens", 48, "--min-tokens", 1, "--source", docs,
             "--out", tmp_path / "kb")
    index = ("index", "build", "--embedder", emb, "--corpus", tmp_path / "kb", "--out", tmp_path / "ix")
    _kinject(*build)
    first = read_chunks(tmp_path / "kb")
    assert f"{len(first)} chunks ({len(first)} embedded now" in _kinject(*index)
    assert {c.source for c in first} == {"pump.md", "boiler.md", "router.txt", "guide.pdf"}

    (docs / "pump.md").write_text("# Pump\n\nThe pump is primed with water.\n\n## Seal\n\nThe seal is made of viton.")
    (docs / "boiler.md").unlink()
    (docs / "valve.md").write_text("# Valve\n\nThe valve closes at four bar.")
    said = _kinject(*build)
    second = read_chunks(tmp_path / "kb")
    new = {c.id for c in second} - {c.id for c in first}
    removed = {c.id for c in first} - {c.id for c in second}
    assert new and removed and f"({len(new)} new, {len(removed)} removed, {len(second) - len(new)} unchanged" in said
    said = _kinject(*index)
    assert f"{len(second)} chunks ({len(new)} embedded now, the rest cached, {len(removed)} dropped" in said

    dense = DenseRetriever(tmp_path / "ix")
    assert len(dense.chunks) == dense.index.ntotal == len(second)
    for query in ("The boiler flue is nine metres long at most.", "The seal is made of rubber."):
        for hit in dense.search([query], len(second))[0]:
            assert "boiler" not in hit.chunk.text.lower() and "rubber" not in hit.chunk.text
    assert any("viton" in c.text and c.section == "Pump › Seal" for c in dense.chunks)
    pages = {c.text: (c.page_start, c.page_end) for c in dense.chunks if c.source == "guide.pdf"}
    assert set(pages.values()) <= {(1, 1), (2, 2), (1, 2)} and pages


def test_groups_yaml_reaches_the_index(tools: tuple[Path, Path], tmp_path: Path) -> None:
    from kinject.rag.retrieval import DenseRetriever

    tiny, emb = tools
    docs = tmp_path / "docs"
    (docs / "hr").mkdir(parents=True)
    (docs / "hr" / "pay.md").write_text("Pay day is the twenty-fifth of each month.")
    (docs / "public.md").write_text("The office opens at nine.")
    (docs / "groups.yaml").write_text("'hr/*': [hr]\n")
    _kinject("corpus", "build", "--tokenizer", tiny, "--min-tokens", 1, "--source", docs, "--out", tmp_path / "kb")
    _kinject("index", "build", "--embedder", emb, "--corpus", tmp_path / "kb", "--out", tmp_path / "ix")
    dense = DenseRetriever(tmp_path / "ix")
    assert {h.chunk.source for h in dense.search(["pay day"], 2, ["staff"])[0]} == {"public.md"}
    assert {h.chunk.source for h in dense.search(["pay day"], 2, ["hr"])[0]} == {"public.md", "hr/pay.md"}
