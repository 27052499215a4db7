"""The cost model behind `kinject run --dry-run`: tokens → FLOPs → time on the planned device.

Scoring costs 2·N·tokens FLOPs and training 6·N·tokens (N = the model's parameters, counted
from its config without loading weights). Time is FLOPs over the matmul throughput measured on
the planned device, in the planned dtype, in the same command (`devices.matmul_flops`), times the
share of that peak the work sustains (`efficiency`). When the planned device is not on this
machine (planning a GPU run on a laptop) the throughput of an A100-class GPU is used and the
estimate says it is nominal.
GPU-hours are the estimated hours times the processes (GPUs) a stage runs on.

The share is learnt: every stage `kinject run` computes long enough to mean something records the
share of the peak it reached in `rates.json` inside the stage cache, keyed by machine (CPU model,
cores and threads, or GPU name), device type, kind of work and dtype (`share_key`); estimates use
the median of the last few (`measured_share`), else the defaults (`EFFICIENCY`, then
`UTILISATION`). The lookups take the loaded table (pure); `load_rates`/`record_share` do the I/O.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from kinject.core.fsio import atomic_write_text
from kinject.runtime.devices import Placement, matmul_flops

UTILISATION = 0.5
"""Share of the measured matmul peak a forward/backward pass sustains (kinject's scorer and
trainer run close to it on CPUs; GPUs lose more to attention and memory traffic)."""

EFFICIENCY = {("train", "bf16"): 0.37}
"""Where a kind of work in an explicit precision sustains another share of the peak than
UTILISATION, as measured end to end (stage wall time) by `kinject run` with SmolLM2-135M on a 2-core
AVX512-BF16 CPU, on a 1,745-chunk real folder: bf16 fine-tuning runs at 37% of the bf16 matmul peak
(29% before the trainer kept freed memory; the LM head and the optimizer are outside the 6·N count,
and autocast casts every step). fp32 scoring ran at 60% there, so UTILISATION leaves its estimates
on the safe side."""

RATES_FILE = "rates.json"
"""The measured shares' file, inside the stage cache (`rates_file`); delete it to forget them."""
KEEP = 5
"""Observations kept per key (the newest); estimates use their median."""
MIN_WALL_S = 10.0
"""Shorter stages are not recorded: model loading and start-up would be most of their time."""

NOMINAL_GPU_FLOPS = {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12}
"""An A100's dense tensor-core peak (fp32 as TF32): for planning a GPU run where there is none."""


@dataclass(frozen=True)
class Work:
    """What a stage computes: `kind` score | train | embed, with which model, over how many tokens,
    on how many processes (a launcher's --num_processes)."""

    kind: str
    model: str
    tokens: float
    processes: int = 1
    exact: bool = True
    """False when the token count is a guess (e.g. a corpus not built yet)."""
    dtype: str | None = None
    """The precision its matmuls run in when it differs from the plan's (bf16 fine-tuning)."""

    @property
    def flops_per_token_per_param(self) -> int:
        """6 for training (forward and backward), 2 for a forward pass."""
        return 6 if self.kind == "train" else 2


def processes(launcher: str | None) -> int:
    """The process count a launcher line asks for (accelerate's `--num_processes N`, torchrun's
    `--nproc_per_node N`), 1 without one."""
    if not launcher:
        return 1
    args = shlex.split(launcher)
    for i, a in enumerate(args):
        if a.split("=")[0] in ("--num_processes", "--num-processes", "--nproc_per_node", "--nproc-per-node"):
            value = a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else "1")
            return int(value) if value.isdigit() else 1
    return 1


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bBmM])(?![a-zA-Z])")


def local_config(ref: str) -> dict | None:
    """A model's config.json if it is already on this machine — a pulled catalog asset, a local
    folder, or the HF cache — without pulling, downloading or asking the hub anything."""
    from kinject.runtime.assets import is_pulled, local_path
    from kinject.runtime.catalog import by_name

    asset = by_name().get(ref)
    if asset is not None:
        folder: Path | None = local_path(asset) if is_pulled(asset) else None
    else:
        folder = Path(ref).expanduser()
        if not folder.exists():
            folder = None
            try:
                from huggingface_hub import try_to_load_from_cache

                cached = try_to_load_from_cache(ref, "config.json")
                if isinstance(cached, str):
                    return json.loads(Path(cached).read_text())
            except Exception:  # noqa: BLE001 - not a valid repo id, or no cache: the name decides
                return None
    if folder is None:
        return None
    if folder.is_file():  # a .gguf file: no config beside it to read cheaply
        return None
    found = [folder / "config.json"] if (folder / "config.json").is_file() else sorted(folder.rglob("config.json"))
    try:
        return json.loads(found[0].read_text()) if found else None
    except ValueError:
        return None


@lru_cache(maxsize=None)
def param_count(ref: str) -> float | None:
    """A model's non-embedding parameter count (what a token's matmuls touch; an embedding lookup
    is free, and kinject's scorer runs the LM head only where an option token is predicted) from
    its config.json when that is on this machine (nothing is fetched); else from a size in its
    name ("Mistral-7B" → 7e9); None when neither says."""
    config = local_config(ref)
    if config is not None:
        n = layer_params(config)
        if n is not None:
            return n
    m = _SIZE.search(ref.rsplit("/", 1)[-1])
    if m:
        return float(m.group(1)) * (1e9 if m.group(2) in "bB" else 1e6)
    known = {"bge-large": 335e6, "bge-base": 109e6, "bge-small": 33e6, "e5-large": 335e6, "minilm": 22.7e6,
             "mpnet": 109e6}
    return next((v for k, v in known.items() if k in ref.lower()), None)


def layer_params(c: dict, embeddings: bool = False) -> float | None:
    """Transformer parameters from a config: per layer attention (with grouped KV heads) + MLP,
    times layers; with `embeddings`, the token embeddings (and an untied LM head) too."""
    c = c.get("text_config", c)  # multimodal configs nest the language model's
    d = c.get("hidden_size") or c.get("n_embd") or c.get("d_model")
    layers = c.get("num_hidden_layers") or c.get("n_layer") or c.get("num_layers")
    vocab = c.get("vocab_size")
    if not (d and layers and vocab):
        return None
    heads = c.get("num_attention_heads") or c.get("n_head") or 1
    head_dim = c.get("head_dim") or d // heads
    kv = (c.get("num_key_value_heads") or heads) * head_dim
    ffn = c.get("intermediate_size") or c.get("n_inner") or 4 * d
    gated = c.get("model_type") not in ("gpt2", "bert", "mpnet", "roberta", "xlm-roberta")
    attn = d * heads * head_dim * 2 + d * kv * 2
    mlp = d * ffn * (3 if gated else 2)
    embed = vocab * d * (1 if c.get("tie_word_embeddings", True) else 2) if embeddings else 0
    return float(embed + layers * (attn + mlp))


@dataclass(frozen=True)
class Throughput:
    """The FLOP/s a stage's estimate assumes, and where the number came from."""
    flops: float
    """The matmul peak × UTILISATION (the nominal sustained rate; `peak` is what shares refer to)."""
    what: str
    """How it was obtained, for the user (measured now, or nominal)."""
    machine: str | None = None
    """This machine and device (`machine`) when the peak was measured here; None when nominal,
    and then no measured share applies."""
    dtype: str = ""
    """The precision the peak was measured in."""
    measured: Mapping[str, Sequence[float]] = field(default_factory=dict, compare=False, repr=False)
    """The shares stages reached here, by `share_key` (`load_rates`)."""

    @property
    def peak(self) -> float:
        """The matmul peak the rate was derived from (FLOP/s)."""
        return self.flops / UTILISATION


def machine(placement: Placement) -> str:
    """What measured shares are keyed by: the device type and its name, on a CPU with its logical
    cores and torch's thread count (a share reached on 2 threads says little about 16)."""
    if placement.kind != "cpu":
        return f"{placement.kind} · {placement.device_name or 'unnamed'}"
    import torch

    return f"cpu · {placement.device_name or 'unnamed'} · {os.cpu_count()} cores · {torch.get_num_threads()} threads"


def throughput(placement: Placement, present: bool,
               measured: Mapping[str, Sequence[float]] | None = None, earlier: float = 0.0) -> Throughput:
    """Sustained FLOP/s for planning: measured now on a present device, nominal otherwise.
    `measured`: the shares recorded on this machine (`load_rates`), used by `efficiency` when the
    device is present. `earlier`: a reading taken earlier in the same command; the peak is the
    better of the two (a busy moment on a shared machine only lowers a reading)."""
    if present:
        now = matmul_flops(placement)
        peak = max(now, earlier)
        when = "measured now" if now >= earlier else "the best of two readings in this command"
        return Throughput(peak * UTILISATION, f"{placement.device} {placement.dtype}: matmul "
                          f"{peak / 1e9:,.0f} GFLOP/s {when}", machine(placement), placement.dtype,
                          dict(measured or {}))
    peak = NOMINAL_GPU_FLOPS.get(placement.dtype, NOMINAL_GPU_FLOPS["fp32"])
    return Throughput(peak * UTILISATION,
                      f"{placement.device} {placement.dtype} is not on this machine: nominal A100-class "
                      f"{peak / 1e12:.0f} TFLOP/s", None, placement.dtype)


@dataclass(frozen=True)
class Share:
    """The share of the matmul peak a kind of work is planned at, and where it comes from."""
    value: float
    source: str
    """measured (on this machine), reference (`EFFICIENCY`) or nominal (`UTILISATION`)."""
    observations: int = 0
    """How many stages the measured median is over."""

    def describe(self) -> str:
        """One line for the plan: "31% of the matmul peak, measured over 3 stages on this machine"."""
        if self.source == "measured":
            n = self.observations
            return f"{self.value:.0%} of the matmul peak, measured over {n} stage{'s' * (n != 1)} on this machine"
        if self.source == "reference":
            return f"{self.value:.0%} of the matmul peak (as measured on a 2-core AVX512-BF16 CPU)"
        return f"nominal {self.value:.0%} of the matmul peak"


def share_key(machine: str, kind: str, dtype: str) -> str:
    """The rates table's key: machine (with its device type), kind of work, dtype."""
    return f"{machine} · {kind} · {dtype}"


def measured_share(table: Mapping[str, Sequence[float]], key: str) -> tuple[float, int] | None:
    """(median of the newest `KEEP` shares recorded under `key`, how many) or None."""
    values = list(table.get(key, ()))[-KEEP:]
    return (statistics.median(values), len(values)) if values else None


def efficiency(work: Work, rate: Throughput) -> Share:
    """The share of `rate`'s peak `work` is planned at: the median measured on this machine for
    its kind and dtype, else `EFFICIENCY`'s reference share, else `UTILISATION`. The one place
    every estimate (`estimate`: the plan, `kinject run`'s hints, `init`'s design) takes it from."""
    dtype = work.dtype or rate.dtype
    if rate.machine is not None:
        found = measured_share(rate.measured, share_key(rate.machine, work.kind, dtype))
        if found is not None:
            return Share(found[0], "measured", found[1])
    reference = EFFICIENCY.get((work.kind, work.dtype or ""))
    return Share(reference, "reference") if reference is not None else Share(UTILISATION, "nominal")


@dataclass(frozen=True)
class Estimate:
    """A stage's predicted FLOPs, wall-clock seconds and device-hours; None when the model's size is unknown."""
    flops: float | None
    seconds: float | None
    """Wall-clock seconds: the work split over the stage's processes."""
    device_hours: float | None
    """Seconds × processes / 3600: what a GPU cluster bills."""
    share: Share | None = None
    """The share of the peak the seconds assume."""


def estimate(work: Work, rate: Throughput) -> Estimate:
    """The time `work` takes at `rate`'s peak × its share (`efficiency`), split over its processes."""
    n = param_count(work.model)
    if n is None:
        return Estimate(None, None, None)
    flops = work.flops_per_token_per_param * n * work.tokens
    share = efficiency(work, rate)
    seconds = flops / (rate.peak * share.value) / work.processes
    return Estimate(flops, seconds, seconds * work.processes / 3600, share)


def achieved_share(work: Work, rate: Throughput, wall_s: float, done: float = 1.0) -> float | None:
    """The share of `rate`'s peak a stage reached: its FLOPs (× `done`, the part of the work it
    computed rather than found cached) over its wall time. None when it is not worth recording: a
    rate not measured here, an unknown model size, under `MIN_WALL_S`, or a share outside (0, 1].
    Launched stages (processes > 1) are not recorded: their time holds every process's start-up and
    their communication, and on a CPU they share the cores the peak was measured on; they are
    planned at the single-process share, split over their processes."""
    if rate.machine is None or work.processes != 1 or wall_s < MIN_WALL_S or not done > 0:
        return None
    flops = estimate(work, rate).flops
    if flops is None:
        return None
    share = flops * done / wall_s / rate.peak
    return share if 0 < share <= 1 else None


def observed(table: Mapping[str, Sequence[float]], key: str, share: float) -> dict[str, list[float]]:
    """The table with `share` added under `key`, keeping the newest `KEEP`."""
    out = {k: list(v) for k, v in table.items()}
    out[key] = [*out.get(key, []), share][-KEEP:]
    return out


def rates_file(cache: Path | None = None) -> Path:
    """Where measured shares live: `RATES_FILE` in the stage cache (`kinject run`'s default,
    $KINJECT_HOME/stages, when none is given, as for `kinject init`)."""
    if cache is None:
        from kinject.runtime.assets import stage_cache

        cache = stage_cache()
    return cache / RATES_FILE


def load_rates(path: Path) -> dict[str, list[float]]:
    """The measured shares by key; {} for a missing, unreadable or corrupt file (entries that are not
    lists of shares in (0, 1] are dropped): a damaged file only makes estimates nominal again."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        shares = data["shares"]
        return {str(k): [float(x) for x in v if _valid(x)] for k, v in shares.items()
                if isinstance(v, list) and any(_valid(x) for x in v)}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _valid(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0 < x <= 1


def record_share(path: Path, key: str, share: float) -> None:
    """Add one observation to the rates file, written whole (temporary file + rename). A file that
    cannot be written is skipped: learning rates never fails a run. Two runs finishing stages at the
    same instant may lose one observation, never the file."""
    table = observed(load_rates(path), key, share)
    try:
        atomic_write_text(path, json.dumps({"shares": table}, indent=1, sort_keys=True))
    except OSError:
        pass


def fmt_count(x: float | None) -> str:
    """A count with an SI suffix (1.2G); ? for None."""
    if x is None:
        return "?"
    for unit, size in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= size:
            return f"{x / size:.1f}{unit}"
    return f"{x:.0f}"
