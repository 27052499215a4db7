"""Who computes log-likelihoods: the seam between "what to score" and the engine that scores it.

In the spirit of lm-eval's model API, a backend takes (context, continuations) requests — the
`Prompt`s a task renders — and returns each continuation's summed log-probability and whether
it is the greedy one. Tasks, RAG and metrics never see the engine, so any engine that can
return prompt log-probabilities plugs in:

* `hf` (default): a transformers model in this process on any device (`devices.Placement`),
  with the fast path of `kinject.lm.scoring` (shared-prefix KV reuse, one forward per context, the
  LM head only where needed); `device_map="auto"` for models larger than one GPU; under
  `accelerate launch` the questions are sharded over the processes and gathered in order.
* `openai-completions` (`openai:BASE_URL#MODEL`): any OpenAI-compatible `/v1/completions`
  server that echoes prompt log-probabilities — vLLM (tensor/data parallel on many GPUs), a
  hosted model that does, `kinject serve` (see `kinject.lm.completions`; llama.cpp's server does
  not echo prompt log-probabilities).

`open_backend` reads the `--backend` / config spelling of both.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from kinject.core.errors import KinjectError
from kinject.lm.scoring import Scored, score_shard
from kinject.runtime.devices import Placement, keep_freed_memory, local_rank, resolve
from kinject.tasks.task import Prompt

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Progress = Callable[[int], None]


class Backend(Protocol):
    """What the scorer needs from an engine."""

    name: str

    def loglikelihood(self, prompts: Sequence[Prompt], groups: Sequence[str | None] | None = None,
                      progress: Progress = lambda n: None) -> list[Scored]:
        """Per prompt: each continuation's log-likelihood given the context, and is-greedy.
        `groups` (subjects) say which prompts may share a few-shot prefix."""
        ...

    def describe(self) -> dict[str, Any]:
        """What results record about the engine (backend, device, dtype, world size, ...)."""
        ...

    @property
    def is_main(self) -> bool:
        """False on the non-writing ranks of a data-parallel run."""
        ...

    def close(self) -> None:
        """Release what the engine holds open (a server backend's connections)."""
        ...


@dataclass(frozen=True)
class Completion:
    """One generated reply, with its token counts and why it stopped."""
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    """"stop" (end of turn) or "length" (cut at max_tokens), as the OpenAI API reports it."""


def render_chat(tok: Any, messages: Sequence[dict[str, str]]) -> str:
    """The model's chat template; a plain "role: content" transcript for tokenizers without one."""
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def mix_seed(*parts: Any) -> int:
    """A 31-bit seed from any values (round, attempt, base seed): stable across runs and platforms."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def eos_ids(model: Any, tok: Any) -> set[int]:
    """End-of-turn tokens: the generation config's (Qwen has two) plus the tokenizer's."""
    ids: set[int] = set()
    cfg = getattr(model, "generation_config", None)
    for v in (getattr(cfg, "eos_token_id", None), tok.eos_token_id):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    if not ids:
        raise KinjectError("the local model has no end-of-sequence token; it cannot be used as a generator")
    return ids


class DataParallel:
    """This process's place in an `accelerate launch` run (rank, world) and the gather of
    per-rank results, in original order. A single process is rank 0 of 1 and needs no
    process group."""

    def __init__(self, cpu: bool = False) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self._state = None
        if self.world > 1:
            from accelerate import PartialState

            # joins the launcher's process group: gloo on CPUs (which must be asked for), NCCL on GPUs
            self._state = PartialState(cpu=cpu)
            self.rank, self.world = self._state.process_index, self._state.num_processes

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes results."""
        return self.rank == 0

    def gather(self, part: dict[int, Any]) -> dict[int, Any]:
        """Every rank's index → result pieces merged into one dict (this process's own when alone)."""
        if self._state is None:
            return part
        from accelerate.utils import gather_object

        merged: dict[int, Any] = {}
        for piece in gather_object([part]):
            merged.update(piece)
        return merged


class HFBackend:
    """A transformers causal LM in this process (see `kinject.lm.scoring` for the fast path)."""

    name = "hf"

    def __init__(self, model: "PreTrainedModel", tok: "PreTrainedTokenizerBase", placement: Placement,
                 batch_size: int = 8, ref: str = "", parallel: DataParallel | None = None) -> None:
        self.model, self.tok, self.placement = model, tok, placement
        self.batch_size = batch_size
        self.ref = ref
        self.parallel = parallel or DataParallel(cpu=placement.kind == "cpu")
        keep_freed_memory(placement.kind)  # each batch's logits reuse the last one's memory

    @classmethod
    def load(cls, ref: str, placement: Placement, batch_size: int = 8, log=None) -> "HFBackend":
        """Load a model and tokenizer onto `placement`, noting whether it was spread over GPUs."""
        from kinject.runtime.models import load_lm

        parallel = DataParallel(cpu=placement.kind == "cpu")
        model, tok = load_lm(ref, placement, **({"log": log} if log else {}))
        spread = len(set(getattr(model, "hf_device_map", {}).values())) > 1
        return cls(model, tok, replace(placement, device_map="auto" if spread else None), batch_size, ref, parallel)

    @property
    def is_main(self) -> bool:
        """Whether this process writes results (rank 0 of a data-parallel run)."""
        return self.parallel.is_main

    def loglikelihood(self, prompts: Sequence[Prompt], groups: Sequence[str | None] | None = None,
                      progress: Progress = lambda n: None) -> list[Scored]:
        """Score this rank's shard of the prompts and return every prompt's result in order."""
        shard = (self.parallel.rank, self.parallel.world)
        part = score_shard(self.model, self.tok, prompts, groups, self.batch_size, progress, shard)
        results = self.parallel.gather(part)
        return [results[i] for i in range(len(prompts))]

    def describe(self) -> dict[str, Any]:
        """The backend, device, dtype and world size, for a run's records."""
        return {"backend": self.name, **self.placement.describe(), "world_size": self.parallel.world}

    def close(self) -> None:
        """Nothing to release: the model lives as long as this object."""

    def generate(self, texts: Sequence[str], *, max_tokens: int, temperature: float = 0.0, top_p: float = 0.95,
                 seed: int = 0, batch_size: int = 4, add_special_tokens: bool = True) -> list[Completion]:
        """Continue each text: greedy at temperature 0, else nucleus sampling. Texts of similar
        length share a left-padded batch; batch b samples under `mix_seed(seed, b)` in an RNG
        forked on the model's device, so the same call gives the same replies and leaves the
        global RNG alone."""
        import torch

        model, tok = self.model, self.tok
        ids = [tok(t, add_special_tokens=add_special_tokens)["input_ids"] for t in texts]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        results: list[Completion | None] = [None] * len(ids)
        eos = eos_ids(model, tok)
        pad = tok.pad_token_id if tok.pad_token_id is not None else min(eos)
        sample = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 \
            else {"do_sample": False}
        device = model.get_input_embeddings().weight.device
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            width = max(len(ids[i]) for i in idx)
            # left padding, so every row's reply starts right after its prompt
            input_ids = torch.tensor([[pad] * (width - len(ids[i])) + ids[i] for i in idx], device=device)
            mask = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in idx], device=device)
            with _forked_rng(model), torch.inference_mode():
                torch.manual_seed(mix_seed(seed, b))
                out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_tokens,
                                     pad_token_id=pad, eos_token_id=sorted(eos), **sample)
            for row, i in zip(out[:, width:].tolist(), idx):
                stop = next((j for j, t in enumerate(row) if t in eos), None)
                body = row if stop is None else row[:stop]
                results[i] = Completion(tok.decode(body, skip_special_tokens=True).strip(), len(ids[i]),
                                        len(body) + (stop is not None),
                                        "stop" if stop is not None or len(row) < max_tokens else "length")
        return [r for r in results if r is not None]


def _forked_rng(model: Any):
    """Fork the RNG of every device the model (or its device_map) runs on, besides the CPU's:
    seeding for one batch must not change the caller's random state anywhere."""
    import torch

    kinds = {p.device.type for p in model.parameters()}
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    if "mps" in kinds:
        return torch.random.fork_rng(devices=[0], device_type="mps")
    return torch.random.fork_rng(devices=cuda, device_type="cuda")


def parse_backend(spec: str | None) -> tuple[str, str | None, str | None]:
    """`hf` → ("hf", None, None); `openai:BASE_URL[#MODEL]` → ("openai-completions", url, model)."""
    spec = (spec or "hf").strip()
    if spec in ("hf", "huggingface", "transformers"):
        return "hf", None, None
    if spec.startswith("openai:"):
        url, _, served = spec[len("openai:"):].partition("#")
        if not url.startswith(("http://", "https://")):
            raise KinjectError(f"--backend {spec}: give the server's base URL, e.g. openai:http://127.0.0.1:8000/v1#MODEL")
        return "openai-completions", url.rstrip("/"), served or None
    raise KinjectError(f"--backend must be hf or openai:BASE_URL#MODEL, got '{spec}'")


def open_backend(spec: str | None, model_ref: str, *, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 8, log=None) -> Backend:
    """The backend a command or config names, ready to score (`model_ref` is the model for `hf`
    and the tokenizer for a server). Impossible devices, unreachable servers and servers without
    prompt log-probabilities or without the named model fail here, in one line."""
    kind, url, served = parse_backend(spec)
    if kind != "hf" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise KinjectError(f"--backend {spec} is not sharded over processes (the server parallelises itself): "
                           f"run it without accelerate launch")
    if kind == "hf":
        return HFBackend.load(model_ref, resolve(device, dtype, rank=local_rank()), batch_size, log)
    from kinject.lm.completions import OpenAICompletionsBackend

    return OpenAICompletionsBackend(url or "", served or model_ref, model_ref, log=log)
