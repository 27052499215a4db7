"""`kinject init` on a folder of documents, and `kinject ask`: grounded answers that cite file,
page and section, and abstention when retrieval finds nothing close enough."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from docfixtures import FACTS, MISSING, UNANSWERABLE, write_docs
from typer.testing import CliRunner
from workspace import save_tiny_embedder

from kinject.cli.main import app
from kinject.knowledge.corpus import Chunk
from kinject.rag.answer import (
    CALIBRATED,
    Thresholds,
    ask_prompt,
    chunk_sources,
    evidence_sentences,
    is_abstention,
    states_anything,
    thresholds,
    unknown_codes,
    unlabelled,
    unsupported_numbers,
    used_sources,
)
from kinject.rag.retrieval import Hit


def _kinject(*argv: object, fails: bool = False) -> str:
    """Output of `kinject ARGV`; with `fails`, the one-line user error it raises (exit 2 in `main`)."""
    from kinject.core.errors import KinjectError

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


def _hit(text: str, source: str = "m.pdf", page: int = 0, section: str = "", score: float = 0.5,
         title: str = "T") -> Hit:
    return Hit(Chunk("c", "d", title, text, 5, 0, len(text), (), source, page, page, section), score)


def test_prompt_citations_and_used_sources() -> None:
    hits = [_hit("The pump weighs 14 kilograms.", "pump.pdf", 3, "Specs › Weight"),
            _hit("The boiler flue is 9 metres.", "boiler.pdf", 1)]
    prompt = ask_prompt("How heavy is the pump?", chunk_sources(hits))
    assert "[1] T › Specs › Weight\nThe pump weighs" in prompt and "[2] T\nThe boiler" in prompt
    assert "pump.pdf" not in prompt  # the file and page are the citation's, not the model's
    assert unlabelled("[1] T › Specs › Weight: The pump weighs 14 kg [1].", hits) == "The pump weighs 14 kg [1]."
    assert unlabelled("[2] (boiler.pdf p. 1) [1] T › Specs › Weight", hits) == ""
    assert unlabelled("[1] It weighs 14 kg.", hits) == "[1] It weighs 14 kg."  # a marker alone is no label
    texts = [h.chunk.text for h in hits]
    assert used_sources("It weighs 14 kilograms [1].", texts) == [0]
    assert used_sources("The flue is 9 metres long.", texts) == [1]  # no marker: the source it draws on
    assert is_abstention("Not in the knowledge base.") and is_abstention("") and not is_abstention("14 kg [1]")
    assert thresholds("minilm-l6") == CALIBRATED["minilm-l6"] and thresholds("x") == Thresholds(0.35, 0.60)


def test_codes_and_numbers_the_chunks_do_not_hold() -> None:
    """Checks 2 and 4 of `ask`: a code the question names must be in a chunk (its text, title, file
    or heading, however spaced), a number the answer states must be in a chunk or the question
    (spelled out, with separators or decimals, in any spelling); units, ordinals, short formulas,
    the citation header and citation markers are not codes or made-up numbers."""
    hits = [_hit("On the boiler, error code E19 means the valve is closed. The P 200 has three inlets, runs on "
                 "230 V, weighs 1,200 grams, has twenty-five settings and a 2 year warranty; SK-4471 is its seal "
                 "kit; the canteen opens at 7:30.", "aqualift.pdf", 12, title="AquaLift COVID-19 edition")]
    assert unknown_codes("What does error code E42 mean?", hits) == ["E42"]
    assert unknown_codes("What does error code e19 mean on the 2nd floor in the 1990s?", hits) == []
    assert unknown_codes("Which kit, SK-4471 or SK-4481?", hits) == ["SK-4481"]
    assert unknown_codes("Does the P-200 run on 230V with a 2-year warranty, for COVID-19?", hits) == []
    assert unknown_codes("Is CO2 or H2O made in 3D by the R5?", hits) == []
    assert unknown_codes("Is zstd-compressed or first-in content AB-CD?", hits) == ["AB-CD"]
    assert unsupported_numbers("It has 3 inlets and weighs 1200.0 grams [1, 2].", "How heavy?", hits) == []
    assert unsupported_numbers("25 settings, one of them at 7:30 (aqualift.pdf p. 12) [Source 1].", "?", hits) == []
    assert unsupported_numbers("The AquaLift 7 runs at 2.4 GHz, 50 Hz.", "AquaLift 7?", hits) == ["2.4", "50"]
    assert used_sources("As [1, 2] say.", ["a", "b"]) == [0, 1] and used_sources("[Source 2]", ["a", "b"]) == [1]
    header = _hit("Holiday requests are approved by the shift supervisor.", "policy.html", section="Holiday policy")
    assert not states_anything("[1] (policy.html · Holiday policy) Holiday policy", [header])
    assert states_anything("[1] (policy.html · Holiday policy) The shift supervisor.", [header])
    question = "Who approves holiday requests?"
    assert not states_anything("Holiday requests are approved according to the source [1].", [header], question)
    assert states_anything("Holiday requests are approved by the shift supervisor [1].", [header], question)


def test_a_sentence_that_opens_with_a_pronoun_is_about_its_title_and_a_heading_is_no_sentence() -> None:
    hit = _hit("Ada Byron was a mathematician. She wrote the first program. 1843. Ada Lovelace.", title="Ada Lovelace")
    assert [s for _, s in evidence_sentences(hit)] == ["Ada Byron was a mathematician.",
                                                    "Ada Lovelace: She wrote the first program."]
    assert [hit.chunk.text[a:b] for (a, b), _ in evidence_sentences(hit)][1] == "She wrote the first program."


def test_init_writes_a_valid_config_with_enough_training_steps(folder: Path, tiny: Path) -> None:
    from kinject.experiment.config import load_config
    from kinject.knowledge.corpus import chunk_documents
    from kinject.runtime.models import load_tokenizer
    from kinject.tasks.registry import read_source
    from kinject.train.finetune import pack

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
    own = tiny / "own.csv"
    own.write_text("question,answer,answerable\nWhat does the pump weigh?,14 kilograms,true\nWhat does it cost?,,false\n")
    _kinject("init", folder, "--out", tiny / "own.yaml", "--model", tiny / "tiny", "--embedder", tiny / "emb",
             "--questions", own)
    tasks = load_config(tiny / "own.yaml").tasks
    assert [t.task for t in tasks][1:] == ["own.csv"] and tasks[1].kb == "docs"
    own.write_text("query,reply\nWhat?,x\n")
    said = _kinject("init", folder, "--out", tiny / "bad.yaml", "--model", tiny / "tiny", "--questions", own,
                    fails=True)
    assert "own.csv:1" in said and not (tiny / "bad.yaml").exists()


def test_ask_cites_file_and_page_or_abstains(folder: Path, tiny: Path) -> None:
    _kinject("corpus", "build", "--tokenizer", tiny / "tiny", "--chunk-tokens", 64, "--min-tokens", 1,
             "--source", folder, "--out", tiny / "kb")
    _kinject("index", "build", "--embedder", tiny / "emb", "--corpus", tiny / "kb", "--out", tiny / "ix")
    said = _kinject("ask", FACTS[2].question, "--index", tiny / "ix", "--model", tiny / "tiny", "--min-score", -1,
                    "--min-sentence-score", 0, "--max-new-tokens", 4)
    assert "Answer:" in said and ".pdf p. " in said and "(score " in said
    said = _kinject("ask", MISSING[5], "--index", tiny / "ix", "--model", tiny / "tiny", "--min-score", -1)
    assert "Answer: Not in the knowledge base (no retrieved chunk mentions E42)." in said
    said = _kinject("ask", FACTS[2].question, "--index", tiny / "ix", "--model", tiny / "tiny", "--min-score", -1,
                    "--min-sentence-score", 1.5)
    assert "Answer: Not in the knowledge base (no sentence of the 3 closest chunks states it; the closest " in said
    said = _kinject("ask", UNANSWERABLE[0], "--index", tiny / "ix", "--model", tiny / "tiny", "--min-score", 1.5)
    assert "Answer: Not in the knowledge base (the closest chunk scores" in said and "below 1.50" in said


def test_ask_help_shows_the_calibrated_thresholds() -> None:
    said = _kinject("ask", "--help")
    assert "minilm-l6 0.35" in said and "minilm-l6 0.60" in said


@pytest.mark.slow
def test_abstention_thresholds_separate_the_fixture_questions(folder: Path, tmp_path: Path) -> None:
    """The calibration itself, with the default embedder and before any LM: every answerable fixture
    question clears both thresholds (its best chunk holds its fact); at least 90% of the off-topic
    ones fall under the chunk threshold; at least half of those whose subject the documents cover
    but whose fact they lack are refused too (by the sentence threshold or an unknown code)."""
    from kinject.knowledge.corpus import build_corpus
    from kinject.rag.answer import (
        PASSAGES,
        Answer,
        check_chunks,
        closeness,
        score_sentences,
        sentence_sources,
        strong_hits,
        wrong_sentence,
    )
    from kinject.rag.retrieval import DenseRetriever, Embedder, build_index
    from kinject.runtime.models import load_tokenizer
    from kinject.tasks.registry import read_source

    tok, _ = load_tokenizer("smollm2-135m")
    build_corpus(read_source(str(folder)), tok, tmp_path / "kb")
    build_index(tmp_path / "kb", Embedder("minilm-l6", cache_dir=tmp_path / "vec"), tmp_path / "ix")
    dense = DenseRetriever(tmp_path / "ix")
    limits = thresholds("minilm-l6")

    def refused(questions: list[str]) -> list[str]:
        return [q for q, hits in zip(questions, dense.search(questions, 3))
                if isinstance(check_chunks(q, hits, limits, dense.embedder), Answer)]

    answerable = dense.search([f.question for f in FACTS], 1)
    assert all(FACTS[i].sentence in " ".join(h[0].chunk.text.split()) for i, h in enumerate(answerable))
    assert refused([f.question for f in FACTS]) == []
    off_topic = [h[0].score < limits.chunk for h in dense.search(UNANSWERABLE, 1)]
    assert sum(off_topic) >= 0.9 * len(off_topic)
    assert len(refused(MISSING)) >= len(MISSING) / 2, refused(MISSING)

    # an answer that restates the neighbouring fact is caught; the right one, long or short, is not
    question = FACTS[2].question  # the maximum delivery head; the weight is in the same manual
    evidence = score_sentences(question, dense.search([question], 3)[0], dense.embedder)
    assert evidence.sentences[evidence.best] == FACTS[2].sentence
    assert wrong_sentence(closeness(FACTS[1].sentence, evidence, dense.embedder), evidence)
    assert not wrong_sentence(closeness(FACTS[2].sentence + " [1]", evidence, dense.embedder), evidence)
    assert not wrong_sentence(closeness("38 metres.", evidence, dense.embedder), evidence)
    # the model reads the best sentences, best first, each with its neighbours under its own heading
    hits = strong_hits(dense.search([question], 3)[0], limits)
    sources = sentence_sources(evidence, hits)
    assert FACTS[2].sentence in sources[0].text and FACTS[2].section.split(" › ")[-1] in sources[0].heading
    assert 1 <= len(sources) <= PASSAGES and all(0 <= s.hit < len(hits) for s in sources)
    said = [s.text for s in sources]
    assert len(said) == len(set(said)) and sum(len(s.text) for s in sources) < sum(len(h.chunk.text) for h in hits)
    # each fact's sentence is cited by its own page and heading, even in a chunk that spans pages
    for f in FACTS:
        hits = dense.search([f.question], 3)[0]
        ev = score_sentences(f.question, hits, dense.embedder)
        j = ev.best
        where = ev.cite(j, hits)
        assert where.startswith(f.file + (f" p. {f.page}" if f.page else "")), (f, where)
        assert f.section.split(" › ")[-1] in where, (f, where)


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


def test_init_on_folders_it_cannot_design_for(folder: Path, tiny: Path) -> None:
    """Bad folders and budgets: one line naming the cause and what to do, nothing written."""
    import shutil

    licences = tiny / "licences"
    licences.mkdir()
    for name in ("LICENSE.md", "COPYING.md"):
        (licences / name).write_text("# License\n\nCopyright (c) 2019-2024 Example Corp. All rights reserved. "
                                     f"Permission is hereby granted, free of charge, to any person ({name}). THE "
                                     "SOFTWARE IS PROVIDED AS IS, WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, "
                                     "INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY.\n")
    said = _kinject("init", licences, "--out", tiny / "lic.yaml", "--model", tiny / "tiny", fails=True)
    assert "no question could be made" in said and "licence" in said and "\n" not in said
    assert not (tiny / "lic.yaml").exists() and not (tiny / "lic.questions.jsonl").exists()
    said = _kinject("init", folder, "--out", tiny / "short.yaml", "--model", tiny / "tiny", "--minutes", "1",
                    fails=True)
    assert "--minutes 1 is too short for the smallest design" in said and "give --minutes" in said
    assert not (tiny / "short.yaml").exists()
    copied = tiny / "copied"
    shutil.copytree(folder, copied / "a")
    shutil.copytree(folder, copied / "b")  # every file twice: one copy is kept, the other said
    out = _kinject("init", copied, "--out", tiny / "copied.yaml", "--model", tiny / "tiny", "--embedder",
                   tiny / "emb")
    assert "near-duplicates:" in out and "repeats a/" in out and "chunks left out" in (tiny / "copied.yaml").read_text()
