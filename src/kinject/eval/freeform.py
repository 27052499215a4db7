"""Free-form evaluation (`@free` tasks): each question answered by greedy generation, in the same
prompt family as scoring (`kinject.tasks.task.render`'s context: shots, retrieved passages, then
"Question: …\\nAnswer:"), graded against its references by `kinject.eval.grading`.

Zero-shot on a chat model, the question goes through the model's chat template instead
(`CHAT_SYSTEM`). One `Record` per question, like multiple choice, so the report's accuracy tables, CIs and paired
tests apply as they are: a record is right (`pred == gold`) when an answerable question is
answered with the fact, or an unanswerable one declined. Its `free` field keeps the answer and
its grades (EM, F1, contains, abstained, hallucinated) and, with retrieval, whether the passage
the answer leans on holds the reference (citation precision).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from kinject.core.errors import KinjectError
from kinject.core.stats import mean_stderr
from kinject.eval.grading import contains, grade
from kinject.lm.scoring import Record
from kinject.rag.answer import drawn_from
from kinject.tasks.task import Item, Task, render, select

MAX_TOKENS = 32
"""A reference answer is a span (a name, a date, a version): one line of 32 tokens holds it."""
CHAT_SYSTEM = "Answer the question in a few words. If you do not know, say \"I don't know\"."
"""Zero-shot on a chat model: the question goes through its chat template with this rule (the
same for every arm, so a closed-book arm may decline too). Asked "Question: …\nAnswer:" with no
worked example, a chat-tuned model often ends its turn at once."""


def prompt_text(task: Task, item: Item, shots: int, passages: tuple[str, ...], tok: Any) -> tuple[str, bool]:
    """The generation prompt and whether it is chat-rendered (then it carries its own special
    tokens): with shots, or for a model without a chat template, the scoring prompt itself."""
    context = render(task, item, shots, passages).context
    if shots or not getattr(tok, "chat_template", None):
        return context, False
    from kinject.lm.backends import render_chat

    question = context.removesuffix("\nAnswer:").rstrip()
    return render_chat(tok, [{"role": "system", "content": CHAT_SYSTEM}, {"role": "user", "content": question}]), True


def first_line(reply: str) -> str:
    """The answer proper: a base model goes on past it with the next "Question:"."""
    return reply.strip().split("\n", 1)[0].strip()


def answer_task(lm: Any, task: Task, shots: int, limit: int | None,
                passages: Sequence[Sequence[tuple[str, str]]] | None = None, batch_size: int = 8,
                progress: Callable[[int], None] = lambda n: None) -> list[Record]:
    """Generate and grade an answer for each item (the first `limit` per subject); `passages[i]`
    are (chunk id, text) pairs put before item i's question. Batched, left-padded generation."""
    if not hasattr(lm, "generate"):
        raise KinjectError(f"task '{task.name}' is free form (@free): it needs a backend that generates "
                           f"(hf); a completions server scores log-likelihoods only")
    items = select(task, limit)
    shown = [tuple(t for _, t in passages[i]) if passages else () for i in range(len(items))]
    rendered = [prompt_text(task, it, shots, shown[i], lm.tok) for i, it in enumerate(items)]
    prompts, chat = [p for p, _ in rendered], any(c for _, c in rendered)
    replies = []
    for b in range(0, len(prompts), batch_size):
        replies += lm.generate(prompts[b:b + batch_size], max_tokens=MAX_TOKENS, batch_size=batch_size,
                               add_special_tokens=not chat)
        progress(len(prompts[b:b + batch_size]))
    records = []
    for i, (it, reply) in enumerate(zip(items, replies)):
        answer = first_line(reply.text)
        g = grade(answer, it.references, it.answerable)
        at = drawn_from(answer, shown[i]) if shown[i] and not g.abstained else None  # a plain prompt asks for no [n]
        supported = None if at is None or not it.answerable else contains(shown[i][at], it.references)
        free = {"question": it.question, "reference": " | ".join(it.references) or None, "answer": answer,
                **asdict(g), "hallucinated": g.hallucinated, "supported": supported}
        right = int(g.correct)
        records.append(Record(it.id, it.subject, prompts[i], (answer,), (), (), 0, 0 if right else -1,
                              0 if right else -1, tuple(p for p, _ in passages[i]) if passages else (), free=free))
    return records


def _rate(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_free(records: Sequence[Record]) -> dict[str, float | int | None]:
    """Each free-form measure over the questions it is defined on: EM, F1 and contains over the
    answerable; abstained over the answerable; hallucinated over the unanswerable; citation
    precision over the answers with retrieval that leaned on a passage."""
    free = [r.free for r in records if r.free]
    answerable = [f for f in free if f["answerable"]]
    unanswerable = [f for f in free if not f["answerable"]]
    supported = [float(f["supported"]) for f in answerable if f.get("supported") is not None]
    contains_mean, contains_se = mean_stderr([f["contains"] for f in answerable]) if answerable else (None, None)
    return {"answerable": len(answerable), "unanswerable": len(unanswerable),
            "em": _rate([f["em"] for f in answerable]), "f1": _rate([f["f1"] for f in answerable]),
            "contains": contains_mean, "contains_stderr": contains_se,
            "abstained": _rate([float(f["abstained"]) for f in answerable]),
            "hallucinated": _rate([float(f["hallucinated"]) for f in unanswerable]),
            "citation_precision": _rate(supported), "cited": len(supported)}
