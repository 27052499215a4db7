"""Scoring speed: kinject vs lm-evaluation-harness on the same questions, in the same run.

    python benchmarks/scoring_speed.py                    # MMLU mc 5-shot + SciQ with passages
    python benchmarks/scoring_speed.py --limit 100 --dtype bf16

Prints questions/s of both, their ratio, whether predictions agree, and kinject's effective
GFLOP/s (2 · non-embedding params · tokens forwarded, padding included) against a torch
matmul peak measured at the start of this run in the same dtype.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from lmeval_bridge import hflm, matmul_peak, prepare, run_lm_eval  # noqa: E402

from kinject.lm.backends import HFBackend  # noqa: E402
from kinject.lm.scoring import evaluate  # noqa: E402
from kinject.runtime.devices import Placement  # noqa: E402
from kinject.runtime.models import CPU, load_lm  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--conditions", nargs="+", default=["mmlu:anatomy:5", "sciq:support:0"])
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="kinject's dtype; lm-eval always runs fp32 (the baseline)")
    args = ap.parse_args()

    peak = matmul_peak(torch.float32 if args.dtype == "fp32" else torch.bfloat16)
    print(f"matmul peak ({args.dtype}, 2048^3, {torch.get_num_threads()} threads): {peak:.0f} GFLOP/s")
    base, tok = load_lm(args.model)
    placement = CPU if args.dtype == "fp32" else Placement("cpu", "bf16")
    ours = base if args.dtype == "fp32" else load_lm(args.model, placement)[0]
    lm = hflm(base, tok, args.batch_size)
    body = ours.base_model
    params = sum(p.numel() for n, p in ours.named_parameters() if "embed" not in n)
    forwarded = [0]
    inner = body.forward

    def counting(*a, **kw):
        forwarded[0] += kw["input_ids"].numel()
        return inner(*a, **kw)

    body.forward = counting
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.conditions:
            cond, task, items, name = prepare(spec, args.limit, Path(tmp))
            ref = run_lm_eval(lm, name, Path(tmp), cond.shots, args.batch_size)
            forwarded[0] = 0
            started = time.perf_counter()
            records = evaluate(HFBackend(ours, tok, placement, args.batch_size), task, cond.shots, args.limit)
            seconds = time.perf_counter() - started
            ref_preds = [max(range(len(ll)), key=lambda i: (ll[i], -i)) for ll in ref.logliks]
            agree = sum(r.pred == p for r, p in zip(records, ref_preds)) / len(records)
            gflops = 2 * params * forwarded[0] / seconds / 1e9
            n = len(records)
            print(f"{cond.label:24s} n={n} kinject[{args.dtype}] {n / seconds:.2f} q/s  lm-eval[fp32] "
                  f"{n / ref.seconds:.2f} q/s  speed-up {ref.seconds / seconds:.2f}x  prediction agreement "
                  f"{agree:.4f}  kinject {forwarded[0]} tokens, {gflops:.0f} GFLOP/s = {gflops / peak:.0%} of peak",
                  flush=True)


if __name__ == "__main__":
    main()
