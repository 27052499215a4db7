"""Paraphrases of a corpus (the paper's FT-par training data). This module owns the paraphrase
recipe — the prompt with its worked example, the reading of a reply, and the checks a candidate
must pass (length, not a copy, every number and name kept, enough content words kept, not a
duplicate of another paraphrase of the same chunk) — and `paraphrase_corpus`, which runs it over
a corpus on any `Generator` through the cached, resumable `kinject.synth.jobs.run_jobs`, and the
paraphrase folder `kinject paraphrase --out` writes (Parquet + yield report + meta).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kinject.core.errors import KinjectError
from kinject.core.fsio import atomic_dir, check_replaceable
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
from kinject.synth.replies import (
    content_words,
    coverage,
    names,
    norm,
    numbers,
    parse_json_reply,
    similarity,
    string_list,
)

if TYPE_CHECKING:
    from kinject.knowledge.corpus import Chunk

PARAPHRASE_RECIPE = "paraphrase-v2"
DEMO_TEXT = ("The Eiffel Tower in Paris was completed in 1889. It is 330 metres tall and was designed by the company "
             "of Gustave Eiffel.")
DEMO_PARAPHRASES = (
    "Gustave Eiffel's company designed the Eiffel Tower, a 330-metre structure in Paris that was finished in 1889.",
    "Finished in 1889, the Paris landmark known as the Eiffel Tower rises 330 metres and was the work of Gustave "
    "Eiffel's company.",
)


def _paraphrase_request(text: str, k: int) -> str:
    many = f"{k} paraphrases" if k > 1 else "one paraphrase"
    rules = ["keep every fact of the text, with every name, number and date exactly as written;",
             "change the wording and the sentence structure as much as you can;",
             "be about as long as the text."]
    if k > 1:
        rules.append("be as different as possible from the other paraphrases.")
    shape = ", ".join(f'"<paraphrase {i + 1}>"' for i in range(k))
    return (f"Write {many} of the text below. Each paraphrase must:\n" + "".join(f"- {r}\n" for r in rules)
            + f'Answer with JSON only, exactly in this form: {{"paraphrases": [{shape}]}}\n\nText:\n{text.strip()}')


def paraphrase_messages(text: str, k: int = 1) -> Messages:
    """The paper's instruction: keep every fact, change the wording, same length, paraphrases as
    different as possible from each other, answer as JSON `{"paraphrases": [...]}`. One worked
    example comes first: small local models copy or split the text without it."""
    demo = [DEMO_PARAPHRASES[i % len(DEMO_PARAPHRASES)] for i in range(min(k, 2))]
    return [
        {"role": "system", "content": "You rewrite texts faithfully. You answer with JSON only."},
        {"role": "user", "content": _paraphrase_request(DEMO_TEXT, len(demo))},
        {"role": "assistant", "content": json.dumps({"paraphrases": demo})},
        {"role": "user", "content": _paraphrase_request(text, k)},
    ]


def extract_paraphrases(reply: str) -> list[str] | None:
    """The paraphrases of a `{"paraphrases": [...]}` reply (or a bare list, or an object with one
    list or string field); `None` when the reply holds no usable JSON."""
    data = parse_json_reply(reply)
    if isinstance(data, dict):
        for k, v in data.items():
            if k.lower().startswith("paraphrase"):
                return string_list(v) if isinstance(v, list) else [v] if isinstance(v, str) else None
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            return string_list(lists[0])
        strs = [v for v in data.values() if isinstance(v, str)]
        return strs or None
    return string_list(data)


_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                 "fifteen sixteen seventeen eighteen nineteen twenty").split()


@dataclass(frozen=True)
class ParaphraseRules:
    """What a paraphrase must meet to be kept: length relative to its source, novelty, coverage."""
    min_length: float = 0.5
    max_length: float = 1.5
    near_copy: float = 0.85
    """Word-sequence similarity at or above which a paraphrase counts as a copy of the source,
    or as a duplicate of an earlier paraphrase of the same chunk."""
    min_coverage: float = 0.4
    """Share of the source's distinct content words a paraphrase must keep (first five letters
    compared): below it, facts were dropped ("Blood vessels include arteries, veins, and
    capillaries" → "Blood vessels carry blood"). Rewording with synonyms stays well above it."""


def check_paraphrase(source: str, candidate: str, rules: ParaphraseRules = ParaphraseRules()) -> str | None:
    """Why `candidate` is not a usable paraphrase of `source` (a reason name), or None if it is."""
    cand = " ".join(candidate.split())
    if not cand:
        return "empty"
    ratio = len(cand) / max(1, len(" ".join(source.split())))
    if ratio < rules.min_length:
        return "too_short"
    if ratio > rules.max_length:
        return "too_long"
    if norm(cand) == norm(source):
        return "copy"
    if similarity(source, cand) >= rules.near_copy:
        return "near_copy"
    have_numbers = numbers(cand)
    low = cand.lower()
    for n in numbers(source):
        if n not in have_numbers and not (n.isdigit() and int(n) < len(_NUMBER_WORDS)
                                          and re.search(rf"\b{_NUMBER_WORDS[int(n)]}\b", low)):
            return "lost_numbers"
    for name in names(source):
        if not re.search(rf"(?<![\w]){re.escape(name.lower())}", low):
            return "lost_names"
    if coverage(sorted(set(content_words(source))), cand) < rules.min_coverage:
        return "lost_facts"
    return None



@dataclass(frozen=True)
class Paraphrase:
    """One validated paraphrase of a chunk, with the round and attempt that produced it."""
    text: str
    chunk_id: str
    round: int
    attempt: int
    generator: str
    doc_id: str = ""
    title: str = ""


def paraphrase_corpus(chunks: Sequence["Chunk"], generator: Generator, n: int = 10, cache_path: Path | None = None,
                      progress: Progress = lambda k: None, *, per_round: int = 1, seed: int = 0,
                      temperature: float = 0.7, max_attempts: int = 3, rules: ParaphraseRules = ParaphraseRules(),
                      max_tokens: int | None = None, total: Callable[[int], None] = lambda t: None,
                      ) -> tuple[list[Paraphrase], YieldReport]:
    """`n` validated paraphrases per chunk, asked `per_round` at a time, each round under its own
    seed. Returns the paraphrases (chunk order, then round) and the yield report.

    `total(t)` is told the number of rounds first, `progress(k)` is called as rounds finish.
    `max_tokens` caps a reply (default: enough for `per_round` paraphrases at the longest valid
    length).
    """
    if n < 1 or per_round < 1:
        raise KinjectError(f"--n and --per-round must be at least 1, got {n} and {per_round}")
    t0 = time.perf_counter()
    rounds = math.ceil(n / per_round)
    gen_id = generator.id  # a remote generator may ask its server which model it is: once
    report = YieldReport("paraphrase", gen_id, chunks=len(chunks))
    cache = SynthCache(cache_path)
    results: dict[tuple[str, int], dict] = {}
    todo: list[Job] = []
    live = [c for c in chunks if c.text.strip()]
    report.empty_chunks = len(chunks) - len(live)
    total(len(live) * rounds)
    for c in live:
        for r in range(rounds):
            want = min(per_round, n - r * per_round)
            report.asked += want
            key = job_key(PARAPHRASE_RECIPE, gen_id, text_hash(c.text), r, want, seed, temperature,
                           max_attempts, rules.__dict__, max_tokens)
            hit = cache.get(key)
            if hit is not None:
                results[(c.id, r)] = hit
                report.from_cache += 1
                progress(1)
            else:
                todo.append(Job(c, r, key))

    def want(j: Job) -> int:
        return min(per_round, n - j.unit * per_round)

    def absorb(j: Job, reply: str) -> None:
        cands = extract_paraphrases(reply)
        if cands is None:
            j.rejected["not_json"] += 1
            return
        if not cands:
            j.rejected["empty"] += 1
        for cand in cands[:want(j) - len(j.got)]:
            reason = check_paraphrase(j.chunk.text, cand, rules)
            if reason is None and any(similarity(g[0], cand) >= rules.near_copy for g in j.got):
                reason = "duplicate"
            if reason is None:
                j.got.append((" ".join(cand.split()), j.attempt))
            else:
                j.rejected[reason] += 1

    def finish(j: Job) -> dict:
        value = {"paraphrases": j.got, "rejected": dict(j.rejected), "attempts": j.attempt + 1,
                 "last_reply": j.last_reply}
        results[(j.chunk.id, j.unit)] = value
        return value

    try:
        run_jobs(todo, generator, report, cache, "paraphrase", lambda j: paraphrase_messages(j.chunk.text, want(j)),
                 lambda j: max_tokens or _reply_budget(j.chunk.text, want(j), rules), seed, temperature,
                 max_attempts, absorb, lambda j: len(j.got) >= want(j), finish, progress)
    finally:
        cache.close()
    out: list[Paraphrase] = []
    for c in live:
        kept: list[str] = []
        for r in range(rounds):
            value = results.get((c.id, r))
            if value is None:
                continue
            report.rejected.update(value["rejected"])
            for text, attempt in value["paraphrases"]:
                if any(similarity(k, text) >= rules.near_copy for k in kept):
                    report.rejected["duplicate"] += 1  # across rounds: same seed family, same output
                    continue
                kept.append(text)
                out.append(Paraphrase(text, c.id, r, attempt, gen_id, c.doc_id, c.title))
    report.valid = len(out)
    report.seconds = time.perf_counter() - t0
    report.generator_stats = generator.stats.as_dict()
    return out, report


def _reply_budget(text: str, k: int, rules: ParaphraseRules) -> int:
    """Tokens a reply may need: k paraphrases at the longest valid length (~3.5 characters a token,
    generous for English) plus JSON; anything longer would be rejected as too long anyway, and a
    small model that loops stops here instead of holding its batch."""
    return int(len(text) * rules.max_length / 3.5 * k) + 24 * k + 16


def write_paraphrases(paraphrases: Sequence[Paraphrase], path: Path) -> None:
    """A Parquet file of the paraphrases (text, chunk_id, round, attempt, doc_id, title,
    generator): what `kinject finetune --extra-texts` reads (its 'text' column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("text", pa.string()), ("chunk_id", pa.string()), ("round", pa.int32()),
                        ("attempt", pa.int32()), ("doc_id", pa.string()), ("title", pa.string()),
                        ("generator", pa.string())])
    rows = [{"text": p.text, "chunk_id": p.chunk_id, "round": p.round, "attempt": p.attempt, "doc_id": p.doc_id,
             "title": p.title, "generator": p.generator} for p in paraphrases]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


PARAPHRASE_FILES = ("paraphrases.parquet", "report.json", "meta.json")
"""What a paraphrase folder holds (`kinject paraphrase --out`)."""


def write_paraphrase_dir(out: Path, paraphrases: Sequence[Paraphrase], report: YieldReport,
                         meta: dict[str, Any]) -> None:
    """`out/paraphrases.parquet`, `out/report.json` (the yield) and `out/meta.json`, atomically."""
    check_replaceable(out, "paraphrase folder", PARAPHRASE_FILES)

    def write(tmp: Path) -> None:
        write_paraphrases(paraphrases, tmp / "paraphrases.parquet")
        (tmp / "report.json").write_text(json.dumps(report.as_dict(), indent=2))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    atomic_dir(out, write)
