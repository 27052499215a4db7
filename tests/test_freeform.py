"""Free-form evaluation (`@free` tasks) with the real SmolLM2-135M: answers generated in batches,
graded, the same whatever the batch size, written as records the report reads; and the loaders of
free-form question files (JSONL and CSV)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from kinject.core.errors import KinjectError
from kinject.eval.freeform import first_line, summarize_free
from kinject.lm.scoring import Record
from kinject.rag.answer import drawn_from
from kinject.tasks.registry import load_task

QUESTIONS = [
    {"id": "q1", "question": "What is the capital of France?", "answer": "Paris", "split": "dev"},
    {"id": "q2", "question": "What is the capital of Italy?", "answer": "Rome"},
    {"id": "q3", "question": "What is the capital of Germany?", "answer": "Berlin", "aliases": ["Berlin, Germany"]},
    {"id": "q4", "question": "What is the capital of Spain?", "answer": "Madrid"},
    {"id": "q5", "question": "What colour is the pump in the AquaLift 9 manual?", "answerable": False},
]


def test_free_form_files_load_from_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    task = load_task(str(jsonl))  # a file without choices is free form by default
    assert task.fmt == "free" and [it.id for it in task.items] == ["q2", "q3", "q4", "q5"]
    assert task.items[1].references == ("Berlin", "Berlin, Germany") and task.items[3].references == ()
    csv = tmp_path / "q.csv"
    csv.write_text('question,answer,aliases,answerable\nWho wrote it?,Ada,"Ada Lovelace|Lovelace",true\n'
                   "What is missing?,,,false\n")
    items = load_task(str(csv)).items
    assert items[0].references == ("Ada", "Ada Lovelace", "Lovelace") and not items[1].answerable
    csv.write_text('question,answer,answerable\n"Who wrote\nthe first program?",Ada,true\nWho else?,Bob,maybe\n')
    with pytest.raises(KinjectError, match=r"q\.csv:4: field 'answerable'"):  # a quoted newline stays in its field
        load_task(str(csv))
    csv.write_text('question,answer\n"Who wrote\nthe first program?",Ada\n')
    assert load_task(str(csv)).items[0].question == "Who wrote\nthe first program?"
    assert load_task("newfacts@free").fmt == "free"


def test_summaries_count_each_measure_on_its_own_questions() -> None:
    assert first_line("  Paris\nQuestion: next") == "Paris"
    assert drawn_from("Paris is the capital", ["Rome is big", "the capital is Paris"]) == 1
    assert drawn_from("x", []) is None and drawn_from("Paris", ["Rome is big"]) is None
    def rec(**free) -> Record:
        return Record("i", None, "", ("a",), (), (), 0, 0, 0, free=free)
    s = summarize_free([rec(answerable=True, em=1.0, f1=1.0, contains=1.0, abstained=False, hallucinated=False,
                            supported=1.0),
                        rec(answerable=True, em=0.0, f1=0.5, contains=0.0, abstained=True, hallucinated=False,
                            supported=None),
                        rec(answerable=False, em=0.0, f1=0.0, contains=0.0, abstained=False, hallucinated=True,
                            supported=None)])
    assert (s["answerable"], s["unanswerable"], s["em"], s["f1"], s["abstained"], s["hallucinated"]) == \
        (2, 1, 0.5, 0.75, 0.5, 1.0)
    assert s["citation_precision"] == 1.0 and s["cited"] == 1


@pytest.mark.slow
def test_free_form_eval_generates_grades_and_ignores_batch_size(tmp_path: Path) -> None:
    from kinject.eval.evaluation import EvalSpec, run_eval

    path = tmp_path / "capitals.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    outs = []
    for batch in (1, 4):
        out = tmp_path / f"b{batch}"
        summary = run_eval(EvalSpec("smollm2-135m", (f"{path}@free",), 1, None, batch, device="cpu", dtype="fp32"),
                           out, Console(quiet=True))
        outs.append([json.loads(line) for line in next(out.glob("samples_*.jsonl")).read_text().splitlines()])
    one, four = outs
    assert [r["free"]["answer"] for r in one] == [r["free"]["answer"] for r in four]
    free = summary["tasks"][f"{path}@free"]["free"]
    assert free["answerable"] == 3 and free["unanswerable"] == 1
    # a 1-shot prompt ("Question: …\nAnswer: Paris") makes even a 135M model name capitals
    assert sum(r["free"]["contains"] for r in one) >= 2, [r["free"]["answer"] for r in one]
    assert one[3]["free"]["hallucinated"] == (not one[3]["free"]["abstained"])
    assert all(r["acc"] == float((r["free"]["contains"] and not r["free"]["abstained"]) if r["free"]["answerable"]
                                 else r["free"]["abstained"]) for r in one)


def test_spearman_ranks_with_ties() -> None:
    from kinject.report.tables import spearman

    assert abs(spearman([1, 2, 3], [10, 20, 30]) - 1) < 1e-12 and abs(spearman([1, 2, 3], [3, 2, 1]) + 1) < 1e-12
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    assert abs(spearman([1, 2, 2, 3], [1, 3, 2, 4]) - 0.9486832980505138) < 1e-12


def test_a_run_with_a_free_form_task_reports_both_kinds(tiny_lm, tmp_path: Path) -> None:
    """The whole grid with the tiny LM on the six facts, scored by multiple choice and in free
    form: free-form conditions land in the store with their grades, the report has its section
    and says whether the two kinds agree; the fine-tuning stage is shared (free form adds no
    training)."""
    from workspace import config, write_project

    from kinject.eval.results import Store
    from kinject.experiment.run import run

    write_project(tmp_path, tiny_lm, None)
    with open(tmp_path / "task.jsonl", "a") as fh:  # one worked example for the free-form prompts
        fh.write(json.dumps({"id": "dev0", "question": "What is one and one?", "choices": ["two", "three"],
                             "gold": 0, "split": "dev"}) + "\n")
    text = config("tiny")
    assert "  - task: task.jsonl@cloze\n    kb: facts\n" in text
    text = text.replace("  - task: task.jsonl@cloze\n", "  - task: task.jsonl@free\n    kb: facts\n    shots: [1]\n"
                                                        "  - task: task.jsonl@cloze\n", 1)
    (tmp_path / "tiny.yaml").write_text(text)
    result = run(tmp_path / "tiny.yaml", tmp_path / "run", tmp_path / "cache", Console(quiet=True))
    assert not result.failed
    with Store(tmp_path / "run") as store:
        free = [c for c in store.conditions() if c.task.endswith("@free")]
        assert {c.method for c in free} == {"base", "rag", "ft", "ft+rag"}
        rows = store.rows(free[0].id)
        assert len(rows) == 6 and all(r.free and "answer" in r.free and r.correct == int(
            bool(r.free["contains"]) and not r.free["abstained"]) for r in rows)
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "## Free-form answers" in md and "| condition | right | EM | F1 | contains" in md
    assert "multiple choice and free-form answers" in md
    assert result.computed == 7  # corpus, index, finetune, and base and FT evals of each task: one fine-tune


def test_the_report_says_how_much_easier_the_automatic_questions_are() -> None:
    from kinject.eval.results import Condition
    from kinject.report.rundata import Group
    from kinject.report.tables import question_difficulty

    def cond(task: str, method: str, k: int, acc: float) -> Condition:
        return Condition(f"{task}{method}{k}", "m", task, method, k, 0, 0, 0, "acc", "done", n=40, acc=acc)

    auto = "docs.questions.jsonl@cloze"
    groups = [Group(auto, "m", 0, 0, [cond(auto, "base", 0, 0.5), cond(auto, "rag", 1, 0.95)]),
              Group("mine.csv", "m", 0, 0, [cond("mine.csv", "base", 0, 0.1), cond("mine.csv", "rag", 1, 0.55)])]
    [note] = question_difficulty(groups)
    assert "Base 0.500 → 0.100, RAG 0.950 → 0.550" in note and "+0.400" in note and "easier" in note
    assert question_difficulty(groups[:1]) == []


def test_questions_free_form_writes_a_task_that_loads_as_free_form(tmp_path: Path) -> None:
    from kinject.synth.questions import write_task
    from kinject.tasks.task import Item

    items = [Item("q1", "Ada: She wrote the first ___.", ("program", "poem", "song", "map"), 0, source_chunks=("c1",))]
    write_task(tmp_path / "free.jsonl", items, {"valid": 1}, {"command": "test"}, free_form=True)
    row = json.loads((tmp_path / "free.jsonl").read_text())
    assert row["answer"] == "program" and "choices" not in row and row["source_chunks"] == ["c1"]
    task = load_task(str(tmp_path / "free.jsonl"))
    assert task.fmt == "free" and task.items[0].references == ("program",)
