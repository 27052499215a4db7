"""`kinject init` + `kinject run` on a real folder nobody on the project wrote, at two budgets.

    python benchmarks/real_folder.py [--folder DIR] [--small] [--minutes 15,60] [--run]
                                     [--audit 100] [--out DIR]

The folder (default: built by benchmarks/realfolder_fetch.py from Debian documentation packages
and a PyPI sdist: Sphinx, mdBook and MkDocs HTML sites, PDF manuals, a markdown changelog) is
surveyed as `kinject init` reads it; the script prints
  - files by type, PDF pages, redirect pages left out, near-duplicate chunks skipped, chunks;
  - for each budget: init's design (questions, documents asked, fine-tuning chunks, bf16) and
    its planned minutes, or its one-line refusal when the budget is below the smallest design;
  - the audit of init's questions (benchmarks/question_audit.py's machine checks: no URL, no
    licence/bibliography/contents furniture, distractors from the corpus, the title prefix);
  - with --run, `kinject run` on each config for real, its stages cached under --out (a first
    run, as a new user's; chunk vectors already in $KINJECT_HOME/embeddings are reused, so move
    that folder aside to time the embedding too): actual vs planned minutes, and base / RAG / FT /
    FT+RAG accuracy with 95% bootstrap CIs (RAG and FT+RAG at their best K).
Without --run it stops after the plans (what `make test` runs, on the --small folder).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from question_audit import checks  # noqa: E402
from realfolder_fetch import cache_root, fetch  # noqa: E402

from kinject.core.errors import KinjectError  # noqa: E402
from kinject.experiment.kbinit import survey, write_init  # noqa: E402
from kinject.runtime.devices import resolve  # noqa: E402


def audit(config: Path, folder_survey, n: int) -> tuple[int, int, Counter]:
    """(passed, audited, failures by check) over up to n of the config's questions."""
    import json

    from kinject.tasks.task import Item

    rows = [json.loads(line) for line in config.with_name(config.stem + ".questions.jsonl").read_text().splitlines()]
    rows = random.Random(0).sample(rows, min(n, len(rows)))
    titles = {c.id: c.title for c in folder_survey.chunks}
    corpus = "\n".join(c.text for c in folder_survey.chunks)
    failed: Counter = Counter()
    passed = 0
    for r in rows:
        it = Item(r["id"], r["question"], tuple(r["choices"]), r["gold"], r.get("subject"), source=r.get("source"),
                  source_chunks=tuple(r["source_chunks"]))
        bad = checks(it, titles.get(it.source_chunks[0], "") if it.source_chunks else "", corpus)
        failed.update(bad)
        passed += not bad
    return passed, len(rows), failed


def arms(run_dir: Path) -> list[str]:
    """Base / RAG / FT / FT+RAG accuracy with CIs, RAG arms at their best K."""
    from kinject.report.rundata import load_run

    run = load_run(run_dir)
    best: dict[str, tuple[float, str]] = {}
    for c in run.done:
        score = c.acc_norm if c.metric == "acc_norm" else c.acc
        if score is None:
            continue
        lo, hi = run.ci.get(c.id, (float("nan"), float("nan")))
        label = f"{c.method}" + (f" (K={c.k})" if c.k else "")
        if c.method not in best or score > best[c.method][0]:
            best[c.method] = (score, f"{label:<16} {score:.3f} [{lo:.3f}, {hi:.3f}]  n={c.n}")
    return [best[m][1] for m in ("base", "rag", "ft", "ft+rag") if m in best]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=None)
    ap.add_argument("--small", action="store_true", help="the smoke-scale folder (no rust-doc download)")
    ap.add_argument("--minutes", default="15,60", help="budgets for init, comma-separated")
    ap.add_argument("--run", action="store_true", help="run each config for real and time it")
    ap.add_argument("--audit", type=int, default=100, help="questions to audit per config")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", type=Path, default=None, help="where configs and runs go (default: a temporary folder)")
    args = ap.parse_args()
    folder = args.folder or fetch(cache_root() / ("realfolder-small" if args.small else "realfolder"), args.small)
    s = survey(folder, args.model, skip_bad=False)
    t = s.tally
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(t.files.items()))
    print(f"{folder}: {sum(t.files.values())} files ({kinds}), {t.pages} PDF pages, {len(t.redirects)} redirect pages "
          f"left out, {s.repeats.chunks} near-duplicate chunks skipped → {len(s.chunks)} chunks, {s.tokens:,} tokens")
    for line in s.repeats.notes(3):
        print("  " + line.strip())
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        placement = resolve("cpu", "fp32")
        for minutes in (float(m) for m in args.minutes.split(",")):
            config = out / f"m{minutes:g}.yaml"
            try:
                d = write_init(folder, config, args.model, "minilm-l6", placement, minutes, False, True)
            except KinjectError as exc:
                print(f"--minutes {minutes:g}: refused: {exc}")
                continue
            print(f"--minutes {minutes:g}: {d.questions} of {d.available} questions over {d.documents_asked} documents, "
                  f"FT on {d.train_chunks} of {len(d.chunks)} chunks ({d.steps} steps{', bf16' if d.bf16 else ''}); "
                  f"planned {(d.seconds or 0) / 60:.1f} min")
            passed, n, failed = audit(config, s, args.audit)
            print(f"  audit: {passed}/{n} questions pass every machine check ({passed / max(1, n):.0%})"
                  + (f"; failures: {dict(failed)}" if failed else ""))
            if not args.run:
                continue
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "kinject", "run", str(config), "--out", str(out / config.stem),
                                   "--cache", str(out / "stages")], capture_output=True, text=True)
            actual = (time.perf_counter() - started) / 60
            if proc.returncode:
                print(f"  run failed ({proc.returncode}): {(proc.stderr.strip().splitlines() or [''])[-1]}")
                continue
            print(f"  actual {actual:.1f} min vs planned {(d.seconds or 0) / 60:.1f} min "
                  f"({actual / ((d.seconds or 1) / 60) - 1:+.0%})")
            for line in arms(out / config.stem):
                print("    " + line)


if __name__ == "__main__":
    main()
