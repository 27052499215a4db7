"""Backend speed: the in-process hf backend vs the openai-completions backend against a
`kinject serve` process, on the same questions, in the same run (CPU, fp32).

    python benchmarks/backend_speed.py                 # 50 MMLU anatomy 5-shot + 50 SciQ with passages
    python benchmarks/backend_speed.py --limit 2       # smoke run

Starts `kinject serve --model MODEL --port 0` itself. Prints questions/s of both backends, their
ratio, the largest |Δ log-likelihood| over all options and how often the predictions agree.
The server runs a plain full forward per option (no prefix reuse), so the gap measures what
lm-eval-style serving costs against kinject's shared-prefix fast path, not HTTP overhead alone.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from kinject.lm.backends import HFBackend
from kinject.lm.completions import OpenAICompletionsBackend
from kinject.lm.scoring import Record, evaluate
from kinject.runtime.models import CPU, load_lm
from kinject.tasks.registry import load_task


def start_server(model: str) -> subprocess.Popen:
    """A `kinject serve` process on a free port (its first stdout line names the URL)."""
    return subprocess.Popen([sys.executable, "-m", "kinject.cli.main", "serve", "--model", model, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def server_url(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if " on http://" not in line:
        sys.exit(f"kinject serve did not start: {line!r}")
    return line.split(" on ")[1].split()[0]


def timed(lm, task, shots: int, limit: int) -> tuple[list[Record], float]:
    started = time.perf_counter()
    records = evaluate(lm, task, shots, limit)
    return records, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--conditions", nargs="+", default=["mmlu:anatomy:5", "sciq:support:0"],
                    help="TASK:SHOTS, e.g. mmlu:anatomy:5")
    ap.add_argument("--limit", type=int, default=50, help="questions per condition")
    ap.add_argument("--batch-size", type=int, default=8, help="hf backend batch size")
    ap.add_argument("--concurrency", type=int, default=8, help="openai-completions requests in flight")
    args = ap.parse_args()

    proc = start_server(args.model)
    try:
        model, tok = load_lm(args.model, CPU)  # while the server loads its copy
        url = server_url(proc)
        local = HFBackend(model, tok, CPU, args.batch_size, args.model)
        remote = OpenAICompletionsBackend(url, args.model, args.model, concurrency=args.concurrency)
        print(f"{args.model} fp32 on CPU; hf in-process (batch {args.batch_size}) vs openai-completions on {url} "
              f"({args.concurrency} in flight)", flush=True)
        totals = {"n": 0, "hf": 0.0, "remote": 0.0, "agree": 0, "delta": 0.0}
        for spec in args.conditions:
            name, _, shots_s = spec.rpartition(":")
            task, shots = load_task(name), int(shots_s)
            ref, hf_s = timed(local, task, shots, args.limit)
            got, remote_s = timed(remote, task, shots, args.limit)
            n = len(ref)
            delta = max(abs(a - b) for r, g in zip(ref, got) for a, b in zip(r.logliks, g.logliks))
            agree = sum(r.pred == g.pred and r.pred_norm == g.pred_norm for r, g in zip(ref, got))
            greedy = sum(r.greedy == g.greedy for r, g in zip(ref, got))
            print(f"{spec:24s} n={n} hf {n / hf_s:.2f} q/s  openai-completions {n / remote_s:.2f} q/s  "
                  f"hf/remote {remote_s / hf_s:.2f}x  max |Δ loglik| {delta:.2e}  prediction agreement {agree / n:.4f}"
                  f"  greedy flags agree {greedy / n:.4f}", flush=True)
            totals["n"] += n
            totals["hf"] += hf_s
            totals["remote"] += remote_s
            totals["agree"] += agree
            totals["delta"] = max(totals["delta"], delta)
        remote.close()
        n = totals["n"]
        print(f"{'all':24s} n={n} hf {n / totals['hf']:.2f} q/s  openai-completions {n / totals['remote']:.2f} q/s  "
              f"hf/remote {totals['remote'] / totals['hf']:.2f}x  max |Δ loglik| {totals['delta']:.2e}  "
              f"prediction agreement {totals['agree'] / n:.4f}")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
