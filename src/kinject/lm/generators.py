"""Generators: who writes synthetic data. This module owns the `Generator` protocol (a batch of
chat conversations in, one reply or `None` each out), its counters (`GeneratorStats`), the two
implementations — `LocalGenerator`, an HF instruct model run in this process through
`kinject.lm.backends.HFBackend.generate`, and `OpenAIGenerator`, any OpenAI-compatible
`/chat/completions` endpoint (a hosted API, vLLM, llama.cpp, Ollama, `kinject serve`) over a
`kinject.lm.endpoint.Endpoint` with a give-up rule for dead endpoints — the chat rendering for
models with or without a template, and `open_generator`, which builds one from a `SPEC_HELP`
spec and `GeneratorOptions`. The recipes that use a generator live in `kinject.synth.paraphrase`,
`kinject.synth.questions` and `kinject.synth.trainpairs`; `kinject.synth.synthesis` runs them for every command.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from kinject.core.errors import KinjectError
from kinject.lm.backends import Completion, HFBackend, render_chat
from kinject.lm.endpoint import KEY_VARIABLES, Endpoint, RequestFailed
from kinject.runtime.assets import Log, quiet
from kinject.runtime.catalog import DEFAULT_GENERATOR
from kinject.runtime.devices import Placement, resolve
from kinject.runtime.models import CPU

Messages = list[dict[str, str]]
"""A chat conversation: `{"role": ..., "content": ...}` turns."""

SPEC_HELP = ("local[:MODEL] (an HF instruct model run here; MODEL = catalog name, folder, .gguf or hub id; "
             f"default {DEFAULT_GENERATOR}), or openai:BASE_URL[#MODEL] for any OpenAI-compatible chat endpoint "
             "(e.g. openai:http://127.0.0.1:8000/v1#qwen2.5-0.5b; without #MODEL the server's first model), "
             "or openai:MODEL (base URL from $KINJECT_API_BASE / $OPENAI_BASE_URL, default "
             "https://api.openai.com/v1). API key from " + " or ".join(f"${v}" for v in KEY_VARIABLES) + ".")


@dataclass
class GeneratorStats:
    """What a generator did; callers put it in their reports. Thread-safe."""

    requests: int = 0
    """Calls to the backend (HTTP requests, or prompts given to a local model)."""
    retries: int = 0
    """Repeated requests after a connection error, timeout, 429, 5xx or unreadable response."""
    failures: int = 0
    """Prompts that got no reply after every retry."""
    skipped: int = 0
    """Prompts not sent because the endpoint failed too many times in a row."""
    errors: Counter = field(default_factory=Counter)
    """Each failed request by kind: connect, timeout, http_429, http_500, bad_response, ..."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Add to the named counters."""
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def error(self, kind: str) -> None:
        """Count one error of this kind."""
        with self._lock:
            self.errors[kind] += 1

    def as_dict(self) -> dict[str, Any]:
        """The counts, for a report."""
        with self._lock:
            return {"requests": self.requests, "retries": self.retries, "failures": self.failures,
                    "skipped": self.skipped, "errors": dict(sorted(self.errors.items()))}


class Generator(Protocol):
    """Chat completion for a batch of conversations; `None` where no reply could be had."""

    id: str
    """Stable identity (backend, address, model) that cache keys include."""
    batch_size: int
    """How many prompts a caller should hand over per call to keep the backend busy."""
    stats: GeneratorStats

    def complete(self, prompts: Sequence[Messages], *, seed: int, max_tokens: int,
                 temperature: float) -> list[str | None]:
        """One reply per conversation, None where none could be had."""
        ...

    def close(self) -> None:
        """Release what the generator holds (threads, connections)."""
        ...


class LocalGenerator:
    """An HF causal LM run in this process: chat template, left-padded batches, seeded sampling.

    The same prompts with the same seed give the same replies (each micro-batch samples under
    its own seed, derived from the call's seed, in a forked RNG that leaves global state alone).
    The model loads on first use, so a run served entirely from the cache never loads it.
    """

    def __init__(self, ref: str = DEFAULT_GENERATOR, *, model: Any = None, tokenizer: Any = None,
                 batch_size: int = 4, top_p: float = 0.95, placement: Placement = CPU, log: Log = quiet) -> None:
        self.ref = ref
        # samples differ across dtypes and devices: they are cached apart (CPU fp32 keeps the plain id)
        self.id = f"local:{ref}" + (f"@{placement.tag}" if placement.tag else "")
        self.batch_size = batch_size
        self.top_p = top_p
        self.placement = placement
        self.stats = GeneratorStats()
        self._model, self._tok = model, tokenizer
        self._backend: HFBackend | None = None
        self._log = log
        self.lock = threading.Lock()
        """Held while the model runs: one request at a time (`kinject serve` shares it)."""

    def load(self) -> HFBackend:
        """Load the model now (serve does, so the first request is not slow)."""
        if self._backend is None:
            if self._model is None:
                from kinject.runtime.models import load_lm

                self._model, self._tok = load_lm(self.ref, self.placement, log=self._log)
            self._backend = HFBackend(self._model, self._tok, self.placement, ref=self.ref)
        return self._backend

    def generate(self, prompts: Sequence[Messages], *, seed: int, max_tokens: int,
                 temperature: float) -> list[Completion]:
        """Replies with token counts and finish reasons (what `kinject serve` returns)."""
        with self.lock:
            lm = self.load()
            special = not getattr(lm.tok, "chat_template", None)  # a template already holds BOS etc.
            replies = lm.generate([render_chat(lm.tok, p) for p in prompts], max_tokens=max_tokens,
                                  temperature=temperature, top_p=self.top_p, seed=seed, batch_size=self.batch_size,
                                  add_special_tokens=special)
        self.stats.add(requests=len(replies))
        return replies

    def complete(self, prompts: Sequence[Messages], *, seed: int, max_tokens: int,
                 temperature: float) -> list[str | None]:
        """One reply per conversation, generated by the local model."""
        return [c.text for c in self.generate(prompts, seed=seed, max_tokens=max_tokens, temperature=temperature)]

    def close(self) -> None:
        """Nothing to release: the model stays loaded."""
        pass


class OpenAIGenerator:
    """Any OpenAI-compatible `/chat/completions` endpoint.

    Requests run `concurrency` at a time and are retried by the `Endpoint`'s rule; a prompt that
    still gets no reply, or one the server refuses (other 4xx), is `None`, counted; 401/403/404
    are configuration errors and stop the run. After `give_up_after` consecutive failed prompts
    the endpoint is taken to be down and the rest are skipped (counted), so a dead server costs
    seconds, not hours.
    """

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None,
                 timeout: float = 120.0, max_retries: int = 4, backoff: float = 0.5, max_backoff: float = 30.0,
                 concurrency: int = 4, give_up_after: int = 12, top_p: float | None = None) -> None:
        if not re.match(r"https?://", base_url):
            raise KinjectError(f"generator base URL must start with http:// or https://, got '{base_url}'")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.give_up_after = give_up_after
        self.top_p = top_p
        self.concurrency = max(1, concurrency)
        self.batch_size = 4 * self.concurrency
        self.stats = GeneratorStats()
        self._endpoint = Endpoint(self.base_url, api_key=api_key, timeout=timeout, max_retries=max_retries,
                                  backoff=backoff, max_backoff=max_backoff, concurrency=self.concurrency)
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="kinject-gen")
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._consecutive = 0

    @property
    def id(self) -> str:
        """What cache keys name: the model, which decides the replies, not where it is served (a
        restarted server on another port still hits the cache). A spec without #MODEL asks the
        server for it first, so two servers' models never share entries; an endpoint that cannot
        be asked is keyed by its URL, and its prompts then go unanswered (counted, not cached)."""
        with self._model_lock:
            resolved = self._resolve_model()
        return f"openai:{self.model}" if resolved else f"openai:{self.base_url}#?"

    def _request(self, method: str, path: str, body: dict | None = None) -> dict[str, Any] | None:
        """JSON of a 200 response, retried on transient errors; None when every try failed, the
        server refused this request, or the endpoint is given up on."""

        def attempt(n: int) -> bool:
            if self._consecutive >= self.give_up_after:
                self.stats.add(skipped=1)
                return False
            self.stats.add(requests=1, retries=1 if n else 0)
            return True

        try:
            data = self._endpoint.request(method, path, body, attempt=attempt, failed=self.stats.error)
        except RequestFailed as exc:
            if exc.status == 404:
                raise KinjectError(f"{exc}" + (f", and the model name '{self.model}'" if self.model else "")) \
                    from None
            if exc.kind != "skipped":
                self.stats.add(failures=1)
                with self._lock:
                    self._consecutive += 1
            return None
        with self._lock:
            self._consecutive = 0
        return data

    def _resolve_model(self) -> bool:
        if self.model:
            return True
        data = self._request("GET", "/models")
        models = data.get("data") if data else None
        if isinstance(models, list) and models and isinstance(models[0], dict) and models[0].get("id"):
            self.model = str(models[0]["id"])
            return True
        if data is not None:
            raise KinjectError(f"{self.base_url}/models lists no model; name one: openai:{self.base_url}#MODEL")
        return False

    def _one(self, messages: Messages, seed: int, max_tokens: int, temperature: float) -> str | None:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                                "temperature": temperature, "seed": seed}
        if self.top_p is not None:
            body["top_p"] = self.top_p
        data = self._request("POST", "/chat/completions", body)
        try:
            content = data["choices"][0]["message"]["content"] if data is not None else None
        except (KeyError, IndexError, TypeError):
            self.stats.error("bad_response")
            return None
        return content if isinstance(content, str) else None

    def complete(self, prompts: Sequence[Messages], *, seed: int, max_tokens: int,
                 temperature: float) -> list[str | None]:
        """One reply per conversation from the server, asked in parallel; all None when it has no model."""
        with self._model_lock:
            ready = self._resolve_model()
        if not ready:
            self.stats.add(failures=len(prompts))
            return [None] * len(prompts)
        futures = [self._pool.submit(self._one, p, seed, max_tokens, temperature) for p in prompts]
        return [f.result() for f in futures]

    def close(self) -> None:
        """Finish pending requests, then release the thread pool and connections."""
        self._pool.shutdown(wait=True)
        self._endpoint.close()


@dataclass(frozen=True)
class GeneratorOptions:
    """How `open_generator` opens a spec: an endpoint's limits (`openai:`) and where a local model
    runs (`local:`). A run's config names only the spec, so a run uses these defaults."""

    concurrency: int = 4
    timeout: float = 120.0
    max_retries: int = 4
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"


def open_generator(spec: str, options: GeneratorOptions = GeneratorOptions(), log: Log = quiet) -> Generator:
    """A generator from its spec; see `SPEC_HELP` for the syntax."""
    kind, _, rest = spec.partition(":")
    if kind == "local":
        return LocalGenerator(rest or DEFAULT_GENERATOR, batch_size=options.batch_size,
                              placement=resolve(options.device, options.dtype), log=log)
    if kind == "openai":
        if rest.startswith(("http://", "https://")):
            base, _, model = rest.partition("#")
        else:
            base = (os.environ.get("KINJECT_API_BASE") or os.environ.get("OPENAI_BASE_URL")
                    or "https://api.openai.com/v1")
            model = rest
        return OpenAIGenerator(base, model or None, timeout=options.timeout, max_retries=options.max_retries,
                               concurrency=options.concurrency)
    raise KinjectError(f"unknown generator '{spec}'; use {SPEC_HELP}")
