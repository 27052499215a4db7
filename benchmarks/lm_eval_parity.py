"""Parity with lm-evaluation-harness: same model, prompts and questions; per-question comparison.

    python benchmarks/lm_eval_parity.py --limit 100            # the issue's conditions, 100 q each
    python benchmarks/lm_eval_parity.py --conditions sciq:0 --limit 1000

For every condition it exports kinject's items to JSONL, runs lm-eval (hf backend, its own
task templates over the local files) and kinject on the same loaded model, and prints: the
share of questions whose prediction (acc and acc_norm argmax) agrees, the largest per-choice
log-likelihood difference, the lm-eval margin of every disagreement, both accuracies, and
both wall times (evaluation only, model loaded once).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from lmeval_bridge import hflm, prepare, run_lm_eval  # noqa: E402

from kinject.lm.backends import HFBackend  # noqa: E402
from kinject.lm.scoring import evaluate, predictions  # noqa: E402
from kinject.runtime.models import CPU, load_lm  # noqa: E402

DEFAULT = ("mmlu:anatomy:0", "mmlu:anatomy:5", "mmlu:anatomy@cloze:0",
           "mmlu:astronomy:0", "mmlu:astronomy:5", "mmlu:astronomy@cloze:0", "sciq:support:0", "sciq:0")


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--conditions", nargs="+", default=list(DEFAULT), help="TASK:SHOTS, e.g. mmlu:anatomy@cloze:0")
    ap.add_argument("--limit", type=int, default=None, help="first N questions per condition (default all)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="write the comparison as JSON here")
    args = ap.parse_args()

    model, tok = load_lm(args.model)
    lm = hflm(model, tok, args.batch_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.conditions:
            cond, task, items, name = prepare(spec, args.limit, Path(tmp))
            ref = run_lm_eval(lm, name, Path(tmp), cond.shots, args.batch_size)
            started = time.perf_counter()
            records = evaluate(HFBackend(model, tok, CPU, args.batch_size), task, cond.shots, args.limit)
            ours_s = time.perf_counter() - started
            assert [r.id for r in records] == [it.id for it in items]
            agree = agree_norm = 0
            max_diff = 0.0
            margins = []
            for rec, theirs in zip(records, ref.logliks):
                max_diff = max(max_diff, max(abs(a - b) for a, b in zip(rec.logliks, theirs)))
                texts = [c[1:] for c in rec.continuations]
                ref_pred = _argmax(list(theirs))
                ref_norm = _argmax([ll / len(t) for ll, t in zip(theirs, texts)])
                pred, pred_norm = predictions(type("S", (), {"logliks": rec.logliks})(), texts)
                agree += pred == ref_pred
                agree_norm += pred_norm == ref_norm
                if pred != ref_pred:
                    margins.append(abs(theirs[pred] - theirs[ref_pred]))
            n = len(records)
            ours_acc = sum(r.acc for r in records) / n
            ours_norm = sum(r.acc_norm for r in records) / n
            row = {"condition": cond.label, "n": n, "agree": agree / n, "agree_norm": agree_norm / n,
                   "max_loglik_diff": max_diff, "disagreement_margins": margins,
                   "acc_kinject": ours_acc, "acc_lm_eval": ref.acc, "acc_norm_kinject": ours_norm,
                   "acc_norm_lm_eval": ref.acc_norm, "seconds_kinject": ours_s, "seconds_lm_eval": ref.seconds}
            rows.append(row)
            print(f"{cond.label:28s} n={n:4d} agree={agree / n:.4f} agree_norm={agree_norm / n:.4f} "
                  f"max|dll|={max_diff:.1e} acc {ours_acc:.3f}/{ref.acc:.3f} acc_norm {ours_norm:.3f}/"
                  f"{ref.acc_norm:.3f} time {ours_s:.1f}s/{ref.seconds:.1f}s ({ref.seconds / ours_s:.2f}x)"
                  + (f" margins {['%.1e' % m for m in margins]}" if margins else ""), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "batch_size": args.batch_size, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
