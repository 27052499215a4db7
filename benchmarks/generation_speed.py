"""Free-form answering speed: kinject's batched generation vs a plain per-question `generate` loop.

    python benchmarks/generation_speed.py [--model smollm2-135m] [--task newfacts@free] [--n 48]
                                          [--shots 3] [--batch-size 8] [--device cpu]

Same prompts, same run: questions/s of a loop that calls `model.generate` once per question (what
a script written in an afternoon does) and of `kinject.eval.freeform.answer_task` (left-padded batches
of similar length, KV cache, greedy), each at 32 new tokens; the ratio, and whether both give the
same answers (greedy decoding: a batch may flip a near-tie, so the count is printed, not assumed).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kinject.eval.freeform import MAX_TOKENS, answer_task, first_line  # noqa: E402
from kinject.lm.backends import HFBackend  # noqa: E402
from kinject.runtime.devices import resolve  # noqa: E402
from kinject.tasks.registry import load_task  # noqa: E402
from kinject.tasks.task import render, select  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="newfacts@free")
    ap.add_argument("--n", type=int, default=48, help="questions")
    ap.add_argument("--shots", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import torch

    task = load_task(args.task)
    task = replace(task, items=tuple(select(task, None)[:args.n]))
    lm = HFBackend.load(args.model, resolve(args.device, "auto"))
    prompts = [render(task, it, args.shots).context for it in task.items]
    device = lm.model.get_input_embeddings().weight.device

    started = time.perf_counter()
    plain = []
    for p in prompts:
        ids = lm.tok(p, return_tensors="pt").to(device)
        with torch.inference_mode():
            out = lm.model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False,
                                    pad_token_id=lm.tok.pad_token_id or lm.tok.eos_token_id)
        plain.append(first_line(lm.tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)))
    loop_s = time.perf_counter() - started

    started = time.perf_counter()
    records = answer_task(lm, task, args.shots, None, batch_size=args.batch_size)
    batched_s = time.perf_counter() - started
    same = sum(a == r.free["answer"] for a, r in zip(plain, records))

    n = len(prompts)
    print(f"{args.model} on {n} {args.task} questions, {args.shots}-shot, {MAX_TOKENS} new tokens, {lm.describe()['device']}")
    print(f"  per-question model.generate loop: {n / loop_s:8.2f} questions/s ({loop_s:.1f} s)")
    print(f"  kinject batched, batch {args.batch_size}:         {n / batched_s:8.2f} questions/s ({batched_s:.1f} s)")
    print(f"  speed-up: {loop_s / batched_s:.2f}x; same answers: {same}/{n}")


if __name__ == "__main__":
    main()
