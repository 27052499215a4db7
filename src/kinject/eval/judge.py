"""An LLM judge for free-form answers (`kinject judge RUN`): a fixed rubric, any generator
(`local:…`, `openai:…`), its prompts and verdicts cached by content, and its agreement with the
string grade (`contains`) measured on the same answers.

String matching misses a right answer worded otherwise ("Control-Z" for "Ctrl+Z") and a judge
can be fooled or lenient; neither is ground truth, so the report shows both and how often they
agree (raw agreement and Cohen's kappa).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kinject.core.errors import KinjectError
from kinject.lm.generators import Generator
from kinject.synth.jobs import SynthCache, job_key

VERDICTS = ("correct", "incorrect", "abstained")
RUBRIC = ("You grade answers to questions against a reference answer. Reply with one word:\n"
          "correct - the answer states the reference's fact (other wording, spelling or units are fine);\n"
          "incorrect - the answer states something else, or more than one candidate;\n"
          "abstained - the answer declines or says it does not know.\n"
          "For a question marked unanswerable, an answer that states a fact is incorrect.")
ATTEMPTS = 2


@dataclass(frozen=True)
class Case:
    """One answer to judge."""

    question: str
    references: tuple[str, ...]
    answer: str

    def messages(self) -> list[dict[str, str]]:
        """The chat that asks the judge for a verdict on this answer."""
        ref = " | ".join(self.references) if self.references else "(unanswerable: the documents do not say)"
        return [{"role": "system", "content": RUBRIC},
                {"role": "user", "content": f"Question: {self.question}\nReference: {ref}\nAnswer: {self.answer}\n"
                                            f"Verdict:"}]


def parse_verdict(reply: str) -> str | None:
    """The rubric's word at the start of a reply ("Correct.", "**incorrect**"), else None."""
    m = re.match(r"\W*(correct|incorrect|abstained)\b", reply.strip().lower())
    return m.group(1) if m else None


def judge(cases: Sequence[Case], generator: Generator, cache: SynthCache,
          progress: Callable[[int], None] = lambda n: None) -> list[str | None]:
    """A verdict per case (None: no usable reply after `ATTEMPTS` tries); cached by generator,
    rubric and case, so a rerun asks nothing again. A generator that returns no reply at all for
    a whole batch (an endpoint down) stops the run with one line."""
    keys = [job_key("judge", generator.id, RUBRIC, c.question, c.references, c.answer) for c in cases]
    verdicts: list[str | None] = [None] * len(cases)
    todo = []
    for i, key in enumerate(keys):
        hit = cache.get(key)
        if hit is not None:
            verdicts[i] = hit
            progress(1)
        else:
            todo.append(i)
    size = max(1, generator.batch_size)
    for b in range(0, len(todo), size):
        batch = todo[b:b + size]
        for attempt in range(ATTEMPTS):
            ask = [i for i in batch if verdicts[i] is None]
            if not ask:
                break
            replies = generator.complete([cases[i].messages() for i in ask], seed=attempt, max_tokens=8,
                                         temperature=0.0 if attempt == 0 else 0.7)
            if all(r is None for r in replies):
                raise KinjectError(f"judge {generator.id}: no reply to {len(ask)} requests; is the endpoint up? "
                                   f"Verdicts so far are cached: rerun to go on")
            for i, reply in zip(ask, replies):
                if reply is not None and (v := parse_verdict(reply)):
                    verdicts[i] = v
                    cache.put(keys[i], "judge", v)
        progress(len(batch))
    return verdicts


def agreement(verdicts: Sequence[str | None], contains: Sequence[bool]) -> dict[str, float | int]:
    """How often the judge's "correct" and the string grade agree, over the judged answers: the
    share, and Cohen's kappa (agreement beyond what their two rates give by chance)."""
    pairs = [(v == "correct", bool(c)) for v, c in zip(verdicts, contains) if v is not None]
    n = len(pairs)
    if not n:
        return {"n": 0, "agreement": float("nan"), "kappa": float("nan")}
    agree = sum(a == b for a, b in pairs) / n
    pa, pb = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
    chance = pa * pb + (1 - pa) * (1 - pb)
    kappa = 1.0 if chance == 1 else (agree - chance) / (1 - chance)
    return {"n": n, "agreement": agree, "kappa": kappa, "judge_correct": pa, "contains": pb}


def judge_run(run_dir: Path, generator: Generator, cache: SynthCache, limit: int | None = None,
              progress: Callable[[int], None] = lambda n: None, total: Callable[[int], None] = lambda n: None
              ) -> dict[str, dict]:
    """Judge every free-form answer of a run (the first `limit` per condition), store each verdict
    with its record (`free["judge"]`), and return the agreement per condition."""
    from kinject.eval.results import Store

    with Store(run_dir) as store:
        conds = [c for c in store.conditions() if c.status == "done"]
        rows = {c.id: [r for r in store.rows(c.id) if r.free] for c in conds}
        rows = {cid: rs[:limit] if limit else rs for cid, rs in rows.items() if rs}
        if not rows:
            raise KinjectError(f"{run_dir}: no free-form answers to judge; add an @free task to the config and rerun")
        total(sum(len(rs) for rs in rows.values()))
        out: dict[str, dict] = {}
        for c in conds:
            if c.id not in rows:
                continue
            rs = rows[c.id]
            cases = [Case(r.free.get("question", ""), tuple(filter(None, (r.free.get("reference") or "").split(" | "))),
                          r.free["answer"]) for r in rs]
            verdicts = judge(cases, generator, cache, progress)
            store.set_free(c.id, {r.item_id: {**r.free, "judge": v} for r, v in zip(rs, verdicts)})
            answerable = [(v, r.free["contains"]) for r, v in zip(rs, verdicts) if r.free["answerable"]]
            out[c.id] = {"task": c.task, "method": c.method, "k": c.k,
                         **agreement([v for v, _ in answerable], [bool(x) for _, x in answerable]),
                         "unparsed": sum(v is None for v in verdicts)}
    return out
