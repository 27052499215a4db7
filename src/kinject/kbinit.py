"""`kinject init DOCS`: a guided first run on the user's own documents.

It reads the folder as a run would (same tokenizer and chunking, so chunk ids match), writes
offline cloze questions cut from those chunks, sizes fine-tuning so it takes enough optimizer
steps to learn anything, estimates the run's time on this machine with the `--dry-run` cost
model, and writes a commented config whose every line says why it is there.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kinject.errors import KinjectError
from kinject.hyper import MIN_STEPS

if TYPE_CHECKING:
    from kinject.corpus import Chunk, Repeats
    from kinject.devices import Placement
    from kinject.readers import Tally

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
    limit: int | None = None
    seconds: float | None = None
    method: str = "cloze"

    @property
    def tokens(self) -> int:
        return sum(c.n_tokens for c in self.chunks)


def survey(folder: Path, tokenizer: str, skip_bad: bool, log=lambda m: None) -> Survey:
    """Read and chunk the folder exactly as the run's corpus stage will."""
    from kinject.corpus import Repeats, chunk_documents
    from kinject.models import load_tokenizer
    from kinject.readers import Tally
    from kinject.registry import read_source

    if not folder.is_dir():
        raise KinjectError(f"{folder}: not a folder; give the folder that holds your documents")
    tally = Tally()
    docs = list(read_source(str(folder), skip_bad=skip_bad, tally=tally))
    tok, _ = load_tokenizer(tokenizer, log=log)
    repeats = Repeats()
    chunks = chunk_documents(docs, tok, CHUNK_TOKENS, MIN_TOKENS, "merge", repeats)
    return Survey(tally, len(docs), chunks, repeats)


def training_blocks(s: Survey) -> int:
    """Blocks fine-tuning will train on, counted as `finetune.pack` cuts them: BOS + chunk + EOS
    concatenated, a short tail dropped unless it is the only block."""
    return max(1, (s.tokens + 2 * len(s.chunks)) // BLOCK)


def size_finetune(s: Survey) -> None:
    """The largest batch (≤ 8) and fewest epochs (≥ 3) that give at least MIN_STEPS optimizer steps
    (fewer teach the model almost nothing: the FT arm would be a no-op)."""
    blocks = training_blocks(s)
    s.epochs, s.batch = 3, 8
    while s.batch > 1 and math.ceil(blocks / s.batch) * s.epochs < MIN_STEPS:
        s.batch //= 2
    while math.ceil(blocks / s.batch) * s.epochs < MIN_STEPS:
        s.epochs += 1
    s.steps = math.ceil(blocks / s.batch) * s.epochs


def estimate_seconds(s: Survey, model: str, placement: "Placement", ks: tuple[int, ...], n_questions: int) -> float:
    """Fine-tuning on every chunk plus scoring each question under base, RAG, FT and FT+RAG at
    every K, at the throughput this machine's matmul reaches now (`kinject run --dry-run`'s model)."""
    from kinject.costs import Work, estimate, throughput

    rate = throughput(placement, True)
    mean_chunk = s.tokens / max(1, len(s.chunks))
    per_question = sum(2 * (PROMPT_TOKENS + k * mean_chunk) for k in ks)  # (base|ft) and (rag|ft+rag) per K
    train = estimate(Work("train", model, s.tokens * s.epochs), rate).seconds
    score = estimate(Work("score", model, per_question * n_questions), rate).seconds
    embed = estimate(Work("embed", "minilm", s.tokens + n_questions * PROMPT_TOKENS), rate).seconds
    if train is None or score is None:
        raise KinjectError(f"no parameter count for '{model}': cannot estimate the run's time")
    return train + score + (embed or 0) + 30  # + loading models, building the index, the report


def slug(name: str) -> str:
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


def render_config(s: Survey, docs: Path, out: Path, task_file: Path, model: str, embedder: str,
                  budget_min: float) -> str:
    """The commented YAML config of the first run."""
    t = s.tally
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(t.files.items()))
    limit = f"limit: {s.limit}                  # questions per answer type, to fit ~{budget_min:g} min" \
        if s.limit else "# limit: 10                  # questions per answer type: a smaller, faster slice"
    when = f"≈{s.seconds / 60:.0f} min on this machine" if s.seconds else "see --dry-run"
    name = slug(docs.resolve().name)
    asked = (f"{s.questions} offline cloze questions cut from those chunks" if s.method == "cloze"
             else f"{s.questions} questions on those chunks, {s.method}")
    return _align(f"""# Written by `kinject init {docs}`: should {model} learn these documents by fine-tuning, by
# retrieval (RAG), or both?
#   found: {sum(t.files.values())} files ({kinds}), {t.pages} PDF pages, {s.documents} documents,
#          {len(s.chunks)} chunks of at most {CHUNK_TOKENS} tokens, {s.tokens:,} tokens in all
#   questions: {asked} ({task_file.name})
#   estimated time: {when} (`kinject run {out.name} --dry-run` prints the plan)
#
#   kinject run {out.name}     # then open runs/{name}/report/report.html
name: {name}
models: [{model}]                 # the model whose knowledge is injected (`kinject assets list`)
embedder: {embedder}              # RAG's retriever
k: [0, 1, 2]                      # retrieved chunks in the prompt (0 = closed-book)
methods: [base, rag, ft, ft+rag]  # base model, RAG, fine-tuned (FT), fine-tuned with RAG

knowledge_bases:
  docs:
    sources: [{_rel(docs, out.parent)}]   # PDF, HTML, Word, text, markdown; groups.yaml for access groups
    tokenizer: {model}            # chunk ids depend on it: the questions' source chunks use the same

tasks:
  - task: {_rel(task_file, out.parent)}@cloze   # scored on the answer texts (small models sit at chance on letters)
    kb: docs
    {limit}

finetune:                         # continued pre-training on every chunk of the documents
  train_on: kb
  lr: [3e-4]
  epochs: {s.epochs}                       # with batch {s.batch}: {s.steps} optimizer steps (at least {MIN_STEPS})
  block_size: {BLOCK}
  batch: {s.batch}
  micro_batch: {min(4, s.batch)}
  val_fraction: 0
""")


def make_questions(chunks: list["Chunk"], generator: str | None, log=lambda m: None) -> tuple[list, dict]:
    """Offline cloze questions (no model: a number, date or name blanked), or with a generator
    (`local:NAME`, `openai:…`) the paper's recipe, as `kinject questions` makes them (cached)."""
    if generator is None:
        from kinject.cloze import cloze_questions

        items = cloze_questions(chunks, per_chunk=2, seed=0)
        return items, {"kind": "questions", "method": "cloze", "chunks": len(chunks), "valid": len(items)}
    from kinject.generators import open_generator
    from kinject.questions import generate_questions
    from kinject.synthjobs import default_cache

    gen = open_generator(generator, log=log)
    try:
        items, report = generate_questions(chunks, gen, keep=2, candidates=4, cache_path=default_cache())
    finally:
        gen.close()
    return items, report.as_dict()


def write_init(docs: Path, out: Path, model: str, embedder: str, placement: "Placement", budget_min: float,
               skip_bad: bool, force: bool, generator: str | None = None, log=lambda m: None) -> Survey:
    """Survey the folder, write the questions and the config; returns what was found and sized."""
    from kinject import __version__
    from kinject.config import load_config
    from kinject.fsio import atomic_write_text
    from kinject.questions import write_task

    if out.suffix not in (".yaml", ".yml"):
        raise KinjectError(f"--out {out}: a config file must end in .yaml")
    task_file = out.with_name(out.stem + ".questions.jsonl")
    for path in (out, task_file):
        if path.exists() and not force:
            raise KinjectError(f"{path} exists; pass --force to replace it or choose another --out")
    s = survey(docs, model, skip_bad, log)
    items, report = make_questions(s.chunks, generator, log)
    if not items:
        raise KinjectError(f"{docs}: no question could be made from these documents (cloze needs sentences with a "
                           f"number, date or name); name a --generator or write your own task JSONL")
    s.method = "cloze" if generator is None else f"written by {generator}"
    s.questions = len(items)
    size_finetune(s)
    per_kind: dict[str, int] = {}
    for it in items:
        per_kind[it.subject or ""] = per_kind.get(it.subject or "", 0) + 1
    s.seconds = estimate_seconds(s, model, placement, (0, 1, 2), len(items))
    if s.seconds > budget_min * 60:  # a slice: fewer questions per answer type, fine-tuning unchanged
        fixed = estimate_seconds(s, model, placement, (0, 1, 2), 0)
        share = max(0.0, (budget_min * 60 - fixed) / max(1e-9, s.seconds - fixed))
        s.limit = max(5, int(max(per_kind.values()) * share))
        kept = sum(min(n, s.limit) for n in per_kind.values())
        s.seconds = estimate_seconds(s, model, placement, (0, 1, 2), kept)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_task(task_file, items, report, {"command": "init", "docs": str(docs), "generator": generator,
                                          "kinject_version": __version__})
    atomic_write_text(out, render_config(s, docs, out, task_file, model, embedder, budget_min))
    load_config(out)  # what was written must be a valid config
    return s
