"""Scoring speed: kinject vs lm-evaluation-harness on the same questions, in the same run.

    python benchmarks/scoring_speed.py                    # MMLU mc 5-shot + SciQ with passages
    python benchmarks/scoring_speed.py --limit 100 --dtype bf16 [--profile]

Prints questions/s of both, their ratio, whether predictions agree, and kinject's effective
GFLOP/s (2 · non-embedding params · tokens forwarded, padding included) against a torch
matmul peak measured at the start of this run in the same dtype.

Then the ceiling at the model's own shapes: every linear layer's call during kinject's run is
recorded (rows, in, out) and replayed alone, as bare matmuls of the same shapes and dtype:
"ceiling" is the share of the peak those matmuls reach with nothing else running (a 135M model's
576-wide matmuls reached 93-101% of the bf16 peak on 2 AVX512-BF16 cores), "of that ceiling" the
share of it the whole scoring reaches (attention, norms, the head's log-softmax, Python and
padding are the rest).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from lmeval_bridge import hflm, matmul_peak, prepare, profiled, run_lm_eval  # noqa: E402

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
    ap.add_argument("--profile", action="store_true",
                    help="after each timed run, score the questions once more under the torch profiler and "
                         "print kinject's ops by their own CPU time")
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
    shapes: Counter[tuple[int, int, int]] = Counter()

    def record(module, inputs, output) -> None:
        x = inputs[0]
        shapes[(x.numel() // x.shape[-1], module.in_features, module.out_features)] += 1

    linears = [m for m in ours.modules() if isinstance(m, torch.nn.Linear)]
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.conditions:
            cond, task, items, name = prepare(spec, args.limit, Path(tmp))
            ref = run_lm_eval(lm, name, Path(tmp), cond.shots, args.batch_size)
            forwarded[0] = 0
            shapes.clear()
            hooks = [m.register_forward_hook(record) for m in linears]  # kinject's timed run only
            started = time.perf_counter()
            records = evaluate(HFBackend(ours, tok, placement, args.batch_size), task, cond.shots, args.limit)
            seconds = time.perf_counter() - started
            for h in hooks:
                h.remove()
            ref_preds = [max(range(len(ll)), key=lambda i: (ll[i], -i)) for ll in ref.logliks]
            agree = sum(r.pred == p for r, p in zip(records, ref_preds)) / len(records)
            gflops = 2 * params * forwarded[0] / seconds / 1e9
            n = len(records)
            print(f"{cond.label:24s} n={n} kinject[{args.dtype}] {n / seconds:.2f} q/s  lm-eval[fp32] "
                  f"{n / ref.seconds:.2f} q/s  speed-up {ref.seconds / seconds:.2f}x  prediction agreement "
                  f"{agree:.4f}  kinject {forwarded[0]} tokens, {gflops:.0f} GFLOP/s = {gflops / peak:.0%} of peak",
                  flush=True)
            ceiling = replayed_gflops(shapes, ours.dtype)
            print(f"{'':24s} ceiling: the same linear-layer matmuls alone {ceiling:.0f} GFLOP/s = "
                  f"{ceiling / peak:.0%} of peak; the scoring reaches {gflops / ceiling:.0%} of that ceiling",
                  flush=True)
            with profiled(args.profile, f"kinject's {cond.label} scoring ({args.dtype})"):
                evaluate(HFBackend(ours, tok, placement, args.batch_size), task, cond.shots, args.limit)


def replayed_gflops(shapes: Counter, dtype: torch.dtype, rounds: int = 3) -> float:
    """GFLOP/s of the recorded linear calls replayed as bare matmuls (best of `rounds`)."""
    flops = sum(2 * rows * n_in * n_out * count for (rows, n_in, n_out), count in shapes.items())
    if not flops:
        return float("nan")
    operands = {s: (torch.randn(s[0], s[1], dtype=dtype), torch.randn(s[2], s[1], dtype=dtype)) for s in shapes}
    best = float("inf")
    with torch.inference_mode():
        for _ in range(rounds):
            started = time.perf_counter()
            for s, count in shapes.items():
                x, w = operands[s]
                for _ in range(count):
                    torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - started)
    return flops / best / 1e9


if __name__ == "__main__":
    main()
