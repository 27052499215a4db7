"""Stage builders: what each node of a run's graph computes, given its inputs and output folder.

corpus (read + chunk), index (embed + FAISS), paraphrase (a generator), finetune (in process or
under a launcher) and eval (in process or data parallel under a launcher). Each writes its
output folder atomically; `planning` decides which to run and with what.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from kinject import __version__
from kinject.config import Config, FinetuneConfig, KBConfig
from kinject.devices import Placement
from kinject.errors import KinjectError


def build_corpus_stage(kb: KBConfig, sources: Sequence[str], tokenizer: str, out: Path) -> None:
    from kinject.corpus import build_corpus
    from kinject.models import load_tokenizer
    from kinject.registry import read_source

    tok, context = load_tokenizer(tokenizer)
    docs = (d for s in sources for d in read_source(s, kb.topics, kb.titles, kb.keywords))
    build_corpus(docs, tok, out, max_tokens=kb.chunk_tokens, min_tokens=kb.min_tokens, small=kb.small,
                 tokenizer_ref=tokenizer, context_limit=context)


def build_index_stage(corpus: Path, embedder: str, kind: str, placement: Placement, out: Path) -> None:
    from kinject.retrieval import Embedder, build_index

    build_index(corpus, Embedder(embedder, placement=placement), out, kind)  # type: ignore[arg-type]


def select_chunks(corpus: Path, sources: Sequence[str]) -> list:
    from kinject.corpus import read_chunks

    chunks = read_chunks(corpus)
    if not sources:
        return chunks
    wanted = set(sources)
    picked = [c for c in chunks if c.id in wanted or c.doc_id in wanted]
    if not picked:
        raise KinjectError(f"{corpus}: none of the questions' source chunks is in this knowledge base; "
                           f"use finetune.train_on: kb")
    return picked


def paraphrase_stage(corpus: Path, sources: Sequence[str], generator: str, n: int, seed: int, placement: Placement,
                cache: Path, out: Path, console: Console) -> None:
    from kinject.console import BarRow, progress_bar
    from kinject.generators import open_generator
    from kinject.paraphrase import paraphrase_corpus, write_paraphrase_dir

    chunks = select_chunks(corpus, sources)
    gen = open_generator(generator, device=placement.device, dtype=placement.dtype)
    try:
        with progress_bar(console, "rounds") as bar:
            row = BarRow(bar, f"paraphrasing ×{n}")
            paraphrases, report = paraphrase_corpus(
                chunks, gen, n, cache / "paraphrase-cache.sqlite", seed=seed, progress=row.advance, total=row.total)
    finally:
        gen.close()
    if report.unfinished:  # never cache a stage the generator did not finish; finished rounds are cached
        raise KinjectError(f"{report.unfinished} paraphrase rounds got no reply from '{generator}' "
                           f"(endpoint errors: {report.generator_stats}); rerun to ask for those again")
    write_paraphrase_dir(out, paraphrases, report, {"generator": generator, "n": n, "seed": seed,
                                                    "corpus": str(corpus), "kinject_version": __version__})


def finetune_stage(model: str, corpus: Path, sources: Sequence[str], paraphrases: Path | None, method: str, seed: int,
              ft: FinetuneConfig, placement: Placement, out: Path, console: Console) -> None:
    from kinject.console import BarRow, progress_bar
    from kinject.finetune import search_lr
    from kinject.hyper import TrainConfig

    texts = [c.text for c in select_chunks(corpus, sources)]
    if paraphrases is not None:
        import pyarrow.parquet as pq

        texts += [t for t in pq.read_table(paraphrases / "paraphrases.parquet").column("text").to_pylist() if t]
    cfg = TrainConfig.of(ft, method=method, seed=seed, device=placement.device)
    if ft.launch:
        from kinject.finetune import write_job

        job = out.parent / f"{out.name}.job.json"
        write_job(job, model, texts, cfg, ft.lr)
        _launch(ft.launch, ["kinject.finetune", str(job), str(out)], "fine-tuning", console,
                "rerun to resume from the last checkpoint")
        return
    with progress_bar(console, "steps") as bar:
        search_lr(model, texts, out, cfg, ft.lr, resume=out.exists(),
                  log=lambda m: console.print(f"[dim]·[/dim] {m}", highlight=False),
                  progress=BarRow(bar, f"fine-tuning ({method})").update)


def _launch(launcher: str, module_args: list[str], what: str, console: Console, hint: str) -> None:
    """Run `python -m <module_args>` under a launcher (Accelerate); its input errors stay one line."""
    import shlex
    import subprocess

    cmd = [*shlex.split(launcher), "-m", *module_args]
    console.print(f"[dim]·[/dim] {' '.join(cmd)}", highlight=False)
    code = subprocess.run(cmd).returncode
    if code == 2:  # the launched command printed the input error as one line
        raise KinjectError(f"{what} under '{launcher}' stopped on an input error (above); fix it and rerun")
    if code != 0:
        raise KinjectError(f"{what} under '{launcher}' failed (its output is above); {hint}")


def eval_stage(model: str, task: str, limit: int | None, shots: int, index: Path | None, ks: list[int], cfg: Config,
          out: Path, console: Console) -> None:
    if cfg.evaluation.launch:  # data parallel: the same `kinject eval`, sharded over the processes
        args = ["kinject", "eval", "--model", model, "--task", task, "--shots", str(shots),
                "--batch-size", str(cfg.batch_size), "--device", cfg.device, "--dtype", cfg.dtype,
                "--backend", cfg.backend, "--out", str(out)]
        args += ["--limit", str(limit)] if limit else []
        args += ["--rag", str(index), "--k", ",".join(map(str, ks)), "--retriever", cfg.retriever] if index else []
        _launch(cfg.evaluation.launch, args, "evaluation", console, "rerun it")
        return
    from kinject.evaluation import run_eval

    run_eval(model, [task], shots, limit, cfg.batch_size, out, console, rag=index, ks=ks,
             retriever_kind=cfg.retriever, device=cfg.device, dtype=cfg.dtype, backend=cfg.backend)
