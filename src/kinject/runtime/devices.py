"""Where models run and in what precision: `--device` and `--dtype`, resolved once per command.

Every compute path (scorer, embedder, generator, trainer) takes a `Placement` instead of
assuming the CPU. Resolution is a pure function of the request and of what the machine can do
(`Capabilities`), so each case — CPU with or without native bf16, CUDA with or without bf16,
MPS, several GPUs, a data-parallel rank — is tested by handing it a machine description.

`auto` picks CUDA if present, else MPS, else the CPU; its dtype is bf16 on CUDA devices that
support it (fp16 on older ones) and fp32 on CPU and MPS, so the default gives the same numbers
on every CPU. bf16 on a CPU pays off only with AVX512-BF16 or AMX (`native_bf16`); elsewhere
torch emulates it several times slower than fp32, so it is refused rather than run slowly.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from kinject.core.errors import KinjectError

if TYPE_CHECKING:
    import torch

DType = Literal["fp32", "bf16", "fp16"]
DTYPES: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
DEVICE_HELP = ("auto (CUDA if present, else MPS, else CPU), cpu, cuda, cuda:N or mps. With several GPUs and no "
               "launcher, auto spreads a model too large for one GPU over all of them (device_map=auto); under "
               "accelerate launch each process takes its own GPU.")
DTYPE_HELP = ("auto (bf16 on CUDA GPUs that support it, else fp16; fp32 on CPU and MPS, the exact default), fp32, "
              "bf16 or fp16. On a CPU with AVX512-BF16 or AMX, bf16 is the fast path (several times fp32); "
              "elsewhere torch emulates bf16 slowly, so it is refused.")


@dataclass(frozen=True)
class Gpu:
    """A visible CUDA device: its name and whether it computes in bf16 (Ampere and later)."""
    name: str
    bf16: bool


@dataclass(frozen=True)
class Capabilities:
    """What this machine offers: its CUDA devices, MPS, and the CPU's native bf16 support."""

    gpus: tuple[Gpu, ...] = ()
    mps: bool = False
    mps_bf16: bool = False
    cpu_bf16: bool = False
    cpu_name: str = "cpu"


def native_bf16(cpuinfo: str) -> bool:
    """True when the CPU flags include AVX512-BF16 or AMX-BF16 (bf16 matmuls in hardware)."""
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo) is not None


def _cpu_name(cpuinfo: str) -> str:
    m = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    return m.group(1).strip() if m else "cpu"


def probe() -> Capabilities:
    """This machine's capabilities, read from torch and /proc/cpuinfo (no model is loaded)."""
    import torch

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            cpuinfo = fh.read()
    except OSError:  # not Linux: bf16 on the CPU is treated as emulated
        cpuinfo = ""
    gpus: list[Gpu] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(Gpu(p.name, p.major >= 8))  # bf16 from Ampere on
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return Capabilities(tuple(gpus), mps, mps and _mps_bf16(), native_bf16(cpuinfo), _cpu_name(cpuinfo))


def _mps_bf16() -> bool:
    import torch

    try:
        torch.zeros(1, dtype=torch.bfloat16, device="mps")
        return True
    except (RuntimeError, TypeError):
        return False


@dataclass(frozen=True)
class Placement:
    """A resolved device and dtype. `device_map` is "auto" when one process may spread a model
    over several GPUs (it does when the model does not fit on the first; inputs go there)."""

    device: str
    dtype: DType
    device_name: str = ""
    device_map: str | None = None

    @property
    def kind(self) -> str:
        """The device type without its index: cpu, cuda or mps."""
        return self.device.split(":")[0]

    @property
    def tag(self) -> str:
        """"" for the exact default (CPU, fp32), else e.g. "cuda-bf16", "bf16": what keeps the
        outputs of another device or precision (sampled text, vectors) in caches of their own."""
        return "-".join(([self.kind] if self.kind != "cpu" else []) + ([self.dtype] if self.dtype != "fp32" else []))

    @property
    def torch_device(self) -> "torch.device":
        """The device as a torch.device."""
        import torch

        return torch.device(self.device)

    @property
    def torch_dtype(self) -> "torch.dtype":
        """The dtype as a torch.dtype."""
        return torch_dtype(self.dtype)

    def describe(self) -> dict[str, str | None]:
        """What results.json, the run's store and the report record."""
        return {"device": self.device, "dtype": self.dtype, "device_name": self.device_name,
                "device_map": self.device_map}

    def label(self) -> str:
        """Device, its name, dtype and any device_map, in one line for the console."""
        where = f"{self.device} ({self.device_name})" if self.device_name else self.device
        return f"{where} · {self.dtype}" + (" · device_map=auto" if self.device_map else "")


def torch_dtype(dtype: str) -> "torch.dtype":
    """The torch dtype for fp32, bf16 or fp16."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]


def local_rank() -> int | None:
    """This process's GPU index under `accelerate launch`/torchrun, None outside a launcher."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return None


def resolve(device: str = "auto", dtype: str = "auto", caps: Capabilities | None = None,
            rank: int | None = None) -> Placement:
    """The placement for a `--device`/`--dtype` request on a machine with `caps`.

    `rank` is the process's local rank under a data-parallel launcher: `auto`/`cuda` then mean
    that rank's own GPU, never a model spread over all of them. Impossible requests raise a
    one-line `KinjectError` that says what this machine has instead."""
    caps = probe() if caps is None else caps
    device = (device or "auto").strip().lower()
    dtype = (dtype or "auto").strip().lower()
    if dtype not in DTYPES:
        raise KinjectError(f"--dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    n = len(caps.gpus)
    device_map = None
    if device == "auto":
        device = "cuda" if n else "mps" if caps.mps else "cpu"
        if device == "cuda" and n > 1 and rank is None:
            device_map = "auto"  # models.load_lm spreads only a model too large for one GPU
    if device == "cuda" or (rank is not None and device.startswith("cuda:")):
        device = f"cuda:{rank if rank is not None else 0}"  # under a launcher: this rank's own GPU
    m = re.fullmatch(r"cuda:(\d+)", device)
    if m:
        i = int(m.group(1))
        if not n:
            raise KinjectError(f"--device {device}: this machine has no CUDA device (torch sees none); "
                               f"use --device cpu or auto")
        if i >= n:
            have = ", ".join(f"cuda:{j}" for j in range(n))
            raise KinjectError(f"--device {device}: this machine has {n} CUDA device{'s' if n > 1 else ''} ({have})")
        gpu = caps.gpus[i]
        if dtype == "auto":
            dtype = "bf16" if gpu.bf16 else "fp16"
        if dtype == "bf16" and not gpu.bf16:
            raise KinjectError(f"--dtype bf16: {device} ({gpu.name}) has no bf16 support; use --dtype fp16 or auto")
        return Placement(device, dtype, gpu.name, device_map)  # type: ignore[arg-type]
    if device == "mps":
        if not caps.mps:
            raise KinjectError("--device mps: Apple's Metal (MPS) backend is not available here; "
                               "use --device cpu or auto")
        dtype = "fp32" if dtype == "auto" else dtype
        if dtype == "bf16" and not caps.mps_bf16:
            raise KinjectError("--dtype bf16: this MPS device has no bf16 (macOS 14 or newer has it); "
                               "use --dtype fp16 or fp32")
        return Placement("mps", dtype, "Apple MPS")  # type: ignore[arg-type]
    if device == "cpu":
        dtype = "fp32" if dtype == "auto" else dtype
        if dtype == "fp16":
            raise KinjectError("--dtype fp16: not supported on the CPU (slow, and not every op has an fp16 "
                               "kernel); use fp32, or bf16 on a CPU with AVX512-BF16/AMX")
        if dtype == "bf16" and not caps.cpu_bf16:
            raise KinjectError("--dtype bf16: this CPU has no AVX512-BF16 or AMX, so bf16 would be emulated, "
                               "several times slower than fp32; use --dtype fp32")
        return Placement("cpu", dtype, caps.cpu_name)  # type: ignore[arg-type]
    raise KinjectError(f"--device must be auto, cpu, cuda, cuda:N or mps, got '{device}'")


# ---------------------------------------------------------------------------- measured throughput


def matmul_flops(placement: Placement, seconds: float = 0.3, size: int | None = None) -> float:
    """Sustained matmul throughput (FLOP/s) of this device in this dtype, measured now: what the
    cost model divides work by, instead of a constant calibrated on one machine. GPUs get large
    matrices (default 4096², CPUs 1024²) and one synchronisation per timed round (kernel
    launches are asynchronous)."""
    import torch

    dev = placement.torch_device
    size = size or (1024 if placement.kind == "cpu" else 4096)
    a = torch.randn(size, size, device=dev).to(placement.torch_dtype)
    b = torch.randn(size, size, device=dev).to(placement.torch_dtype)
    sync = {"cuda": lambda: torch.cuda.synchronize(dev), "mps": lambda: torch.mps.synchronize()}.get(
        placement.kind, lambda: None)

    def timed(rounds: int) -> float:
        start = time.perf_counter()
        for _ in range(rounds):
            a @ b
        sync()
        return time.perf_counter() - start

    with torch.inference_mode():
        a @ b  # warm-up: kernels chosen, memory allocated
        sync()
        rounds = 1
        while (elapsed := timed(rounds)) < seconds:
            rounds *= 2
        # A peak is a maximum, and on a shared machine a busy moment only lowers a reading: the best
        # of three windows (one window alone read 111 GFLOP/s where the next read 206, and init sized
        # a 15-minute design that ran in 7.8).
        fastest = min(elapsed, timed(rounds), timed(rounds))
        return 2 * size**3 * rounds / fastest


def reset_peak_gpu(placement: Placement) -> None:
    """Start measuring peak GPU memory on the placement's device from now (a no-op off CUDA)."""
    if placement.kind == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(placement.torch_device)


def peak_gpu_mb(placement: Placement) -> float | None:
    """Peak GPU memory allocated by torch since the last reset (None off CUDA)."""
    if placement.kind != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated(placement.torch_device) / 2**20


# ---------------------------------------------------------------------------- the CPU allocator

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(kind: str) -> bool:
    """On a CPU under glibc, serve tensors from the heap and keep freed memory there (once per
    process; True when in effect). glibc's default maps every allocation over 32 MiB afresh and
    unmaps it when freed, so each logits-sized tensor of every step (a 135M model's [4, 256, 49152]
    logits are 100-200 MB) faults in and zeroes tens of thousands of new pages; with this the
    memory is reused. Measured on a bf16 training step (2 cores): 1.88 s instead of 2.12, page faults
    ~60k instead of ~380k.
    The arithmetic is unchanged; the price is memory: the heap grows by a few copies of the largest
    transient tensor before freed space is mostly reused (the 135M trainer's peak RSS 4.9 GB instead of 4.4),
    and the process keeps its peak until it exits."""
    global _kept
    if kind != "cpu":
        return False
    if _kept is None:
        import ctypes
        import platform

        _kept = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL(None)
            _kept = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _kept


_kept: bool | None = None
