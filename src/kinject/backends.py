"""Who computes log-likelihoods: the seam between "what to score" and the engine that scores it.

In the spirit of lm-eval's model API, a backend takes (context, continuations) requests — the
`Prompt`s a task renders — and returns each continuation's summed log-probability and whether
it is the greedy one. Tasks, RAG and metrics never see the engine, so any engine that can
return prompt log-probabilities plugs in:

* `hf` (default): a transformers model in this process on any device (`devices.Placement`),
  with the fast path of `kinject.scoring` (shared-prefix KV reuse, one forward per context, the
  LM head only where needed); `device_map="auto"` for models larger than one GPU; under
  `accelerate launch` the questions are sharded over the processes and gathered in order.
* `openai-completions` (`openai:BASE_URL#MODEL`): any OpenAI-compatible `/v1/completions`
  server that echoes prompt log-probabilities — vLLM (tensor/data parallel on many GPUs),
  llama.cpp's server, a hosted model, `kinject serve` (see `kinject.completions`).

`open_backend` reads the `--backend` / config spelling of both.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from kinject.devices import Placement, local_rank, resolve
from kinject.errors import KinjectError
from kinject.scoring import Scored, score_shard
from kinject.tasks import Prompt

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
        return self.rank == 0

    def gather(self, part: dict[int, Any]) -> dict[int, Any]:
        if self._state is None:
            return part
        from accelerate.utils import gather_object

        merged: dict[int, Any] = {}
        for piece in gather_object([part]):
            merged.update(piece)
        return merged


class HFBackend:
    """A transformers causal LM in this process (see `kinject.scoring` for the fast path)."""

    name = "hf"

    def __init__(self, model: "PreTrainedModel", tok: "PreTrainedTokenizerBase", placement: Placement,
                 batch_size: int = 8, ref: str = "", parallel: DataParallel | None = None) -> None:
        self.model, self.tok, self.placement = model, tok, placement
        self.batch_size = batch_size
        self.ref = ref
        self.parallel = parallel or DataParallel(cpu=placement.kind == "cpu")

    @classmethod
    def load(cls, ref: str, placement: Placement, batch_size: int = 8, log=None) -> "HFBackend":
        from kinject.models import load_lm

        parallel = DataParallel(cpu=placement.kind == "cpu")
        model, tok = load_lm(ref, placement, **({"log": log} if log else {}))
        return cls(model, tok, placement, batch_size, ref, parallel)

    @property
    def is_main(self) -> bool:
        return self.parallel.is_main

    def loglikelihood(self, prompts: Sequence[Prompt], groups: Sequence[str | None] | None = None,
                      progress: Progress = lambda n: None) -> list[Scored]:
        shard = (self.parallel.rank, self.parallel.world)
        part = score_shard(self.model, self.tok, prompts, groups, self.batch_size, progress, shard)
        results = self.parallel.gather(part)
        return [results[i] for i in range(len(prompts))]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, **self.placement.describe(), "world_size": self.parallel.world}


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
    if kind == "hf":
        return HFBackend.load(model_ref, resolve(device, dtype, rank=local_rank()), batch_size, log)
    from kinject.completions import OpenAICompletionsBackend

    return OpenAICompletionsBackend(url or "", served or model_ref, model_ref, log=log)
