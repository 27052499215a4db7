"""Device and dtype resolution for every kind of machine (the machine is handed in, not probed),
the cost model's parameter counts, and data-parallel evaluation under `accelerate launch`."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from kinject.core.errors import KinjectError
from kinject.runtime.devices import Capabilities, Gpu, Placement, native_bf16, resolve

CPU_PLAIN = Capabilities(cpu_bf16=False, cpu_name="old cpu")
CPU_BF16 = Capabilities(cpu_bf16=True, cpu_name="sapphire rapids")
A100 = Gpu("NVIDIA A100", bf16=True)
V100 = Gpu("Tesla V100", bf16=False)
ONE_A100 = Capabilities(gpus=(A100,))
ONE_V100 = Capabilities(gpus=(V100,))
FOUR_A100 = Capabilities(gpus=(A100,) * 4)
MAC = Capabilities(mps=True, mps_bf16=True)
OLD_MAC = Capabilities(mps=True, mps_bf16=False)


@pytest.mark.parametrize("caps, device, dtype, want", [
    # CPU: auto is exact fp32 everywhere; bf16 only where the hardware has it
    (CPU_PLAIN, "auto", "auto", ("cpu", "fp32", None)),
    (CPU_BF16, "auto", "auto", ("cpu", "fp32", None)),
    (CPU_BF16, "cpu", "bf16", ("cpu", "bf16", None)),
    (CPU_PLAIN, "cpu", "fp32", ("cpu", "fp32", None)),
    # CUDA: bf16 where supported, fp16 on older GPUs
    (ONE_A100, "auto", "auto", ("cuda:0", "bf16", None)),
    (ONE_V100, "auto", "auto", ("cuda:0", "fp16", None)),
    (ONE_V100, "cuda", "fp32", ("cuda:0", "fp32", None)),
    (ONE_A100, "cpu", "auto", ("cpu", "fp32", None)),
    (FOUR_A100, "cuda:3", "fp16", ("cuda:3", "fp16", None)),
    # several GPUs and one process: the model is spread over them
    (FOUR_A100, "auto", "auto", ("cuda:0", "bf16", "auto")),
    (FOUR_A100, "cuda", "auto", ("cuda:0", "bf16", None)),
    # MPS
    (MAC, "auto", "auto", ("mps", "fp32", None)),
    (MAC, "mps", "bf16", ("mps", "bf16", None)),
    (OLD_MAC, "mps", "fp16", ("mps", "fp16", None)),
    (MAC, "cpu", "auto", ("cpu", "fp32", None)),
])
def test_resolution(caps: Capabilities, device: str, dtype: str, want: tuple) -> None:
    p = resolve(device, dtype, caps)
    assert (p.device, p.dtype, p.device_map) == want


def test_a_data_parallel_rank_takes_its_own_gpu_and_never_spreads() -> None:
    assert resolve("auto", "auto", FOUR_A100, rank=2) == Placement("cuda:2", "bf16", "NVIDIA A100")
    assert resolve("cuda", "fp16", FOUR_A100, rank=1).device == "cuda:1"
    assert resolve("cuda:0", "auto", FOUR_A100, rank=3).device == "cuda:3"  # every rank on its own GPU
    assert resolve("auto", "auto", CPU_PLAIN, rank=1).device == "cpu"


@pytest.mark.parametrize("caps, device, dtype, message", [
    (CPU_PLAIN, "cuda", "auto", "--device cuda:0: this machine has no CUDA device"),
    (ONE_A100, "cuda:7", "auto", "--device cuda:7: this machine has 1 CUDA device (cuda:0)"),
    (FOUR_A100, "cuda:4", "auto", "has 4 CUDA devices (cuda:0, cuda:1, cuda:2, cuda:3)"),
    (ONE_V100, "cuda", "bf16", "--dtype bf16: cuda:0 (Tesla V100) has no bf16 support"),
    (CPU_PLAIN, "cpu", "bf16", "this CPU has no AVX512-BF16 or AMX"),
    (CPU_BF16, "cpu", "fp16", "--dtype fp16: not supported on the CPU"),
    (CPU_PLAIN, "mps", "auto", "--device mps: Apple's Metal (MPS) backend is not available here"),
    (OLD_MAC, "mps", "bf16", "this MPS device has no bf16"),
    (CPU_PLAIN, "tpu", "auto", "--device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    (CPU_PLAIN, "cpu", "fp8", "--dtype must be one of auto, fp32, bf16, fp16, got 'fp8'"),
])
def test_impossible_requests_are_one_line(caps: Capabilities, device: str, dtype: str, message: str) -> None:
    with pytest.raises(KinjectError, match=None) as err:
        resolve(device, dtype, caps)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cpu_bf16_is_read_from_the_cpu_flags() -> None:
    assert native_bf16("flags : fpu sse avx512f avx512_bf16 amx_tile")
    assert native_bf16("flags : fpu amx_bf16 amx_tile")
    assert not native_bf16("flags : fpu sse avx2 avx512f")


def test_this_machine_resolves_to_something_real() -> None:
    import torch

    p = resolve("auto", "auto")
    x = torch.ones(2, 2, device=p.torch_device, dtype=p.torch_dtype)
    assert float((x @ x).sum()) == 8.0


def test_cost_model_counts_parameters_from_the_config(tmp_path: Path) -> None:
    from kinject.runtime.costs import EFFICIENCY, UTILISATION, Throughput, Work, estimate, param_count, processes

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000}))
    n = param_count(str(tmp_path))  # Mistral-7B's shape: 7.0B without its 0.26B embeddings
    assert n is not None and 6.9e9 < n < 7.0e9
    assert param_count("meta-llama/Llama-2-13b-hf") == 13e9  # offline, from its name
    assert processes("accelerate launch --multi_gpu --num_processes 4") == 4
    assert processes("accelerate launch --num_processes=2") == 2 and processes(None) == 1
    e = estimate(Work("train", str(tmp_path), 1e6, processes=4), Throughput(1e14, ""))
    assert e.flops == pytest.approx(6 * n * 1e6)
    assert e.seconds == pytest.approx(6 * n * 1e6 / 1e14 / 4) and e.device_hours == pytest.approx(e.seconds * 4 / 3600)
    # bf16 fine-tuning is costed at its measured share of the peak, not the nominal one
    bf16 = estimate(Work("train", str(tmp_path), 1e6, dtype="bf16"), Throughput(1e14, ""))
    assert bf16.seconds == pytest.approx(6 * n * 1e6 / (1e14 / UTILISATION * EFFICIENCY["train", "bf16"]))


def test_paper_config_dry_run_names_devices_launchers_and_gpu_hours() -> None:
    root = Path(__file__).parent.parent
    proc = subprocess.run([sys.executable, "-m", "kinject", "run", str(root / "configs" / "paper.yaml"), "--dry-run"],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    assert "cuda · bf16 · hf · accelerate ×4" in text and "cuda · bf16 · accelerate ×4" in text  # eval, finetune
    assert "GPU-hours in all" in text
    assert "nominal A100-class" in text or "measured now" in text


def test_dry_run_names_the_throughput_of_each_precision_it_estimates_with() -> None:
    """beyond.yaml scores in fp32 and fine-tunes in bf16: the dry run says both rates it used."""
    root = Path(__file__).parent.parent
    proc = subprocess.run([sys.executable, "-m", "kinject", "run", str(root / "configs" / "beyond.yaml"), "--dry-run"],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("throughput: ")]
    assert len(lines) == 2 and " fp32" in lines[0] and " bf16" in lines[1], lines


@pytest.mark.slow
def test_two_process_data_parallel_eval_writes_the_same_samples(tmp_path: Path) -> None:
    """`accelerate launch --num_processes 2 -m kinject eval` (CPU, gloo) = one process, byte for byte.
    Both with one thread per process: a CPU matmul's float sums depend on its thread count."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["eval", "--task", "mmlu:paper@cloze", "--shots", "2", "--limit", "3",
              "--batch-size", "2", "--device", "cpu", "--dtype", "fp32"]
    one = subprocess.run([sys.executable, "-m", "kinject", *common, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    launcher = str(Path(sys.executable).parent / "accelerate")
    # --multi_gpu starts N processes (torchrun); on a machine without CUDA they form a gloo group
    two = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "kinject", *common,
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in files:
        if name.startswith("samples_"):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    r1, r2 = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert r1["engine"]["world_size"] == 1 and r2["engine"]["world_size"] == 2
    assert r1["device"] == r2["device"] == "cpu" and r1["dtype"] == "fp32"
    for name, r in r1["tasks"].items():
        assert {k: v for k, v in r.items() if k not in ("seconds", "questions_per_s")} == \
               {k: v for k, v in r2["tasks"][name].items() if k not in ("seconds", "questions_per_s")}


def _kinject(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kinject", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("args, message", [
    (["eval", "--device", "cuda:7", "--dtype", "fp32"], "--device cuda:7: this machine has"),
    (["eval", "--device", "cpu", "--dtype", "fp16"], "--dtype fp16: not supported on the CPU"),
    (["eval", "--device", "npu"], "--device must be auto, cpu, cuda, cuda:N or mps, got 'npu'"),
    (["eval", "--backend", "vllm"], "--backend must be hf or openai:BASE_URL#MODEL, got 'vllm'"),
    (["eval", "--backend", "openai:127.0.0.1:1/v1"], "give the server's base URL"),
    (["index", "build", "--corpus", "kb", "--device", "cuda:7"], "--device cuda:7: this machine has"),
    (["ask", "q", "--index", "ix", "--device", "cuda:7"], "--device cuda:7: this machine has"),
    (["finetune", "--corpus", "kb", "--device", "cuda:7"], "--device cuda:7: this machine has"),
    (["serve", "--device", "cuda:7"], "--device cuda:7: this machine has"),
    (["doctor", "--device", "cuda:7"], "--device cuda:7: this machine has"),
])
def test_impossible_devices_fail_every_command_in_one_line_writing_nothing(tmp_path: Path, args: list[str],
                                                                           message: str) -> None:
    import torch

    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    if args[0] in ("eval", "index", "finetune"):
        args = [*args, "--out", "out"]
    proc = _kinject(*args, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_config_asking_for_a_missing_device_fails_before_any_stage(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "c.yaml").write_text("name: gpu\nmodels: [smollm2-135m]\ndevice: cuda\n"
                                     "tasks:\n  - {task: 'mmlu:anatomy', limit: 2}\nmethods: [base]\n")
    proc = _kinject("run", "c.yaml", "--cache", "cache", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: c.yaml: device: --device cuda:0: this machine has no CUDA device (torch sees none); use --device "
        "cpu or auto"], proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()
    dry = _kinject("run", "c.yaml", "--cache", "cache", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and "not on this machine" in dry.stdout + dry.stderr


def test_a_results_store_from_before_devices_gains_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    from kinject.eval.results import Stage, Store

    old = sqlite3.connect(tmp_path / "results.sqlite")
    old.execute("CREATE TABLE stages (key TEXT PRIMARY KEY, kind TEXT NOT NULL, label TEXT NOT NULL, "
                "status TEXT NOT NULL, wall_s REAL, peak_rss_mb REAL, error TEXT)")
    old.execute("INSERT INTO stages VALUES ('k', 'eval', 'x', 'computed', 1.5, 100.0, NULL)")
    old.commit()
    old.close()
    with Store(tmp_path) as store:
        assert store.stages() == [Stage("k", "eval", "x", "computed", 1.5, 100.0, None, None, None)]
        store.put_stage(Stage("k2", "eval", "y", "computed", 2.0, 50.0, None, "cuda:0 · bf16 · hf", 1234.0))
        assert store.stages()[1].device == "cuda:0 · bf16 · hf" and store.stages()[1].peak_gpu_mb == 1234.0


def test_generation_leaves_the_global_rng_alone(tiny_lm) -> None:
    import torch

    from kinject.lm.backends import HFBackend
    from kinject.runtime.models import CPU

    model, tok = tiny_lm
    lm = HFBackend(model, tok, CPU)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = lm.generate(["a b c", "d e"], max_tokens=4, temperature=1.0, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    assert [c.text for c in lm.generate(["a b c", "d e"], max_tokens=4, temperature=1.0, seed=7)] == \
           [c.text for c in first]


def test_a_server_backend_is_not_launched_data_parallel(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("name: srv\nmodels: [smollm2-135m]\nbackend: openai:http://127.0.0.1:9/v1#m\n"
                                     "eval: {launch: accelerate launch --num_processes 2}\n"
                                     "tasks:\n  - {task: 'mmlu:anatomy', limit: 2}\nmethods: [base]\n")
    proc = _kinject("run", "c.yaml", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2 and "eval.launch: backend 'openai:http://127.0.0.1:9/v1#m' is not sharded" in \
        proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


_FAULTS = """
import resource, sys, torch
from kinject.runtime.devices import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory("cpu") is True and keep_freed_memory("cpu") is True  # once per process, idempotent
assert keep_freed_memory("cuda") is False and keep_freed_memory("mps") is False  # only the CPU's allocator
for _ in range(2):  # first uses of 200 MB: their pages fault in either way
    torch.ones(50_000_000).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(50_000_000).sum()  # a logits-sized tensor per step, freed after it
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_freed_memory_is_reused_instead_of_faulted_in_again() -> None:
    """glibc maps a 200 MB tensor afresh each time (48,828 page faults every use); after
    `keep_freed_memory` most uses reuse freed pages. Not all: an aligned block does not always fit
    the hole a freed one left, so the heap sometimes grows by one more (0-4 of 20 uses faulted in
    twelve runs, one or two compute threads)."""
    faults = {}
    for mode in ("keep", "default"):
        proc = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        faults[mode] = int(proc.stdout.split()[-1])
    assert faults["default"] > 20 * 40_000, faults  # faulted in on every use
    assert faults["keep"] < faults["default"] / 3, faults
