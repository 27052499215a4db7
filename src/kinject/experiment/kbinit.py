"""`kinject init DOCS`: a guided first run on the user's own documents.

It reads the folder as a run would (same tokenizer and chunking, near-duplicates skipped, so chunk
ids match), cuts offline cloze questions from those chunks, and designs a run that fits the time
the person grants, costed on this machine with the `--dry-run` model: how many questions (drawn
evenly over documents) and how many chunks fine-tuning samples (the questions' sources first, at
least enough optimizer steps to learn anything). It writes a commented config whose every line
says why it is there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kinject.core.errors import KinjectError
from kinject.runtime.hyper import MIN_STEPS

if TYPE_CHECKING:
    from kinject.knowledge.corpus import Chunk, Repeats
    from kinject.knowledge.readers import Tally
    from kinject.runtime.devices import Placement
    from kinject.tasks.task import Task

CHUNK_TOKENS, MIN_TOKENS, BLOCK = 256, 32, 256
PROMPT_TOKENS = 60
"""A cloze question's prompt without retrieved chunks, in tokens (title, blanked sentence, option)."""


@dataclass
class Survey:
    """What `init` found: files by kind, pages, documents, chunks and tokens, and what it sized."""
    tally: "Tally"
    documents: int
    chunks: list["Chunk"]
    repeats: "Repeats"
    questions: int = 0
    batch: int = 8
    epochs: int = 3
    steps: int = 0
    seconds: float | None = None
    method: str = "cloze"
    train_chunks: int = 0
    """Chunks fine-tuning trains on: the evaluated questions' sources plus a seeded sample."""
    source_chunks: int = 0
    available: int = 0
    """Questions cloze could cut, before the design picked `questions` of them."""
    documents_asked: int = 0
    bf16: bool = False

    @property
    def tokens(self) -> int:
        """Tokens over all chunks."""
        return sum(c.n_tokens for c in self.chunks)

    @property
    def mean_tokens(self) -> float:
        """Mean tokens per chunk."""
        return self.tokens / max(1, len(self.chunks))


def survey(folder: Path, tokenizer: str, skip_bad: bool, log=lambda m: None) -> Survey:
    """Read and chunk the folder exactly as the run's corpus stage will."""
    from kinject.knowledge.corpus import Repeats, chunk_documents
    from kinject.knowledge.readers import Tally
    from kinject.runtime.models import load_tokenizer
    from kinject.tasks.registry import read_source

    if not folder.is_dir():
        raise KinjectError(f"{folder}: not a folder; give the folder that holds your documents")
    tally = Tally()
    docs = list(read_source(str(folder), skip_bad=skip_bad, tally=tally))
    tok, _ = load_tokenizer(tokenizer, log=log)
    repeats = Repeats()
    chunks = chunk_documents(docs, tok, CHUNK_TOKENS, MIN_TOKENS, "merge", repeats)
    return Survey(tally, len(docs), chunks, repeats)


MIN_QUESTIONS, MAX_QUESTIONS = 40, 200
"""The smallest design worth a verdict (a 95% CI of about ±0.15 on an accuracy), and where more
questions stop narrowing it enough to be worth their time."""
KS = (0, 1, 2)
OVERHEAD = 60.0
"""Seconds a run spends outside the cost model: loading models and data, the report."""


def training_blocks(tokens: int, chunks: int) -> int:
    """Blocks fine-tuning will train on, counted as `finetune.pack` cuts them: BOS + chunk + EOS
    concatenated, a short tail dropped unless it is the only block."""
    return max(1, (tokens + 2 * chunks) // BLOCK)


def size_finetune(tokens: int, chunks: int) -> tuple[int, int, int]:
    """(batch, epochs, optimizer steps): the largest batch (≤ 8) and fewest epochs (≥ 3) that give
    at least MIN_STEPS optimizer steps (fewer teach the model almost nothing: the FT arm would be a
    no-op)."""
    blocks = training_blocks(tokens, chunks)
    epochs, batch = 3, 8
    while batch > 1 and math.ceil(blocks / batch) * epochs < MIN_STEPS:
        batch //= 2
    while math.ceil(blocks / batch) * epochs < MIN_STEPS:
        epochs += 1
    return batch, epochs, math.ceil(blocks / batch) * epochs


class Costs:
    """The run's seconds on this machine, by part, at the throughput its matmuls reach now and the
    share of it each kind of work reached in earlier runs here (`kinject run --dry-run`'s model,
    `costs.estimate`; the shares from the default stage cache's rates file, or `measured`):
    fine-tuning in its precision, scoring in fp32, embedding every chunk for the index."""

    def __init__(self, s: Survey, model: str, embedder: str, placement: "Placement", bf16: bool,
                 measured: dict[str, list[float]] | None = None, earlier: Mapping[str, float] | None = None) -> None:
        """`earlier`: matmul peaks read before the documents were (`peaks`), by dtype."""
        from kinject.runtime.costs import Work, estimate, load_rates, rates_file, throughput

        self.s, self.model, self.bf16, self.Work, self.estimate = s, model, bf16, Work, estimate
        measured = load_rates(rates_file()) if measured is None else measured
        earlier = earlier or {}
        train = _train_placement(placement, bf16)
        self.rate = throughput(placement, True, measured, earlier.get(placement.dtype, 0.0))
        self.train_rate = throughput(train, True, measured, earlier.get(train.dtype, 0.0)) if bf16 else self.rate
        embed = estimate(Work("embed", embedder, s.tokens), self.rate).seconds or 0.0
        self.fixed = OVERHEAD + embed

    def score(self, n_questions: int) -> float:
        """Seconds to score `n_questions` under every method and K."""
        per_question = sum(2 * (PROMPT_TOKENS + k * self.s.mean_tokens) for k in KS)  # base|ft, rag|ft+rag
        seconds = self.estimate(self.Work("score", self.model, per_question * n_questions), self.rate).seconds
        if seconds is None:
            raise KinjectError(f"no parameter count for '{self.model}': cannot estimate the run's time")
        return seconds

    def train(self, chunks: int) -> float:
        """Fine-tuning on `chunks` chunks of mean size, epochs sized to reach MIN_STEPS."""
        tokens = int(chunks * self.s.mean_tokens)
        _, epochs, _ = size_finetune(tokens, chunks)
        work = self.Work("train", self.model, (tokens + 2 * chunks) * epochs,
                         dtype="bf16" if self.bf16 else None)
        return self.estimate(work, self.train_rate).seconds or 0.0

    def total(self, n_questions: int, chunks: int) -> float:
        """Seconds for the whole run: fixed work, scoring and fine-tuning on `chunks` chunks."""
        return self.fixed + self.score(n_questions) + self.train(chunks)


def _train_placement(placement: "Placement", bf16: bool) -> "Placement":
    from kinject.runtime.devices import resolve

    return resolve(placement.device, "bf16") if bf16 else placement


def peaks(placement: "Placement", bf16: bool) -> dict[str, float]:
    """The matmul peaks the plan divides by, read once before the documents are and again when
    the plan is made (`Costs`): the better reading counts. On a shared 2-core VM one reading of
    half the peak sized a 15-minute design that ran in 7.2 minutes."""
    from kinject.runtime.devices import matmul_flops

    return {p.dtype: matmul_flops(p) for p in {placement, _train_placement(placement, bf16)}}


def stratified(items: list, chunks: list["Chunk"], seed: int = 0) -> list:
    """The questions in the order a design takes them: round robin over documents (every document
    with questions contributes, none dominates), within a document round robin over answer types,
    each list shuffled by seed."""
    import random

    doc_of = {c.id: c.doc_id for c in chunks}
    by_doc: dict[str, dict[str, list]] = {}
    for it in items:
        doc = doc_of.get(it.source_chunks[0], "") if it.source_chunks else ""
        by_doc.setdefault(doc, {}).setdefault(it.subject or "", []).append(it)
    rng = random.Random(seed)
    queues = []
    for doc in sorted(by_doc):
        kinds = [by_doc[doc][k] for k in sorted(by_doc[doc])]
        for k in kinds:
            rng.shuffle(k)
        mixed = [k[i] for i in range(max(map(len, kinds))) for k in kinds if i < len(k)]
        queues.append(mixed)
    rng.shuffle(queues)
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def sources_of(items: list) -> int:
    """How many distinct chunks the questions were written from (each question's first source)."""
    return len({c for it in items for c in it.source_chunks[:1]})


def design(s: Survey, ordered: list, costs: Costs, budget_min: float) -> tuple[int, int]:
    """(questions, fine-tuning chunks) that fit `budget_min`: the most questions (up to
    MAX_QUESTIONS) whose scoring and source chunks take at most half the time left after the fixed
    part, then as many further chunks to fine-tune on as the rest allows. Refuses, with the minimum
    that would fit, when even MIN_QUESTIONS questions and their sources do not."""
    budget = budget_min * 60
    n_min = min(MIN_QUESTIONS, len(ordered))
    smallest = costs.total(n_min, sources_of(ordered[:n_min]))
    if smallest > budget:
        raise KinjectError(f"--minutes {budget_min:g} is too short for the smallest design worth a verdict "
                           f"({n_min} questions and their {sources_of(ordered[:n_min])} source chunks: "
                           f"≈{smallest / 60:.0f} min on this machine); give --minutes {math.ceil(smallest / 60)} "
                           f"or more")
    half = costs.fixed + (budget - costs.fixed) / 2
    n = n_min
    for cand in range(n_min, min(MAX_QUESTIONS, len(ordered)) + 1, 5):
        if costs.total(cand, sources_of(ordered[:cand])) <= half:
            n = cand
    lo, hi = sources_of(ordered[:n]), len(s.chunks)
    while lo < hi:  # the most chunks that fit
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if costs.total(n, mid) <= budget else (lo, mid - 1)
    return n, lo


def slug(name: str) -> str:
    """A name made safe for a file or run name; "docs" when nothing is left."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "docs"


def _rel(path: Path, base: Path) -> str:
    import os

    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def _align(text: str, column: int = 34) -> str:
    """Put the trailing comments of YAML lines in one column."""
    lines = []
    for line in text.splitlines():
        code, sep, comment = line.partition("  # ")
        if sep and code.strip() and not code.lstrip().startswith("#"):
            line = f"{code.rstrip().ljust(column - 2)}  # {comment.strip()}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def design_sentence(s: Survey) -> str:
    """The design in one sentence, for the config's header and the report."""
    n = len(s.chunks)
    if s.train_chunks >= n:
        return f"FT trains on all {n:,} chunks"
    return (f"FT trains on {s.train_chunks:,} of {n:,} chunks: the {s.questions} questions' {s.source_chunks} "
            f"sources and a random {s.train_chunks - s.source_chunks:,}; full-corpus FT dilutes each fact further, "
            f"so read FT's gain as an upper bound")


def render_config(s: Survey, docs: Path, out: Path, task_file: Path, model: str, embedder: str,
                  budget_min: float, own: str = "") -> str:
    """The commented YAML config of the first run."""
    t = s.tally
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(t.files.items()))
    when = f"≈{s.seconds / 60:.0f} min on this machine" if s.seconds else "see --dry-run"
    name = slug(docs.resolve().name)
    asked = (f"{s.questions} offline cloze questions" if s.method == "cloze"
             else f"{s.questions} questions {s.method}")
    skipped = (f"\n#          {s.repeats.chunks} chunks left out: they repeat other files (a print page, a copy)"
               if s.repeats.chunks else "")
    sampled = s.train_chunks < len(s.chunks)
    train = (f"""  train_on: sample                # the questions' sources + a seeded random sample: fits {budget_min:g} min
  sample:
    size: {s.train_chunks}                     # chunks in all ({len(s.chunks)} in the documents)""" if sampled else
             "  train_on: kb                    # every chunk of the documents (it fits the budget)")
    return _align(f"""# Written by `kinject init {docs}`: should {model} learn these documents by fine-tuning, by
# retrieval (RAG), or both?
#   found: {sum(t.files.values())} files ({kinds}), {t.pages} PDF pages, {s.documents} documents,
#          {len(s.chunks)} chunks of at most {CHUNK_TOKENS} tokens, {s.tokens:,} tokens in all{skipped}
#   design for --minutes {budget_min:g}: {asked} ({task_file.name}) of {s.available} cut,
#          drawn evenly over {s.documents_asked} documents and the answer types;
#          {design_sentence(s)}
#   estimated time: {when} (`kinject run {out.name} --dry-run` prints the plan)
#
#   kinject run {out.name}     # then open runs/{name}/report/report.html
name: {name}
models: [{model}]                 # the model whose knowledge is injected (`kinject assets list`)
retriever: bm25                   # measured on 76 questions written by hand over two real documentation
                                  # folders, with context headers: recall@3 0.85 and 0.79 (BM25), 0.75 and
                                  # 0.75 (hybrid), 0.71 and 0.54 (dense minilm-l6)
embedder: {embedder}              # for `kinject ask`'s checks, and for retriever: dense or hybrid
k: [0, 1, 2]                      # retrieved chunks in the prompt (0 = closed-book)
methods: [base, rag, ft, ft+rag]  # base model, RAG, fine-tuned (FT), fine-tuned with RAG

knowledge_bases:
  docs:
    sources: [{_rel(docs, out.parent)}]   # PDF, HTML, Word, text, markdown; groups.yaml for access groups
    tokenizer: {model}            # chunk ids depend on it: the questions' source chunks use the same

tasks:
  - task: {_rel(task_file, out.parent)}@cloze   # scored on the answer texts (small models sit at chance on letters)
    kb: docs
{own}
finetune:                         # continued pre-training on the documents' chunks
{train}
  lr: [3e-4]
  epochs: {s.epochs}                       # with batch {s.batch}: {s.steps} optimizer steps (at least {MIN_STEPS})
  block_size: {BLOCK}
  batch: {s.batch}
  micro_batch: {min(4, s.batch)}
  bf16: {'true' if s.bf16 else 'false'}                     # {'this CPU computes bf16 in hardware: fine-tuning in bf16 autocast (scoring stays fp32)' if s.bf16 else 'no native bf16 here: fp32'}
  val_fraction: 0
""")


def own_task(task: "Task", path: Path, out: Path) -> str:
    """The person's own questions as a second task of the config (appended to its `tasks:` list)."""
    free = task.fmt == "free"
    shots = min(3, len(task.dev))
    why = ("free form: each arm's generated answers graded against your references" if free
           else "your multiple-choice questions")
    hint = "" if shots or not free else (
        '\n    # no "split": "dev" examples in the file: 0-shot, asked through the model\'s chat template'
        '\n    # where it has one; mark 3 questions "split": "dev" to show the answer format instead')
    return f"""  - task: {_rel(path, out.parent)}   # your own {len(task.items)} questions: {why} (beyond --minutes; --dry-run counts them)
    kb: docs
    shots: [{shots}]{hint}
"""


def make_questions(chunks: list["Chunk"], generator: str | None, log=lambda m: None) -> tuple[list, dict]:
    """Offline cloze questions (no model: a number, date or name blanked), or with a generator
    (`local:NAME`, `openai:…`) the paper's recipe, as `kinject questions` makes them (cached)."""
    if generator is None:
        from kinject.tasks.cloze import cloze_questions

        items = cloze_questions(chunks, per_chunk=2, seed=0)
        return items, {"kind": "questions", "method": "cloze", "chunks": len(chunks), "valid": len(items)}
    from kinject.lm.generators import open_generator
    from kinject.synth.jobs import default_cache
    from kinject.synth.questions import generate_questions

    gen = open_generator(generator, log=log)
    try:
        items, report = generate_questions(chunks, gen, keep=2, candidates=4, cache_path=default_cache())
    finally:
        gen.close()
    return items, report.as_dict()


def _native_bf16(placement: "Placement") -> bool:
    """Fine-tune in bf16 autocast where this CPU computes bf16 in hardware (AVX512-BF16, AMX) or
    the device is a bf16 GPU; scoring stays in the placement's precision (fp32 on a CPU)."""
    from kinject.runtime.devices import probe

    caps = probe()
    return caps.cpu_bf16 if placement.kind == "cpu" else any(g.bf16 for g in caps.gpus) \
        if placement.kind == "cuda" else False


def write_init(docs: Path, out: Path, model: str, embedder: str, placement: "Placement", budget_min: float,
               skip_bad: bool, force: bool, generator: str | None = None, log=lambda m: None,
               questions: Path | None = None) -> Survey:
    """Survey the folder, write the questions and the config; returns what was found and sized.
    `questions`: the person's own task file, checked first and added as a second task."""
    from kinject import __version__
    from kinject.core.fsio import atomic_write_text
    from kinject.experiment.config import load_config
    from kinject.synth.questions import write_task
    from kinject.tasks.registry import load_task

    if out.suffix not in (".yaml", ".yml"):
        raise KinjectError(f"--out {out}: a config file must end in .yaml")
    own = load_task(str(questions)) if questions else None  # a bad file fails before the documents are read
    task_file = out.with_name(out.stem + ".questions.jsonl")
    for path in (out, task_file):
        if path.exists() and not force:
            raise KinjectError(f"{path} exists; pass --force to replace it or choose another --out")
    bf16 = _native_bf16(placement)
    earlier = peaks(placement, bf16)
    s = survey(docs, model, skip_bad, log)
    items, report = make_questions(s.chunks, generator, log)
    if not items:
        repeated = f", {s.repeats.chunks} chunks repeat other files" if s.repeats.chunks else ""
        raise KinjectError(f"{docs}: no question could be made from these documents (cloze needs sentences about "
                           f"their subject with a number, date or name; licence, references, contents and "
                           f"navigation are skipped{repeated}); add documents, name a --generator or write your "
                           f"own task JSONL")
    s.method = "cloze" if generator is None else f"written by {generator}"
    s.available = len(items)
    s.bf16 = bf16
    ordered = stratified(items, s.chunks)
    costs = Costs(s, model, embedder, placement, s.bf16, earlier=earlier)
    n, s.train_chunks = design(s, ordered, costs, budget_min)
    items = ordered[:n]
    s.questions, s.source_chunks = n, sources_of(items)
    s.documents_asked = len({c.doc_id for c in s.chunks if c.id in {x for it in items for x in it.source_chunks[:1]}})
    picked = s.train_chunks
    s.batch, s.epochs, s.steps = size_finetune(int(picked * s.mean_tokens), picked)
    s.seconds = costs.total(n, picked)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_task(task_file, items, report, {"command": "init", "docs": str(docs), "generator": generator,
                                          "kinject_version": __version__})
    atomic_write_text(out, render_config(s, docs, out, task_file, model, embedder, budget_min,
                                         own_task(own, questions, out) if own and questions else ""))
    load_config(out)  # what was written must be a valid config
    return s
