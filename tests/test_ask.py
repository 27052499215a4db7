"""`kinject init` on a folder of documents, and `kinject ask`: grounded answers that cite file,
page and section, and abstention when retrieval finds nothing close enough."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from docfixtures import FACTS, UNANSWERABLE, write_docs
from typer.testing import CliRunner
from workspace import save_tiny_embedder

from kinject.cli import app
from kinject.corpus import Chunk
from kinject.retrieval import (
    ABSTAIN_BELOW,
    Hit,
    abstain_threshold,
    ask_prompt,
    is_abstention,
    used_sources,
)


def _kinject(*argv: object, fails: bool = False) -> str:
    """Output of `kinject ARGV`; with `fails`, the one-line user error it raises (exit 2 in `main`)."""
    from kinject.errors import KinjectError

    res = CliRunner().invoke(app, [str(a) for a in argv])
    if fails:
        assert isinstance(res.exception, KinjectError), res.output
        return str(res.exception)
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_docs(tmp_path_factory.mktemp("ask") / "docs")


@pytest.fixture
def tiny(tiny_lm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KINJECT_HOME", str(tmp_path / "home"))
    model, tok = tiny_lm
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    save_tiny_embedder(tmp_path / "emb", tok, 32)
    return tmp_path


def _hit(text: str, source: str = "m.pdf", page: int = 0, section: str = "", score: float = 0.5) -> Hit:
    return Hit(Chunk("c", "d", "T", text, 5, 0, len(text), (), source, page, page, section), score)


def test_prompt_citations_and_used_sources() -> None:
    hits = [_hit("The pump weighs 14 kilograms.", "pump.pdf", 3, "Specs › Weight"),
            _hit("The boiler flue is 9 metres.", "boiler.pdf", 1)]
    prompt = ask_prompt("How heavy is the pump?", hits)
    assert "[1] (pump.pdf p. 3 · Specs › Weight) The pump weighs" in prompt and "[2] (boiler.pdf p. 1)" in prompt
    assert used_sources("It weighs 14 kilograms [1].", hits) == [0]
    assert used_sources("The flue is 9 metres long.", hits) == [1]  # no marker: the chunk it draws on
    assert is_abstention("Not in the knowledge base.") and is_abstention("") and not is_abstention("14 kg [1]")
    assert abstain_threshold("minilm-l6") == ABSTAIN_BELOW["minilm-l6"] and abstain_threshold("x", "bm25") == 0


def test_init_writes_a_valid_config_with_enough_training_steps(folder: Path, tiny: Path) -> None:
    from kinject.config import load_config
    from kinject.corpus import chunk_documents
    from kinject.finetune import pack
    from kinject.models import load_tokenizer
    from kinject.registry import read_source

    out = tiny / "first" / "mine.yaml"
    said = _kinject("init", folder, "--out", out, "--model", tiny / "tiny", "--embedder", tiny / "emb")
    assert "7 files (1 docx, 2 html, 1 markdown, 3 pdf), 7 PDF pages" in said and f"kinject run {out}" in said
    cfg = load_config(out)
    assert cfg.methods == ["base", "rag", "ft", "ft+rag"]
    assert (out.parent / cfg.knowledge_bases["docs"].sources[0]).resolve() == folder.resolve()
    tok, _ = load_tokenizer(str(tiny / "tiny"))
    chunks = chunk_documents(read_source(str(folder)), tok, 256, 32)
    blocks = len(pack([c.text for c in chunks], tok, cfg.finetune.block_size))  # what fine-tuning trains on
    assert math.ceil(blocks / cfg.finetune.batch) * cfg.finetune.epochs >= 20
    items = [json.loads(ln) for ln in (tiny / "first" / "mine.questions.jsonl").read_text().splitlines()]
    assert items and {c for it in items for c in it["source_chunks"]} <= {c.id for c in chunks}
    assert "estimated time: ≈" in out.read_text()
    assert "exists; pass --force" in _kinject("init", folder, "--out", out, "--model", tiny / "tiny", fails=True)
    assert "unknown generator 'gpt4'" in _kinject("init", folder, "--out", tiny / "other.yaml", "--model", tiny / "tiny",
                                                  "--generator", "gpt4", fails=True)
    assert not (tiny / "other.yaml").exists()


def test_ask_cites_file_and_page_or_abstains(folder: Path, tiny: Path) -> None:
    _kinject("corpus", "build", "--tokenizer", tiny / "tiny", "--chunk-tokens", 64, "--min-tokens", 1,
             "--source", folder, "--out", tiny / "kb")
    _kinject("index", "build", "--embedder", tiny / "emb", "--corpus", tiny / "kb", "--out", tiny / "ix")
    said = _kinject("ask", FACTS[2].question, "--index", tiny / "ix", "--model", tiny / "tiny", "--min-score", -1,
                    "--max-new-tokens", 4)
    assert "Answer:" in said and ".pdf p. " in said and "(score " in said
    said = _kinject("ask", UNANSWERABLE[0], "--index", tiny / "ix", "--model", tiny / "tiny", "--min-score", 1.5)
    assert "Answer: Not in the knowledge base (the closest chunk scores" in said and "below 1.50" in said


def test_ask_help_shows_the_calibrated_thresholds() -> None:
    said = _kinject("ask", "--help")
    assert "minilm-l6 0.35" in said


@pytest.mark.slow
def test_abstention_threshold_separates_the_fixture_questions(folder: Path, tmp_path: Path) -> None:
    """The calibration itself: with the default embedder every answerable fixture question's best
    chunk clears the threshold and at least 90% of the unanswerable ones fall below it."""
    from kinject.corpus import build_corpus
    from kinject.models import load_tokenizer
    from kinject.registry import read_source
    from kinject.retrieval import DenseRetriever, Embedder, build_index

    tok, _ = load_tokenizer("smollm2-135m")
    build_corpus(read_source(str(folder)), tok, tmp_path / "kb")
    build_index(tmp_path / "kb", Embedder("minilm-l6", cache_dir=tmp_path / "vec"), tmp_path / "ix")
    dense = DenseRetriever(tmp_path / "ix")
    limit = abstain_threshold("minilm-l6")
    answerable = dense.search([f.question for f in FACTS], 1)
    assert all(h[0].score >= limit and FACTS[i].sentence in " ".join(h[0].chunk.text.split())
               for i, h in enumerate(answerable))
    below = [h[0].score < limit for h in dense.search(UNANSWERABLE, 1)]
    assert sum(below) >= 0.9 * len(below)


@pytest.mark.slow
def test_init_then_run_gives_a_report(folder: Path, tiny: Path) -> None:
    """The guided first run end to end, on the tiny model: init → run → report, all four arms."""
    import sqlite3

    out = tiny / "mine.yaml"
    _kinject("init", folder, "--out", out, "--model", tiny / "tiny", "--embedder", tiny / "emb")
    _kinject("run", out, "--out", tiny / "run", "--cache", tiny / "stages")
    assert (tiny / "run" / "report" / "report.html").is_file()
    rows = sqlite3.connect(tiny / "run" / "results.sqlite").execute(
        "SELECT DISTINCT method, status FROM conditions").fetchall()
    assert {m for m, _ in rows} == {"base", "rag", "ft", "ft+rag"} and {s for _, s in rows} == {"done"}
