"""Fine-tuning throughput: kinject's packed trainer vs the HF `Trainer` with per-chunk padding.

    python benchmarks/finetune_speed.py [--model smollm2-135m] [--steps 8] [--micro-batch 4] [--bf16]

Same model, same chunks (SciQ support passages), same micro-batch (rows per forward/backward,
one micro-batch per optimiser step), same run. Both are timed the same way: from the end of
their first optimiser step (warm-up: allocator, autocast caches) to the end of the last, so
neither side's model loading, packing, tokenisation or data-set building counts. Reports
useful (non-padding) tokens/s of both and their ratio, the padding share of the HF batches,
effective FLOP/s (6 · params · tokens/s) against a bf16/fp32 matmul peak measured in this run,
and the peak RSS of each phase (kinject runs first, so its peak is read before HF's starts).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from lmeval_bridge import matmul_peak  # noqa: E402

from kinject.corpus import read_source  # noqa: E402
from kinject.finetune import TrainConfig, train  # noqa: E402
from kinject.models import load_lm  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB


class _Stop(Exception):
    pass


def kinject_tokens_per_s(model_ref: str, texts: list[str], micro: int, steps: int, bf16: bool,
                         tmp: Path) -> tuple[float, int]:
    """(tokens/s over steps 2..N, tokens per step) of `kinject.finetune.train` on packed blocks."""
    cfg = TrainConfig(lr=1e-5, epochs=1, micro_batch=micro, effective_batch=micro, bf16=bf16,
                      val_fraction=0.0, save_every=10**9)
    stamps: list[float] = []

    def on_step(record: dict) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) == steps:
            raise _Stop

    try:
        train(model_ref, texts, tmp / "kinject", cfg, on_step=on_step)
    except _Stop:
        pass
    if len(stamps) < steps:
        raise SystemExit(f"the corpus gave only {len(stamps)} steps of {micro} blocks; lower --steps")
    per_step = micro * cfg.block_size  # every block is full: packing leaves no padding
    return (steps - 1) * per_step / (stamps[-1] - stamps[0]), per_step


def hf_trainer_tokens_per_s(model_ref: str, texts: list[str], micro: int, steps: int, bf16: bool,
                            tmp: Path) -> tuple[float, float, float]:
    """(useful tokens/s over steps 2..N, padding share, useful tokens per step) of the HF Trainer,
    one BOS + chunk + EOS row per chunk (≤ 256 tokens), padded per batch by its LM collator."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    model, tok = load_lm(model_ref)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    bos, eos = tok.bos_token_id, tok.eos_token_id
    rows = [{"input_ids": [bos] + tok(t, add_special_tokens=False)["input_ids"][:254] + [eos]} for t in texts]
    args = TrainingArguments(output_dir=str(tmp / "hf"), per_device_train_batch_size=micro, max_steps=steps,
                             learning_rate=1e-5, logging_steps=steps, save_strategy="no", report_to="none",
                             use_cpu=True, bf16=bf16, seed=0, dataloader_num_workers=0, disable_tqdm=True,
                             dataloader_pin_memory=False)
    useful, padded = [0], [0]

    def count(module, a, kwargs):  # counted at the forward: the data loader runs ahead
        mask = kwargs["attention_mask"]
        useful[0] += int(mask.sum())
        padded[0] += mask.numel()

    model.register_forward_pre_hook(count, with_kwargs=True)
    marks: list[tuple[float, int, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), useful[0], padded[0]))

    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
                      callbacks=[Clock()])
    trainer.train()
    (t0, u0, p0), (t1, u1, p1) = marks[0], marks[-1]
    return (u1 - u0) / (t1 - t0), 1 - (u1 - u0) / (p1 - p0), (u1 - u0) / (len(marks) - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=8, help="optimiser steps for each trainer (the first is warm-up)")
    ap.add_argument("--micro-batch", type=int, default=4, help="rows per step: blocks (kinject) or chunks (HF)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast in both trainers")
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the first step is not timed)")
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    peak = matmul_peak(dtype)
    texts = [d.text for d in read_source("sciq")]
    with tempfile.TemporaryDirectory() as tmp:
        ours, ours_per_step = kinject_tokens_per_s(args.model, texts, args.micro_batch, args.steps, args.bf16,
                                                   Path(tmp))
        rss_ours = peak_rss_gb()
        base, pad_share, base_per_step = hf_trainer_tokens_per_s(args.model, texts, args.micro_batch, args.steps,
                                                                 args.bf16, Path(tmp))
        rss_all = peak_rss_gb()
    peak_after = matmul_peak(dtype)
    model, _ = load_lm(args.model)
    params = sum(p.numel() for p in model.parameters())
    flops = 6 * params * ours / 1e9
    kind = "bf16" if args.bf16 else "fp32"
    print(f"{args.model} ({params / 1e6:.1f}M params), {kind}, micro-batch {args.micro_batch}, "
          f"{args.steps} steps each (steps 2..{args.steps} timed), {torch.get_num_threads()} threads")
    print(f"HF Trainer, per-chunk padding : {base:8.1f} useful tokens/s  ({base_per_step:.0f} useful tokens/step, "
          f"{pad_share:.0%} of each batch padding)")
    print(f"kinject, packed 256-token blocks: {ours:8.1f} tokens/s  ({ours_per_step} tokens/step, no padding) "
          f"-> {ours / base:.2f}x HF Trainer")
    print(f"kinject effective {flops:.1f} GFLOP/s (6 x params x tokens/s) vs {kind} matmul peak "
          f"{peak:.0f} GFLOP/s at start, {peak_after:.0f} at end ({flops / max(peak, peak_after):.0%} of the higher)")
    print(f"peak RSS: {rss_ours:.2f} GB after kinject, {rss_all:.2f} GB after HF Trainer (same process)")


if __name__ == "__main__":
    main()
