"""How often `kinject ask` answers with the fact, and how often it abstains where it should.

    python benchmarks/ask_quality.py [--embedder minilm-l6] [--model qwen2.5-0.5b] [--limit N] [--sciq N]
                                     [--device cpu]

On the test fixture folder (3 PDFs, 2 HTML pages, a Word file, a markdown file; its facts,
pages and questions are in tests/docfixtures.py), three groups of questions:
  answerable  — the fact is in the folder: answered with it (its answer string in the reply)?
  missing     — on the folder's subjects, the fact is not there: abstained?
  off-topic   — nothing to do with the folder: abstained?
and, with --sciq N, N seeded SciQ validation questions over all 887 SciQ support passages: with
their own passage indexed (answered with the gold answer?) and with it left out (abstained?).
Each abstention is counted under the check that made it; a quoted sentence is counted too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from functools import cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the fixture folder's writer

from docfixtures import FACTS, MISSING, UNANSWERABLE, write_docs  # noqa: E402

from kinject.eval.grading import contains  # noqa: E402
from kinject.knowledge.corpus import build_corpus  # noqa: E402
from kinject.lm.backends import HFBackend  # noqa: E402
from kinject.rag.answer import Answer, answer_question, thresholds  # noqa: E402
from kinject.rag.retrieval import DenseRetriever, Embedder, Retriever, build_index, open_retriever  # noqa: E402
from kinject.runtime.devices import resolve  # noqa: E402
from kinject.runtime.models import load_tokenizer  # noqa: E402
from kinject.tasks.registry import read_source  # noqa: E402


def run_group(name: str, questions: list[tuple[str, list[str] | None, Retriever]], ask, show: bool = False) -> dict:
    """questions: (question, the answer strings that state the fact (any one) or None where it
    should abstain, the retriever to ask it over); `ask(question, retriever)` answers one. `show`
    prints each one."""
    right, checks, started = 0, Counter(), time.perf_counter()
    for question, expected, retriever in questions:
        a = ask(question, retriever)
        checks[a.check] += 1
        ok = (not a.abstained and bool(contains(a.text, expected))) if expected else a.abstained
        right += ok
        if show:
            print(f"[{name}] {'ok ' if ok else 'BAD'} {a.check:9s} Q: {question}\n    expected: {expected}\n"
                  f"    reply: {a.text}\n    {a.why}", flush=True)
    return {"group": name, "n": len(questions), "right": right, "checks": dict(checks),
            "s_per_q": (time.perf_counter() - started) / max(1, len(questions))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedder", default="minilm-l6")
    ap.add_argument("--model", default="qwen2.5-0.5b", help="the generator `ask` answers with")
    ap.add_argument("--tokenizer", default="smollm2-135m", help="the chunker's tokenizer")
    ap.add_argument("--limit", type=int, default=None, help="questions per fixture group (all by default)")
    ap.add_argument("--sciq", type=int, default=0, help="SciQ questions asked twice (own passage in, then out)")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="where the generator and the embedder run (auto, cpu, cuda…)")
    ap.add_argument("--folder", type=Path, default=None,
                    help="a real folder instead of the fixtures, asked the hand-written --questions about it")
    ap.add_argument("--questions", type=Path, default=Path(__file__).resolve().parent / "data" /
                    "realfolder_questions.jsonl", help="JSONL of {question, answer, aliases?, group: "
                    "answerable|missing|offtopic}; an answer counts when it holds the answer or an alias")
    ap.add_argument("--retriever", default="bm25", choices=["dense", "bm25", "hybrid"])
    ap.add_argument("--show", action="store_true", help="print every question with its reply and the check that decided")
    args = ap.parse_args()
    limits = thresholds(args.embedder)
    placement = resolve(args.device, "auto")
    lm = cache(lambda: HFBackend.load(args.model, placement))
    tok, _ = load_tokenizer(args.tokenizer)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = args.folder or write_docs(root / "docs")
        build_corpus(read_source(str(folder)), tok, root / "kb")
        embedder = Embedder(args.embedder, cache_dir=root / "vectors", placement=placement)
        build_index(root / "kb", embedder, root / "ix")
        dense = open_retriever(root / "ix", args.retriever, args.embedder, args.device)

        def ask(question: str, retriever: Retriever) -> Answer:
            return answer_question(retriever, lm, question, args.k, limits)

        n = args.limit
        if args.folder:
            rows_in = [json.loads(line) for line in args.questions.read_text().splitlines() if line.strip()]
            present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
            for group, label in (("answerable", "answerable"), ("missing", "missing"), ("offtopic", "off-topic")):
                qs = [r for r in rows_in if r["group"] == group and (r["source"] is None or r["source"] in present)]
                rows.append(run_group(label, [(r["question"], r["answer"] and [r["answer"], *r.get("aliases", [])], dense)
                                              for r in qs[:n]], ask, args.show))
        else:
            rows.append(run_group("answerable", [(f.question, [f.answer], dense) for f in FACTS[:n]], ask, args.show))
            rows.append(run_group("missing", [(q, None, dense) for q in MISSING[:n]], ask))
            rows.append(run_group("off-topic", [(q, None, dense) for q in UNANSWERABLE[:n]], ask))

        if args.sciq:
            from kinject.tasks.task import load_sciq

            items = [it for it in load_sciq(True, "sciq").items if it.passage]
            build_corpus(read_source("sciq"), tok, root / "sciq-kb")  # a passage's id is its question's
            build_index(root / "sciq-kb", embedder, root / "sciq-ix")
            sciq = DenseRetriever(root / "sciq-ix", embedder)
            picked = random.Random(0).sample(range(len(items)), min(args.sciq, len(items)))

            class LeftOut:  # the index without one passage: the subject is covered, the fact is not
                def __init__(self, drop: str) -> None:
                    self.dense, self.drop = sciq, drop

                def search(self, queries, k, groups=None):
                    return [[h for h in hits if h.chunk.doc_id != self.drop][:k]
                            for hits in sciq.search(queries, k + 1, groups)]

            rows.append(run_group("sciq, own passage in", [
                (items[i].question, [items[i].choices[items[i].gold]], sciq) for i in picked], ask))
            rows.append(run_group("sciq, own passage out", [
                (items[i].question, None, LeftOut(items[i].id)) for i in picked], ask))

    print(f"ask with {args.model}, {args.retriever} retrieval, embedder {args.embedder} (chunk ≥ {limits.chunk:.2f}, sentence ≥ "
          f"{limits.sentence:.2f}), k={args.k}")
    print(f"  {'group':24s} {'right':>9s}   checks (abstained by: off-topic, code, sentence, model, number)")
    for r in rows:
        rate = r["right"] / max(1, r["n"])
        checks = ", ".join(f"{k} {v}" for k, v in sorted(r["checks"].items()))
        print(f"  {r['group']:24s} {r['right']:3d}/{r['n']:<3d} {rate:6.1%}   {checks}   ({r['s_per_q']:.1f} s/q)")
    print("right: answerable groups answered with the fact; the others abstained")


if __name__ == "__main__":
    main()
