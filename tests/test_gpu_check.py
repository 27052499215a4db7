"""benchmarks/gpu_check.py: one line and exit 0 without CUDA; the whole check on the CPU as a smoke test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_without_cuda_prints_one_line_and_exits_0() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would run the real check")
    proc = _run(timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    assert "CUDA" in lines[0] and "nothing to check" in lines[0]


def test_missing_cuda_index_prints_one_line_and_exits_0() -> None:
    import torch

    proc = _run("--device", f"cuda:{torch.cuda.device_count()}", timeout=120)  # one past the last GPU
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and "nothing to check" in lines[0], proc.stdout


@pytest.mark.slow
def test_cpu_smoke_run_prints_the_parity_table() -> None:
    proc = _run("--device", "cpu", "--limit", "2", timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "same pred" in out and "max|Δll|" in out and "vs lm-eval" in out, out
    rows = [line.split() for line in out.splitlines() if line.startswith(("mmlu:anatomy 5-shot", "sciq:support 0-shot"))]
    engines = {(r[0], r[2], r[3]) for r in rows}  # task, engine, dtype
    for task in ("mmlu:anatomy", "sciq:support"):
        assert (task, "lm-eval", "fp32") in engines and (task, "kinject", "fp32") in engines, out
    from kinject.core.errors import KinjectError
    from kinject.runtime.devices import resolve

    try:
        resolve("cpu", "bf16")
        assert ("mmlu:anatomy", "kinject", "bf16") in engines, out
    except KinjectError:
        assert "bf16 skipped" in out and not any(r[3] == "bf16" for r in rows), out
    for r in rows:
        assert r[4] == "2", r  # n
        if r[2] == "kinject" and r[3] == "fp32":
            same, same_norm, diff = float(r[8]), float(r[9]), float(r[10])
            assert same == 1.0 and same_norm == 1.0 and diff < 1e-3, r  # fp32: lm-eval's numbers
