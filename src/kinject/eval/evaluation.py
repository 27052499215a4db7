"""`kinject eval`: load a model, score tasks, write results.json + samples JSONL atomically."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console

from kinject import __version__
from kinject.core.console import progress_bar
from kinject.core.fsio import atomic_dir, check_new_output, writing
from kinject.core.stats import paired_bootstrap
from kinject.eval.freeform import answer_task, summarize_free
from kinject.eval.results import samples_file
from kinject.knowledge.corpus import citation
from kinject.lm.backends import Backend, open_backend
from kinject.lm.scoring import Record, evaluate, summarize
from kinject.rag.retrieval import Hit, RetrieverKind, contextual, open_retriever, retrieval_quality
from kinject.tasks.registry import load_task
from kinject.tasks.task import check_shots, select


def write_samples(path: Path, records: list[Record]) -> None:
    """Write scored questions as JSON lines, with their acc and acc_norm."""
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps({**asdict(r), "acc": r.acc, "acc_norm": r.acc_norm}, ensure_ascii=False) + "\n")


@dataclass(frozen=True)
class EvalSpec:
    """What one evaluation scores, and how: `kinject eval`'s options and a run's eval stage build
    the same spec, and a launcher gets it back as the command line (`argv`), so the three agree."""

    model: str
    tasks: tuple[str, ...]
    shots: int = 0
    limit: int | None = None
    batch_size: int = 8
    rag: Path | None = None
    """An index folder: the top-K retrieved chunks go before each question."""
    ks: tuple[int, ...] = (0,)
    retriever: RetrieverKind = "dense"
    groups: tuple[str, ...] | None = None
    device: str = "auto"
    dtype: str = "auto"
    backend: str | None = None

    def argv(self, out: Path) -> list[str]:
        """The `kinject eval` command line that scores this spec into `out` (what a launcher runs
        on every process)."""
        args = ["kinject", "eval", "--model", self.model, *(a for t in self.tasks for a in ("--task", t)),
                "--shots", str(self.shots), "--batch-size", str(self.batch_size), "--device", self.device,
                "--dtype", self.dtype, "--backend", self.backend or "hf", "--out", str(out)]
        args += ["--limit", str(self.limit)] if self.limit else []
        if self.rag:
            args += ["--rag", str(self.rag), "--k", ",".join(map(str, self.ks)), "--retriever", self.retriever]
            args += ["--groups", ",".join(self.groups)] if self.groups else []
        return args


def run_eval(spec: EvalSpec, out_dir: Path, console: Console) -> dict:
    """Evaluate each task (with RAG: once per K); the output folder appears only when complete.

    Under `accelerate launch` every process runs this: the backend shards the questions and
    gathers the scores, and only the main process writes (its files equal a single process's).
    Returns the summary (empty on the other processes)."""
    check_new_output(out_dir)
    tasks = [load_task(t) for t in spec.tasks]  # fail on a bad task before loading the model
    for task in tasks:
        check_shots(task, spec.shots)
    ks = sorted(set(spec.ks or (0,))) if spec.rag else [0]
    retriever = open_retriever(spec.rag, spec.retriever, device=spec.device) if spec.rag else None
    lm: Backend = open_backend(spec.backend, spec.model, device=spec.device, dtype=spec.dtype,
                               batch_size=spec.batch_size, log=lambda m: console.print(f"[dim]·[/dim] {m}"))
    engine = lm.describe()
    summary: dict = {"model": spec.model, "shots": spec.shots, "limit": spec.limit, "batch_size": spec.batch_size,
                     "dtype": engine["dtype"], "device": engine["device"], "engine": engine,
                     "rag": str(spec.rag) if spec.rag else None, "retriever": spec.retriever if spec.rag else None,
                     "kinject_version": __version__, "tasks": {}, "retrieval": {}, "rag_gain": {}}
    samples: dict[str, list[Record]] = {}
    for task in tasks:
        items = select(task, spec.limit)
        hits: list[list[Hit]] = [[] for _ in items]
        if retriever is not None and max(ks) > 0:
            with console.status(f"retrieving top-{max(ks)} for {len(items)} questions"):
                hits = retriever.search([it.question.strip() for it in items], max(ks),
                                          list(spec.groups) if spec.groups else None)
            quality = retrieval_quality(hits, [it.source_chunks for it in items], ks)
            if quality:
                summary["retrieval"][task.name] = quality
        for k in ks:
            name = task.name if retriever is None else f"{task.name} +rag@{k}"
            show = contextual if retriever is not None and retriever.context_header else (lambda c: c.text)
            passages = [[(h.chunk.id, show(h.chunk)) for h in row[:k]] for row in hits]
            with progress_bar(console, "q", disable=not lm.is_main) as bar:
                job = bar.add_task(name, total=len(items))
                started = time.perf_counter()
                if task.fmt == "free":
                    records = answer_task(lm, task, spec.shots, spec.limit, passages, spec.batch_size,
                                          progress=lambda n: bar.advance(job, n))
                else:
                    records = evaluate(lm, task, spec.shots, spec.limit, passages=passages,
                                       progress=lambda n: bar.advance(job, n))
                seconds = time.perf_counter() - started
            if k > 0:  # each retrieved chunk's file, pages and section beside its id
                records = [replace(r, cited=tuple(citation(h.chunk) for h in row[:k])) for r, row in zip(records, hits)]
            result = summarize(records)
            if task.fmt == "free":
                result["free"] = summarize_free(records)
            subjects = sorted({r.subject for r in records if r.subject})
            if len(subjects) > 1:
                result["subjects"] = {s: summarize([r for r in records if r.subject == s]) for s in subjects}
            result.update(k=k, seconds=seconds, questions_per_s=len(records) / seconds)
            summary["tasks"][name] = result
            samples[name] = records
            if retriever is not None and k > 0 and 0 in ks:
                base = samples[f"{task.name} +rag@0"]
                summary["rag_gain"].setdefault(task.name, {})[str(k)] = {
                    "acc": paired_bootstrap([r.acc for r in base], [r.acc for r in records]),
                    "acc_norm": paired_bootstrap([r.acc_norm for r in base], [r.acc_norm for r in records])}

    def write(tmp: Path) -> None:
        for name, records in samples.items():
            write_samples(tmp / samples_file(name), records)
        (tmp / "results.json").write_text(json.dumps(summary, indent=2))

    lm.close()
    if not lm.is_main:
        return {}
    with writing(out_dir):
        atomic_dir(out_dir, write)
    return summary
