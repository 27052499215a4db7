"""Commands that make training material and train: `kinject finetune` (continued pre-training,
LoRA, LR search), `kinject paraphrase` and `kinject questions` (synthetic data, resumable)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from kinject.cli.app import (
    app,
    console,
    note,
    out,
    placement_for,
)
from kinject.core.errors import KinjectError, error_line
from kinject.runtime.catalog import DEFAULT_LM
from kinject.runtime.devices import DEVICE_HELP, DTYPE_HELP
from kinject.runtime.hyper import Hyper

if TYPE_CHECKING:
    from kinject.knowledge.corpus import Chunk
    from kinject.synth.synthesis import Synthesis


@app.command()
def finetune(
    corpus: Annotated[Path, typer.Option(help="Corpus folder from `kinject corpus build`.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder: model/, log.jsonl, loss.png, summary.json "
                                                        "(several --lr: one lr-<lr>/ run each, model/ of the best, "
                                                        "summary.json with each final validation loss).")],
    model: Annotated[str, typer.Option(help="LM to fine-tune: catalog name, local folder, or hub id.")]
    = DEFAULT_LM,
    extra_texts: Annotated[Optional[Path], typer.Option(help="Parquet/JSONL with a 'text' column, or a "
                                                             "`kinject paraphrase` folder: texts trained on "
                                                             "alongside the chunks.")] = None,
    lr: Annotated[str, typer.Option(help="Learning rate, or a comma list to search (best validation loss wins).")]
    = "1e-5",
    epochs: Annotated[int, typer.Option(help=Hyper.help("epochs"))] = Hyper.default("epochs"),
    block_size: Annotated[int, typer.Option(help=Hyper.help("block_size"))] = Hyper.default("block_size"),
    batch: Annotated[int, typer.Option(help=Hyper.help("batch"))] = Hyper.default("batch"),
    micro_batch: Annotated[int, typer.Option(help=Hyper.help("micro_batch"))] = Hyper.default("micro_batch"),
    warmup_ratio: Annotated[float, typer.Option(help=Hyper.help("warmup_ratio"))] = Hyper.default("warmup_ratio"),
    weight_decay: Annotated[float, typer.Option(help=Hyper.help("weight_decay"))] = Hyper.default("weight_decay"),
    method: Annotated[str, typer.Option(help="full or lora (peft; the merged model is written too).")] = "full",
    lora_r: Annotated[int, typer.Option(help=Hyper.help("lora_r"))] = Hyper.default("lora_r"),
    bf16: Annotated[bool, typer.Option("--bf16", help=Hyper.help("bf16"))] = Hyper.default("bf16"),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (under `accelerate launch`, each "
                                             "process takes its own GPU).")] = "auto",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing",
                                                         help=Hyper.help("gradient_checkpointing"))]
    = Hyper.default("gradient_checkpointing"),
    compile: Annotated[bool, typer.Option("--compile", help=Hyper.help("compile"))] = Hyper.default("compile"),
    save_every: Annotated[int, typer.Option(help=Hyper.help("save_every"))] = Hyper.default("save_every"),
    val_fraction: Annotated[float, typer.Option(help=Hyper.help("val_fraction"))] = Hyper.default("val_fraction"),
    seed: Annotated[int, typer.Option(help="Seed for data order and initialisation.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run in --out from its checkpoint.")]
    = False,
) -> None:
    """Continued pre-training on a corpus (the paper's FT-reg; with --extra-texts, FT-par)."""
    from kinject.core.console import BarRow, progress_bar
    from kinject.knowledge.corpus import read_chunks
    from kinject.runtime.hyper import TrainConfig
    from kinject.train.finetune import search_lr

    if method not in ("full", "lora"):
        raise KinjectError(f"--method must be full or lora, got '{method}'")
    try:
        lrs = [float(v) for v in lr.split(",") if v.strip()]
    except ValueError:
        raise KinjectError(f"--lr must be a number or a comma list of numbers, got '{lr}'") from None
    placement = placement_for(device, "bf16" if bf16 else "fp32")
    texts = [c.text for c in read_chunks(corpus)]
    if extra_texts is not None:
        texts += _read_texts(extra_texts)
    # not validated here: `train` checks every bound and names the option that breaks one
    cfg = TrainConfig.model_construct(
        epochs=epochs, block_size=block_size, batch=batch, micro_batch=micro_batch, warmup_ratio=warmup_ratio,
        weight_decay=weight_decay, lora_r=lora_r, bf16=bf16, gradient_checkpointing=gradient_checkpointing,
        compile=compile, save_every=save_every, val_fraction=val_fraction, lr=lrs[0] if lrs else 1e-5, method=method, seed=seed,
        device=placement.device)
    # under `accelerate launch` every process runs this command; only rank 0 draws the bar
    with progress_bar(console, "steps", disable=os.environ.get("RANK", "0") != "0") as bar:
        summary = search_lr(model, texts, out_dir, cfg, lrs, resume, log=note,
                            progress=BarRow(bar, f"fine-tuning ({method})").update)
    if not summary:  # a non-main process under `accelerate launch`
        return
    out.print(json.dumps(summary.get("runs") or {k: summary[k] for k in ("steps", "final_loss", "val")}),
              soft_wrap=True)
    out.print(f"model: {out_dir / 'model'}", soft_wrap=True)


def _read_texts(path: Path) -> list[str]:
    from kinject.core.fsio import read_text

    if path.is_dir() and (path / "paraphrases.parquet").is_file():  # a `kinject paraphrase` folder
        path = path / "paraphrases.parquet"
    if path.suffix == ".parquet" and path.is_file():
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - any Arrow error means an unreadable file
            raise KinjectError(f"{path}: unreadable Parquet ({error_line(exc)})") from None
        if "text" not in table.column_names:
            raise KinjectError(f"{path}: no 'text' column")
        texts = table.column("text").to_pylist()
        if not all(isinstance(t, str) for t in texts):
            raise KinjectError(f"{path}: column 'text' must hold strings")
        return [t for t in texts if t.strip()]
    texts = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):
                text = None
            if not isinstance(text, str):
                raise KinjectError(f"{path}:{n}: expected a JSON object with a string field 'text'")
            texts.append(text)
    return texts


_GEN_HELP = ("Generator: local[:MODEL] (an HF instruct model run here; default qwen2.5-0.5b) or "
             "openai:BASE_URL or openai:BASE_URL#MODEL (any OpenAI-compatible endpoint: vLLM, llama.cpp, "
             "Ollama, `kinject serve`, a hosted API; without #MODEL the server's first model), or openai:MODEL (base URL from $KINJECT_API_BASE / $OPENAI_BASE_URL). "
             "Key from $KINJECT_API_KEY or $OPENAI_API_KEY.")


# the generator options `paraphrase` and `questions` share
GenBatch = Annotated[int, typer.Option(min=1, help="local: prompts per generate() batch.")]
GenDevice = Annotated[str, typer.Option(help="local: " + DEVICE_HELP)]
GenDType = Annotated[str, typer.Option(help="local: " + DTYPE_HELP)]
GenConcurrency = Annotated[int, typer.Option(min=1, help="openai: requests in flight.")]
GenTimeout = Annotated[float, typer.Option(min=0.1, help="openai: seconds per request.")]
GenRetries = Annotated[int, typer.Option(min=0, help="openai: retries per request (backoff) on connection errors, "
                                                     "timeouts, 429, 5xx.")]


def _synthesis(generator: str, cache: Optional[Path], seed: int, temperature: Optional[float], max_attempts: int,
               batch_size: int, device: str, dtype: str, concurrency: int, timeout: float,
               max_retries: int) -> Synthesis:
    """The generator options `paraphrase` and `questions` share, as one `Synthesis`."""
    from kinject.lm.generators import GeneratorOptions
    from kinject.synth.jobs import default_cache
    from kinject.synth.synthesis import Synthesis

    options = GeneratorOptions(concurrency=concurrency, timeout=timeout, max_retries=max_retries,
                               batch_size=batch_size, device=device, dtype=dtype)
    return Synthesis(generator, cache or default_cache(), seed, options, temperature, max_attempts)


def _synth_chunks(corpus: Path, limit: Optional[int]) -> tuple[list[Chunk], list[Chunk]]:
    """The first `limit` chunks (all without one), and every chunk of the corpus."""
    from kinject.knowledge.corpus import read_chunks

    every = read_chunks(corpus)
    return (every[:limit] if limit is not None else every), every


def _print_yield(report: dict) -> None:
    rejected = ", ".join(f"{k} {v}" for k, v in report["rejected"].items()) or "none"
    g = report["generator_stats"]
    out.print(f"yield: {report['valid']} valid of {report['asked']} asked ({(report['yield'] or 0):.0%}) from "
              f"{report['chunks']} chunks ({report['empty_chunks']} empty skipped); rejected: {rejected}; "
              f"{report['attempts']} prompts ({report['retried']} retried, {report['no_reply']} without reply, "
              f"{report['from_cache']} units cached); generator: {g['requests']} requests, {g['retries']} retries, "
              f"{g['failures']} failures, {g['skipped']} skipped {g['errors'] or ''}; {report['seconds']}s",
              soft_wrap=True, highlight=False)


def _unfinished(report: dict, unit: str) -> None:
    if report["unfinished"]:
        raise KinjectError(f"{report['unfinished']} {unit} got no reply from the generator "
                           f"({report['generator_stats']['errors']}); the output holds everything else and the "
                           f"cache keeps it: rerun the same command to resume")


@app.command()
def paraphrase(
    corpus: Annotated[Path, typer.Option(help="Corpus folder from `kinject corpus build`.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write: paraphrases.parquet (text, chunk_id, "
                                                        "round, ...; give it to `finetune --extra-texts`), "
                                                        "report.json (yield), meta.json.")],
    n: Annotated[int, typer.Option(min=1, help="Paraphrases per chunk (paper: 10 for current events).")] = 10,
    generator: Annotated[str, typer.Option(help=_GEN_HELP)] = "local:qwen2.5-0.5b",
    per_round: Annotated[int, typer.Option(min=1, help="Paraphrases asked per request; each round has its own "
                                                       "seed.")] = 1,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Only the first N chunks.")] = None,
    seed: Annotated[int, typer.Option(help="Base seed; round r, attempt a sample under a seed derived from it.")]
    = 0,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="Sampling temperature.")] = 0.7,
    max_attempts: Annotated[int, typer.Option(min=1, help="Requests per round while its reply is unusable.")] = 3,
    cache: Annotated[Optional[Path], typer.Option(help="SQLite cache of finished rounds (default "
                                                       "$KINJECT_HOME/cache/synth.sqlite).")] = None,
    batch_size: GenBatch = 4,
    device: GenDevice = "auto",
    dtype: GenDType = "auto",
    concurrency: GenConcurrency = 4,
    timeout: GenTimeout = 120.0,
    max_retries: GenRetries = 4,
) -> None:
    """Paraphrase every chunk N times (the paper's FT-par data): validated, retried, cached, resumable;
    the paraphrases a run's ft-par stage makes of the same chunks."""
    from kinject import __version__ as version
    from kinject.core.fsio import check_replaceable
    from kinject.synth.paraphrase import PARAPHRASE_FILES, write_paraphrase_dir
    from kinject.synth.synthesis import paraphrase_chunks

    check_replaceable(out_dir, "paraphrase folder", PARAPHRASE_FILES)  # before hours of generation
    chunks, _ = _synth_chunks(corpus, limit)
    how = _synthesis(generator, cache, seed, temperature, max_attempts, batch_size, device, dtype, concurrency,
                     timeout, max_retries)
    paraphrases, rep = paraphrase_chunks(chunks, how, n, console, per_round=per_round, log=note)
    report = rep.as_dict()
    meta = {"command": "paraphrase", "corpus": str(corpus), "generator": generator, "n": n, "per_round": per_round,
            "limit": limit, "seed": seed, "temperature": temperature, "max_attempts": max_attempts,
            "kinject_version": version}
    write_paraphrase_dir(out_dir, paraphrases, rep, meta)
    _print_yield(report)
    out.print(f"{len(paraphrases)} paraphrases → {out_dir / 'paraphrases.parquet'}", soft_wrap=True)
    _unfinished(report, "rounds")


@app.command()
def questions(
    corpus: Annotated[Path, typer.Option(help="Corpus folder from `kinject corpus build`.")],
    out_file: Annotated[Path, typer.Option("--out", help="Task file to write (.jsonl, for `kinject eval --task`); "
                                                         "the yield report goes next to it (.report.json).")],
    method: Annotated[str, typer.Option(help="llm (the paper's recipe, with --generator) or cloze (offline, "
                                             "deterministic: a date, number or name blanked).")] = "llm",
    generator: Annotated[str, typer.Option(help=_GEN_HELP)] = "local:qwen2.5-0.5b",
    keep: Annotated[int, typer.Option(min=1, help="Questions kept per chunk (paper: 2 of 4; cloze: per chunk).")]
    = 2,
    candidates: Annotated[int, typer.Option(min=1, help="llm: questions written per chunk before the generator "
                                                        "keeps the most specific (paper: 4).")] = 4,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Only the first N chunks.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for sampling and for the balanced answer positions.")] = 0,
    temperature: Annotated[Optional[float], typer.Option(min=0.0, max=2.0, help="llm: sampling temperature "
                                                                                "(default 0.7; with --pairs "
                                                                                "0.3).")] = None,
    max_attempts: Annotated[int, typer.Option(min=1, help="llm: requests per chunk while fewer than --keep "
                                                          "questions are valid.")] = 3,
    cache: Annotated[Optional[Path], typer.Option(help="SQLite cache of finished chunks (default "
                                                       "$KINJECT_HOME/cache/synth.sqlite).")] = None,
    batch_size: GenBatch = 4,
    device: GenDevice = "auto",
    dtype: GenDType = "auto",
    concurrency: GenConcurrency = 4,
    timeout: GenTimeout = 120.0,
    max_retries: GenRetries = 4,
    pairs: Annotated[bool, typer.Option("--pairs", help="Write training QA pairs (question, answer, chunk_id; "
                                                        "for finetune.pairs of sft/raft) instead of a task: every "
                                                        "fact of a chunk, up to --keep per chunk; the pairs a "
                                                        "run's pairs stage makes of the same chunks.")] = False,
    exclude: Annotated[Optional[list[str]], typer.Option(help="With --pairs: a task whose evaluated questions no "
                                                              "pair may state (e.g. newfacts); repeatable.")] = None,
    free_form: Annotated[bool, typer.Option("--free-form", help="Write a free-form task (question and reference "
                                                                "answer: the blanked span with cloze, the gold option "
                                                                "with llm), graded on generated answers.")] = False,
) -> None:
    """Write a multiple-choice task from a corpus (each question tied to its source chunk, answers balanced A-D),
    with --free-form a task of questions and reference answers, or with --pairs the question-answer pairs
    supervised fine-tuning trains on."""
    from kinject import __version__ as version
    from kinject.synth.questions import generate_questions, write_task
    from kinject.synth.synthesis import generating, where

    if method not in ("llm", "cloze"):
        raise KinjectError(f"--method must be llm or cloze, got '{method}'")
    if out_file.suffix != ".jsonl":
        raise KinjectError(f"--out {out_file}: a task file must end in .jsonl")
    if out_file.exists() and not out_file.with_suffix(".report.json").is_file():  # not one of ours: keep it
        raise KinjectError(f"--out {out_file} exists and was not written by `kinject questions` (no "
                           f"{out_file.with_suffix('.report.json').name} beside it); choose another --out")
    if exclude and not pairs:
        raise KinjectError("--exclude applies to --pairs only (a task's questions are new items)")
    if free_form and pairs:
        raise KinjectError("--free-form writes a task; --pairs writes training pairs: give one of them")
    chunks, every = _synth_chunks(corpus, limit)
    how = _synthesis("cloze" if method == "cloze" else generator, cache, seed, temperature, max_attempts, batch_size,
                     device, dtype, concurrency, timeout, max_retries)
    meta = {"command": "questions", "corpus": str(corpus), "method": method, "keep": keep, "limit": limit,
            "seed": seed, "kinject_version": version}
    if pairs:
        _write_pairs(chunks, every, out_file, keep, exclude or [], how, meta)
        return
    if method == "cloze":
        from kinject.tasks.cloze import cloze_questions

        items = cloze_questions(chunks, per_chunk=keep, seed=seed)
        report = {"kind": "questions", "method": "cloze", "chunks": len(chunks), "valid": len(items)}
        write_task(out_file, items, report, {**meta, "free_form": free_form}, free_form)
        out.print(f"{len(items)} {'free-form' if free_form else 'cloze'} questions from {len(chunks)} chunks → "
                  f"{out_file}", soft_wrap=True)
        return
    with generating(how, console, "chunks", "questions", note) as (gen, row):
        items, rep = generate_questions(chunks, gen, keep=keep, candidates=candidates, cache_path=how.cache,
                                        progress=row.advance, total=row.total, **how.sampling())
    report = rep.as_dict()
    meta.update(generator=generator, **where(gen), candidates=candidates, temperature=temperature,
                max_attempts=max_attempts)
    write_task(out_file, items, report, {**meta, "free_form": free_form}, free_form)
    _print_yield(report)
    out.print(f"{len(items)} questions, gold {report['gold_balance']} → {out_file}", soft_wrap=True)
    _unfinished(report, "chunks")


def _write_pairs(chunks: list[Chunk], every: list[Chunk], out_file: Path, per_chunk: int, exclude: list[str],
                 how: Synthesis, meta: dict) -> None:
    """`kinject questions --pairs`: the pairs a run's pairs stage makes (`kinject.synth.synthesis`)."""
    from kinject.synth.synthesis import training_pairs
    from kinject.synth.trainpairs import Evaluated, write_pairs

    qa, report = training_pairs(chunks, every, per_chunk, Evaluated.of_tasks(exclude), how, console, note)
    write_pairs(out_file, qa, {**report, "exclude": exclude, "meta": meta})
    dropped = report.get("dropped_as_evaluated") or report.get("rejected", {}).get("dropped_as_evaluated", 0)
    out.print(f"{len(qa)} training pairs from {len(chunks)} chunks ({dropped} dropped as evaluated questions) "
              f"→ {out_file}", soft_wrap=True)
    if how.spec != "cloze":
        _unfinished(report, "chunks")
