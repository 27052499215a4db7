"""Multiple-choice tasks: items, loaders (built-in MMLU/SciQ and user JSONL) and prompt rendering.

Prompts reproduce lm-evaluation-harness 0.4.x byte for byte:

* `mc`    — lm-eval `mmlu`: description, "Q\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:", continuations " A".." D";
* `cloze` — lm-eval `mmlu_continuation`: "Question: Q\\nAnswer:", continuations " <answer text>";
* `sciq`  — lm-eval `sciq`: "<support>\\nQuestion: Q\\nAnswer:" (the `sciq:support` task), or closed-book;
* `free`  — the `cloze` prompt, answered by greedy generation and graded against the reference
  (the gold choice) and its aliases (`kinject.eval.grading`), not scored by log-likelihood.

Few-shot examples are the first k dev items, each rendered as its prompt + " " + its gold
continuation + "\\n\\n", after the description. Everything here is pure except the loaders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kinject.core.errors import KinjectError
from kinject.core.fsio import iter_jsonl

Format = Literal["mc", "cloze", "free"]
LETTERS = "ABCDEFGHIJ"
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"

MMLU_PAPER = ("anatomy", "astronomy", "college_biology", "college_chemistry", "prehistory")


@dataclass(frozen=True)
class Item:
    """One multiple-choice question."""

    id: str
    question: str
    choices: tuple[str, ...]
    gold: int
    subject: str | None = None
    passage: str | None = None
    """A passage that belongs in the prompt itself (SciQ's support in `sciq:support`)."""
    source: str | None = None
    """The passage the answer comes from (for knowledge bases and recall@K); not shown."""
    source_chunks: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    """Other spellings of the answer a free-form reply may use."""
    answerable: bool = True
    """False: the documents do not answer it; a free-form reply should decline."""

    @property
    def references(self) -> tuple[str, ...]:
        """The answers a free-form reply is graded against: the gold choice and its aliases."""
        return (self.choices[self.gold], *self.aliases) if self.answerable else ()


@dataclass(frozen=True)
class Task:
    """Items to score, the dev pool few-shot examples come from, and how prompts look."""

    name: str
    items: tuple[Item, ...]
    dev: tuple[Item, ...] = ()
    fmt: Format = "mc"
    style: Literal["mmlu", "sciq", "plain"] = "plain"
    subjects: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prompt:
    """What the scorer needs for one item: a shared context and one continuation per choice."""

    context: str
    continuations: tuple[str, ...]
    choice_texts: tuple[str, ...]
    """The choice strings lm-eval divides log-likelihoods by (length in characters) for acc_norm."""


# ---------------------------------------------------------------------------- rendering (pure)


def description(task: Task, subject: str | None) -> str:
    """The MMLU-style preamble naming a question's subject; empty for other tasks."""
    if task.style != "mmlu" or subject is None:
        return ""
    topic = subject.replace("_", " ")
    if task.fmt == "mc":
        return f"The following are multiple choice questions (with answers) about {topic}.\n\n"
    return f"The following are questions (with answers) about {topic}.\n\n"


def question_text(task: Task, item: Item) -> str:
    """The item's prompt without shots, lm-eval's `doc_to_text`."""
    if task.style == "sciq":
        body = f"Question: {item.question}\nAnswer:"
        return f"{item.passage.lstrip()}\n{body}" if item.passage is not None else body
    if task.fmt == "mc":
        options = "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
        return f"{item.question.strip()}{options}\nAnswer:"
    return f"Question: {item.question.strip()}\nAnswer:"


def choice_texts(task: Task, item: Item) -> tuple[str, ...]:
    """lm-eval's `doc_to_choice`: letters for `mc`, the answer texts for `cloze`."""
    if task.fmt == "mc":
        return tuple(LETTERS[: len(item.choices)])
    return item.choices


def with_passages(text: str, passages: tuple[str, ...]) -> str:
    """Retrieved passages go before the question, one per paragraph (used by RAG)."""
    if not passages:
        return text
    return "".join(p.strip() + "\n\n" for p in passages) + text


def render(task: Task, item: Item, shots: int = 0, passages: tuple[str, ...] = ()) -> Prompt:
    """Context (description + k dev shots + [passages +] question) and the continuations."""
    parts = [description(task, item.subject)]
    for shot in _shots_for(task, item, shots):
        parts.append(question_text(task, shot) + TARGET_DELIMITER + choice_texts(task, shot)[shot.gold]
                     + FEWSHOT_DELIMITER)
    parts.append(with_passages(question_text(task, item), passages))
    texts = choice_texts(task, item)
    return Prompt("".join(parts), tuple(TARGET_DELIMITER + c for c in texts), texts)


def _shots_for(task: Task, item: Item, k: int) -> list[Item]:
    """The first k dev items of the item's own subject (lm-eval's `first_n` sampler)."""
    pool = [d for d in task.dev if d.subject == item.subject] if task.style == "mmlu" else list(task.dev)
    if k > len(pool):
        subject = f" for {item.subject}" if task.style == "mmlu" and item.subject else ""
        raise KinjectError(f"task {task.name} has {len(pool)} dev examples{subject}; {k} shots are too many "
                           f"(few-shot examples are the task's dev items)")
    return pool[:k]


def check_shots(task: Task, shots: int) -> None:
    """Fail before any scoring when some item of the task lacks `shots` few-shot examples."""
    for item in {it.subject: it for it in task.items}.values():  # one item per subject
        _shots_for(task, item, shots)


# ---------------------------------------------------------------------------- loaders (I/O)


def _read_arrow(path: Path) -> list[dict]:
    import pyarrow as pa

    files = sorted(path.glob("data-*.arrow"))
    if not files:
        raise KinjectError(f"no data-*.arrow file in {path}; run `kinject assets pull --force`")
    rows: list[dict] = []
    for f in files:
        with pa.memory_map(str(f)) as src:
            rows += pa.ipc.open_stream(src).read_all().to_pylist()
    return rows


def mmlu_subjects() -> list[str]:
    """The MMLU subjects with a test split, pulling the dataset if needed."""
    from kinject.runtime.assets import get_asset, pull

    root = pull(get_asset("mmlu", "dataset"))
    return sorted(p.name for p in root.iterdir() if (p / "test").is_dir())


def _mmlu_split(root: Path, subject: str, split: str) -> list[Item]:
    return [Item(id=f"{subject}/{split}/{i}", question=r["question"], choices=tuple(r["choices"]),
                 gold=int(r["answer"]), subject=subject)
            for i, r in enumerate(_read_arrow(root / subject / split))]


def load_mmlu(subjects: list[str], fmt: Format, name: str) -> Task:
    """An MMLU task over these subjects: test questions, and dev questions for few-shot."""
    from kinject.runtime.assets import get_asset, pull

    root = pull(get_asset("mmlu", "dataset"))
    known = mmlu_subjects()
    for s in subjects:
        if s not in known:
            raise KinjectError(f"unknown MMLU subject '{s}' in task '{name}'; known: paper, all, {', '.join(known)}")
    items = tuple(it for s in subjects for it in _mmlu_split(root, s, "test"))
    dev = tuple(it for s in subjects for it in _mmlu_split(root, s, "dev"))
    return Task(name, items, dev, fmt, "mmlu", tuple(subjects))


def load_sciq(with_support: bool, name: str) -> Task:
    """SciQ's validation questions, with the support passage in the prompt when asked."""
    from kinject.runtime.assets import get_asset, pull

    rows = _read_arrow(pull(get_asset("sciq", "dataset")))
    items = tuple(
        Item(id=f"sciq/validation/{i}", question=r["question"],
             choices=(r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"]), gold=3,
             passage=r["support"] if with_support else None, source=r["support"] or None,
             source_chunks=(f"sciq/validation/{i}",) if r["support"] else ())
        for i, r in enumerate(rows))
    return Task(name, items, (), "cloze", "sciq")


def load_jsonl(path: Path, fmt: Format | None, name: str) -> Task:
    """A user task: one JSON object per line, validated with errors naming file and line.

    Multiple choice: `question` (str), `choices` (list of >= 2 str), `gold` (0-based int). Free
    form (`@free`, the default for a file without `choices`): `question` and `answer` (str), and
    optional `aliases` (list of str) and `answerable` (false: the documents do not answer it; no
    answer then). Both take optional `id`, `subject`, `source` (the passage holding the answer),
    `source_chunks` (list of chunk ids) and `split` ("test", the default, or "dev" for few-shot
    examples)."""
    return _task(name, path, fmt, iter_jsonl(path))


def load_csv(path: Path, fmt: Format | None, name: str) -> Task:
    """A free-form user task as CSV with a header row: `question`, `answer`, and optional `aliases`
    (separated by "|"), `answerable` (true/false), `id`, `subject`, `source`, `split`."""
    import csv
    import io

    from kinject.core.fsio import read_text

    if fmt not in (None, "free"):
        raise KinjectError(f"{path}: a CSV task is free form (question, answer); use @free or a JSONL file for @{fmt}")
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    columns = set(reader.fieldnames or ())
    if not {"question", "answer"} <= columns:
        raise KinjectError(f"{path}:1: the header needs the columns question and answer, got "
                           f"{', '.join(sorted(columns)) or 'none'}")

    def rows():
        for row in reader:
            n = reader.line_num  # the row's last line: a quoted field may span several
            row = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
            if "aliases" in row:
                row["aliases"] = [a.strip() for a in row["aliases"].split("|") if a.strip()]
            if "answerable" in row:
                flag = row["answerable"].strip().lower()
                if flag not in ("true", "false", "1", "0", "yes", "no"):
                    raise KinjectError(f"{path}:{n}: field 'answerable' must be true or false, got {flag!r}")
                row["answerable"] = flag in ("true", "1", "yes")
            yield f"{path}:{n}", n, row
    return _task(name, path, "free", rows())


def _task(name: str, path: Path, fmt: Format | None, rows) -> Task:
    items: list[Item] = []
    dev: list[Item] = []
    seen: set[str] = set()
    for where, n, row in rows:
        if not isinstance(row, dict):
            raise KinjectError(f"{where}: expected a JSON object with question, choices, gold (or question, answer)")
        free = (fmt == "free" and ("answer" in row or row.get("answerable") is False)) or \
            (row.get("choices") is None and "gold" not in row)  # no options: free form
        if fmt is None:
            fmt = "free" if free else "mc"
        if free and fmt != "free":
            raise KinjectError(f"{where}: a question with an answer and no choices is free form; "
                               f"use the task as {path}@free")
        item = _free_item_from_row(row, where, f"{path.stem}/{n}") if free \
            else _item_from_row(row, where, default_id=f"{path.stem}/{n}")
        if item.id in seen:
            raise KinjectError(f"{where}: duplicate id '{item.id}'")
        seen.add(item.id)
        split = row.get("split", "test")
        if split not in ("test", "dev"):
            raise KinjectError(f"{where}: field 'split' must be \"test\" or \"dev\", got {split!r}")
        (dev if split == "dev" else items).append(item)
    if not items:
        raise KinjectError(f"{path}: no questions (every task needs at least one test item)")
    return Task(name, tuple(items), tuple(dev), fmt or "mc", "plain")


def _question(row: dict, where: str) -> str:
    q = row.get("question")
    if not isinstance(q, str) or not q.strip():
        raise KinjectError(f"{where}: field 'question' must be a non-empty string")
    return q


def _source_chunks(row: dict, where: str) -> tuple[str, ...]:
    chunks = row.get("source_chunks", [])
    if not isinstance(chunks, list) or not all(isinstance(c, str) for c in chunks):
        raise KinjectError(f"{where}: field 'source_chunks' must be a list of strings")
    return tuple(chunks)


def _free_item_from_row(row: dict, where: str, default_id: str) -> Item:
    q, answerable = _question(row, where), row.get("answerable", True)
    if not isinstance(answerable, bool):
        raise KinjectError(f"{where}: field 'answerable' must be true or false, got {answerable!r}")
    answer, aliases = row.get("answer") or "", row.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise KinjectError(f"{where}: field 'aliases' must be a list of non-empty strings")
    if answerable:
        if row.get("answer") is None:
            raise KinjectError(f"{where}: missing field 'answer' (or set \"answerable\": false)")
        for field, ref in [("answer", answer), *(("aliases", a) for a in aliases)]:
            if not isinstance(ref, str) or not ref.strip():  # "--" or "%" stay: graded as written
                raise KinjectError(f"{where}: field '{field}' is empty; give the reference answer as text")
    return Item(id=str(row.get("id", default_id)), question=q, choices=(str(answer).strip(),), gold=0,
                subject=row.get("subject"), source=row.get("source"), source_chunks=_source_chunks(row, where),
                aliases=tuple(a.strip() for a in aliases), answerable=answerable)


def _item_from_row(row: dict, where: str, default_id: str) -> Item:
    for key in ("question", "choices", "gold"):
        if key not in row:
            raise KinjectError(f"{where}: missing field '{key}'")
    q, choices, gold = _question(row, where), row["choices"], row["gold"]
    if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
        raise KinjectError(f"{where}: field 'choices' must be a list of non-empty strings")
    if len(choices) < 2:
        raise KinjectError(f"{where}: field 'choices' needs at least 2 options, got {len(choices)}")
    if len(choices) > len(LETTERS):
        raise KinjectError(f"{where}: field 'choices' has {len(choices)} options; at most {len(LETTERS)}")
    twice = next((c for i, c in enumerate(choices) if c.strip() in {d.strip() for d in choices[:i]}), None)
    if twice is not None:  # two equal options score alike: the question has no single right answer
        raise KinjectError(f"{where}: field 'choices' lists {twice.strip()!r} twice; options must differ")
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
        raise KinjectError(f"{where}: field 'gold' must be an integer index 0..{len(choices) - 1}, got {gold!r}")
    return Item(id=str(row.get("id", default_id)), question=q, choices=tuple(choices), gold=gold,
                subject=row.get("subject"), source=row.get("source"), source_chunks=_source_chunks(row, where))


def headline_metric(spec: str) -> str:
    """lm-eval's headline: acc_norm for MMLU cloze (`mmlu_continuation`), acc otherwise."""
    return "acc_norm" if spec.startswith("mmlu:") and spec.endswith("@cloze") else "acc"


def select(task: Task, limit: int | None) -> list[Item]:
    """The first `limit` items of each subject (lm-eval applies --limit per sub-task)."""
    if limit is None:
        return list(task.items)
    if limit < 1:
        raise KinjectError(f"--limit must be at least 1, got {limit}")
    taken: dict[str | None, int] = {}
    out = []
    for it in task.items:
        if taken.get(it.subject, 0) < limit:
            taken[it.subject] = taken.get(it.subject, 0) + 1
            out.append(it)
    return out
