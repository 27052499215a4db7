"""Load time of a catalog LM: the converted safetensors folder vs the original GGUF.

Run: python benchmarks/load_speed.py [--model smollm2-135m]. Prints seconds and the ratio,
both measured in this run, and checks the logits agree.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from kinject.runtime import assets  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    asset = assets.get_asset(args.model, "lm")
    folder = assets.pull(asset)
    gguf = assets.asset_dir(asset) / "raw" / asset.gguf

    t0 = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(folder)  # first load also imports the model code
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = AutoModelForCausalLM.from_pretrained(folder)
    t_folder = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    t_gguf = time.perf_counter() - t0

    ids = torch.arange(10, 60)[None]
    with torch.inference_mode():
        diff = (fast(ids).logits - slow(ids).logits).abs().max().item()
    print(f"{args.model}: safetensors folder {t_folder:.2f}s (first load in the process {t_cold:.2f}s), GGUF {t_gguf:.2f}s, "
          f"speed-up {t_gguf / t_folder:.1f}x, max |logit diff| {diff:.2e}")


if __name__ == "__main__":
    main()
