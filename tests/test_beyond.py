"""The arms beyond the 2023 paper: the method grammar (sft, raft, +replay), training QA pairs and
their leakage guard, SFT/RAFT examples and their loss mask, replay text, control tasks in the
stage graph, and the report's forgetting table, plot and recommendation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console
from workspace import FACTS, write_project

from kinject.eval.methods import cost_rank, headline_key, method_label, parse_method
from kinject.eval.results import Condition, Row, Store, Training
from kinject.knowledge.corpus import Chunk
from kinject.synth.trainpairs import (
    Evaluated,
    QAPair,
    cloze_pairs,
    parse_pairs,
    raft_examples,
    replay_texts,
    sft_example,
)
from kinject.tasks.task import Item, Task, render


def test_method_grammar_beyond_the_paper() -> None:
    m = parse_method("sft+replay+rag")
    assert (m.recipe, m.ft, m.replay, m.rag, m.family) == ("sft", "full", True, True, "sft+replay")
    raft = parse_method("raft-lora")
    assert (raft.recipe, raft.ft, raft.rag, raft.family) == ("raft", "lora", True, "raft-lora")  # always retrieves
    assert parse_method("ft+replay").family == "ft+replay" and parse_method("ft").family == "ft"
    assert method_label("raft") == "RAFT" and method_label("sft+rag") == "SFT+RAG"
    assert method_label("ft-par:3+replay+rag") == "FT-par N=3+replay+RAG"
    for bad, says in (("raft+rag", "always evaluated with retrieval"), ("sft-par:2", "ft-par:2"),
                      ("sfft", "unknown method")):
        with pytest.raises(ValueError, match=says):
            parse_method(bad)
    # deployment cost: RAG < a fine-tune < a fine-tune that also retrieves; replay costs a little more
    assert cost_rank("rag") < cost_rank("ft") < cost_rank("ft+replay") < cost_rank("sft") < cost_rank("ft+rag") \
        < cost_rank("raft")
    cond = Condition("c", "m", "t", "raft", 2, 0, 0, 0, "acc", "done", acc=0.5)
    assert headline_key(cond) == "raft"


def _chunks() -> list[Chunk]:
    """Six chunks, each all six facts in another order (enough spans for several pairs each)."""
    texts = [text for _, text, _, _ in FACTS]
    return [Chunk(f"c{i}", f"d{i}", FACTS[i][0], " ".join(texts[i:] + texts[:i]), 60, 0, 0) for i in range(6)]


def test_offline_pairs_cover_the_chunks_and_never_state_an_evaluated_question() -> None:
    from kinject.tasks.cloze import cloze_items

    chunks = _chunks()
    ev = Evaluated(cloze_items(chunks, per_chunk=1, seed=0))
    pairs, counts = cloze_pairs(chunks, 3, 0, ev)
    assert pairs == cloze_pairs(chunks, 3, 0, ev)[0]  # deterministic
    assert len({p.chunk_id for p in pairs}) >= 4 and all(len(p.distractors) == 3 for p in pairs)
    assert not any(ev.leaks(p.question, p.answer) for p in pairs)
    # every pair that states an evaluated question is dropped and counted
    drawn, _ = cloze_pairs(chunks, 3, 0, Evaluated([]))
    as_items = [Item(f"e{i}", p.question, (p.answer, *p.distractors), 0) for i, p in enumerate(drawn)]
    left, counts = cloze_pairs(chunks, 3, 0, Evaluated(as_items))
    assert counts["dropped_as_evaluated"] >= len(drawn) and not {(p.question, p.answer) for p in left} & \
        {(p.question, p.answer) for p in drawn}


@pytest.mark.slow
def test_newfacts_training_pairs_do_not_leak_the_evaluated_questions() -> None:
    """The issue's leakage test: on the real newfacts task, no training pair states an evaluated
    question (same blanked sentence + answer), and some pairs from the same chunks were dropped
    because they did — so the guard is exercised, not vacuous."""
    from kinject.tasks.newfacts import newfacts_chunks
    from kinject.tasks.registry import load_task

    task = load_task("newfacts")
    evaluated = [*task.items, *task.dev]
    chunks = {c.id: c for c in newfacts_chunks()}
    sources = [chunks[s] for s in sorted({s for it in evaluated for s in it.source_chunks})]
    pairs, counts = cloze_pairs(sources, 4, 0, Evaluated(evaluated), list(chunks.values()))
    assert len(pairs) >= 2 * len(sources)
    asked = {(" ".join(it.question.lower().split()), it.choices[it.gold].lower()) for it in evaluated}
    said = {(" ".join(p.question.lower().split()), p.answer.lower()) for p in pairs}
    assert not asked & said
    assert counts["dropped_as_evaluated"] > 0
    # the evaluated questions stay exactly as they were: same ids and gold answers
    assert [it.id for it in load_task("newfacts").items] == [it.id for it in task.items]


def test_generated_pairs_are_validated() -> None:
    text = "Zorblat is a moon of the planet Kepler-22b, discovered in 2031 by Ana Ruiz."
    reply = json.dumps({"pairs": [
        {"question": "In which year was Zorblat discovered?", "answer": "2031"},
        {"question": "Who discovered Zorblat according to the text?", "answer": "Ana Ruiz"},
        {"question": "What is the diameter of Zorblat?", "answer": "512 km"},
        {"question": "Zorblat orbits Kepler-22b; what is Zorblat?", "answer": "Kepler-22b"},
        {"question": "In which year was Zorblat discovered?", "answer": "2031"},
        {"answer": "Ana Ruiz"}]})
    ok, rejected = parse_pairs(reply, text)
    assert ok == [("In which year was Zorblat discovered?", "2031")]
    assert rejected == {"refers_to_text": 1, "answer_not_in_text": 1, "answer_in_question": 1, "duplicate": 1,
                        "bad_shape": 1}
    assert Evaluated([Item("q", "Zorblat was discovered in ____ by Ana Ruiz.", ("2031", "1999"), 0)]).leaks(
        "Zorblat was discovered in ____ by Ana Ruiz .", "2031")


def test_sft_and_raft_examples_are_the_scorers_prompts() -> None:
    pair = QAPair("In which year was Hobarth Castle built?", "1487", "c3", ("1320", "1555", "1710"))
    cloze = Task("t", (), fmt="cloze", style="plain")
    prompt, completion = sft_example(cloze, pair)
    item = Item("x", pair.question, ("1487", "1320"), 0)
    assert (prompt, completion) == (render(cloze, item).context, render(cloze, item).continuations[0])
    mc = Task("t", (), fmt="mc", style="plain")
    prompt, completion = sft_example(mc, pair)
    assert prompt.endswith("\nAnswer:") and completion.strip() in "ABCD" and "1487" in prompt
    letters = {sft_example(mc, QAPair(f"Q{i}?", "1487", "c", pair.distractors))[1] for i in range(40)}
    assert letters == {" A", " B", " C", " D"}  # the answer's position varies, so no letter is learnt
    chunks = _chunks()
    pairs = [QAPair(f"Q{i}?", "a", c.id) for i, c in enumerate(chunks)] * 20
    examples = raft_examples(cloze, pairs, chunks, 2, 0.8, seed=0)
    with_oracle = sum(chunks[i % 6].text in p for i, (p, _) in enumerate(examples))
    assert 0.65 < with_oracle / len(examples) < 0.95  # P = 0.8 of them keep their own chunk
    assert all(p.count("\n\n") in (2, 3) for p, _ in examples)  # D = 2 distractors (+ the oracle)
    assert examples == raft_examples(cloze, pairs, chunks, 2, 0.8, seed=0)
    with pytest.raises(Exception, match="at least 7 chunks"):
        raft_examples(cloze, pairs, chunks, 6, 0.8, seed=0)


def test_replay_text_is_the_asked_share_of_training_tokens() -> None:
    chunks = [Chunk(f"r{i}", f"r{i}", "", f"general text {i}", 10, 0, 10) for i in range(500)]
    texts = replay_texts(chunks, 1000, 0.2, seed=0)
    assert len(texts) == 25  # 0.2 / 0.8 × 1000 tokens = 250 tokens = 25 chunks of 10
    assert texts == replay_texts(chunks, 1000, 0.2, seed=0) and replay_texts(chunks, 1000, 0.0, 0) == []


def test_sft_loss_is_on_the_answer_only_and_batch_size_does_not_change_it(tiny_lm) -> None:
    from kinject.train.finetune import IGNORE, _batches, encode_examples

    model, tok = tiny_lm
    rows = encode_examples([("Question: Where is Lirra?\nAnswer:", " Sendo"),
                            ("Question: How far does the Quimby River flow, in kilometres?\nAnswer:", " 412")], tok, 64)
    for ids, labels in rows:
        answer = [t for t in labels if t != IGNORE]
        assert answer == ids[len(ids) - len(answer):] and answer[-1] == tok.eos_token_id
    together = _batches(rows, 2, pad_id=0)
    assert len(together) == 1 and together[0].mask is not None and together[0].mask.sum() == sum(len(r[0]) for r in rows)
    model.eval()
    with torch.no_grad():
        one = [float(b.loss(model)) * b.tokens for b in _batches(rows, 1, 0)]
        both = float(together[0].loss(model)) * together[0].tokens
    assert math.isclose(sum(one), both, rel_tol=1e-4)
    blocks = [list(range(5, 37)), list(range(40, 72))]  # packed blocks: no mask, labels are the ids
    (b,) = _batches(blocks, 2)
    assert b.mask is None and b.labels is None


# ---------------------------------------------------------------------------- the stage graph


GRID = """\
name: beyond
models: [tiny]
k: [0, 1]
methods: [base, rag, ft, sft, sft+rag, raft, ft+replay]
knowledge_bases:
  facts:
    sources: [kb.jsonl]
    chunk_tokens: 64
    min_tokens: 4
tasks:
  - task: task.jsonl@cloze
    kb: facts
control: [{task: other.jsonl@cloze, limit: 3}]
finetune:
  train_on: sources
  lr: [0.001]
  epochs: 1
  block_size: 32
  batch: 4
  micro_batch: 2
  val_fraction: 0
  pairs: cloze
  pairs_per_chunk: 2
  raft: {distractors: 2}
  replay: {source: replay.txt, fraction: 0.25}
"""


def test_plan_trains_each_recipe_once_and_scores_every_fine_tune_on_the_controls(tiny_lm, tmp_path: Path) -> None:
    from kinject.experiment.config import load_config
    from kinject.experiment.planning import plan, under_trained

    write_project(tmp_path, tiny_lm, None)
    (tmp_path / "other.jsonl").write_text((tmp_path / "task.jsonl").read_text().replace('"id": "q', '"id": "o'))
    (tmp_path / "replay.txt").write_text("General text about many other things. " * 40)
    (tmp_path / "beyond.yaml").write_text(GRID)
    cfg = load_config(tmp_path / "beyond.yaml")
    p = plan(cfg, tmp_path / "cache", Console(quiet=True))
    kinds = [s.kind for s in p.steps]
    assert kinds.count("finetune") == 4 and kinds.count("pairs") == 1  # ft, sft, raft, ft+replay; pairs shared
    assert kinds.count("corpus") == 2  # the knowledge base and the replay source
    trained = {info["method"] for _, info in p.trainings.values()}
    assert trained == {"ft", "sft", "raft", "ft+replay"}
    controls = [e for e in p.evals if e.role == "control"]
    assert sorted(next(iter(e.method_names.values())) for e in controls) == ["base", "ft", "ft+replay", "raft", "sft"]
    assert {e.target for e in controls if e.train} == {"task.jsonl@cloze"}
    # a fine-tune's key is unchanged by the new recipes' settings (earlier caches stay valid)
    ft = next(s for s, info in p.trainings.values() if info["method"] == "ft")
    (tmp_path / "b2.yaml").write_text(GRID.replace("pairs_per_chunk: 2", "pairs_per_chunk: 3"))
    p2 = plan(load_config(tmp_path / "b2.yaml"), tmp_path / "cache", Console(quiet=True))
    assert ft.key in {s.key for s in p2.steps}
    sft = next(s for s, info in p.trainings.values() if info["method"] == "sft")
    assert sft.key not in {s.key for s in p2.steps}
    # six facts, batch 4, one epoch: every fine-tune is under-trained, and the plan says so with the fix
    warned = under_trained(p)
    assert len(warned) == 4 and all("optimizer steps (fewer than 20)" in w and "lower finetune.batch (now 4" in w
                                    for w in warned)
    # training on the whole knowledge base before its corpus is built: counted from the files' size
    (tmp_path / "b3.yaml").write_text(GRID.replace("  train_on: sources\n", ""))
    p3 = plan(load_config(tmp_path / "b3.yaml"), tmp_path / "cache", Console(quiet=True))
    assert p3.trainings and len(under_trained(p3)) == 4


# ---------------------------------------------------------------------------- the report

N = 100


def _put(store: Store, task: str, method: str, right: set[int], *, role: str = "target", training: str | None = None,
         k: int = 0) -> None:
    correct = [int(i in right) for i in range(N)]
    cid = f"{role}/{task}/{method}/{k}"
    store.put_condition(Condition(cid, "m", task, method, k, 0, 0, 0, "acc", "done", n=N, acc=sum(correct) / N,
                                  acc_stderr=0.05, training_id=training, role=role,
                                  target="newfacts" if role == "control" and training else None),
                        [Row(f"q{i:03d}", None, 0, 0 if c else 1, 0 if c else 1, c, (-1.0, -2.0), ())
                         for i, c in enumerate(correct)])


def test_report_weighs_forgetting(tmp_path: Path) -> None:
    """FT and SFT both beat base on the target by the same margin, FT is cheaper, but FT lost a
    fifth of the control task: the recommendation picks SFT and names FT's forgetting; the report
    has the forgetting table and the gained-vs-lost plot."""
    from kinject.report.build import write_report
    from kinject.report.recommend import recommend
    from kinject.report.rundata import groups_of, load_run

    base = set(range(40))
    with Store(tmp_path, create=True) as s:
        _put(s, "newfacts", "base", base)
        _put(s, "newfacts", "ft", base | set(range(40, 70)), training="t-ft")
        _put(s, "newfacts", "sft", base | set(range(41, 71)), training="t-sft")
        _put(s, "sciq", "base", set(range(60)), role="control")
        _put(s, "sciq", "ft", set(range(40)), role="control", training="t-ft")       # -0.20: forgetting
        _put(s, "sciq", "sft", set(range(59)), role="control", training="t-sft")     # -0.01: none to speak of
        s.put_training(Training("t-ft", "m", "newfacts", "ft", 0, 0, steps=40))
        s.put_training(Training("t-sft", "m", "newfacts", "sft", 0, 0, steps=12))  # under-trained
    run = load_run(tmp_path)
    (g,) = groups_of(run)  # the control rows are not a table row of their own
    text = recommend(g, run)
    assert text.startswith("Use SFT:"), text
    assert "FT scored" in text and "sciq −0.200" in text
    assert text.endswith("under-trained, so not a verdict on fine-tuning: SFT (12 steps) made fewer than 20 "
                         "optimizer steps (lower finetune.batch or raise finetune.epochs).")
    out = write_report(tmp_path)
    md = (out / "report.md").read_text()
    assert "## Forgetting" in md and "−0.200" in md and "−0.010" in md
    assert (out / "gained_vs_forgotten.png").is_file()
    assert "Beyond the paper" in md and "SFT vs RAG" not in md  # no RAG condition to compare with
    assert "under-trained" in md.split("## Provenance")[1]  # the training table marks it too


E2E = """\
name: e2e
models: [smollm2-135m]
dtype: fp32
k: [0]
methods: [base, sft]
knowledge_bases:
  newfacts: {sources: [newfacts]}
tasks:
  - {task: newfacts, kb: newfacts, limit: 1}
control: [{task: sciq, limit: 8}]
finetune: {train_on: sources, lr: [3e-4], epochs: 1, batch: 4, micro_batch: 4, val_fraction: 0, pairs: cloze,
           pairs_per_chunk: 2}
"""


@pytest.mark.slow
def test_sft_with_a_control_task_end_to_end_on_smollm2(tmp_path: Path) -> None:
    """SmolLM2-135M: pairs from newfacts' source chunks (none an evaluated question), one SFT epoch
    with the loss on answers, the base and SFT models on newfacts and on SciQ closed-book, and a
    report with the forgetting table."""
    from kinject.experiment.run import run
    from kinject.report.rundata import load_run
    from kinject.synth.trainpairs import Evaluated, read_pairs
    from kinject.tasks.registry import load_task

    (tmp_path / "e2e.yaml").write_text(E2E)
    summary = run(tmp_path / "e2e.yaml", tmp_path / "run", tmp_path / "cache", Console(quiet=True))
    assert not summary.failed
    pairs = read_pairs(next((tmp_path / "cache" / "pairs").glob("*/pairs.jsonl")))
    task = load_task("newfacts")
    assert len(pairs) >= 7 and not any(Evaluated([*task.items, *task.dev]).leaks(p.question, p.answer) for p in pairs)
    r = load_run(tmp_path / "run")
    assert sorted(c.method for c in r.done) == ["base", "sft"] and r.done[0].n == r.done[1].n == 14  # 1 a type
    assert sorted((c.method, c.target) for c in r.controls) == [("base", None), ("sft", "newfacts")]
    assert [t.method for t in r.trainings] == ["sft"] and r.trainings[0].steps >= 1
    md = (summary.report / "report.md").read_text()
    assert "## Forgetting" in md and "| newfacts | SFT |" in md


def test_report_names_the_sources_rag_answered_from(tmp_path: Path) -> None:
    from kinject.report.build import write_report

    with Store(tmp_path, create=True) as s:
        _put(s, "manuals", "base", {0})
        rows = [Row(f"q{i:03d}", None, 0, 0 if i < 2 else 1, 0, int(i < 2), (-1.0, -2.0), (f"c{i % 2}",),
                    ("manual.pdf p. 2 · Setup",) if i % 2 == 0 else ("faq.html · Pricing",)) for i in range(3)]
        s.put_condition(Condition("rag", "m", "manuals", "rag", 1, 0, 0, 0, "acc", "done", n=3, acc=2 / 3,
                                  acc_stderr=0.3), rows)
    md = (write_report(tmp_path) / "report.md").read_text()
    section = md.split("## Retrieved sources")[1].split("\n## ")[0]
    assert "| manual.pdf p. 2 · Setup | 2 | 1 |" in section and "| faq.html · Pricing | 1 | 1 |" in section
