"""Embedding cache, FAISS index folders, BM25/hybrid, access groups, RAG in eval, and ask."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kinject.core.errors import KinjectError
from kinject.knowledge.corpus import Chunk, Document, build_corpus
from kinject.rag.retrieval import (
    BM25Retriever,
    DenseRetriever,
    Embedder,
    Hit,
    HybridRetriever,
    build_index,
    open_retriever,
    prefixes,
    retrieval_quality,
)

FACTS = {
    "ribosome": ("Ribosome", "Ribosomes translate messenger RNA into proteins in the cytoplasm.", ()),
    "mito": ("Mitochondrion", "Mitochondria produce most of the cell's ATP by oxidative phosphorylation.", ()),
    "chloro": ("Chloroplast", "Chloroplasts capture light energy for photosynthesis in plant cells.", ("botany",)),
    "golgi": ("Golgi apparatus", "The Golgi apparatus packages proteins into vesicles for secretion.", ("staff",)),
    "nucleus": ("Nucleus", "The nucleus stores the cell's DNA and controls gene expression.", ("staff", "botany")),
    "lysosome": ("Lysosome", "Lysosomes digest waste with hydrolytic enzymes at low pH.", ()),
}
QUESTIONS = ["Which organelle makes ATP?", "Where does photosynthesis happen?", "What packages proteins for secretion?",
             "Where is DNA stored?", "What translates mRNA into protein?", "What digests cellular waste?"]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    from kinject.runtime.assets import get_asset, pull

    root = tmp_path_factory.mktemp("rag")
    tok = AutoTokenizer.from_pretrained(pull(get_asset("smollm2-135m")))
    docs = [Document(k, t, text, g) for k, (t, text, g) in FACTS.items()]
    build_corpus(docs, tok, root / "kb", max_tokens=64, min_tokens=1)
    build_index(root / "kb", Embedder("minilm-l6", cache_dir=root / "cache"), root / "ix")
    return root


def test_prefixes_per_family() -> None:
    assert prefixes("BAAI/bge-large-en")[0].startswith("Represent this sentence")
    assert prefixes("intfloat/e5-large-v2") == ("query: ", "passage: ")
    assert prefixes("minilm-l6") == ("", "")


@pytest.mark.slow
def test_dense_search_finds_the_fact_and_caches_embeddings(index_dir: Path, tiny_lm) -> None:
    dense = DenseRetriever(index_dir / "ix")
    top = [hits[0].chunk.doc_id for hits in dense.search(QUESTIONS, 1)]
    assert top == ["mito", "chloro", "golgi", "nucleus", "ribosome", "lysosome"]
    _, tok = tiny_lm
    more = [Document(k, t, text, g) for k, (t, text, g) in FACTS.items()] + [
        Document("new", "Vacuole", "Vacuoles store water in plant cells.")]
    from transformers import AutoTokenizer

    from kinject.runtime.assets import get_asset, pull

    tok = AutoTokenizer.from_pretrained(pull(get_asset("smollm2-135m")))
    build_corpus(more, tok, index_dir / "kb2", max_tokens=64, min_tokens=1)
    meta = build_index(index_dir / "kb2", Embedder("minilm-l6", cache_dir=index_dir / "cache"), index_dir / "ix2")
    assert (meta["chunks"], meta["embedded_now"]) == (7, 1)  # only the new document is embedded


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dense", "bm25", "hybrid"])
def test_access_groups_never_leak(index_dir: Path, kind: str) -> None:
    retriever = open_retriever(index_dir / "ix", kind)  # type: ignore[arg-type]
    n = len(FACTS)
    for groups, visible in ((None, set(FACTS)), ([], {"ribosome", "mito", "lysosome"}),
                            (["botany"], {"ribosome", "mito", "lysosome", "chloro", "nucleus"}),
                            (["staff"], {"ribosome", "mito", "lysosome", "golgi", "nucleus"})):
        for hits in retriever.search(QUESTIONS, n, groups):
            got = {h.chunk.doc_id for h in hits}
            assert got <= visible, (kind, groups, got - visible)
            if groups is not None:
                assert got == visible or kind == "hybrid"


@pytest.mark.slow
def test_index_errors(index_dir: Path, tmp_path: Path) -> None:
    dense = DenseRetriever(index_dir / "ix")
    with pytest.raises(KinjectError, match="K=7 is more than the index holds \\(6 chunks\\)"):
        dense.search(["q"], 7)
    with pytest.raises(KinjectError, match="built with embedder 'minilm-l6', not 'mpnet-base'"):
        open_retriever(index_dir / "ix", "dense", embedder_ref="mpnet-base")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("meta.json", "chunks.parquet"):
        (broken / f).write_bytes((index_dir / "ix" / f).read_bytes())
    (broken / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(KinjectError, match="corrupted FAISS index"):
        DenseRetriever(broken)
    with pytest.raises(KinjectError, match="is not an index folder"):
        DenseRetriever(tmp_path)


def test_recall_and_mrr() -> None:
    def hit(cid: str, doc: str) -> Hit:
        return Hit(Chunk(cid, doc, "", "", 1, 0, 1), 1.0)

    hits = [[hit("a", "d1"), hit("b", "d2")], [hit("c", "d3"), hit("d", "d4")], [hit("e", "d5")]]
    q = retrieval_quality(hits, [("d2",), ("c",), ()], [1, 2])
    assert q == {"n_with_source": 2, "recall@1": 0.5, "recall@2": 1.0, "mrr": 0.75}


def test_hybrid_fuses_ranks() -> None:
    chunks = [Chunk(str(i), str(i), "", t, 3, 0, 1) for i, t in enumerate(["alpha beta", "gamma delta", "beta gamma"])]

    class Fixed:
        def __init__(self, order: list[int]) -> None:
            self.order, self.chunks, self.context_header = order, chunks, False

        def search(self, queries, k, groups=None):
            return [[Hit(chunks[i], 1.0) for i in self.order[:k]] for _ in queries]

    fused = HybridRetriever(Fixed([2, 0, 1]), Fixed([2, 1, 0]), depth=3).search(["q"], 2)[0]  # type: ignore[arg-type]
    assert [h.chunk.id for h in fused] == ["2", "0"]  # 2 first in both; 0 and 1 tie → by id
    bm25 = BM25Retriever(chunks)
    ranked = bm25.search(["alpha beta", "delta"], 3)
    assert [h.chunk.id for h in ranked[0]] == ["0", "2", "1"]  # both words, then one, then none
    assert ranked[0][0].score > ranked[0][1].score > ranked[0][2].score == 0
    assert ranked[1][0].chunk.id == "1" and ranked[1][1].score == 0  # only chunk 1 has "delta"


def _kinject(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kinject.cli.main", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
def test_rag_eval_and_ask_cli(tmp_path: Path) -> None:
    kb = tmp_path / "kb.jsonl"
    kb.write_text("".join(json.dumps({"id": k, "title": t, "text": text, "groups": list(g)}) + "\n"
                          for k, (t, text, g) in FACTS.items()))
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "Which organelle produces most of the cell's ATP?",
         "choices": ["Mitochondrion", "Golgi apparatus", "Lysosome"], "gold": 0, "source_chunks": ["mito"]},
        {"question": "Which organelle digests waste with hydrolytic enzymes?",
         "choices": ["Ribosome", "Lysosome", "Nucleus"], "gold": 1, "source_chunks": ["lysosome"]}]))
    for args in (("corpus", "build", "--source", str(kb), "--out", "kb", "--min-tokens", "1"),
                 ("index", "build", "--corpus", "kb", "--out", "ix")):
        proc = _kinject(*args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    proc = _kinject("eval", "--task", f"{task}@cloze", "--rag", "ix", "--k", "0,1,2", "--out", "ev", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert {v["k"] for v in results["tasks"].values()} == {0, 1, 2}
    assert results["retrieval"][f"{task}@cloze"]["recall@1"] == 1.0
    [path] = (tmp_path / "ev").glob("samples_*rag_1.jsonl")
    samples = [json.loads(x) for x in path.read_text().splitlines()]
    assert all(len(s["retrieved"]) == 1 and s["context"].count("\n\n") >= 1 for s in samples)
    titles = {t for t, _, _ in FACTS.values()}
    assert all(len(s["cited"]) == 1 and s["cited"][0].removeprefix("kb.jsonl · ") in titles  # where each chunk is
               for s in samples)

    proc = _kinject("ask", "Where is DNA stored?", "--index", "ix", "--k", "3", "--groups", "botany",
                    "--model", "smollm2-135m", "--min-score", "0", "--max-new-tokens", "12", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cited = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]  # the chunks the answer used
    assert 1 <= len(cited) <= 3 and not any("Golgi" in c for c in cited)
    assert "Answer:" in proc.stdout
    bad = _kinject("eval", "--task", f"{task}@cloze", "--rag", "ix", "--k", "0,9", "--out", "ev2", cwd=tmp_path)
    assert bad.returncode == 2 and "K=9 is more than the index holds (6 chunks)" in bad.stderr
    assert not (tmp_path / "ev2").exists()


def test_context_headers_reach_the_embedder_bm25_and_the_prompt_text(tmp_path: Path) -> None:
    """A chunk that starts mid-section is seen under "title › heading path"; the stored chunk and
    its id stay as they were, and built-in data without headings is seen as before."""
    from kinject.knowledge.corpus import Chunk
    from kinject.rag.retrieval import BM25Retriever, contextual, wants_header

    mid = Chunk("a", "file/NEWS.md", "NEWS", "The --legacy flag was removed.", 8, 0, 30,
                section="NEWS › Version 1.94.0 › Compatibility Notes")
    same = Chunk("b", "file/x.html", "Codegen Options", "The default is 0.", 5, 0, 17,
                 section="Codegen Options › opt-level")
    bare = Chunk("c", "sciq/1", "SciQ support 1", "Plants make sugar.", 4, 0, 18)
    assert contextual(mid) == "NEWS › Version 1.94.0 › Compatibility Notes\nThe --legacy flag was removed."
    assert contextual(same) == "Codegen Options › opt-level\nThe default is 0."
    assert contextual(bare) == "SciQ support 1\nPlants make sugar."
    assert wants_header([mid, bare]) and not wants_header([bare])
    # BM25 finds the version only through the header
    with_header = BM25Retriever([mid, same, bare], context_header=True).search(["version 1.94.0"], 1)[0]
    assert with_header[0].chunk.id == "a" and with_header[0].chunk.text == mid.text
