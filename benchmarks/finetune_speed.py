"""Fine-tuning throughput: kinject's packed trainer vs the HF `Trainer` with per-chunk padding.

    python benchmarks/finetune_speed.py [--model smollm2-135m] [--steps 6] [--bf16]

Same model, same chunks (SciQ support passages), same micro-batch, same run. Reports useful
(non-padding) tokens/s of both and their ratio, kinject's effective FLOP/s (6 · params ·
tokens/s) against a matmul peak measured at the start, and the peak RSS of this process.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sys  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from lmeval_bridge import matmul_peak  # noqa: E402

from kinject.corpus import read_source  # noqa: E402
from kinject.finetune import TrainConfig, train  # noqa: E402
from kinject.models import load_lm  # noqa: E402


def hf_trainer_tokens_per_s(model_ref: str, texts: list[str], micro: int, steps: int, bf16: bool, tmp: Path) -> float:
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    model, tok = load_lm(model_ref)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    bos, eos = tok.bos_token_id, tok.eos_token_id
    rows = [{"input_ids": [bos] + tok(t, add_special_tokens=False)["input_ids"][:254] + [eos]} for t in texts]
    ds = Dataset.from_list(rows)
    args = TrainingArguments(output_dir=str(tmp / "hf"), per_device_train_batch_size=micro, max_steps=steps,
                             learning_rate=1e-5, logging_steps=steps, save_strategy="no", report_to=[],
                             use_cpu=True, bf16=bf16, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    seen = [0]
    collator = DataCollatorForLanguageModeling(tok, mlm=False)

    def counting(features):
        batch = collator(features)
        seen[0] += int(batch["attention_mask"].sum())
        return batch

    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=counting)
    started = time.perf_counter()
    trainer.train()
    return seen[0] / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=6, help="optimiser steps for each trainer")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    peak = matmul_peak(torch.bfloat16 if args.bf16 else torch.float32)
    texts = [d.text for d in read_source("sciq")]
    with tempfile.TemporaryDirectory() as tmp:
        base = hf_trainer_tokens_per_s(args.model, texts, args.micro_batch, args.steps, args.bf16, Path(tmp))
        cfg = TrainConfig(lr=1e-5, epochs=1, micro_batch=args.micro_batch, effective_batch=args.micro_batch,
                          bf16=args.bf16, val_fraction=0.0, save_every=10**9)
        blocks_needed = args.steps * args.micro_batch
        started = time.perf_counter()
        records: list[dict] = []

        class Stop(Exception):
            pass

        def stop(record: dict) -> None:
            records.append(record)
            if len(records) == args.steps:
                raise Stop

        try:
            train(args.model, texts, Path(tmp) / "ours", replace(cfg), on_step=stop)
        except Stop:
            pass
        ours_seconds = time.perf_counter() - started
    model, _ = load_lm(args.model)
    params = sum(p.numel() for p in model.parameters())
    # kinject's time includes loading the model and packing; the HF number excludes its setup.
    ours = blocks_needed * cfg.block_size / ours_seconds
    print(f"HF Trainer (per-chunk padding): {base:8.1f} useful tokens/s")
    print(f"kinject (packed 256-token blocks): {ours:8.1f} tokens/s  -> {ours / base:.2f}x "
          f"(kinject's time includes its model load and packing)")
    print(f"kinject effective {6 * params * ours / 1e9:.1f} GFLOP/s vs matmul peak {peak:.0f} GFLOP/s "
          f"({6 * params * ours / 1e9 / peak:.0%}); peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
