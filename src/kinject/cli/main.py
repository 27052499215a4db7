"""The `kinject` command: thin typer wrappers that parse arguments and call the modules.

This module holds evaluation, experiments and serving (`eval`, `ask`, `doctor`, `run`,
`results`, `report`, `serve`) and the entry point that turns user errors into one line; the
knowledge (`kb`) and training (`train`) commands register on the same app."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from kinject import __version__  # noqa: E402
from kinject.cli import kb, train  # noqa: F401,E402 - their commands register on `app`
from kinject.cli.app import (
    BACKEND_HELP,
    DeviceOpt,
    DTypeOpt,
    app,
    console,
    note,
    out,
    parse_groups,
    parse_ks,
    placement_for,
)
from kinject.core.errors import KinjectError, error_line
from kinject.runtime.catalog import DEFAULT_EMBEDDER, DEFAULT_GENERATOR, DEFAULT_LM
from kinject.tasks.task import headline_metric


def _threshold_help(which: str) -> str:
    """--min-score's and --min-sentence-score's help: the calibrated values, from where `ask` reads them."""
    from kinject.rag.answer import CALIBRATED, DEFAULT

    per = ", ".join(f"{name} {getattr(t, which):.2f}" for name, t in CALIBRATED.items())
    what = {"chunk": "the best chunk scores below this (the question is off-topic)",
            "sentence": "no sentence of the chunks that clear --min-score scores this (the documents are on the "
                        "subject but do not state the fact)"}[which]
    never = ("bm25 and hybrid scores have no fixed scale: never. -1 turns the check off" if which == "chunk"
             else "bm25: never. 0 turns the check off")
    return (f"Abstain (\"not in the knowledge base\") when {what}. Default, calibrated per embedder: {per}; "
            f"other dense embedders {getattr(DEFAULT, which):.2f}; {never}.")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    index: Annotated[Path, typer.Option(help="Index folder from `kinject index build`.")],
    model: Annotated[str, typer.Option(help="Generator LM (the catalog's best instruct model by default).")]
    = DEFAULT_GENERATOR,
    k: Annotated[int, typer.Option(min=1, help="Chunks to retrieve.")] = 3,
    retriever: Annotated[str, typer.Option(help="bm25 (default: it found the fact for questions written by hand "
                                                "over real documentation far more often than dense), dense or "
                                                "hybrid; the index's embedder scores the hits for the checks "
                                                "either way.")] = "bm25",
    groups: Annotated[Optional[str], typer.Option(help="Comma-separated access groups of the asker; chunks tagged "
                                                       "for other groups are never retrieved.")] = None,
    min_score: Annotated[Optional[float], typer.Option(help=_threshold_help("chunk"))] = None,
    min_sentence_score: Annotated[Optional[float], typer.Option(help=_threshold_help("sentence"))] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Answer length limit.")] = 64,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
) -> None:
    """Answer a question from retrieved chunks, grounded in them, citing file, page and section.
    Abstain when the chunks do not hold the answer: retrieval finds nothing close, the question
    names a code, version or year no chunk mentions, no sentence states it, or the answer makes up a number."""
    from functools import cache

    from kinject.lm.backends import HFBackend
    from kinject.rag.answer import Thresholds, answer_question, thresholds
    from kinject.rag.retrieval import HybridRetriever, open_retriever, read_index_meta

    if retriever not in ("dense", "bm25", "hybrid"):
        raise KinjectError(f"--retriever must be dense, bm25 or hybrid, got '{retriever}'")
    placement = placement_for(device, dtype)
    calibrated = thresholds(read_index_meta(index)["embedder"])
    limits = Thresholds(calibrated.chunk if min_score is None else min_score,
                        calibrated.sentence if min_sentence_score is None else min_sentence_score)
    rtr = open_retriever(index, retriever, device=device)  # type: ignore[arg-type]
    size = len(rtr.dense.chunks if isinstance(rtr, HybridRetriever) else rtr.chunks)  # type: ignore[attr-defined]
    lm = cache(lambda: HFBackend.load(model, placement, log=note))
    a = answer_question(rtr, lm, question, min(k, size), limits, parse_groups(groups), max_new_tokens)
    if a.abstained:
        out.print(f"[bold]Answer:[/bold] Not in the knowledge base ({escape(a.why)}).", soft_wrap=True,
                  highlight=False)
        return
    out.print(f"[bold]Answer:[/bold] {escape(a.text)}", soft_wrap=True, highlight=False)
    if a.why:
        out.print(f"[dim]({escape(a.why)})[/dim]", soft_wrap=True, highlight=False)
    out.print()
    for i, where in zip(a.used, a.cited):
        out.print(f"[{i + 1}] {where} (score {a.hits[i].score:.2f})", soft_wrap=True, highlight=False, markup=False)


@app.command()
def doctor(
    model: Annotated[str, typer.Option(help="LM: catalog name, local folder/.gguf, or hub id.")] = DEFAULT_LM,
    embedder: Annotated[str, typer.Option(help="Embedder: catalog name, local folder, or hub id.")] = DEFAULT_EMBEDDER,
    text: Annotated[str, typer.Option(help="Sentence to score.")] = "The mitochondria is the powerhouse of the cell.",
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
) -> None:
    """Load an LM and an embedder, print the device, a sentence's log-likelihood and an embedding's size."""
    import time

    import torch

    from kinject.runtime.models import load_embedder, load_lm

    placement = placement_for(device, dtype)
    out.print(f"device    {placement.label()}", soft_wrap=True)
    t0 = time.perf_counter()
    lm, tok = load_lm(model, placement, log=note)
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
    emb = load_embedder(embedder, placement, log=note).encode([text], normalize_embeddings=True)
    out.print(f"embedder  {embedder}: dim {emb.shape[1]}, |v|={float((emb[0] ** 2).sum()) ** 0.5:.3f}, "
              f"{time.perf_counter() - t0:.1f}s")


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Option(help="LM: catalog name, local folder/.gguf, or hub id.")] = DEFAULT_LM,
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
    from kinject.eval.evaluation import EvalSpec, run_eval

    if retriever not in ("dense", "bm25", "hybrid"):
        raise KinjectError(f"--retriever must be dense, bm25 or hybrid, got '{retriever}'")
    out_dir = out_dir or Path("runs") / time.strftime("eval-%Y%m%d-%H%M%S")
    chosen = parse_groups(groups)
    spec = EvalSpec(model, tuple(task), shots, limit, batch_size, rag, tuple(parse_ks(k)), retriever,  # type: ignore[arg-type]
                    tuple(chosen) if chosen else None, device, dtype, backend)
    summary = run_eval(spec, out_dir, console)
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
    for name, r in summary["tasks"].items():
        if free := r.get("free"):  # acc is "right": the fact stated, or an unanswerable question declined
            shown = [f"{key} {free[key]:.3f}" for key in ("contains", "em", "f1", "abstained", "hallucinated",
                                                           "citation_precision") if free.get(key) is not None]
            out.print(f"free form {name}: acc = right; {', '.join(shown)} ({free['answerable']} answerable, "
                      f"{free['unanswerable']} unanswerable)", soft_wrap=True)
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
    from kinject.experiment.run import run as run_experiment

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
    from kinject.report.build import results_rows, results_table, write_csv

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
    from kinject.report.build import write_report

    with console.status("writing the report"):
        folder = write_report(run_dir, out_dir)
    out.print(f"report: {folder / 'report.html'} (and report.md)", soft_wrap=True)


@app.command()
def judge(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `kinject run` with @free tasks.")],
    generator: Annotated[str, typer.Option(help="The judge: local:NAME or openai:URL#MODEL.")] = "local:qwen2.5-0.5b",
    limit: Annotated[Optional[int], typer.Option(min=1, help="Judge only the first N answers of each condition.")]
    = None,
    cache: Annotated[Optional[Path], typer.Option(help="Verdict cache (default $KINJECT_HOME/cache/synth.sqlite).")]
    = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
) -> None:
    """Grade a run's free-form answers with an LLM judge (a fixed rubric: correct / incorrect / abstained),
    print its agreement with the string grade (contains), and rewrite the report with a judge column."""
    from kinject.core.console import progress_bar
    from kinject.eval.judge import judge_run
    from kinject.eval.results import Store
    from kinject.lm.generators import GeneratorOptions, open_generator
    from kinject.report.build import write_report
    from kinject.synth.jobs import SynthCache, default_cache

    with Store(run_dir):  # a folder without a results store fails here, before a model loads
        pass
    gen = open_generator(generator, GeneratorOptions(device=device, dtype=dtype),
                         log=lambda m: console.print(f"[dim]·[/dim] {m}"))
    store = SynthCache(cache or default_cache())
    try:
        with progress_bar(console, "answers") as bar:
            job = bar.add_task("judging", total=None)
            found = judge_run(run_dir, gen, store, limit, progress=lambda n: bar.advance(job, n),
                              total=lambda n: bar.update(job, total=n))
    finally:
        gen.close()
        store.close()
    for r in found.values():
        unparsed = f"; {r['unparsed']} unparsed" if r["unparsed"] else ""
        out.print(f"{r['task']} {r['method']} K={r['k']}: judge and contains agree on {r['agreement']:.1%} of "
                  f"{r['n']} answerable (kappa {r['kappa']:.2f}; judge correct {r.get('judge_correct', 0):.3f}, "
                  f"contains {r.get('contains', 0):.3f}){unparsed}", soft_wrap=True, highlight=False)
    out.print(f"report: {write_report(run_dir)}", soft_wrap=True)


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="LM to serve: catalog name, local folder/.gguf, or hub id.")]
    = DEFAULT_GENERATOR,
    host: Annotated[str, typer.Option(help="Address to listen on; any but loopback needs --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: a free one, printed at start).")] = 8000,
    name: Annotated[Optional[str], typer.Option(help="Model id clients send and /v1/models lists "
                                                     "(default: --model).")] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="KINJECT_API_KEY", help="Answer only requests that send "
                                                   "'Authorization: Bearer KEY' (HTTP 401 otherwise).")] = None,
    queue: Annotated[int, typer.Option(min=0, help="Requests that may wait for the model; more get HTTP 503 "
                                                   "(OpenAI clients retry).")] = 32,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", help="Log every request.")] = False,
) -> None:
    """Serve a local model over the OpenAI API until Ctrl-C: /v1/chat/completions, /v1/completions (with echo
    and logprobs: prompt log-probabilities, for `eval --backend openai:...`) and /v1/models."""
    from kinject.lm.generators import LocalGenerator
    from kinject.lm.serve import make_server

    gen = LocalGenerator(model, placement=placement_for(device, dtype), log=note)
    try:  # bound before the model loads: a taken port or a missing key fails at once
        server = make_server(gen, host, port, name, log=note if verbose else None, api_key=api_key or None,
                             max_queue=queue)
    except OSError as exc:
        raise KinjectError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        gen.load()
        bound_host, bound_port = server.server_address
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        out.print(f"serving {name or model} on http://{shown}:{bound_port}/v1 (Ctrl-C stops)", soft_wrap=True)
        sys.stdout.flush()
        server.serve_forever()  # Ctrl-C: uvicorn finishes what is in progress, then KeyboardInterrupt
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
    from kinject.core.console import quiet_libraries

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
        from kinject.core.fsio import is_machine_limit, write_hint

        if not is_machine_limit(exc):
            raise
        console.print(f"[bold red]error:[/bold red] {escape(error_line(exc))}; {write_hint(exc)}",
                      soft_wrap=True, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
