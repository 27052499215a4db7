"""`kinject serve`: a local model behind the OpenAI API — `/v1/chat/completions`,
`/v1/completions`, `/v1/models` and `/health`.

It lets every tool that speaks the OpenAI API (kinject's own `openai:` generator and
`openai-completions` scoring backend included) use a model of the catalog offline, and gives
the OpenAI code paths a real server to be tested against. `/v1/completions` takes raw prompts
(text or token ids, one or a list) and, with `echo` and `logprobs`, returns the prompt's
per-token log-probabilities from a plain full forward of the model as loaded, log-softmax in
float32 — the reference an lm-eval style client scores multiple-choice questions with.

A Starlette app on uvicorn, so the server can face more than one trusted client. The model runs
in a worker thread, one request at a time in arrival order (the local generator's lock), while
the event loop keeps answering; up to `max_queue` requests wait their turn and more get HTTP 503
with Retry-After, which OpenAI clients retry. Every failure is an OpenAI-style error object,
never a traceback or a dropped reply: a body over 8 MiB is refused (413) without being read, a
request must send its head and then its body within `read_timeout` seconds (else the connection
closes, or 408), malformed HTTP or JSON is a 400 (malformed HTTP also closes the connection, so
nothing after it is read as a request) and an unknown route a 404. With an API key (`--api-key`
or $KINJECT_API_KEY) every request needs `Authorization: Bearer KEY` (else 401); without one the
server only listens on loopback. Non-streaming only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from kinject.core.errors import KinjectError
from kinject.lm.backends import eos_ids
from kinject.lm.generators import LocalGenerator

if TYPE_CHECKING:
    import torch

MAX_BODY = 8 * 1024 * 1024
MAX_TOKENS_LIMIT = 8192
MAX_PROMPTS = 64
"""Prompts in one `/v1/completions` request."""
MAX_LOGPROBS = 5
"""The most `top_logprobs` alternatives per token (the OpenAI API's limit for completions)."""
MAX_QUEUE = 32
"""Requests that may wait for the model besides the one using it; more get HTTP 503."""
READ_TIMEOUT = 30.0
"""Seconds a connection has to send a request's head, then as long for its body; also the most
it may sit idle between requests."""
GRACE = 5
"""Seconds Ctrl-C waits for requests in progress before dropping those still queued."""
CHAT_ROUTES = ("/v1/chat/completions", "/chat/completions")
COMPLETION_ROUTES = ("/v1/completions", "/completions")
MODEL_ROUTES = ("/v1/models", "/models")
HEALTH_ROUTES = ("/", "/health")
ROUTES_HINT = "/v1/chat/completions, /v1/completions or /v1/models"
T = TypeVar("T")


class RequestError(ValueError):
    """A bad request: answered with HTTP 400 and an OpenAI-style error object."""


class ApiError(Exception):
    """A request answered with another error status, also as an OpenAI-style error object."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, headers


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
    from kinject.lm.scoring import model_max_length

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


def error_body(status: int, message: str, kind: str = "invalid_request_error") -> bytes:
    """OpenAI's error object: what clients parse from every failure of this server."""
    return json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()


def _error(status: int, message: str, kind: str = "invalid_request_error",
           headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(status, message, kind), status, headers, media_type="application/json")


async def _error_reply(request: Request, exc: Exception) -> Response:
    """The answer to a request that failed: its own status for `ApiError`, 400 for `RequestError`,
    and the router's 404 (unknown path) or 405 (wrong method) in OpenAI form too."""
    if isinstance(exc, ApiError):
        return _error(exc.status, str(exc), exc.kind, exc.headers)
    if isinstance(exc, RequestError):
        return _error(400, str(exc))
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _error(404, f"no route {request.url.path}; use {ROUTES_HINT}", "not_found")
    return _error(exc.status_code, f"{request.method} is not allowed on {request.url.path}; use {ROUTES_HINT}",
                  headers=exc.headers)


def is_loopback(host: str) -> bool:
    """Whether only this machine can connect to `host` (a host name other than localhost may
    resolve to any interface, so it counts as reachable)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Gate:
    """Before routing: a trailing slash is dropped (`/v1/models/` is `/v1/models`), the API key
    is checked in constant time, and with a `log` every reply is logged."""

    def __init__(self, app: ASGIApp, api_key: str | None, log: Callable[[str], None] | None) -> None:
        self.app, self.log = app, log
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["path"] = scope["path"].rstrip("/") or "/"
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        given = dict(scope["headers"]).get(b"authorization", b"")
        if self.expected is not None and not hmac.compare_digest(given, self.expected):
            refused = _error(401, "missing or wrong API key: send 'Authorization: Bearer KEY' with the key the "
                                  "server was started with", "authentication_error", {"WWW-Authenticate": "Bearer"})
            await refused(scope, receive, sending)
        else:
            await self.app(scope, receive, sending)
        if self.log is not None:
            client = scope.get("client") or ("?", 0)
            self.log(f"{client[0]} {scope['method']} {scope['path']} {status}")


class _Api:
    """The endpoints, sharing one model and the queue in front of it."""

    def __init__(self, generator: LocalGenerator, name: str, max_queue: int, read_timeout: float) -> None:
        self.generator, self.name = generator, name
        self.max_queue, self.read_timeout = max_queue, read_timeout
        self.in_progress = 0
        """Model requests admitted: reading their body, waiting for the model or using it."""
        self.model_turn = asyncio.Lock()  # FIFO: requests use the model in the order they got here

    def routes(self) -> list[Route]:
        table = ((MODEL_ROUTES, self.models, "GET"), (HEALTH_ROUTES, self.health, "GET"),
                 (CHAT_ROUTES, self.chat, "POST"), (COMPLETION_ROUTES, self.completions, "POST"))
        return [Route(path, endpoint, methods=[method]) for paths, endpoint, method in table for path in paths]

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.name, "object": "model", "created": 0,
                                                         "owned_by": "kinject"}]})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.name, "requests_in_progress": self.in_progress})

    async def chat(self, request: Request) -> Response:
        async with self._admitted():
            body = await self._json(request)
            args = parse_chat_request(body)
            self._check_model(body)
            c = (await self._use_model(request, "generation", lambda: self.generator.generate(
                [args["messages"]], seed=args["seed"], max_tokens=args["max_tokens"],
                temperature=args["temperature"])))[0]
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": self.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                         "finish_reason": c.finish_reason}],
            "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                      "total_tokens": c.prompt_tokens + c.completion_tokens},
        })

    async def completions(self, request: Request) -> Response:
        async with self._admitted():
            body = await self._json(request)
            req = parse_completion_request(body)
            self._check_model(body)

            def work() -> tuple[list[dict[str, Any]], dict[str, int]]:
                with self.generator.lock:  # one model, one user at a time (chat generation takes the same lock)
                    lm = self.generator.load()
                    return run_completions(lm.model, lm.tok, req)

            choices, usage = await self._use_model(request, "completion", work)
        return JSONResponse({"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
                             "created": int(time.time()), "model": self.name, "choices": choices, "usage": usage})

    @contextlib.asynccontextmanager
    async def _admitted(self) -> AsyncIterator[None]:
        """A place in the queue, or 503 when `max_queue` requests already wait (held from the
        body's first byte, so the bodies held in memory are bounded too)."""
        if self.in_progress > self.max_queue:
            raise ApiError(503, f"the server is busy: {self.max_queue} requests are waiting for the model; retry "
                                "later", "server_busy", {"Retry-After": "1"})
        self.in_progress += 1
        try:
            yield
        finally:
            self.in_progress -= 1

    async def _json(self, request: Request) -> Any:
        """The body as JSON: refused unread when its Content-Length is over MAX_BODY, cut off when
        it grows past it or does not arrive within `read_timeout`."""
        too_large = ApiError(413, f"the request body is over {MAX_BODY} bytes", "request_too_large")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY:
            raise too_large
        body = bytearray()
        try:
            async with asyncio.timeout(self.read_timeout):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > MAX_BODY:
                        raise too_large
        except TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {self.read_timeout:g} s",
                           headers={"Connection": "close"}) from None
        except ClientDisconnect:
            raise ApiError(499, "the client closed the connection") from None  # nobody reads this reply
        if not body:
            raise RequestError("the request body is empty; send a JSON object")
        try:
            return json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
            raise RequestError("the body is not valid JSON") from None

    def _check_model(self, body: dict[str, Any]) -> None:
        if body.get("model") not in (None, self.name):
            raise ApiError(404, f"model '{body.get('model')}' is not served here; this server has '{self.name}'",
                           "not_found")

    async def _use_model(self, request: Request, what: str, work: Callable[[], T]) -> T:
        """`work` in a worker thread once the model is free, so the event loop keeps answering;
        a `RequestError` it raises stays a 400, any other failure is the server's 500."""
        async with self.model_turn:
            if await request.is_disconnected():  # gave up while queued: the model's time goes to the next
                raise ApiError(499, "the client closed the connection")
            try:
                return await run_in_threadpool(work)
            except RequestError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed forward is the server's 500, not a crash
                raise ApiError(500, f"{what} failed: {type(exc).__name__}: {exc}", "server_error") from None


class _Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with two changes. HTTP it cannot parse (a non-numeric
    Content-Length, a header line without a colon) is answered with an OpenAI-style error object before the
    connection closes, so nothing after it is read as a request. And a connection with no request
    in progress is closed `timeout_keep_alive` seconds after it opened or after its last reply,
    however slowly it trickles bytes (uvicorn's own idle timer restarts on every byte)."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._deadline is not None:
            self._deadline.cancel()

    def _arm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.timeout_keep_alive, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        body = error_body(400, "malformed HTTP request (request line, a header or Content-Length); the connection "
                               "is closed")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))  # type: ignore[arg-type]
        self.transport.close()


class Server:
    """A bound server, so a taken port fails at once and port 0's pick is known before it runs:
    `serve_forever` runs uvicorn in the calling thread until Ctrl-C or `shutdown`."""

    def __init__(self, app: ASGIApp, sock: socket.socket, read_timeout: float) -> None:
        self.socket = sock
        self.server_address: tuple[str, int] = sock.getsockname()[:2]
        config = uvicorn.Config(app, http=_Protocol, ws="none", lifespan="off", log_config=None, log_level="error",
                                access_log=False, timeout_keep_alive=read_timeout,  # type: ignore[arg-type]
                                timeout_graceful_shutdown=GRACE)
        self._uvicorn = uvicorn.Server(config)
        self._serving, self._stopped = threading.Event(), threading.Event()

    def serve_forever(self) -> None:
        """Serve until Ctrl-C (in the main thread: uvicorn stops, then KeyboardInterrupt) or `shutdown`."""
        self._serving.set()
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop `serve_forever` running in another thread, and wait until it has."""
        self._uvicorn.should_exit = True
        if self._serving.is_set():
            self._stopped.wait()

    def server_close(self) -> None:
        """Release the port (uvicorn closes it when it stops; this covers a server never run)."""
        self.socket.close()


def make_server(generator: LocalGenerator, host: str = "127.0.0.1", port: int = 8000,
                model_name: str | None = None, log: Callable[[str], None] | None = None, *,
                api_key: str | None = None, max_queue: int = MAX_QUEUE, read_timeout: float = READ_TIMEOUT) -> Server:
    """A bound, not yet running server (call `serve_forever`); port 0 picks a free port. Beyond
    loopback it needs `api_key`: anyone who can reach the port could otherwise use the model."""
    if not api_key and not is_loopback(host):
        raise KinjectError(f"--host {host} can be reached from other machines: set --api-key (or KINJECT_API_KEY) "
                           f"so that only clients sending 'Authorization: Bearer KEY' are answered")
    api = _Api(generator, model_name or generator.ref, max_queue, read_timeout)
    app = Starlette(routes=api.routes(), middleware=[Middleware(_Gate, api_key=api_key, log=log)],
                    exception_handlers={ApiError: _error_reply, RequestError: _error_reply,
                                        HTTPException: _error_reply})
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return Server(app, sock, read_timeout)
