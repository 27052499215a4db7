"""Are `kinject init`'s offline cloze questions about a folder's subject, not its furniture?

    python benchmarks/question_audit.py --folder DIR [--n 100] [--seed 0] [--tokenizer smollm2-135m]
                                        [--no-skip-bad]

Reads and chunks DIR as `kinject init` does (`kinject.experiment.kbinit.survey`, then `make_questions`),
samples N of its questions and prints each with its chunk's source, then checks every one by
machine, with rules of its own rather than the generator's:
  url        no URL, e-mail address or markdown link in the question or its options;
  furniture  no copyright, licence, bibliography, table-of-contents or page-number pattern, no
             cross-reference ("see ___ for details"), issue number ("#___") or section number
             opening the sentence;
  options    every distractor occurs in the folder's text, or is a number written in the
             answer's format (digits changed, nothing else: no "1981a" against "1980s");
  text       no words run together by a PDF extractor ("withoutrebootingthesystem");
  title      the question opens with its document's title (a pilcrow or a section or chapter
             number aside); a generic navigation title ("Keyboard shortcuts") must not open it.
It ends with the answer types' mix and the pass rate (questions that pass every check).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kinject.experiment.kbinit import make_questions, survey  # noqa: E402
from kinject.tasks.task import Item  # noqa: E402

URL = re.compile(r"https?://|\bwww\.|[\w.+-]+@[\w-]+\.[a-z]{2,}|\]\(|\b[\w-]+\.(?:com|org|net|io)/", re.I)
FURNITURE = re.compile(
    r"copyright|©|\(c\)\s*\d{4}|all rights reserved|permission is (?:hereby )?granted|licen[cs]ed under|"
    r"redistribution and use|warrant(?:y|ies)\b.*\b(?:merchantability|fitness)|provided .as is|"
    r"\bet al\.|\bpp\.\s*\d|\bdoi:|\bisbn\b|\bjournal of\b|\bproceedings of\b|\bvol\.\s*\d|"
    r"\.{4,}|…\s*\d|(?:\. ){3,}|^(?:[^:]*: )?(?:chapter|appendix|part) [\divx]+\b|\bpage \d+ of \d+|"
    r"#___|\b(?:issue|bug|rfc|pep) ___|\bsee (?:\S+ ){0,3}___|\(see\b|^[^:]*: \d+(?:\.\d+)+\s", re.I)
GENERIC_TITLES = {"keyboard shortcuts", "search", "index", "contents", "table of contents", "navigation", "menu",
                  "home", "untitled", "page not found", "404", "previous", "next", ""}
GLUED = re.compile(r"[a-zß-ÿ]{21,}")
MONTH = re.compile(r"\b(?:January|February|March|April|May|June|July|August|September|October|November|December)\b")


def number_shape(text: str) -> str | None:
    """The answer's format with its digits abstracted ("1,234 km" → "0,0 km"); None if no digit."""
    if not re.search(r"\d", text):
        return None
    return re.sub(r"\d+", "0", MONTH.sub("M", text))


def plain_title(title: str) -> str:
    """A title without the furniture a reader leaves on it: a pilcrow, a leading "2. " or "Chapter 6. "."""
    return re.sub(r"^(?:(?:Chapter|Appendix|Part|Section)\s+(?:[A-Z]|[IVXL]+|\d{1,2})\.?\s+|\d{1,2}(?:\.\d{1,2})*\.\s+)",
                  "", title.replace("¶", "").strip())


def checks(it: Item, title: str, corpus: str) -> list[str]:
    """The names of the checks `it` fails."""
    failed = []
    texts = [it.question, *it.choices]
    if any(URL.search(t) for t in texts):
        failed.append("url")
    if any(FURNITURE.search(t) for t in texts):
        failed.append("furniture")
    if any(GLUED.search(t) for t in texts):
        failed.append("text")
    answer = it.choices[it.gold]
    shape = number_shape(answer)
    if not all(c in corpus or (shape is not None and number_shape(c) == shape)
               for c in it.choices if c != answer):
        failed.append("options")
    prefixes = {title.replace("¶", "").strip(), plain_title(title)}
    opens = any(p and it.question.startswith(p + ": ") for p in prefixes)
    if opens == (plain_title(title).lower() in GENERIC_TITLES):
        failed.append("title")
    return failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--n", type=int, default=100, help="questions sampled and printed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", default="smollm2-135m", help="the chunker's tokenizer, as `kinject init --model`")
    ap.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=True,
                    help="leave out files that cannot be read (as `kinject init --skip-bad`)")
    args = ap.parse_args()

    s = survey(args.folder, args.tokenizer, args.skip_bad)
    items, _ = make_questions(s.chunks, None)
    if not items:
        sys.exit(f"{args.folder}: no question could be made")
    chunks = {c.id: c for c in s.chunks}
    corpus = " ".join(" ".join(c.text.split()) for c in s.chunks)
    sample = random.Random(args.seed).sample(items, min(args.n, len(items)))
    failures: Counter[str] = Counter()
    passed = 0
    for i, it in enumerate(sample, 1):
        c = chunks[it.source_chunks[0]]
        failed = checks(it, c.title, corpus)
        failures.update(failed)
        passed += not failed
        where = c.source or c.doc_id
        print(f"[{i}] {where}{f' p. {c.page_start}' if c.page_start else ''} · {it.subject} · "
              f"{'ok' if not failed else 'FAIL ' + ','.join(failed)}")
        print(f"    Q: {it.question}")
        print(f"    A: {it.choices[it.gold]}  | options: {' / '.join(it.choices)}")
    mix = Counter(it.subject for it in items)
    print(f"\n{len(items)} questions from {len(s.chunks)} chunks of {s.documents} documents; types: "
          + ", ".join(f"{k} {100 * n / len(items):.0f}%" for k, n in mix.most_common()))
    print("failed checks: " + (", ".join(f"{k} {n}" for k, n in failures.most_common()) or "none"))
    print(f"pass rate: {passed}/{len(sample)} ({100 * passed / len(sample):.1f}%)")


if __name__ == "__main__":
    main()
