"""Multiple-choice questions written by an LLM (the paper's question recipe). This module owns
the recipe — step 1, a prompt (with a worked example) asking for specific 4-option questions a
reader can answer without the text; step 2, the generator keeping its most specific ones — the
reading and validation of replies (shape, four distinct options, an answer among them and stated
in the text, no reference to "the text", no answer in the question), `generate_questions`, which
runs both steps over a corpus through the cached, resumable `kinject.synth.jobs.run_jobs`, and
the task JSONL `kinject questions --out` writes. Answer positions are placed by
`kinject.tasks.cloze.balanced_choices`, the rule every built task shares.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kinject.core.errors import KinjectError
from kinject.core.fsio import atomic_write_text
from kinject.lm.backends import mix_seed
from kinject.lm.generators import Generator, Messages
from kinject.synth.jobs import (
    Job,
    Progress,
    SynthCache,
    YieldReport,
    job_key,
    run_jobs,
    text_hash,
)
from kinject.synth.paraphrase import DEMO_TEXT
from kinject.synth.replies import content_words, coverage, norm, numbers, parse_json_reply

if TYPE_CHECKING:
    from kinject.knowledge.corpus import Chunk
    from kinject.tasks.task import Item

QUESTION_RECIPE = "questions-v3"
REFERS_TO_TEXT = re.compile(r"\b(the|this|that|above|given)\s+(text|passage|paragraph|article|excerpt|chunk)\b"
                             r"|\baccording to\b|\bmentioned\b", re.I)


@dataclass(frozen=True)
class Question:
    """A generated multiple-choice question: its options and the index of the right one."""
    question: str
    options: tuple[str, ...]
    answer: int


DEMO_QUESTIONS = (
    {"question": "In which year was the Eiffel Tower in Paris completed?", "options": ["1875", "1889", "1901", "1912"],
     "answer": "1889"},
    {"question": "How tall is the Eiffel Tower?", "options": ["210 metres", "450 metres", "330 metres", "120 metres"],
     "answer": "330 metres"},
    {"question": "Whose company designed the iron tower completed in Paris in 1889?",
     "options": ["Gustave Eiffel", "Isambard Brunel", "Louis Pasteur", "Victor Hugo"], "answer": "Gustave Eiffel"},
    {"question": "In which city does the Eiffel Tower stand?", "options": ["Lyon", "Brussels", "Marseille", "Paris"],
     "answer": "Paris"},
)


def _question_request(text: str, title: str, k: int) -> str:
    shape = ('{"questions": [{"question": "...", "options": ["...", "...", "...", "..."], '
             '"answer": "<the correct option, copied exactly>"}]}')
    about = f"Title: {title.strip()}\n" if title.strip() else ""
    return (f"Write {k} multiple-choice questions about the facts stated in the text below.\n"
            "- Each question must make sense to a reader who has never seen this text: name who or what it is "
            "about, and never refer to \"the text\" or \"the passage\".\n"
            "- Each question asks for one specific fact from the text (a name, number, date, place, cause or "
            "property) that has exactly one correct answer.\n"
            "- Each question has exactly 4 options: the correct answer and 3 wrong answers of the same kind "
            "that sound plausible.\n"
            "- Do not put the answer in the question.\n"
            f"Answer with JSON only, in this form: {shape}\n\n{about}Text:\n{text.strip()}")


def question_messages(text: str, title: str = "", k: int = 4) -> Messages:
    """The paper's recipe, step 1: k specific 4-option questions answerable without the text.
    One worked example comes first, as for paraphrases (small models need the shape shown)."""
    demo = list(DEMO_QUESTIONS[:max(1, min(k, len(DEMO_QUESTIONS)))])
    return [
        {"role": "system", "content": "You write exam questions. You answer with JSON only."},
        {"role": "user", "content": _question_request(DEMO_TEXT, "Eiffel Tower", len(demo))},
        {"role": "assistant", "content": json.dumps({"questions": demo})},
        {"role": "user", "content": _question_request(text, title, k)},
    ]


def select_messages(questions: Sequence[Question], keep: int = 2) -> Messages:
    """Step 2: the generator keeps the `keep` most specific of its own questions."""
    listing = "\n".join(f"{i + 1}. {q.question} (answer: {q.options[q.answer]})" for i, q in enumerate(questions))
    return [
        {"role": "system", "content": "You review exam questions. You answer with JSON only."},
        {"role": "user", "content":
            f"Here are {len(questions)} questions. Pick the {keep} most specific ones: each asks for one precise "
            f"fact with a single unambiguous answer.\n\n{listing}\n\n"
            f'Answer with JSON only, in this form: {{"keep": [{", ".join(str(i + 1) for i in range(keep))}]}} '
            f"(the numbers of the questions you keep)."},
    ]


def _answer_index(answer: Any, options: Sequence[str]) -> int | None:
    """The correct option from an index (0- or 1-based is ambiguous: 0-based), a letter, or its text."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int):
        return answer if 0 <= answer < len(options) else None
    if not isinstance(answer, str):
        return None
    a = answer.strip()
    m = re.fullmatch(r"\(?([A-Da-d])[.):]?", a)
    if m:
        return "abcd".index(m.group(1).lower())
    m = re.match(r"([A-D])[.):]\s+(.*)", a)  # "B. Paris"
    if m and norm(m.group(2)) == norm(options["ABCD".index(m.group(1))]):
        return "ABCD".index(m.group(1))
    hits = [i for i, o in enumerate(options) if norm(o) == norm(a)]
    return hits[0] if len(hits) == 1 else None


def _strip_letter(option: str) -> str:
    """"A. Paris" / "(b) Paris" → "Paris" (models often letter their options)."""
    return re.sub(r"^\(?[A-Da-d][.)]\s+", "", option.strip())


def parse_questions(reply: str) -> tuple[list[Question], Counter]:
    """Valid questions of a step-1 reply and a count of the rejected ones by reason."""
    rejected: Counter = Counter()
    data = parse_json_reply(reply)
    rows = data.get("questions") if isinstance(data, dict) else data
    if isinstance(data, dict) and rows is None:
        rows = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(rows, list):
        rejected["not_json"] += 1
        return [], rejected
    out: list[Question] = []
    for row in rows:
        reason, q = _question(row)
        if q is None:
            rejected[reason] += 1
        else:
            out.append(q)
    return out, rejected


def _question(row: Any) -> tuple[str, Question | None]:
    if not isinstance(row, dict):
        return "bad_shape", None
    text = row.get("question")
    options = row.get("options", row.get("choices"))
    answer = row.get("answer", row.get("correct_answer", row.get("correct")))
    if not isinstance(text, str) or not text.strip() or not isinstance(options, list):
        return "bad_shape", None
    if len(options) != 4:
        return "not_4_options", None
    if not all(isinstance(o, (str, int, float)) and str(o).strip() for o in options):
        return "empty_option", None
    opts = tuple(_strip_letter(str(o)) for o in options)
    if len({norm(o) for o in opts}) != 4:
        return "duplicate_options", None
    gold = _answer_index(answer, opts)
    if gold is None:
        return "answer_not_an_option", None
    text = " ".join(text.split())
    if REFERS_TO_TEXT.search(text):
        return "refers_to_text", None
    if len(opts[gold]) >= 4 and re.search(rf"\b{re.escape(norm(opts[gold]))}\b", norm(text)):
        return "answer_in_question", None
    return "", Question(text, opts, gold)


def grounded(answer: str, text: str) -> bool:
    """Whether the text states the answer: each of its numbers appears in the text, and at least
    half of its content words do (compared on their first five letters, so plurals and endings
    match). A small model's invented answer ("12.5%" for a formula, a fact from elsewhere) fails;
    an answer with no content words (a bare letter or symbol) passes."""
    nums = numbers(answer)
    if nums and not nums <= numbers(text):
        return False
    words = content_words(answer)
    return not words or coverage(words, text) >= 0.5


def parse_selection(reply: str, n: int) -> list[int] | None:
    """0-based indices of a `{"keep": [...]}` reply (1-based numbers, as asked), or None."""
    data = parse_json_reply(reply)
    if isinstance(data, dict):
        data = data.get("keep", next((v for v in data.values() if isinstance(v, list)), None))
    if not isinstance(data, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in data):
        return None
    picked = []
    for v in data:
        if 1 <= v <= n and v - 1 not in picked:
            picked.append(v - 1)
    return picked or None


def balance_gold(questions: Sequence[tuple[Question, "Chunk"]], seed: int) -> list["Item"]:
    """Task items whose gold positions are balanced over A-D (each letter ±1), distractor order
    shuffled, by `kinject.tasks.cloze.balanced_choices`; deterministic for a seed. Ids are
    `<chunk id>/q<j>`; the source chunk is kept."""
    from kinject.tasks.cloze import balanced_choices
    from kinject.tasks.task import Item

    rows = [(q.options[q.answer], [o for i, o in enumerate(q.options) if i != q.answer]) for q, _ in questions]
    items: list[Item] = []
    per_chunk: Counter = Counter()
    for (q, chunk), (choices, gold) in zip(questions, balanced_choices(rows, random.Random(seed))):
        per_chunk[chunk.id] += 1
        items.append(Item(id=f"{chunk.id}/q{per_chunk[chunk.id]}", question=q.question, choices=choices,
                          gold=gold, source=chunk.text, source_chunks=(chunk.id,)))
    return items


# ---------------------------------------------------------------------------- question runs


@dataclass(frozen=True)
class _Run:
    """A question run's settings; every one of them is part of its cache keys."""

    gen_id: str
    keep: int
    candidates: int
    seed: int
    temperature: float
    max_attempts: int
    max_tokens: int

    def key(self, c: "Chunk") -> str:
        return job_key(QUESTION_RECIPE, self.gen_id, text_hash(c.text), c.title, self.keep, self.candidates,
                       self.seed, self.temperature, self.max_attempts, self.max_tokens)


def generate_questions(chunks: Sequence["Chunk"], generator: Generator, *, keep: int = 2, candidates: int = 4,
                       cache_path: Path | None = None, seed: int = 0, temperature: float = 0.7,
                       max_attempts: int = 3, max_tokens: int = 512, progress: Progress = lambda k: None,
                       total: Callable[[int], None] = lambda t: None) -> tuple[list["Item"], YieldReport]:
    """The paper's question recipe over a corpus: per chunk `candidates` questions (retried with a
    new seed while fewer than `keep` are valid), then the generator keeps the `keep` most specific
    (first valid ones when its pick is unusable, counted). Questions are de-duplicated over the
    corpus and their answer positions balanced over A-D."""
    if keep < 1 or candidates < keep:
        raise KinjectError(f"need 1 <= --keep <= --candidates, got keep {keep}, candidates {candidates}")
    t0 = time.perf_counter()
    # a remote generator may ask its server which model it is: once
    run = _Run(generator.id, keep, candidates, seed, temperature, max_attempts, max_tokens)
    live = [c for c in chunks if c.text.strip()]
    report = YieldReport("questions", run.gen_id, chunks=len(chunks), empty_chunks=len(chunks) - len(live),
                         asked=keep * len(live))
    counts: Counter = Counter()
    cache = SynthCache(cache_path)
    total(len(live))
    try:
        results, todo = _cached_or_todo(live, run, cache, report, progress)
        # step 1 results are cached with "kept": "pending" when a selection is due, then re-cached after step 2
        pending = _write_candidates(todo, run, generator, cache, report, results, progress)
        pending += _left_pending(live, run, results, pending)
        _select(pending, run, generator, cache, report, results, counts)
    finally:
        cache.close()
    items = balance_gold(_kept_questions(live, run, results, report, counts), seed)
    _finish_report(report, items, counts, generator, t0)
    return items, report


def _cached_or_todo(live: Sequence["Chunk"], run: _Run, cache: SynthCache, report: YieldReport,
                    progress: Progress) -> tuple[dict[str, dict], list[Job]]:
    """Each chunk's cached result (by chunk id), and a job for every chunk without one."""
    results: dict[str, dict] = {}
    todo: list[Job] = []
    for c in live:
        hit = cache.get(run.key(c))
        if hit is not None:
            results[c.id] = hit
            report.from_cache += 1
            progress(1)
        else:
            todo.append(Job(c, 0, run.key(c)))
    return results, todo


def _absorb(j: Job, reply: str) -> None:
    """Step 1's validation: a reply's valid questions whose answer the chunk states and that the
    job does not have yet join it; the rest are counted by reason."""
    qs, rejected = parse_questions(reply)
    j.rejected.update(rejected)
    for q in qs:
        if not grounded(q.options[q.answer], j.chunk.text):
            j.rejected["answer_not_in_text"] += 1
        elif any(norm(q.question) == norm(g.question) for g in j.got):
            j.rejected["duplicate"] += 1
        else:
            j.got.append(q)


def _write_candidates(todo: list[Job], run: _Run, generator: Generator, cache: SynthCache, report: YieldReport,
                      results: dict[str, dict], progress: Progress) -> list[Job]:
    """Step 1: each job's chunk is asked for `candidates` questions, again with a new seed while
    fewer than `keep` are valid. A finished job's result goes to `results` and the cache, marked
    "pending" when it has more than `keep` questions; those jobs are returned, in finishing order."""
    pending: list[Job] = []

    def finish(j: Job) -> dict:
        value = {"questions": [[q.question, list(q.options), q.answer] for q in j.got], "rejected": dict(j.rejected),
                 "generated": len(j.got) + sum(j.rejected.values()), "attempts": j.attempt + 1, "kept": None,
                 "last_reply": j.last_reply}
        if len(j.got) > run.keep:
            pending.append(j)
            value["kept"] = "pending"
        results[j.chunk.id] = value
        return value

    run_jobs(todo, generator, report, cache, "questions",
             lambda j: question_messages(j.chunk.text, j.chunk.title, run.candidates), lambda j: run.max_tokens,
             run.seed, run.temperature, run.max_attempts, _absorb, lambda j: len(j.got) >= run.keep, finish, progress)
    return pending


def _stored(value: dict) -> list[Question]:
    """The candidate questions of a chunk's (cached) result."""
    return [Question(q, tuple(o), a) for q, o, a in value["questions"]]


def _left_pending(live: Sequence["Chunk"], run: _Run, results: dict[str, dict], started: Sequence[Job]) -> list[Job]:
    """Selection jobs for the chunks a run killed between the steps left "pending" in the cache
    (those not in `started`), in corpus order."""
    seen = {j.chunk.id for j in started}
    jobs: list[Job] = []
    for c in live:
        value = results.get(c.id)
        if value is not None and value["kept"] == "pending" and c.id not in seen:
            seen.add(c.id)
            jobs.append(Job(c, 0, run.key(c), got=_stored(value)))
    return jobs


def _select(pending: list[Job], run: _Run, generator: Generator, cache: SynthCache, report: YieldReport,
            results: dict[str, dict], counts: Counter) -> None:
    """Step 2: the generator keeps the `keep` most specific of each pending chunk's questions (its
    first valid ones fill an unusable or short pick, counted) and the chunk's result is cached
    again with the pick. A prompt without a reply stays pending in the cache: a rerun asks again."""
    size = max(1, generator.batch_size)
    for b in range(0, len(pending), size):
        batch = pending[b:b + size]
        replies = generator.complete([select_messages(j.got, run.keep) for j in batch],
                                     seed=mix_seed(run.seed, "select"), max_tokens=64, temperature=0.0)
        report.attempts += len(batch)
        for j, reply in zip(batch, replies, strict=True):
            if reply is None:
                report.no_reply += 1
                continue
            picked = parse_selection(reply, len(j.got))
            if picked is None or len(picked) < run.keep:
                counts["selection_fallback"] += 1
                picked = (picked or []) + [i for i in range(len(j.got)) if i not in (picked or [])]
            value = results[j.chunk.id]
            value["kept"] = picked[:run.keep]
            cache.put(j.key, "questions", value)


def _kept_questions(live: Sequence["Chunk"], run: _Run, results: dict[str, dict], report: YieldReport,
                    counts: Counter) -> list[tuple[Question, "Chunk"]]:
    """The questions each chunk kept, in corpus order, less any already kept for an earlier chunk
    (same wording: a duplicate over the corpus, counted); a chunk whose selection is still pending
    gives none. Every chunk's rejections and candidate counts go to the report."""
    chosen: list[tuple[Question, Chunk]] = []
    seen: set[str] = set()
    for c in live:
        value = results.get(c.id)
        if value is None:
            continue
        report.rejected.update(value["rejected"])
        counts["generated"] += value["generated"]
        qs = _stored(value)
        counts["valid_candidates"] += len(qs)
        kept = value["kept"]
        if kept == "pending":
            counts["selection_unfinished"] += 1
            continue
        picks = [qs[i] for i in kept] if isinstance(kept, list) else qs[:run.keep]
        if len(qs) < run.keep:
            counts["chunks_short_of_questions"] += 1
        for q in picks:
            k = norm(q.question)
            if k in seen:
                report.rejected["duplicate"] += 1
                continue
            seen.add(k)
            chosen.append((q, c))
    return chosen


def _finish_report(report: YieldReport, items: Sequence["Item"], counts: Counter, generator: Generator,
                   t0: float) -> None:
    """The run's totals: kept questions, unfinished selections, time, counts, gold balance."""
    report.valid = len(items)
    report.unfinished += counts["selection_unfinished"]  # step 2 got no reply: a rerun asks again
    report.seconds = time.perf_counter() - t0
    report.extra = {**dict(counts), "gold_balance": dict(sorted(Counter("ABCD"[it.gold] for it in items).items()))}
    report.generator_stats = generator.stats.as_dict()


def write_task(out: Path, items: Sequence["Item"], report: dict[str, Any], meta: dict[str, Any],
               free_form: bool = False) -> Path:
    """The task JSONL `kinject eval --task` reads (question, choices, gold, id, source,
    source_chunks; with `free_form`, the gold choice as `answer` instead of choices and gold: a
    free-form task whose reference answers are the questions' spans) and `<name>.report.json`
    (yield + provenance) next to it; each file is written whole and renamed into place, so a
    killed run never leaves a half task."""
    if out.suffix != ".jsonl":
        raise KinjectError(f"--out {out}: a task file must end in .jsonl")
    lines = [json.dumps({"id": it.id, "question": it.question,
                         **({"answer": it.choices[it.gold]} if free_form else
                            {"choices": list(it.choices), "gold": it.gold}),
                         "source": it.source, "source_chunks": list(it.source_chunks),
                         **({"subject": it.subject} if it.subject else {})}, ensure_ascii=False)
             for it in items]
    report_path = out.with_suffix(".report.json")
    for path, text in ((out, "".join(line + "\n" for line in lines)),
                       (report_path, json.dumps({**report, "meta": meta}, indent=2))):
        atomic_write_text(path, text)
    return report_path
