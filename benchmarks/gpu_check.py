"""GPU check: kinject in bf16 and fp32 against lm-evaluation-harness on the same GPU, in one run.

    python benchmarks/gpu_check.py                        # smollm2-135m, 100 questions per task, cuda
    python benchmarks/gpu_check.py --device cpu --limit 2 # the same logic on the CPU (smoke test)

It scores the first `--limit` questions of MMLU anatomy (5-shot) and of SciQ with its passage
(`sciq:support`, 0-shot) with kinject's `hf` backend in fp32 and in bf16, and with lm-eval's hf
backend (its own task templates over local exports of the same questions, fp32, on the same
loaded model), then prints one row per task and engine: seconds, questions/s, speed-up over
lm-eval fp32, the share of questions where the prediction (argmax log-likelihood, and per
character for acc_norm) is the same as lm-eval's, the largest per-choice |Δ log-likelihood|
against lm-eval, and the peak GPU memory of that run (torch.cuda.max_memory_allocated, reset
before each run; one model resident at a time, so it is that model's weights plus its work).

Without a CUDA device (or without the one asked for) it prints one line and exits 0 before any
model is loaded. A dtype this device cannot run (bf16 before Ampere, or on a CPU without
AVX512-BF16/AMX) is skipped with a note. Times are evaluation only, each model warmed up first;
lm-eval's include building its task from the exported files, as in `scoring_speed.py`.
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

TASKS = ("mmlu:anatomy:5", "sciq:support:0")
DTYPES = ("fp32", "bf16")


@dataclass
class Row:
    task: str
    engine: str  # "lm-eval" or "kinject"
    dtype: str
    n: int
    seconds: float
    peak_mb: float | None
    preds: list[tuple[int, int]]
    logliks: list[tuple[float, ...]]


def no_device_reason(device: str) -> str | None:
    """Why there is nothing to check here (one line), or None when `device` exists."""
    import torch

    if device == "cpu":
        return None
    if not torch.cuda.is_available():
        return "gpu_check: no CUDA device here (torch sees none); nothing to check"
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    n = torch.cuda.device_count()
    if m and int(m.group(1) or 0) >= n:
        return f"gpu_check: no {device} here (torch sees {n} CUDA device{'s' if n != 1 else ''}); nothing to check"
    return None


def _sync(placement) -> None:
    import torch

    if placement.kind == "cuda":
        torch.cuda.synchronize(placement.torch_device)


def _warm_up(model, placement) -> None:
    """One small forward: CUDA context, kernels and allocator ready before anything is timed."""
    import torch

    with torch.inference_mode():
        model(input_ids=torch.arange(1, 33, device=placement.torch_device)[None])
    _sync(placement)


def _free() -> None:
    """Give the last model's GPU memory back before the next one loads."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit", type=int, default=100, help="first N questions per task (default 100)")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (the logic on the CPU, a smoke test)")
    ap.add_argument("--batch-size", type=int, default=8, help="for kinject and lm-eval alike")
    args = ap.parse_args()
    device = args.device.strip().lower()
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        ap.error(f"--device must be cuda, cuda:N or cpu, got '{args.device}'")

    reason = no_device_reason(device)
    if reason:
        print(reason)
        return 0

    from lmeval_bridge import hflm, prepare, run_lm_eval

    from kinject.core.errors import KinjectError
    from kinject.lm.backends import HFBackend
    from kinject.lm.scoring import Scored, predictions
    from kinject.runtime.devices import peak_gpu_mb, reset_peak_gpu, resolve
    from kinject.runtime.models import load_lm
    from kinject.tasks.task import render

    placements = {}
    for dtype in DTYPES:
        try:
            placements[dtype] = resolve(device, dtype)
        except KinjectError as exc:
            print(f"note: kinject {dtype} skipped: {exc}", flush=True)
    if "fp32" not in placements:  # lm-eval's baseline and kinject fp32 need it
        print("gpu_check: fp32 cannot run on this device; nothing to check")
        return 1
    where = placements["fp32"]
    print(f"gpu_check: {args.model} on {where.device} ({where.device_name}), {args.limit} questions per task, "
          f"batch size {args.batch_size}", flush=True)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        prepared = [prepare(spec, args.limit, Path(tmp)) for spec in TASKS]
        for dtype, placement in placements.items():
            model, tok = load_lm(args.model, placement)
            _warm_up(model, placement)
            backend = HFBackend(model, tok, placement, args.batch_size, args.model)
            lm = hflm(model, tok, args.batch_size) if dtype == "fp32" else None
            for cond, task, items, name in prepared:
                if lm is not None:  # lm-eval fp32 on this same model: the baseline
                    reset_peak_gpu(placement)
                    ref = run_lm_eval(lm, name, Path(tmp), cond.shots, args.batch_size)
                    if len(ref.logliks) != len(items):
                        raise SystemExit(f"gpu_check: lm-eval scored {len(ref.logliks)} of {len(items)} "
                                         f"{cond.label} questions")
                    ref_prompts = [render(task, it, cond.shots) for it in items]
                    ref_preds = [predictions(Scored(ll, (False,) * len(ll)), p.choice_texts)
                                 for ll, p in zip(ref.logliks, ref_prompts)]
                    rows.append(Row(cond.label, "lm-eval", "fp32", len(items), ref.seconds,
                                    peak_gpu_mb(placement), ref_preds, ref.logliks))
                reset_peak_gpu(placement)
                started = time.perf_counter()
                prompts = [render(task, it, cond.shots) for it in items]
                scored = backend.loglikelihood(prompts, [f"{it.subject}" for it in items])
                preds = [predictions(s, p.choice_texts) for s, p in zip(scored, prompts)]
                _sync(placement)
                seconds = time.perf_counter() - started
                rows.append(Row(cond.label, "kinject", dtype, len(items), seconds, peak_gpu_mb(placement), preds,
                                [s.logliks for s in scored]))
            del model, tok, backend, lm
            _free()

    print(table(rows))
    return 0


def table(rows: list[Row]) -> str:
    """One line per task and engine; the kinject rows compared with that task's lm-eval row."""
    head = (f"{'task':20s} {'engine':7s} {'dtype':5s} {'n':>4s} {'seconds':>8s} {'q/s':>8s} {'vs lm-eval':>10s} "
            f"{'same pred':>9s} {'same norm':>9s} {'max|Δll|':>9s} {'peak MB':>8s}")
    lines = [head, "-" * len(head)]
    for task in dict.fromkeys(r.task for r in rows):
        ref = next(r for r in rows if r.task == task and r.engine == "lm-eval")
        for r in (x for x in rows if x.task == task):
            peak = f"{r.peak_mb:8.0f}" if r.peak_mb is not None else f"{'-':>8s}"
            if r is ref:
                same = norm = diff = "-"
            else:
                n = len(r.preds)
                same = f"{sum(a[0] == b[0] for a, b in zip(r.preds, ref.preds)) / n:.3f}"
                norm = f"{sum(a[1] == b[1] for a, b in zip(r.preds, ref.preds)) / n:.3f}"
                diff = f"{max(abs(x - y) for a, b in zip(r.logliks, ref.logliks) for x, y in zip(a, b)):.1e}"
            lines.append(f"{r.task:20s} {r.engine:7s} {r.dtype:5s} {r.n:4d} {r.seconds:8.2f} {r.n / r.seconds:8.2f} "
                         f"{ref.seconds / r.seconds:9.2f}x {same:>9s} {norm:>9s} {diff:>9s} {peak}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
