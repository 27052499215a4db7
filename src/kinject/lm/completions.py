"""The `openai-completions` backend: log-likelihoods from any OpenAI-compatible `/v1/completions`
server that echoes prompt log-probabilities (vLLM, `kinject serve`; llama.cpp's llama-server
refuses `echo` or returns log-probabilities of generated tokens only, which the check below
catches).

It owns the client side of lm-eval's `local-completions` model with tokenized requests: prompts
are tokenised here with the model's own tokenizer, split into context and continuation exactly
as the hf backend splits them (`scoring.encode`), and sent as token ids — all options of a
question in one request — with `echo`, `logprobs: 1`, `max_tokens: 1`, `temperature: 0`. A
continuation's log-likelihood is the sum of the echoed log-probabilities of its tokens; it is
greedy when each of its tokens has the top log-probability at its position (lm-eval's rule:
the token's log-probability equals the best of `top_logprobs`, which, unlike comparing token
strings, is not fooled by two tokens that decode to the same text).

Questions run `concurrency` requests at a time over a `kinject.lm.endpoint.Endpoint` (the retry
rule the chat generator shares); a request that still fails stops the run with one line. The
server is checked when the backend is built: reachable, serving the named model, and returning
prompt log-probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from kinject.core.errors import KinjectError, error_line
from kinject.lm.endpoint import Endpoint
from kinject.lm.scoring import Scored, encode
from kinject.runtime.assets import Log, quiet
from kinject.tasks.task import Prompt

PROBE_TEXT = "The capital of France is Paris"
SUPPORTED = "vLLM and kinject serve do (llama.cpp's llama-server does not)"


class BadReply(ValueError):
    """A 200 reply without the prompt log-probabilities a request needs."""


def continuation_score(choice: Any, ctxlen: int, cont: Sequence[int]) -> tuple[float, bool]:
    """(log-likelihood, is-greedy) of the `cont` tokens that follow `ctxlen` prompt tokens, from
    one echoed `choices[i]` of a completions reply. Any generated tokens after the prompt are
    ignored. Raises `BadReply` when the echoed log-probabilities are missing or too short."""
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    if not isinstance(logprobs, dict):
        raise BadReply("the reply has no 'logprobs'")
    values, tops = logprobs.get("token_logprobs"), logprobs.get("top_logprobs")
    end = ctxlen + len(cont)
    if not isinstance(values, list) or not isinstance(tops, list) or len(values) < end or len(tops) < end:
        raise BadReply(f"the reply echoes {len(values) if isinstance(values, list) else 'no'} token log-probabilities "
                       f"for a {end}-token prompt")
    total, greedy = 0.0, True
    for value, top in zip(values[ctxlen:end], tops[ctxlen:end]):
        if not isinstance(value, (int, float)) or not isinstance(top, dict) or not top:
            raise BadReply("a continuation token has no log-probability or no top_logprobs")
        total += float(value)
        greedy = greedy and float(value) >= max(float(v) for v in top.values())
    return total, greedy


def parse_reply(data: Any, ctxlen: int, conts: Sequence[Sequence[int]]) -> Scored:
    """The `Scored` of one question from the reply to its request (one prompt per option)."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or len(choices) != len(conts):
        raise BadReply(f"the reply has {len(choices) if isinstance(choices, list) else 'no'} choices for "
                       f"{len(conts)} prompts")
    ordered = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
    scores = [continuation_score(c, ctxlen, cont) for c, cont in zip(ordered, conts)]
    return Scored(tuple(s for s, _ in scores), tuple(g for _, g in scores))


class OpenAICompletionsBackend:
    """A model behind an OpenAI-compatible completions server, tokenised locally (see module doc)."""

    name = "openai-completions"

    def __init__(self, url: str, served_model: str, tokenizer_ref: str, *, log: Log | None = None,
                 api_key: str | None = None, concurrency: int = 8, timeout: float = 300.0, max_retries: int = 4,
                 backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        from kinject.runtime.models import load_tokenizer

        self.url, self.served_model = url.rstrip("/"), served_model
        self.concurrency = max(1, concurrency)
        log = log or quiet
        self.tok, context_length = load_tokenizer(tokenizer_ref, log)
        if not context_length:
            context_length = self.tok.model_max_length if self.tok.model_max_length < 10**8 else 2048
        # encode() keeps up to max_length + 1 tokens; the server also needs room for the one
        # token it generates (max_tokens=1), so prompts stay within the context length - 1.
        self.max_length = int(context_length) - 2
        self._endpoint = Endpoint(self.url, api_key=api_key, timeout=timeout, max_retries=max_retries,
                                  backoff=backoff, max_backoff=max_backoff, concurrency=self.concurrency)
        self._check_server()
        log(f"scoring with '{served_model}' on {self.url} ({self.concurrency} requests at a time)")

    @property
    def is_main(self) -> bool:
        """Always: one process talks to the server."""
        return True

    def describe(self) -> dict[str, Any]:
        """The backend, server and served model, for a run's records."""
        return {"backend": self.name, "base_url": self.url, "served_model": self.served_model, "device": "remote",
                "dtype": "remote", "world_size": 1}

    def close(self) -> None:
        """Release the HTTP connections to the server."""
        self._endpoint.close()

    def _payload(self, prompts: list[list[int]]) -> dict[str, Any]:
        return {"model": self.served_model, "prompt": prompts, "echo": True, "logprobs": 1, "max_tokens": 1,
                "temperature": 0}

    def _check_server(self) -> None:
        """Fail in one line unless the server is up, serves the model and echoes prompt log-probabilities."""
        data = self._endpoint.request("GET", "/models", retries=0)
        models = data.get("data")
        ids = [str(m["id"]) for m in models if isinstance(m, dict) and m.get("id")] if isinstance(models, list) else []
        if self.served_model not in ids:
            listed = ", ".join(repr(i) for i in ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
            serves = f"it serves {listed}" if ids else "it lists no model"
            raise KinjectError(f"{self.url} does not serve '{self.served_model}'; {serves} "
                               f"(name it with openai:{self.url}#MODEL)")
        ids_probe = self.tok(PROBE_TEXT)["input_ids"]
        try:
            reply = self._endpoint.request("POST", "/completions", self._payload([ids_probe]), retries=1)
            parse_reply(reply, 1, [ids_probe[1:]])
        except (KinjectError, BadReply) as exc:
            raise KinjectError(f"{self.url} does not return prompt log-probabilities (echo + logprobs) for "
                               f"'{self.served_model}' ({error_line(exc, 120)}); {SUPPORTED}") from None

    # ------------------------------------------------------------------ scoring

    def _score(self, ctx: list[int], conts: list[list[int]]) -> Scored:
        data = self._endpoint.request("POST", "/completions", self._payload([ctx + c for c in conts]))
        try:
            return parse_reply(data, len(ctx), conts)
        except BadReply as exc:
            raise KinjectError(f"{self.url}/completions: unusable reply: {exc}") from None

    def loglikelihood(self, prompts: Sequence[Prompt], groups: Sequence[str | None] | None = None,
                      progress: Callable[[int], None] = lambda n: None) -> list[Scored]:
        """One request per question, `concurrency` at a time (`groups` is not needed: servers
        such as vLLM reuse shared prefixes themselves)."""
        encoded = [encode(self.tok, p, self.max_length) for p in prompts]
        results: list[Scored | None] = [None] * len(encoded)
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="kinject-score")
        try:
            futures = {pool.submit(self._score, ctx, conts): i for i, (ctx, conts) in enumerate(encoded)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                progress(1)
        finally:  # on a failure or Ctrl-C, queued questions are dropped and in-flight ones not waited for
            pool.shutdown(wait=False, cancel_futures=True)
        return [r for r in results if r is not None]

