"""Fine-tuning throughput: kinject's trainer vs two HF `Trainer` baselines, all in one run.

    python benchmarks/finetune_speed.py [--model smollm2-135m] [--source sciq] [--steps 8]
                                        [--micro-batch 4] [--block-size 256] [--bf16] [--profile]

Same model, same texts (default: the SciQ support passages), same micro-batch (rows per
forward/backward, one micro-batch per optimiser step). Each trainer runs in its own fresh process
(as a user would run it: kinject's process keeps freed memory for reuse, `keep_freed_memory`; an HF
Trainer's process has glibc's defaults), in turn, `--rounds` times. The baselines:

  * HF Trainer, per-chunk padding: one BOS + text + EOS row per text (cut at --block-size),
    padded per batch by `DataCollatorForLanguageModeling` (a fine-tuning script's first try);
  * HF Trainer, packed blocks: run_clm's `group_texts` recipe (texts concatenated, cut into
    --block-size blocks, labels = input_ids, `default_data_collator`), fed exactly the blocks
    kinject trains on (`kinject.train.finetune.pack`), so only the training loop differs.

All three are timed the same way: from the end of their first optimiser step (warm-up:
allocator, autocast caches) to the end of the last, so no model loading, packing, tokenisation
or data-set building counts. Reports useful (non-padding) tokens/s of each and the ratios, the
padding share of the padded batches, effective FLOP/s (6 · params · tokens/s) against a
bf16/fp32 matmul peak measured in this run, and each trainer's peak RSS. With --profile, where the time goes:
torch profiler tables (ops by their own CPU time) of kinject's run and of the packed HF Trainer's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from lmeval_bridge import matmul_peak, profiled  # noqa: E402

from kinject.runtime.hyper import TrainConfig  # noqa: E402
from kinject.runtime.models import load_lm, load_tokenizer  # noqa: E402
from kinject.tasks.registry import read_source  # noqa: E402
from kinject.train.finetune import pack, train  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB


class _Stop(Exception):
    pass


def kinject_tokens_per_s(model_ref: str, texts: list[str], micro: int, steps: int, block: int, bf16: bool,
                         tmp: Path, compiled: bool = False) -> tuple[float, float]:
    """Tokens/s over steps 2..N of `kinject.train.finetune.train` (packed blocks, all full: the caller
    checked the corpus has at least steps × micro of them), and the first step's seconds (where a
    compiled model is compiled)."""
    cfg = TrainConfig(lr=1e-5, epochs=1, block_size=block, micro_batch=micro, batch=micro, bf16=bf16,
                      val_fraction=0.0, save_every=10**9, compile=compiled)
    stamps: list[float] = []

    def progress(done: int, total: int) -> None:  # called with 0 before the first step, then after each
        stamps.append(time.perf_counter())
        if done == steps:
            raise _Stop

    try:
        train(model_ref, texts, tmp / ("kinject-compiled" if compiled else "kinject"), cfg, progress=progress)
    except _Stop:
        pass
    if len(stamps) < steps + 1:
        raise SystemExit(f"kinject's trainer ran only {len(stamps) - 1} of {steps} steps; lower --steps")
    return (steps - 1) * micro * block / (stamps[-1] - stamps[1]), stamps[1] - stamps[0]


def hf_trainer_tokens_per_s(model_ref: str, rows: list[dict], micro: int, steps: int, bf16: bool, tmp: Path,
                            padded: bool) -> tuple[float, float, float]:
    """(useful tokens/s over steps 2..N, padding share, useful tokens per step) of the HF Trainer
    on `rows`: variable-length rows padded per batch (`padded`), or equal-length packed blocks
    with labels, stacked by `default_data_collator`."""
    from datasets import Dataset
    from transformers import (
        DataCollatorForLanguageModeling,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    model, tok = load_lm(model_ref)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    args = TrainingArguments(output_dir=str(tmp / ("hf-padded" if padded else "hf-packed")),
                             per_device_train_batch_size=micro, max_steps=steps, learning_rate=1e-5,
                             logging_steps=steps, save_strategy="no", report_to="none", use_cpu=True, bf16=bf16,
                             seed=0, dataloader_num_workers=0, disable_tqdm=True, dataloader_pin_memory=False)
    useful, total = [0], [0]

    def count(module, a, kwargs):  # counted at the forward: the data loader runs ahead
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        useful[0] += int(mask.sum()) if mask is not None else ids.numel()
        total[0] += ids.numel()

    model.register_forward_pre_hook(count, with_kwargs=True)
    marks: list[tuple[float, int, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), useful[0], total[0]))

    collator = DataCollatorForLanguageModeling(tok, mlm=False) if padded else default_data_collator
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collator,
                      callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)  # its loss dicts would mix into this script's report
    print(f"HF Trainer ({'padded' if padded else 'packed'}): optimizer {args.optim}")
    trainer.train()
    if len(marks) < steps:
        raise SystemExit(f"the HF Trainer ran only {len(marks)} of {steps} steps; lower --steps")
    (t0, u0, p0), (t1, u1, p1) = marks[0], marks[-1]
    return (u1 - u0) / (t1 - t0), 1 - (u1 - u0) / (p1 - p0), (u1 - u0) / (len(marks) - 1)


TRAINERS = ("kinject", "hf-padded", "hf-packed", "kinject-compiled")
RESULT = "RESULT "
"""The line a child process (`--only`) prints its measurement on, as JSON."""


def run_one(name: str, args, texts: list[str], blocks: list[list[int]], tok) -> dict:
    """Time one trainer in this process; what the parent reads back."""
    micro, steps, block = args.micro_batch, args.steps, args.block_size
    with tempfile.TemporaryDirectory() as tmp:
        with profiled(args.profile and name in ("kinject", "hf-packed"),
                      "kinject's trainer" if name == "kinject" else "the HF Trainer (packed)"):
            if name.startswith("kinject"):
                tps, first = kinject_tokens_per_s(args.model, texts, micro, steps, block, args.bf16, Path(tmp),
                                                  name == "kinject-compiled")
                result = {"tokens_per_s": tps, "first_step_s": first, "per_step": micro * block, "padding": 0.0}
            else:
                if name == "hf-padded":
                    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
                    rows = [{"input_ids": [bos] + tok(t, add_special_tokens=False)["input_ids"][:block - 2]
                             + [tok.eos_token_id]} for t in texts]
                else:
                    rows = [{"input_ids": b, "labels": b} for b in blocks]
                tps, share, per_step = hf_trainer_tokens_per_s(args.model, rows, micro, steps, args.bf16, Path(tmp),
                                                               padded=name == "hf-padded")
                result = {"tokens_per_s": tps, "padding": share, "per_step": per_step}
    return {**result, "rss_gb": peak_rss_gb()}


def in_own_process(name: str) -> dict:
    """Run this script with `--only name` (same options) in a fresh process: each trainer starts
    from what a user's process starts from (allocator, autocast caches, compiled kernels)."""
    proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", name], capture_output=True, text=True)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            result = json.loads(line[len(RESULT):])
        else:
            print(line)
    if proc.returncode != 0 or result is None:
        sys.stderr.write(proc.stderr)
        raise SystemExit(proc.returncode or 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="catalog name or model folder")
    ap.add_argument("--source", default="sciq", help="texts: sciq, wiki-summaries, or a .jsonl file/folder")
    ap.add_argument("--steps", type=int, default=8, help="optimiser steps for each trainer (the first is warm-up)")
    ap.add_argument("--micro-batch", type=int, default=4, help="rows per step: blocks (packed) or texts (padded)")
    ap.add_argument("--block-size", type=int, default=256, help="tokens per packed block; longest padded row")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast in all three trainers")
    ap.add_argument("--compile", action="store_true", help="also time kinject's trainer with `compile` (torch.compile "
                                                           "through Accelerate; the HF baselines stay eager, their default)")
    ap.add_argument("--rounds", type=int, default=1, help="time every trainer this many times, in turn (medians "
                                                          "reported; on a shared machine, 3 or more)")
    ap.add_argument("--profile", action="store_true", help="print where kinject's and the packed HF Trainer's "
                                                           "time goes (torch profiler; slows both)")
    ap.add_argument("--only", choices=TRAINERS, help=argparse.SUPPRESS)  # one trainer in this process
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the first step is not timed)")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    micro, steps, block = args.micro_batch, args.steps, args.block_size
    texts = [d.text for d in read_source(args.source)]
    tok, _ = load_tokenizer(args.model)
    blocks = pack(texts, tok, block)  # what kinject trains on, shared with the packed HF baseline
    if len(blocks) < steps * micro:
        raise SystemExit(f"{args.source} packs into {len(blocks)} blocks of {block} tokens, fewer than "
                         f"{steps} steps x {micro}; lower --steps, --micro-batch or --block-size")
    if args.only:
        print(RESULT + json.dumps(run_one(args.only, args, texts, blocks, tok)))
        return
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    peak = matmul_peak(dtype)
    names = [n for n in TRAINERS if n != "kinject-compiled" or args.compile]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            runs[name].append(in_own_process(name))
    peak_after = matmul_peak(dtype)
    params = sum(p.numel() for p in load_lm(args.model)[0].parameters())
    roof = max(peak, peak_after)
    kind = "bf16" if args.bf16 else "fp32"

    def med(name: str, field: str = "tokens_per_s") -> float:
        return statistics.median(r[field] for r in runs[name])

    def gflops(tokens_per_s: float) -> str:
        g = 6 * params * tokens_per_s / 1e9
        return f"{g:.1f} GFLOP/s = {g / roof:.0%} of peak"

    ours, padded, packed = med("kinject"), med("hf-padded"), med("hf-packed")
    shown = "median of " if args.rounds > 1 else ""
    print(f"{args.model} ({params / 1e6:.1f}M params), {kind}, {args.source} ({len(texts)} texts, {len(blocks)} "
          f"blocks of {block}), micro-batch {micro}, {steps} steps each (steps 2..{steps} timed), "
          f"{torch.get_num_threads()} threads, each trainer in its own process, {args.rounds} round(s)")
    print(f"HF Trainer, per-chunk padding: {padded:9.1f} useful tokens/s  ({med('hf-padded', 'per_step'):.0f} useful "
          f"tokens/step, {med('hf-padded', 'padding'):.0%} of each batch padding; {gflops(padded)})")
    print(f"HF Trainer, packed blocks    : {packed:9.1f} tokens/s  ({med('hf-packed', 'per_step'):.0f} tokens/step, "
          f"no padding; {gflops(packed)})")
    print(f"kinject, packed blocks       : {ours:9.1f} tokens/s  ({micro * block} tokens/step, no padding; "
          f"{gflops(ours)})")
    print(f"kinject vs HF Trainer ({shown}tokens/s): {ours / padded:.2f}x per-chunk padding, {ours / packed:.2f}x packed "
          f"blocks (HF packed vs HF padded: {packed / padded:.2f}x)")
    if args.rounds > 1:
        ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs["kinject"], runs["hf-packed"])]
        print("kinject / HF packed, round by round: " + ", ".join(f"{r:.2f}x" for r in ratios))
    if args.compile:
        compiled = med("kinject-compiled")
        print(f"kinject, compiled            : {compiled:9.1f} tokens/s  ({gflops(compiled)}; first step "
              f"{med('kinject-compiled', 'first_step_s'):.0f} s with the compile): {compiled / packed:.2f}x HF packed, "
              f"{compiled / ours:.2f}x kinject eager")
    print(f"{kind} matmul peak: {peak:.0f} GFLOP/s at start, {peak_after:.0f} at end")
    print("peak RSS (each its own process): " + ", ".join(f"{n} {max(r['rss_gb'] for r in runs[n]):.2f} GB"
                                                          for n in names))


if __name__ == "__main__":
    main()
