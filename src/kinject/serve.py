"""`kinject serve`: a local model behind the OpenAI API — `/v1/chat/completions`,
`/v1/completions` and `/v1/models`.

It lets every tool that speaks the OpenAI API (kinject's own `openai:` generator and
`openai-completions` scoring backend included) use a model of the catalog offline, and gives
the OpenAI code paths a real server to be tested against. `/v1/completions` takes raw prompts
(text or token ids, one or a list) and, with `echo` and `logprobs`, returns the prompt's
per-token log-probabilities from a plain full forward of the model as loaded, log-softmax in
float32 — the reference an lm-eval style client scores multiple-choice questions with.
Standard library HTTP server, one thread per connection; model use is serialised (the local
generator's lock), so concurrent clients queue rather than fail. Non-streaming only.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from kinject.backends import eos_ids
from kinject.generators import LocalGenerator

if TYPE_CHECKING:
    import torch

MAX_BODY = 8 * 1024 * 1024
MAX_TOKENS_LIMIT = 8192
MAX_PROMPTS = 64
"""Prompts in one `/v1/completions` request."""
MAX_LOGPROBS = 5
"""The most `top_logprobs` alternatives per token (the OpenAI API's limit for completions)."""
CHAT_ROUTES = ("/v1/chat/completions", "/chat/completions")
COMPLETION_ROUTES = ("/v1/completions", "/completions")


class RequestError(ValueError):
    """A bad request: answered with HTTP 400 and an OpenAI-style error object."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_chat_request(body: Any) -> dict[str, Any]:
    """The generation arguments of a chat-completion request body, validated."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(f"messages[{i}] must be an object with 'role' and 'content'")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}] parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}].content must be a string")
        clean.append({"role": m["role"], "content": content})
    if body.get("stream"):
        raise RequestError("streaming is not supported; send 'stream': false")
    if body.get("n", 1) != 1:
        raise RequestError("only n=1 is supported")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 512))
    temperature = body.get("temperature", 1.0)
    seed = body.get("seed", 0)
    if not _is_int(max_tokens) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise RequestError(f"'max_tokens' must be an integer 1..{MAX_TOKENS_LIMIT}")
    if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise RequestError("'temperature' must be a number 0..2")
    if not _is_int(seed):
        raise RequestError("'seed' must be an integer")
    return {"messages": clean, "max_tokens": max_tokens, "temperature": float(temperature), "seed": seed}


@dataclass(frozen=True)
class CompletionRequest:
    """A validated `/v1/completions` request: each prompt is text or token ids."""

    prompts: tuple[str | tuple[int, ...], ...]
    echo: bool
    logprobs: int | None
    max_tokens: int
    temperature: float
    seed: int


def _prompts(prompt: Any) -> list[str | tuple[int, ...]]:
    """OpenAI's four prompt shapes: a string, token ids, a list of strings, a list of token-id lists."""
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise RequestError("'prompt' must be a string, a list of token ids, a list of strings or a list of "
                           "token-id lists (non-empty)")
    if all(_is_int(t) for t in prompt):
        return [tuple(prompt)]
    out: list[str | tuple[int, ...]] = []
    for i, p in enumerate(prompt):
        if isinstance(p, str):
            out.append(p)
        elif isinstance(p, list) and p and all(_is_int(t) for t in p):
            out.append(tuple(p))
        else:
            raise RequestError(f"prompt[{i}] must be a string or a non-empty list of token ids")
    return out


def parse_completion_request(body: Any) -> CompletionRequest:
    """The arguments of a `/v1/completions` request body, validated (what needs the model —
    token ids in the vocabulary, the context length — is checked when it runs)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if "prompt" not in body:
        raise RequestError("'prompt' is required")
    prompts = _prompts(body["prompt"])
    if len(prompts) > MAX_PROMPTS:
        raise RequestError(f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}")
    echo, logprobs = body.get("echo", False), body.get("logprobs")
    max_tokens, temperature, seed = body.get("max_tokens", 16), body.get("temperature", 1.0), body.get("seed", 0)
    if not isinstance(echo, bool):
        raise RequestError("'echo' must be true or false")
    if logprobs is not None and (not _is_int(logprobs) or not 0 <= logprobs <= MAX_LOGPROBS):
        raise RequestError(f"'logprobs' must be null or an integer 0..{MAX_LOGPROBS}")
    if not _is_int(max_tokens) or not 0 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise RequestError(f"'max_tokens' must be an integer 0..{MAX_TOKENS_LIMIT}")
    if max_tokens == 0 and not echo:
        raise RequestError("'max_tokens' 0 needs 'echo': true (otherwise there is nothing to return)")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
        raise RequestError("'temperature' must be a number 0..2")
    if not _is_int(seed):
        raise RequestError("'seed' must be an integer")
    if body.get("stream"):
        raise RequestError("streaming is not supported; send 'stream': false")
    if body.get("n", 1) != 1 or body.get("best_of") not in (None, 1):
        raise RequestError("only n=1 (and best_of=1) is supported")
    if body.get("stop") not in (None, [], ""):
        raise RequestError("'stop' sequences are not supported; generation stops at end-of-sequence or max_tokens")
    if body.get("suffix") not in (None, ""):
        raise RequestError("'suffix' is not supported")
    return CompletionRequest(tuple(prompts), echo, logprobs, max_tokens, float(temperature), seed)


def run_completions(model: Any, tok: Any, req: CompletionRequest) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The `choices` and `usage` of a completions reply. Prompt log-probabilities come from one
    plain forward of each whole prompt; generation continues from its KV cache (greedy at
    temperature 0, else sampled with a generator seeded by `seed`), stopping at end-of-sequence.
    Raises `RequestError` for token ids outside the vocabulary and prompts that do not fit."""
    from kinject.scoring import model_max_length

    vocab = model.get_input_embeddings().num_embeddings
    limit = model_max_length(model, tok)
    encoded: list[tuple[str, list[int]]] = []
    for i, p in enumerate(req.prompts):
        if isinstance(p, str):
            ids = tok(p)["input_ids"]
            if not ids:
                raise RequestError(f"prompt[{i}] encodes to no tokens")
            encoded.append((p, ids))
        else:
            if not all(0 <= t < vocab for t in p):
                raise RequestError(f"prompt[{i}] holds token ids outside the vocabulary (0..{vocab - 1})")
            encoded.append((tok.decode(list(p)), list(p)))
        if len(encoded[-1][1]) + req.max_tokens > limit:
            raise RequestError(f"prompt[{i}] has {len(encoded[-1][1])} tokens; with max_tokens {req.max_tokens} it "
                               f"exceeds the model's context length {limit}")
    eos = eos_ids(model, tok) if req.max_tokens else set()
    choices, used = [], 0
    for index, (text, ids) in enumerate(encoded):
        choice, generated = _complete_one(model, tok, req, text, ids, eos)
        choices.append({"index": index, **choice})
        used += generated
    prompt_tokens = sum(len(ids) for _, ids in encoded)
    return choices, {"prompt_tokens": prompt_tokens, "completion_tokens": used,
                     "total_tokens": prompt_tokens + used}


def _complete_one(model: Any, tok: Any, req: CompletionRequest, text: str, ids: list[int],
                  eos: set[int]) -> tuple[dict[str, Any], int]:
    """One prompt's choice (without its index) and how many tokens it generated."""
    import torch

    device = model.get_input_embeddings().weight.device  # the first layer's, under device_map=auto too
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids], device=device), use_cache=req.max_tokens > 0)
        echoed = req.echo and req.logprobs is not None and len(ids) > 1
        prompt_lp = out.logits[0, :-1].float().log_softmax(-1) if echoed else None  # row j predicts token j + 1
        last, cache = out.logits[0, -1].float().log_softmax(-1), out.past_key_values
        sampler = torch.Generator(device=device).manual_seed(req.seed) if req.temperature > 0 else None
        generated: list[int] = []
        rows: list[torch.Tensor] = []  # the log-probabilities each generated token was drawn from
        finish = "length"
        for step in range(req.max_tokens):
            if sampler is None:
                token = int(last.argmax())
            else:
                token = int(torch.multinomial((last / req.temperature).softmax(-1), 1, generator=sampler))
            if token in eos:
                finish = "stop"  # the end-of-sequence token ends the text and is not part of it
                break
            generated.append(token)
            rows.append(last)
            if step + 1 < req.max_tokens:
                out = model(input_ids=torch.tensor([[token]], device=device), past_key_values=cache, use_cache=True)
                last, cache = out.logits[0, -1].float().log_softmax(-1), out.past_key_values
        gen_text = tok.decode(generated, skip_special_tokens=True)
        logprobs = None
        if req.logprobs is not None:
            shown = (ids if req.echo else []) + generated
            lp_rows = ([prompt_lp] if prompt_lp is not None else []) + ([torch.stack(rows)] if rows else [])
            logprobs = _logprobs(tok, shown, torch.cat(lp_rows) if lp_rows else None, req.logprobs,
                                 first_is_prompt_start=req.echo, offset=0 if req.echo else len(text))
    n_generated = len(generated) + (finish == "stop")
    return {"text": (text if req.echo else "") + gen_text, "logprobs": logprobs, "finish_reason": finish}, n_generated


def _logprobs(tok: Any, tokens: list[int], rows: "torch.Tensor | None", k: int, *, first_is_prompt_start: bool,
              offset: int) -> dict[str, list]:
    """OpenAI's `logprobs` object for `tokens`, where `rows[j]` holds the log-probabilities the
    model gave for the token it scores; the prompt's first token has none (null)."""
    import torch

    strings = tok.batch_decode([[t] for t in tokens])
    values: list = [None] if first_is_prompt_start else []
    tops: list = [None] if first_is_prompt_start else []
    if rows is not None:
        scored = tokens[1:] if first_is_prompt_start else tokens
        values += rows.gather(1, torch.tensor(scored, device=rows.device)[:, None])[:, 0].tolist()
        if k:
            top_v, top_i = rows.topk(k, dim=-1)
            names = tok.batch_decode([[t] for t in top_i.flatten().tolist()])
            flat = top_v.flatten().tolist()
            for j in range(len(scored)):
                top: dict[str, float] = {}
                for name, value in zip(names[j * k:(j + 1) * k], flat[j * k:(j + 1) * k]):
                    top.setdefault(name, value)  # tokens that decode alike keep the best (first) value
                tops.append(top)
        else:
            tops += [{} for _ in scored]
    text_offset, at = [], offset
    for s in strings:
        text_offset.append(at)
        at += len(s)
    return {"tokens": strings, "token_logprobs": values, "top_logprobs": tops, "text_offset": text_offset}


def make_server(generator: LocalGenerator, host: str = "127.0.0.1", port: int = 8000,
                model_name: str | None = None, log=None) -> ThreadingHTTPServer:
    """A bound, not yet running server (call `serve_forever`); port 0 picks a free port."""
    name = model_name or generator.ref
    routes = "/v1/chat/completions, /v1/completions or /v1/models"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            if log is not None:
                log(f"{self.address_string()} {format % args}")

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
            self._send(status, {"error": {"message": message, "type": kind, "code": status}})

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                                             "owned_by": "kinject"}]})
            elif self.path.rstrip("/") in ("", "/health"):
                self._send(200, {"status": "ok", "model": name})
            else:
                self._error(404, f"no route {self.path}; use {routes}", "not_found")

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= MAX_BODY:
                raise RequestError(f"the body must be 1..{MAX_BODY} bytes with a Content-Length")
            try:
                return json.loads(self.rfile.read(length))
            except ValueError:
                raise RequestError("the body is not valid JSON") from None

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            path = self.path.rstrip("/")
            if path not in CHAT_ROUTES + COMPLETION_ROUTES:
                self._error(404, f"no route {self.path}; use {routes}", "not_found")
                return
            chat = path in CHAT_ROUTES
            try:
                body = self._body()
                args = parse_chat_request(body) if chat else parse_completion_request(body)
            except RequestError as exc:
                self._error(400, str(exc))
                return
            if body.get("model") not in (None, name):
                self._error(404, f"model '{body.get('model')}' is not served here; this server has '{name}'",
                            "not_found")
                return
            if chat:
                self._chat(args)  # type: ignore[arg-type]
            else:
                self._completions(args)  # type: ignore[arg-type]

        def _chat(self, args: dict[str, Any]) -> None:
            try:
                c = generator.generate([args["messages"]], seed=args["seed"], max_tokens=args["max_tokens"],
                                       temperature=args["temperature"])[0]
            except Exception as exc:  # noqa: BLE001 - a failed generation is the server's 500, not a crash
                self._error(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error")
                return
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                             "finish_reason": c.finish_reason}],
                "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                          "total_tokens": c.prompt_tokens + c.completion_tokens},
            })

        def _completions(self, req: CompletionRequest) -> None:
            try:
                with generator.lock:  # one model, one user at a time (chat generation takes the same lock)
                    lm = generator.load()
                    model, tok = lm.model, lm.tok
                    choices, usage = run_completions(model, tok, req)
            except RequestError as exc:
                self._error(400, str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - a failed forward is the server's 500, not a crash
                self._error(500, f"completion failed: {type(exc).__name__}: {exc}", "server_error")
                return
            self._send(200, {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
                             "created": int(time.time()), "model": name, "choices": choices, "usage": usage})

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
