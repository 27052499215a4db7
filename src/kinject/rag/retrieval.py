"""Retrieval: embedders with family prefixes, a content-addressed embedding cache, FAISS
indexes, BM25, hybrid rank fusion, and access-group filtering.

An index folder holds `index.faiss`, `chunks.parquet` (a copy of the corpus it was built
from) and `meta.json` (embedder, dimension, index kind, corpus digest).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from kinject import __version__
from kinject.core.errors import KinjectError
from kinject.core.fsio import atomic_dir, check_replaceable, writing
from kinject.knowledge.corpus import SECTION_SEP, Chunk, previous_chunk_ids, read_chunks, write_chunks
from kinject.runtime.devices import Placement, local_rank, resolve
from kinject.runtime.models import CPU

IndexKind = Literal["flat", "hnsw", "ivf"]
RetrieverKind = Literal["dense", "bm25", "hybrid"]

# Query/passage prefixes the embedder families were trained with.
_PREFIXES = {
    "bge": ("Represent this sentence for searching relevant passages: ", ""),
    "e5": ("query: ", "passage: "),
}


def prefixes(embedder_ref: str) -> tuple[str, str]:
    """The (query, passage) prefixes an embedder's family expects; empty when it needs none."""
    name = embedder_ref.lower().rsplit("/", 1)[-1]
    for family, pair in _PREFIXES.items():
        if name.startswith(family) or f"-{family}" in name:
            return pair
    return "", ""


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk and its score (higher is closer)."""
    chunk: Chunk
    score: float


def header(chunk: Chunk) -> str:
    """Where a chunk sits: its title and heading path ("Release notes › Version 1.94.0 ›
    Compatibility Notes"), or just the title."""
    if chunk.section.startswith(chunk.title):
        return chunk.section
    return SECTION_SEP.join(p for p in (chunk.title, chunk.section) if p)


def contextual(chunk: Chunk) -> str:
    """A chunk as the embedder and the RAG prompt see it with context headers on: its `header` on a
    line of its own, then its text. A chunk that starts mid-section still says which version or
    chapter its facts belong to; the stored text and its id are unchanged."""
    head = header(chunk)
    return f"{head}\n{chunk.text}" if head else chunk.text


def wants_header(chunks: Sequence[Chunk]) -> bool:
    """Context headers by default where the documents have headings (the user's files); built-in
    datasets without them (SciQ, MMLU, newfacts) are seen as before."""
    return any(c.section for c in chunks)


class Retriever(Protocol):
    """What a RAG method needs from a retriever: top-k chunks per query."""
    context_header: bool
    """whether chunks were embedded, and go into the RAG prompt, with `contextual` headers"""

    def search(self, queries: Sequence[str], k: int, groups: Sequence[str] | None = None) -> list[list[Hit]]:
        """Top-k chunks per query; with `groups`, only chunks open to one of them (or to all)."""
        ...


def allowed(chunk: Chunk, groups: Sequence[str] | None) -> bool:
    """Untagged chunks are public; tagged ones need one shared group. No groups given: all."""
    return groups is None or not chunk.groups or bool(set(chunk.groups) & set(groups))


# ---------------------------------------------------------------------------- embeddings


def _embedder_key(ref: str) -> str:
    """Cache key of an embedder's vectors: where it resolves to, plus the size and mtime of its
    files for a local folder, so a changed or different model never reuses stale vectors."""
    from kinject.runtime.assets import resolve

    loc = resolve(ref, "embedder").location
    parts = [loc]
    if Path(loc).is_dir():
        parts += [f"{p.relative_to(loc)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                  for p in sorted(Path(loc).rglob("*")) if p.is_file()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class Embedder:
    """A sentence-transformers model with its family's prefixes and a persistent vector cache."""

    def __init__(self, ref: str, cache_dir: Path | None = None, batch_size: int = 64,
                 placement: Placement = CPU) -> None:
        from kinject.runtime.assets import kinject_home
        from kinject.runtime.models import load_embedder

        self.ref = ref
        self.placement = placement
        self.model = load_embedder(ref, placement)
        self.dim = int(self.model.get_embedding_dimension())
        self.query_prefix, self.passage_prefix = prefixes(ref)
        self.batch_size = batch_size
        # vectors of another precision or device differ slightly: they are cached apart
        key = _embedder_key(ref) + (f"-{placement.tag}" if placement.tag else "")
        folder = (cache_dir or kinject_home() / "embeddings")
        folder.mkdir(parents=True, exist_ok=True)
        self.cache_path = folder / f"{key}.sqlite"

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        vecs = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors, with the family's query prefix; not cached."""
        return self._encode([self.query_prefix + t for t in texts])

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """Passage vectors of loose texts (a few sentences), not cached."""
        return self._encode([self.passage_prefix + t for t in texts])

    def passages(self, chunks: Sequence[Chunk], progress=lambda n: None,
                 header: bool = False) -> tuple[np.ndarray, int]:
        """Vectors for the chunks (with `contextual` headers when `header`), computing only those not
        cached; returns (vectors, computed)."""
        con = sqlite3.connect(self.cache_path, timeout=60)
        try:
            with writing(self.cache_path):
                con.execute("CREATE TABLE IF NOT EXISTS vec (id TEXT PRIMARY KEY, v BLOB)")
            key = (lambda c: c.id + "+header") if header else (lambda c: c.id)
            ids = [key(c) for c in chunks]
            found: dict[str, np.ndarray] = {}
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                rows = con.execute(f"SELECT id, v FROM vec WHERE id IN ({','.join('?' * len(part))})", part)
                found.update({r[0]: np.frombuffer(r[1], dtype=np.float32) for r in rows})
            progress(len([i for i in ids if i in found]))
            todo = [c for c in chunks if key(c) not in found]
            for i in range(0, len(todo), self.batch_size * 4):
                part = todo[i:i + self.batch_size * 4]
                vecs = self._encode([self.passage_prefix + (contextual(c) if header else c.text) for c in part])
                with writing(self.cache_path):  # vectors already committed stay usable
                    con.executemany("INSERT OR REPLACE INTO vec VALUES (?, ?)",
                                    [(key(c), v.tobytes()) for c, v in zip(part, vecs)])
                    con.commit()
                found.update({key(c): v for c, v in zip(part, vecs)})
                progress(len(part))
        finally:
            con.close()
        return np.stack([found[i] for i in ids]), len(todo)


# ---------------------------------------------------------------------------- FAISS index folders


INDEX_FILES = ("index.faiss", "chunks.parquet", "meta.json")
"""What an index folder holds (`kinject index build --out`)."""


def build_index(corpus_dir: Path, embedder: Embedder, out: Path, kind: IndexKind = "flat",
                progress=lambda n: None, context_header: bool | None = None) -> dict:
    """Embed a corpus (cached per chunk) and write a FAISS index folder atomically; with
    `context_header` (None: where the corpus has headings) each chunk is embedded with its
    `contextual` header, and retrievers over the index show it in the RAG prompt too."""
    import faiss

    if out.resolve() == corpus_dir.resolve():  # the index replaces `out` whole
        raise KinjectError(f"--out {out} is the corpus folder itself; give the index its own folder")
    check_replaceable(out, "FAISS index", INDEX_FILES)
    chunks = read_chunks(corpus_dir)
    before = previous_chunk_ids(out)
    header = wants_header(chunks) if context_header is None else context_header
    vecs, computed = embedder.passages(chunks, progress, header)
    if kind == "flat":
        index = faiss.IndexFlatIP(embedder.dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(embedder.dim, 32, faiss.METRIC_INNER_PRODUCT)
    else:
        nlist = max(1, min(4096, int(len(chunks) ** 0.5)))
        if len(chunks) < 39 * nlist:
            raise KinjectError(f"--kind ivf needs at least {39 * nlist} chunks for {nlist} lists; use flat or hnsw")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(embedder.dim), embedder.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vecs)
    index.add(vecs)
    try:
        corpus_meta = json.loads((corpus_dir / "meta.json").read_text())
    except ValueError as exc:
        raise KinjectError(f"{corpus_dir / 'meta.json'}: unreadable ({exc}); rebuild the corpus") from exc
    meta = {"embedder": embedder.ref, "embedder_dtype": embedder.placement.dtype, "dim": embedder.dim,
            "kind": kind, "chunks": len(chunks), "context_header": header,
            "corpus": str(corpus_dir), "corpus_digest": corpus_meta.get("digest"), "embedded_now": computed,
            "dropped": len(before - {c.id for c in chunks}) if before is not None else 0,
            "kinject_version": __version__}

    def write(tmp: Path) -> None:
        # Through a Python file: faiss' own writer ignores a failed close, so on a full disk a small
        # index would be cut short without an error.
        with writing(out / "index.faiss"), open(tmp / "index.faiss", "wb") as fh:
            faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))
        write_chunks(tmp / "chunks.parquet", chunks)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    with writing(out):  # a full disk: one line, and the previous index stays
        atomic_dir(out, write)
    return meta


def _query_placement(device: str, index_dtype: str) -> Placement:
    """Queries are embedded in the precision the index was built in, on this command's device;
    where that device cannot run it (a bf16 GPU index queried on a CPU without bf16), in fp32."""
    try:
        return resolve(device, index_dtype, rank=local_rank())
    except KinjectError:
        return resolve(device, "fp32", rank=local_rank())


def read_faiss(index_dir: Path, n_chunks: int):
    """An index folder's FAISS index, checked against its chunks: a damaged folder is an error
    whichever retriever opens it."""
    import faiss

    try:
        index = faiss.read_index(str(index_dir / "index.faiss"))
    except RuntimeError as exc:
        raise KinjectError(f"{index_dir / 'index.faiss'}: corrupted FAISS index; rebuild it with "
                           f"`kinject index build`") from exc
    if index.ntotal != n_chunks:
        raise KinjectError(f"{index_dir}: index holds {index.ntotal} vectors for {n_chunks} chunks; "
                           f"rebuild it with `kinject index build`")
    return index


class DenseRetriever:
    """Nearest chunks by embedding, from a FAISS index folder."""
    def __init__(self, index_dir: Path, embedder: Embedder | None = None, device: str = "cpu") -> None:
        self.meta = read_index_meta(index_dir)
        self.chunks = read_chunks(index_dir)
        self.context_header = bool(self.meta.get("context_header", False))
        self.index = read_faiss(index_dir, len(self.chunks))
        if embedder is not None:
            check_embedder(index_dir, self.meta, embedder.ref)
        self.embedder = embedder or Embedder(self.meta["embedder"], placement=_query_placement(
            device, self.meta.get("embedder_dtype", "fp32")))
        if self.index.d != self.embedder.dim:  # vectors of another embedder than meta.json names
            raise KinjectError(f"{index_dir / 'index.faiss'} holds {self.index.d}-dimension vectors but its embedder "
                               f"'{self.embedder.ref}' makes {self.embedder.dim}-dimension ones: it was built with "
                               f"another embedder; rebuild it with `kinject index build`")

    def search(self, queries: Sequence[str], k: int, groups: Sequence[str] | None = None) -> list[list[Hit]]:
        """Top-k chunks per query by vector similarity; with `groups`, only chunks open to them."""
        import faiss

        _check_k(k, len(self.chunks))
        if k == 0:
            return [[] for _ in queries]
        params = None
        if groups is not None:
            ok = np.array([i for i, c in enumerate(self.chunks) if allowed(c, groups)], dtype=np.int64)
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(ok)) if not isinstance(
                self.index, faiss.IndexIVF) else faiss.SearchParametersIVF(sel=faiss.IDSelectorBatch(ok))
        scores, ids = self.index.search(self.embedder.queries(queries), k, params=params)
        return [[Hit(self.chunks[i], float(s)) for s, i in zip(row_s, row_i) if i >= 0]
                for row_s, row_i in zip(scores, ids)]


@functools.cache
def stemmer() -> Callable[[list[str]], list[str]]:
    """English Snowball stemming for BM25: a person asks "decode" where the text says "decoding"
    (it lifts recall@3 on the real-folder benchmark's hand-written questions; README)."""
    import Stemmer

    return Stemmer.Stemmer("english").stemWords


class BM25Retriever:
    """Keyword retrieval: BM25 over the chunks' stemmed words."""
    def __init__(self, chunks: Sequence[Chunk], context_header: bool = False,
                 load_embedder: Callable[[], Embedder] | None = None) -> None:
        """`load_embedder`: the index's embedder, loaded on first use of `embedder` (`kinject ask`
        scores BM25's hits with it to decide whether to answer; an eval never loads it)."""
        import bm25s

        self.chunks = list(chunks)
        self.context_header = context_header
        self._load_embedder = load_embedder
        self._embedder: Embedder | None = None
        texts = [contextual(c) if context_header else c.title + " " + c.text for c in self.chunks]
        self.stemmer = stemmer()
        self.model = bm25s.BM25()
        self.model.index(bm25s.tokenize(texts, stopwords="en", stemmer=self.stemmer, show_progress=False),
                         show_progress=False)

    @property
    def embedder(self) -> Embedder | None:
        """The index's embedder, loaded on first use; None when none was given."""
        if self._embedder is None and self._load_embedder is not None:
            self._embedder = self._load_embedder()
        return self._embedder

    def search(self, queries: Sequence[str], k: int, groups: Sequence[str] | None = None) -> list[list[Hit]]:
        """Top-k chunks per query by BM25 score; with `groups`, only chunks open to them."""
        import bm25s

        _check_k(k, len(self.chunks))
        if k == 0:
            return [[] for _ in queries]
        weights = None if groups is None else np.array([allowed(c, groups) for c in self.chunks], dtype=np.float32)
        out = []
        for tokens in bm25s.tokenize(list(queries), stopwords="en", stemmer=self.stemmer, return_ids=False,
                                     show_progress=False):
            scores = np.asarray(self.model.get_scores(tokens), dtype=np.float64)
            if weights is not None:
                scores = np.where(weights > 0, scores, -np.inf)
            top = np.argsort(-scores, kind="stable")[:k]
            out.append([Hit(self.chunks[i], float(scores[i])) for i in top if np.isfinite(scores[i])])
        return out


class HybridRetriever:
    """Reciprocal-rank fusion of dense and BM25 rankings (k=60, Cormack et al. 2009)."""

    def __init__(self, dense: DenseRetriever, sparse: BM25Retriever, depth: int = 50, rrf_k: int = 60) -> None:
        self.dense, self.sparse, self.depth, self.rrf_k = dense, sparse, depth, rrf_k
        self.context_header = dense.context_header

    def search(self, queries: Sequence[str], k: int, groups: Sequence[str] | None = None) -> list[list[Hit]]:
        """Top-k chunks per query by fused rank of the dense and BM25 results."""
        _check_k(k, len(self.dense.chunks))
        depth = min(len(self.dense.chunks), max(self.depth, k))
        out = []
        for d_hits, s_hits in zip(self.dense.search(queries, depth, groups), self.sparse.search(queries, depth, groups)):
            fused: dict[str, float] = {}
            by_id: dict[str, Chunk] = {}
            for hits in (d_hits, s_hits):
                for rank, h in enumerate(hits):
                    fused[h.chunk.id] = fused.get(h.chunk.id, 0.0) + 1.0 / (self.rrf_k + rank + 1)
                    by_id[h.chunk.id] = h.chunk
            best = sorted(fused, key=lambda cid: (-fused[cid], cid))[:k]
            out.append([Hit(by_id[cid], fused[cid]) for cid in best])
        return out


def _check_k(k: int, size: int) -> None:
    if k < 0:
        raise KinjectError(f"K must be 0 or more, got {k}")
    if k > size:
        raise KinjectError(f"K={k} is more than the index holds ({size} chunks)")


def read_index_meta(index_dir: Path) -> dict:
    """An index folder's meta.json (a one-line error when it is not an index or is damaged)."""
    path = index_dir / "meta.json"
    if not path.is_file() or not (index_dir / "index.faiss").is_file():
        raise KinjectError(f"{index_dir} is not an index folder (no index.faiss + meta.json); "
                           f"build one with `kinject index build`")
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise KinjectError(f"{path}: unreadable ({exc}); rebuild the index") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("embedder"), str):
        raise KinjectError(f"{path}: no 'embedder' field; rebuild the index with `kinject index build`")
    return meta


def check_embedder(index_dir: Path, meta: dict, embedder_ref: str) -> None:
    """Vectors from two embedders are not comparable: refuse to mix them."""
    if embedder_ref != meta["embedder"]:
        raise KinjectError(f"{index_dir} was built with embedder '{meta['embedder']}', not '{embedder_ref}'; "
                           f"query it with the same embedder or rebuild the index")


def open_retriever(index_dir: Path, kind: RetrieverKind = "dense", embedder_ref: str | None = None,
                   device: str = "cpu") -> Retriever:
    """A retriever over an index folder; the dense embedder runs on `device` (a `--device` value)."""
    meta = read_index_meta(index_dir)
    if embedder_ref is not None:
        check_embedder(index_dir, meta, embedder_ref)
    if kind == "bm25":
        chunks = read_chunks(index_dir)
        read_faiss(index_dir, len(chunks))
        return BM25Retriever(chunks, bool(meta.get("context_header", False)), lambda: Embedder(
            meta["embedder"], placement=_query_placement(device, meta.get("embedder_dtype", "fp32"))))
    dense = DenseRetriever(index_dir, device=device)
    return dense if kind == "dense" else HybridRetriever(dense, BM25Retriever(dense.chunks, dense.context_header))


def retrieval_quality(hits: Sequence[Sequence[Hit]], sources: Sequence[Sequence[str]], ks: Sequence[int]) -> dict:
    """recall@K (a source chunk/document among the top K) and MRR over questions with sources."""
    scored = [(h, set(s)) for h, s in zip(hits, sources) if s]
    if not scored:
        return {}
    out: dict[str, float | int] = {"n_with_source": len(scored)}
    for k in ks:
        if k > 0:
            out[f"recall@{k}"] = sum(any(x.chunk.id in s or x.chunk.doc_id in s for x in h[:k])
                                     for h, s in scored) / len(scored)
    rr = []
    for h, s in scored:
        rank = next((i + 1 for i, x in enumerate(h) if x.chunk.id in s or x.chunk.doc_id in s), None)
        rr.append(1.0 / rank if rank else 0.0)
    out["mrr"] = sum(rr) / len(rr)
    return out
