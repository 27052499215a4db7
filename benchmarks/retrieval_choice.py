"""Which retriever finds the fact for questions a person writes? Measured on a real folder.

    python benchmarks/retrieval_choice.py [--folder DIR] [--questions FILE] [--limit N]
                                          [--embedders minilm-l6[,mpnet-base]] [--no-rag] [--small]

The folder (default: the real documentation folder benchmarks/realfolder_fetch.py builds from
Debian documentation packages and a PyPI sdist) is read and chunked the way `kinject init` reads
it. The questions (default benchmarks/data/realfolder_questions.jsonl) were written by hand, in
their writer's own words, each with the exact words of the fact it needs (`evidence`); a retrieved
chunk holds the fact when it contains those words (whitespace and case aside). For every
retriever — dense with each embedder, BM25, hybrid (RRF) — with and without contextual chunk
headers ("title › heading path" before the chunk), it prints recall@1 and recall@3 over all
answerable questions and over those whose answer depends on the section (`needs_section`), and,
unless --no-rag, RAG accuracy: SmolLM2-135M scoring the four answer texts (log-likelihood, as
lm-eval scores multiple choice) with the top chunk before the question, against the closed-book
model on the same questions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from realfolder_fetch import cache_root, fetch  # noqa: E402

from kinject.knowledge.corpus import build_corpus  # noqa: E402
from kinject.rag.retrieval import BM25Retriever, DenseRetriever, Embedder, HybridRetriever, build_index, contextual  # noqa: E402
from kinject.runtime.devices import resolve  # noqa: E402
from kinject.runtime.models import load_tokenizer  # noqa: E402
from kinject.tasks.registry import read_source  # noqa: E402
from kinject.tasks.task import Item, Task  # noqa: E402

QUESTIONS = Path(__file__).resolve().parent / "data" / "realfolder_questions.jsonl"


def squash(text: str) -> str:
    """Lowercased, without whitespace: a fact's words match however a reader broke the lines."""
    return re.sub(r"\s+", "", text.lower())


def holds(chunk_text: str, evidence: str) -> bool:
    return squash(evidence) in squash(chunk_text)


def load_questions(path: Path, files: set[str], limit: int | None) -> list[dict]:
    """The answerable questions about files of the folder, the first `limit`."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    answerable = [r for r in rows if r["group"] == "answerable" and r["source"] in files]
    return answerable[:limit] if limit else answerable


def recall(hits: list[list], questions: list[dict], k: int, only_section: bool = False) -> tuple[int, int]:
    pairs = [(h, q) for h, q in zip(hits, questions) if q["needs_section"] or not only_section]
    return sum(any(holds(x.chunk.text, q["evidence"]) for x in h[:k]) for h, q in pairs), len(pairs)


def as_task(questions: list[dict], seed: int = 0) -> Task:
    """The questions as a multiple-choice task scored on answer texts, choices shuffled by seed."""
    rng, items = random.Random(seed), []
    for q in questions:
        choices = list(q["choices"])
        rng.shuffle(choices)
        items.append(Item(q["id"], q["question"], tuple(choices), choices.index(q["answer"])))
    return Task("handwritten", tuple(items), fmt="cloze", style="plain")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=None)
    ap.add_argument("--questions", type=Path, default=QUESTIONS)
    ap.add_argument("--limit", type=int, default=None, help="answerable questions to use (all by default)")
    ap.add_argument("--embedders", default="minilm-l6", help="comma-separated, e.g. minilm-l6,mpnet-base")
    ap.add_argument("--model", default="smollm2-135m", help="the LM that scores RAG accuracy")
    ap.add_argument("--no-rag", action="store_true", help="recall only, no LM")
    ap.add_argument("--small", action="store_true", help="the smoke-scale folder (no rust-doc download)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    folder = args.folder or fetch(cache_root() / ("realfolder-small" if args.small else "realfolder"), args.small)
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    questions = load_questions(args.questions, present, args.limit)
    if not questions:
        sys.exit(f"error: none of the questions in {args.questions} is about a file of {folder}")
    placement = resolve(args.device, "fp32")
    tok, _ = load_tokenizer(args.model)
    lm = None
    if not args.no_rag:
        from kinject.lm.backends import HFBackend
        from kinject.lm.scoring import evaluate

        lm = HFBackend.load(args.model, placement)
        task = as_task(questions)
        closed = evaluate(lm, task)
        print(f"closed-book {args.model}: acc {sum(r.acc for r in closed) / len(closed):.3f} "
              f"on {len(closed)} hand-written questions")
    n_section = sum(q["needs_section"] for q in questions)
    print(f"{folder}: {len(questions)} hand-written answerable questions ({n_section} need the section)")
    print(f"{'retriever':<22} {'header':<6} {'R@1':>6} {'R@3':>6} {'R@1 sect':>9} {'R@3 sect':>9} "
          f"{'RAG@1':>6} {'s':>5}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_corpus(read_source(str(folder)), tok, root / "kb")
        qs = [q["question"] for q in questions]
        for header in (False, True):
            dense: dict[str, DenseRetriever] = {}
            for name in args.embedders.split(","):
                emb = Embedder(name, placement=placement)
                build_index(root / "kb", emb, root / f"ix-{name}-{header}", context_header=header)
                dense[name] = DenseRetriever(root / f"ix-{name}-{header}", emb)
            first = next(iter(dense.values()))
            retrievers = {**{f"dense {n}": r for n, r in dense.items()},
                          "bm25": BM25Retriever(first.chunks, header),
                          **{f"hybrid {n}": HybridRetriever(r, BM25Retriever(r.chunks, header))
                             for n, r in dense.items()}}
            for name, retriever in retrievers.items():
                started = time.perf_counter()
                hits = retriever.search(qs, 3)
                r1, n = recall(hits, questions, 1)
                r3, _ = recall(hits, questions, 3)
                s1, ns = recall(hits, questions, 1, True)
                s3, _ = recall(hits, questions, 3, True)
                rag = ""
                if lm is not None:
                    show = contextual if header else (lambda c: c.text)
                    records = evaluate(lm, task, passages=[[(h[0].chunk.id, show(h[0].chunk))] for h in hits])
                    rag = f"{sum(r.acc for r in records) / len(records):.3f}"
                print(f"{name:<22} {'on' if header else 'off':<6} {r1 / n:>6.3f} {r3 / n:>6.3f} "
                      f"{(s1 / ns if ns else 0):>9.3f} {(s3 / ns if ns else 0):>9.3f} {rag:>6} "
                      f"{time.perf_counter() - started:>5.0f}", flush=True)


if __name__ == "__main__":
    main()
