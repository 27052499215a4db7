"""Task loading, JSONL validation and prompt rendering (pure functions, lm-eval formats)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kinject.core.errors import KinjectError
from kinject.tasks.registry import load_task
from kinject.tasks.task import Item, Task, load_jsonl, render

ITEM = Item("q1", " What is the powerhouse of the cell? ", ("ribosome", "mitochondrion", "nucleus", "golgi"), 1,
            subject="college_biology")
SHOT = Item("d1", "Which is a noble gas?", ("argon", "iron", "tin", "lead"), 0, subject="college_biology")


def test_mc_prompt_is_lm_eval_mmlu() -> None:
    task = Task("t", (ITEM,), (SHOT,), "mc", "mmlu")
    p = render(task, ITEM, shots=1)
    assert p.context == (
        "The following are multiple choice questions (with answers) about college biology.\n\n"
        "Which is a noble gas?\nA. argon\nB. iron\nC. tin\nD. lead\nAnswer: A\n\n"
        "What is the powerhouse of the cell?\nA. ribosome\nB. mitochondrion\nC. nucleus\nD. golgi\nAnswer:")
    assert p.continuations == (" A", " B", " C", " D")
    assert p.choice_texts == ("A", "B", "C", "D")


def test_cloze_prompt_is_lm_eval_mmlu_continuation() -> None:
    task = Task("t", (ITEM,), (SHOT,), "cloze", "mmlu")
    p = render(task, ITEM, shots=1)
    assert p.context == (
        "The following are questions (with answers) about college biology.\n\n"
        "Question: Which is a noble gas?\nAnswer: argon\n\n"
        "Question: What is the powerhouse of the cell?\nAnswer:")
    assert p.continuations == (" ribosome", " mitochondrion", " nucleus", " golgi")


def test_sciq_prompts_with_and_without_support() -> None:
    item = Item("s", "What gas do plants absorb?", ("oxygen", "helium", "argon", "carbon dioxide"), 3,
                passage="  Plants absorb carbon dioxide.")
    task = Task("sciq:support", (item,), (), "cloze", "sciq")
    assert render(task, item).context == "Plants absorb carbon dioxide.\nQuestion: What gas do plants absorb?\nAnswer:"
    closed = Item("s", item.question, item.choices, 3)
    assert render(task, closed).context == "Question: What gas do plants absorb?\nAnswer:"
    empty = Item("s", item.question, item.choices, 3, passage="")  # lm-eval keeps the newline
    assert render(task, empty).context == "\nQuestion: What gas do plants absorb?\nAnswer:"


def test_retrieved_passages_go_before_the_question() -> None:
    task = Task("t", (ITEM,), (SHOT,), "cloze", "mmlu")
    p = render(task, ITEM, shots=1, passages=("Mitochondria make ATP. ", "Cells have organelles."))
    assert p.context.endswith("Answer: argon\n\nMitochondria make ATP.\n\nCells have organelles.\n\n"
                              "Question: What is the powerhouse of the cell?\nAnswer:")


def test_too_many_shots_is_an_error() -> None:
    task = Task("t", (ITEM,), (SHOT,), "mc", "mmlu")
    with pytest.raises(KinjectError, match="1 dev examples for college_biology; 2 shots are too many"):
        render(task, ITEM, shots=2)


@pytest.mark.slow
def test_builtin_tasks_load() -> None:
    paper = load_task("mmlu:paper")
    sizes = {s: sum(it.subject == s for it in paper.items) for s in paper.subjects}
    assert sizes == {"anatomy": 135, "astronomy": 152, "college_biology": 144, "college_chemistry": 100,
                     "prehistory": 324}
    assert len(paper.dev) == 25
    assert load_task("mmlu:anatomy@cloze").fmt == "cloze"
    sciq = load_task("sciq")
    assert len(sciq.items) == 1000 and all(it.gold == 3 and it.passage is None for it in sciq.items)
    assert sum(it.source is not None for it in sciq.items) == 887
    assert sum(bool(it.passage) for it in load_task("sciq:support").items) == 887
    with pytest.raises(KinjectError, match="unknown MMLU subject 'anatomyy'.*known: paper, all, abstract_algebra"):
        load_task("mmlu:anatomyy")


def _write(tmp_path: Path, rows: list) -> Path:
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


GOOD = {"question": "2+2?", "choices": ["3", "4"], "gold": 1}


def test_jsonl_task_loads_with_dev_split(tmp_path: Path) -> None:
    path = _write(tmp_path, [{**GOOD, "id": "a", "source_chunks": ["c1"]}, {**GOOD, "id": "b", "split": "dev"}])
    task = load_jsonl(path, "cloze", "t")
    assert [it.id for it in task.items] == ["a"] and [it.id for it in task.dev] == ["b"]
    assert task.items[0].source_chunks == ("c1",)
    assert render(task, task.items[0], shots=1).context == "Question: 2+2?\nAnswer: 4\n\nQuestion: 2+2?\nAnswer:"


@pytest.mark.parametrize("rows, message", [
    (['{"question": "x", "choices": ["a", "b"], "gold": 0', ], ":1: not valid JSON"),
    ([GOOD, {**GOOD, "gold": 2}], ":2: field 'gold' must be an integer index 0..1, got 2"),
    ([{**GOOD, "gold": True}], ":1: field 'gold' must be an integer"),
    ([{**GOOD, "choices": ["only"]}], ":1: field 'choices' needs at least 2 options, got 1"),
    ([{**GOOD, "choices": "ab"}], ":1: field 'choices' must be a list of non-empty strings"),
    ([{"choices": ["a", "b"], "gold": 0}], ":1: missing field 'question'"),
    ([{**GOOD, "id": "x"}, {**GOOD, "id": "x"}], ":2: duplicate id 'x'"),
    ([{**GOOD, "split": "train"}], ":1: field 'split' must be"),
    (["[1, 2]"], ":1: expected a JSON object"),
    ([{**GOOD, "split": "dev"}], "no questions"),
    (["", "  "], "no questions"),
])
def test_jsonl_errors_name_file_and_line(tmp_path: Path, rows: list, message: str) -> None:
    path = _write(tmp_path, rows)
    with pytest.raises(KinjectError) as err:
        load_jsonl(path, "mc", "t")
    assert str(path) in str(err.value) and message in str(err.value)


def test_unknown_task_and_format() -> None:
    with pytest.raises(KinjectError, match="unknown task 'trivia'"):
        load_task("trivia")
    with pytest.raises(KinjectError, match="unknown format '@letters'"):
        load_task("mmlu:anatomy@letters")
    with pytest.raises(KinjectError, match="drop '@mc'"):
        load_task("sciq@mc")
