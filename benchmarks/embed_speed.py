"""Index build speed: kinject's `build_index` vs a plain `SentenceTransformer.encode` loop.

    python benchmarks/embed_speed.py [--embedder minilm-l6] [--source sciq] [--tokenizer smollm2-135m]

Same chunks, same run: chunks/s of a cold kinject build (empty embedding cache), of a plain
encode loop (one text at a time, as a naive script does, and batched), of a warm rebuild (all
vectors cached), and a rebuild after adding 10 documents, which must embed only their chunks.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kinject.knowledge.corpus import Document, build_corpus, read_chunks  # noqa: E402
from kinject.rag.retrieval import Embedder, build_index  # noqa: E402
from kinject.runtime.models import load_tokenizer  # noqa: E402
from kinject.tasks.registry import read_source  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedder", default="minilm-l6")
    ap.add_argument("--source", default="sciq", help="sciq, wiki-summaries, or a .jsonl file/folder")
    ap.add_argument("--tokenizer", default="smollm2-135m", help="the chunker's tokenizer (catalog name or folder)")
    args = ap.parse_args()
    tok, _ = load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        docs = list(read_source(args.source))
        build_corpus(docs, tok, root / "kb")
        chunks = read_chunks(root / "kb")
        emb = Embedder(args.embedder, cache_dir=root / "cache")
        texts = [emb.passage_prefix + c.text for c in chunks]

        started = time.perf_counter()
        for t in texts:
            emb.model.encode([t], normalize_embeddings=True, show_progress_bar=False)
        naive = len(texts) / (time.perf_counter() - started)
        started = time.perf_counter()
        emb.model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        plain = len(texts) / (time.perf_counter() - started)
        started = time.perf_counter()
        build_index(root / "kb", emb, root / "ix")
        cold = len(texts) / (time.perf_counter() - started)
        started = time.perf_counter()
        build_index(root / "kb", emb, root / "ix")
        warm = len(texts) / (time.perf_counter() - started)

        extra = [Document(f"new/{i}", f"New {i}", f"Newly added fact number {i}: the vacuole of cell {i} "
                          f"stores {i * 3} units of water.") for i in range(10)]
        build_corpus(docs + extra, tok, root / "kb2")
        meta = build_index(root / "kb2", emb, root / "ix2")
    print(f"{args.embedder} on {len(texts)} {args.source} chunks")
    print(f"  encode loop, one text per call : {naive:8.1f} chunks/s (1.00x)")
    print(f"  encode, batch 32 (sorted by ST): {plain:8.1f} chunks/s ({plain / naive:.2f}x)")
    print(f"  kinject index build, cold cache: {cold:8.1f} chunks/s ({cold / naive:.2f}x, "
          f"{cold / plain:.2f}x the batched encode)")
    print(f"  kinject index build, warm cache: {warm:8.1f} chunks/s ({warm / naive:.2f}x)")
    print(f"  after adding 10 documents: {meta['chunks']} chunks, {meta['embedded_now']} embedded now")


if __name__ == "__main__":
    main()
