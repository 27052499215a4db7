"""`kinject serve`: a local model behind the OpenAI chat API (`/v1/chat/completions`, `/v1/models`).

It lets every tool that speaks the OpenAI API (kinject's own `openai:` generator included) use
a model of the catalog offline, and gives the OpenAI code path a real server to be tested
against. Standard library HTTP server, one thread per connection; generation is serialised on
the model (the local generator holds a lock), so concurrent clients queue rather than fail.
Non-streaming only.
"""

from __future__ import annotations

import json
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kinject.synth import LocalGenerator

MAX_BODY = 8 * 1024 * 1024
MAX_TOKENS_LIMIT = 8192


class RequestError(ValueError):
    """A bad request: answered with HTTP 400 and an OpenAI-style error object."""


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
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise RequestError(f"'max_tokens' must be an integer 1..{MAX_TOKENS_LIMIT}")
    if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise RequestError("'temperature' must be a number 0..2")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RequestError("'seed' must be an integer")
    return {"messages": clean, "max_tokens": max_tokens, "temperature": float(temperature), "seed": seed}


def make_server(generator: LocalGenerator, host: str = "127.0.0.1", port: int = 8000,
                model_name: str | None = None, log=None) -> ThreadingHTTPServer:
    """A bound, not yet running server (call `serve_forever`); port 0 picks a free port."""
    name = model_name or generator.ref

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
                self._error(404, f"no route {self.path}; use /v1/chat/completions or /v1/models", "not_found")

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._error(404, f"no route {self.path}; use /v1/chat/completions", "not_found")
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                if not 0 < length <= MAX_BODY:
                    raise RequestError(f"the body must be 1..{MAX_BODY} bytes with a Content-Length")
                try:
                    body = json.loads(self.rfile.read(length))
                except ValueError:
                    raise RequestError("the body is not valid JSON") from None
                args = parse_chat_request(body)
                if body.get("model") not in (None, name):
                    self._error(404, f"model '{body.get('model')}' is not served here; this server has '{name}'",
                                "not_found")
                    return
            except RequestError as exc:
                self._error(400, str(exc))
                return
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

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
