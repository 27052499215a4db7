"""Real-model checks (SmolLM2-135M, all-MiniLM-L6-v2), offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kinject.runtime import assets
from kinject.runtime.models import load_embedder, load_lm

pytestmark = pytest.mark.slow


def test_converted_folder_matches_the_gguf_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asset = assets.get_asset("smollm2-135m")
    folder = assets.pull(asset)
    gguf = assets.asset_dir(asset) / "raw" / asset.gguf
    converted = AutoModelForCausalLM.from_pretrained(folder).eval()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    assert converted.dtype == torch.float32
    assert getattr(converted.config, "quantization_config", None) is None
    tok = AutoTokenizer.from_pretrained(folder)
    ref_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    text = "Photosynthesis converts light energy into chemical energy stored in glucose."
    ids = tok(text, return_tensors="pt").input_ids
    assert ids.tolist() == ref_tok(text, return_tensors="pt").input_ids.tolist()
    with torch.inference_mode():
        assert torch.equal(converted(ids).logits, direct(ids).logits)


def test_load_lm_and_embedder_by_catalog_name() -> None:
    model, tok = load_lm("smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    emb = load_embedder("minilm-l6").encode(["a cell"], normalize_embeddings=True)
    assert emb.shape == (1, 384)
    assert float((emb**2).sum()) == pytest.approx(1.0, abs=1e-5)


def test_doctor_prints_a_real_loglik_and_embedding_size() -> None:
    proc = subprocess.run([sys.executable, "-m", "kinject.cli.main", "doctor"], capture_output=True, text=True,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    loglik = next(line for line in proc.stdout.splitlines() if line.startswith("loglik"))
    value = float(loglik.split()[1])
    assert -200 < value < 0
    assert "dim 384" in proc.stdout


def test_cli_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    for args, expect in (
        (["assets", "pull", "nope"], "unknown asset 'nope'"),
        (["assets", "path", "gpt-17"], "known assets: smollm2-135m"),
        (["doctor", "--model", "mistralai/Mistral-7B-v0.1"], "hub is unreachable"),
        (["doctor", "--embedder", "mmlu"], "is a dataset, not an embedder"),
    ):
        proc = subprocess.run([sys.executable, "-m", "kinject.cli.main", *args], capture_output=True, text=True, env=env)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], proc.stderr
