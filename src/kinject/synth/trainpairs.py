"""Training data beyond raw chunks: question–answer pairs for SFT and RAFT, their examples, and
replay text.

Pairs come from a knowledge base's chunks in two ways, both covering every fact of a chunk up
to N per chunk (Mecklenburg et al. 2024's "fact-based" generation):

* offline and deterministic: the cloze generator blanks each usable span (a date, number or
  name) of each sentence, seeded apart from the evaluated questions;
* through any generator (`local:…`, `openai:…`): the fact-based recipe — "list every fact of
  this text as question–answer pairs" — validated (the answer is stated in the text, the
  question does not refer to "the text" or contain its answer), cached and resumable.

No leakage: a pair that states an evaluated question with its answer (the same blanked
sentence, or the same answer with near-identical wording) is dropped and counted, so the
evaluated questions measure knowledge, not memorised items.

An SFT example is the pair in the task's own prompt format (the scorer's prompt + the gold
continuation; loss on the answer only). A RAFT example puts D distractor chunks and, in a share
P of examples, the question's own chunk before the question, in the order RAG puts retrieved
chunks (Zhang et al. 2024).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kinject.core.errors import KinjectError
from kinject.core.fsio import atomic_write_text, iter_jsonl
from kinject.synth.replies import content_words, norm, parse_json_reply

if TYPE_CHECKING:
    from kinject.knowledge.corpus import Chunk
    from kinject.lm.generators import Generator, Messages
    from kinject.synth.jobs import YieldReport
    from kinject.tasks.task import Item, Task

PAIRS_RECIPE = "fact-pairs-v1"
PAIR_SEED_SALT = 7919
"""Offline pairs are drawn under (seed + this), so they are not the evaluated questions' draw."""
NEAR_DUPLICATE = 0.7
"""Content-word overlap (Jaccard) above which a pair with an evaluated question's answer leaks it."""


@dataclass(frozen=True)
class QAPair:
    """One training pair, tied to the chunk that states it."""

    question: str
    answer: str
    chunk_id: str
    distractors: tuple[str, ...] = ()
    """Wrong answers of the same kind (offline pairs): a multiple-choice task's options."""


# ---------------------------------------------------------------------------- leakage


def _words(text: str) -> set[str]:
    return set(content_words(text.replace("____", " ")))


class Evaluated:
    """The evaluated questions a training pair must not state: by exact wording + answer, and by
    answer + near-identical wording."""

    def __init__(self, items: Sequence[Item]) -> None:
        self.exact = {(norm(it.question), norm(it.choices[it.gold])) for it in items}
        self.by_answer: dict[str, list[set[str]]] = {}
        for it in items:
            self.by_answer.setdefault(norm(it.choices[it.gold]), []).append(_words(it.question))

    @classmethod
    def of_tasks(cls, specs: Sequence[str]) -> Evaluated:
        """Every question (test and few-shot dev items) of these task specs."""
        from kinject.tasks.registry import load_task

        return cls([it for spec in specs for t in [load_task(spec)] for it in (*t.items, *t.dev)])

    def leaks(self, question: str, answer: str) -> bool:
        """Whether a training pair states an evaluated question, exactly or near-identically."""
        a = norm(answer)
        if (norm(question), a) in self.exact:
            return True
        mine = _words(question)
        return any(len(mine & w) / max(1, len(mine | w)) >= NEAR_DUPLICATE for w in self.by_answer.get(a, ()))


# ---------------------------------------------------------------------------- offline pairs


def cloze_pairs(chunks: Sequence[Chunk], per_chunk: int, seed: int, evaluated: Evaluated,
                pool_chunks: Sequence[Chunk] | None = None) -> tuple[list[QAPair], Counter]:
    """Up to `per_chunk` pairs per chunk, one span of a different sentence each while sentences
    last, none an evaluated question; deterministic for the chunks and seed."""
    from kinject.tasks.cloze import cloze_for_chunk, corpus_pool

    pool = corpus_pool(pool_chunks or chunks)
    pairs: list[QAPair] = []
    counts: Counter = Counter()
    for c in chunks:
        kept = 0
        for q in cloze_for_chunk(c, pool, per_chunk + 2, seed + PAIR_SEED_SALT):  # spares for leaking ones
            if evaluated.leaks(q.question, q.answer):
                counts["dropped_as_evaluated"] += 1
            elif kept < per_chunk:
                pairs.append(QAPair(q.question, q.answer, c.id, q.distractors))
                kept += 1
        counts["chunks_without_pairs"] += kept == 0
    return pairs, counts


# ---------------------------------------------------------------------------- the fact-based recipe

DEMO_PAIRS = (
    {"question": "In which year was the Eiffel Tower completed?", "answer": "1889"},
    {"question": "How tall is the Eiffel Tower?", "answer": "330 metres"},
    {"question": "Whose company designed and built the Eiffel Tower?", "answer": "Gustave Eiffel's company"},
    {"question": "In which city does the Eiffel Tower stand?", "answer": "Paris"},
)


def _pairs_request(text: str, title: str, n: int) -> str:
    about = f"Title: {title.strip()}\n" if title.strip() else ""
    return (f"List every fact stated in the text below as question-answer pairs, at most {n}, one fact per "
            "pair, the most specific facts first.\n"
            "- Each question names who or what it is about, so it makes sense without the text; never refer to "
            "\"the text\" or \"the passage\".\n"
            "- Each answer is short (a name, number, date, place or phrase) and copied from the text.\n"
            "- Do not put the answer in the question.\n"
            'Answer with JSON only, in this form: {"pairs": [{"question": "...", "answer": "..."}]}\n\n'
            f"{about}Text:\n{text.strip()}")


def pair_messages(text: str, title: str = "", n: int = 4) -> Messages:
    """The fact-based recipe: every fact of a chunk as a question–answer pair, one worked example first."""
    from kinject.synth.paraphrase import DEMO_TEXT

    demo = list(DEMO_PAIRS[:max(1, min(n, len(DEMO_PAIRS)))])
    return [
        {"role": "system", "content": "You turn texts into study questions. You answer with JSON only."},
        {"role": "user", "content": _pairs_request(DEMO_TEXT, "Eiffel Tower", len(demo))},
        {"role": "assistant", "content": json.dumps({"pairs": demo})},
        {"role": "user", "content": _pairs_request(text, title, n)},
    ]


def parse_pairs(reply: str, text: str) -> tuple[list[tuple[str, str]], Counter]:
    """The valid (question, answer) pairs of a reply and the rejected ones by reason."""
    from kinject.synth.questions import REFERS_TO_TEXT, grounded

    rejected: Counter = Counter()
    data = parse_json_reply(reply)
    rows = data.get("pairs", next((v for v in data.values() if isinstance(v, list)), None)) \
        if isinstance(data, dict) else data
    if not isinstance(rows, list):
        rejected["not_json"] += 1
        return [], rejected
    out: list[tuple[str, str]] = []
    for row in rows:
        q = row.get("question") if isinstance(row, dict) else None
        a = row.get("answer") if isinstance(row, dict) else None
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            a = str(a)
        if not isinstance(q, str) or not isinstance(a, str) or not q.strip() or not a.strip():
            rejected["bad_shape"] += 1
            continue
        q, a = " ".join(q.split()), " ".join(a.split())
        if REFERS_TO_TEXT.search(q):
            rejected["refers_to_text"] += 1
        elif len(a) >= 4 and re.search(rf"\b{re.escape(norm(a))}\b", norm(q)):
            rejected["answer_in_question"] += 1
        elif not grounded(a, text):
            rejected["answer_not_in_text"] += 1
        elif any(norm(q) == norm(p) for p, _ in out):
            rejected["duplicate"] += 1
        else:
            out.append((q, a))
    return out, rejected


def generate_pairs(chunks: Sequence[Chunk], generator: Generator, per_chunk: int, evaluated: Evaluated, *,
                   cache_path: Path | None = None, seed: int = 0, temperature: float = 0.3, max_attempts: int = 3,
                   max_tokens: int = 512, progress: Callable[[int], None] = lambda k: None) -> tuple[list[QAPair],
                                                                                                 YieldReport]:
    """The fact-based recipe over a corpus (asked again with a new seed while a chunk has fewer than
    half its pairs), through the cached, resumable job runner; evaluated questions are dropped."""
    from kinject.synth.jobs import Job, SynthCache, YieldReport, job_key, run_jobs, text_hash

    live = [c for c in chunks if c.text.strip()]
    report = YieldReport("pairs", generator.id, chunks=len(chunks), empty_chunks=len(chunks) - len(live),
                         asked=per_chunk * len(live))
    cache = SynthCache(cache_path)
    got: dict[str, list[list[str]]] = {}

    def key(c: Chunk) -> str:
        return job_key(PAIRS_RECIPE, generator.id, text_hash(c.text), c.title, per_chunk, seed, temperature,
                       max_attempts, max_tokens)

    def absorb(j: Job, reply: str) -> None:
        pairs, rejected = parse_pairs(reply, j.chunk.text)
        j.rejected.update(rejected)
        for q, a in pairs:
            if any(norm(q) == norm(p) for p, _ in j.got):
                j.rejected["duplicate"] += 1
            elif len(j.got) < per_chunk:
                j.got.append((q, a))

    def finish(j: Job) -> dict:
        got[j.chunk.id] = [list(p) for p in j.got]
        return {"pairs": got[j.chunk.id], "rejected": dict(j.rejected)}

    try:
        todo = []
        for c in live:
            hit = cache.get(key(c))
            if hit is None:
                todo.append(Job(c, 0, key(c)))
                continue
            got[c.id] = hit["pairs"]
            report.rejected.update(hit["rejected"])
            report.from_cache += 1
            progress(1)
        run_jobs(todo, generator, report, cache, "pairs", lambda j: pair_messages(j.chunk.text, j.chunk.title, per_chunk),
                 lambda j: max_tokens, seed, temperature, max_attempts, absorb,
                 lambda j: len(j.got) >= max(1, per_chunk // 2), finish, progress)
        for j in todo:
            report.rejected.update(j.rejected)
    finally:
        cache.close()
    pairs: list[QAPair] = []
    for c in live:
        for q, a in got.get(c.id, []):
            if evaluated.leaks(q, a):
                report.rejected["dropped_as_evaluated"] += 1
            else:
                pairs.append(QAPair(q, a, c.id))
    report.valid = len(pairs)
    report.generator_stats = generator.stats.as_dict()
    return pairs, report


# ---------------------------------------------------------------------------- files


def write_pairs(path: Path, pairs: Sequence[QAPair], report: dict[str, Any]) -> None:
    """pairs JSONL (question, answer, chunk_id, distractors) and `<name>.report.json` beside it."""
    atomic_write_text(path, "".join(json.dumps({**asdict(p), "distractors": list(p.distractors)},
                                               ensure_ascii=False) + "\n" for p in pairs))
    atomic_write_text(path.with_suffix(".report.json"), json.dumps(report, indent=2))


def read_pairs(path: Path) -> list[QAPair]:
    """A pairs JSONL; a malformed line is one error naming the file, line and field."""
    pairs = []
    for where, _, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise KinjectError(f"{where}: a pair must be a JSON object with 'question' and 'answer'")
        for field in ("question", "answer"):
            if not isinstance(row.get(field), str) or not row[field].strip():
                raise KinjectError(f"{where}: '{field}' must be a non-empty string")
        distractors = row.get("distractors", [])
        if not isinstance(distractors, list) or not all(isinstance(d, str) for d in distractors):
            raise KinjectError(f"{where}: 'distractors' must be a list of strings")
        pairs.append(QAPair(row["question"], row["answer"], str(row.get("chunk_id", "")), tuple(distractors)))
    if not pairs:
        raise KinjectError(f"{path}: no pairs; write some with `kinject questions --pairs`")
    return pairs


# ---------------------------------------------------------------------------- training examples


def sft_example(task: Task, pair: QAPair, passages: tuple[str, ...] = ()) -> tuple[str, str]:
    """(prompt, completion) in the task's own format: the scorer's prompt for this question and the
    gold continuation. Multiple-choice (`mc`) tasks need the pair's distractors for their options;
    without them the pair is asked as a cloze question."""
    from kinject.tasks.task import Item, question_text, render, with_passages

    if task.fmt == "mc" and len(pair.distractors) >= 1:
        rng = random.Random(f"kinject-sft:{pair.chunk_id}:{pair.question}")  # the answer's letter: seeded per pair
        others = list(pair.distractors[:3])
        rng.shuffle(others)
        gold = rng.randrange(len(others) + 1)
        item = Item("pair", pair.question, tuple(others[:gold] + [pair.answer] + others[gold:]), gold)
        p = render(task, item, 0, passages)
        return p.context, p.continuations[gold]
    item = Item("pair", pair.question, (pair.answer,), 0)
    if task.fmt == "mc":  # no options to letter: the cloze form of the same question
        from dataclasses import replace

        task = replace(task, fmt="cloze", style="plain")
    return with_passages(question_text(task, item), passages), " " + pair.answer


def first_per_chunk(pairs: Sequence[QAPair], n: int) -> list[QAPair]:
    """The first `n` pairs of each chunk, in order."""
    seen: Counter = Counter()
    out = []
    for p in pairs:
        seen[p.chunk_id] += 1
        if seen[p.chunk_id] <= n:
            out.append(p)
    return out


def raft_examples(task: Task, pairs: Sequence[QAPair], chunks: Sequence[Chunk], distractors: int,
                  oracle_fraction: float, seed: int) -> list[tuple[str, str]]:
    """RAFT: per pair, D chunks other than its own and, in a share P of pairs, its own chunk, in
    a seeded random order before the question (as RAG puts retrieved chunks), → the answer."""
    if len(chunks) < distractors + 1:
        raise KinjectError(f"RAFT needs at least {distractors + 1} chunks in the knowledge base for "
                           f"{distractors} distractors; it has {len(chunks)}: lower finetune.raft.distractors")
    by_id = {c.id: c for c in chunks}
    rng = random.Random(f"kinject-raft:{seed}")
    out = []
    for p in pairs:
        others = [c for c in rng.sample(chunks, min(len(chunks), distractors + 1)) if c.id != p.chunk_id]
        docs = [c.text for c in others[:distractors]]
        if p.chunk_id in by_id and rng.random() < oracle_fraction:
            docs.insert(rng.randrange(len(docs) + 1), by_id[p.chunk_id].text)
        out.append(sft_example(task, p, tuple(docs)))
    return out


def replay_texts(chunks: Sequence[Chunk], target_tokens: int, fraction: float, seed: int) -> list[str]:
    """General-text chunks, in a seeded order, until they are `fraction` of all training tokens
    (target + replay): fraction / (1 - fraction) × the target's tokens."""
    if fraction <= 0:
        return []
    want = fraction / (1 - fraction) * target_tokens
    order = list(chunks)
    random.Random(f"kinject-replay:{seed}").shuffle(order)
    out, have = [], 0
    for c in order:
        if have >= want:
            break
        out.append(c.text)
        have += c.n_tokens
    return out
