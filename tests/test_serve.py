"""`kinject serve` facing clients it cannot trust: size limits, stalled and malformed requests,
unknown routes, the API key and the queue in front of the model, over real sockets against the
tiny model. (The OpenAI API it serves is tested in tests/test_completions.py and test_synth.py.)"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from kinject.lm.generators import LocalGenerator
from kinject.lm.serve import MAX_BODY, Server, is_loopback, make_server

TIMEOUT = 1.0
"""The servers' read timeout here: long enough for a request sent at once, short for a test."""


@contextmanager
def serving(tiny_lm, **options: Any) -> Iterator[tuple[Server, LocalGenerator]]:
    model, tok = tiny_lm
    gen = LocalGenerator("tiny", model=model, tokenizer=tok)
    server = make_server(gen, "127.0.0.1", 0, "tiny-llama", read_timeout=TIMEOUT, **options)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server, gen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def server(tiny_lm) -> Iterator[Server]:
    with serving(tiny_lm) as (srv, _):
        yield srv


def url(srv: Server, path: str = "") -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


def exchange(srv: Server, data: bytes) -> bytes:
    """Send `data` on one connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=10) as s:
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


def replies(raw: bytes) -> list[tuple[int, dict[str, Any]]]:
    """The HTTP responses in `raw`, as (status, JSON body)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        n = int(headers["content-length"])
        out.append((int(lines[0].split()[1]), json.loads(rest[:n])))
        raw = rest[n:]
    return out


SMUGGLED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
COMPLETION = {"prompt": "Question: What is a cell?", "max_tokens": 2, "temperature": 0}


def post_head(content_length: str, extra: str = "") -> bytes:
    return (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {content_length}\r\n\r\n").encode()


@pytest.mark.parametrize("head", [
    post_head("abc"),
    post_head("-1"),
    post_head("12, 13"),
    post_head("5", "Content-Length: 7\r\n"),
    post_head("5", "a header without a colon\r\n"),
    b"NOT-HTTP\r\n\r\n",
], ids=["non-numeric", "negative", "list", "conflicting", "bad-header", "garbage"])
def test_malformed_http_is_one_json_400_and_what_follows_is_never_a_request(server: Server, head: bytes) -> None:
    got = replies(exchange(server, head + SMUGGLED))
    assert len(got) == 1, got  # the GET /health after it was not answered
    status, body = got[0]
    assert status == 400 and body["error"]["code"] == 400 and "malformed HTTP request" in body["error"]["message"]


def test_an_oversized_body_is_refused_unread(server: Server) -> None:
    started = time.perf_counter()
    got = replies(exchange(server, post_head(str(MAX_BODY + 1)) + SMUGGLED))  # declares 8 MiB, sends 34 bytes
    assert [status for status, _ in got] == [413], got  # the declared body swallows the GET /health
    assert f"over {MAX_BODY} bytes" in got[0][1]["error"]["message"]
    assert time.perf_counter() - started < TIMEOUT + 2  # answered at once; closed after the read timeout
    too_big = json.dumps({"prompt": "a" * MAX_BODY}).encode()
    r = httpx.post(url(server, "/v1/completions"), content=too_big)  # really sent, with its Content-Length
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
    r = httpx.post(url(server, "/v1/completions"), content=iter([too_big[:MAX_BODY // 2], too_big[MAX_BODY // 2:]]))
    assert r.status_code == 413  # chunked, no Content-Length: cut off once past the limit
    assert httpx.post(url(server, "/v1/completions"), json=COMPLETION).status_code == 200  # still serving


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe\x00", "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"),
    (b"", "body is empty"),
    (b"[1, 2]", "must be a JSON object"),
])
def test_bad_json_is_a_400_and_the_connection_stays_usable(server: Server, body: bytes, message: str) -> None:
    with httpx.Client() as client:
        r = client.post(url(server, "/v1/completions"), content=body)
        assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
        assert client.get(url(server, "/health")).json()["status"] == "ok"


def test_unknown_routes_and_methods_get_openai_errors(server: Server) -> None:
    for method, path, status in (("GET", "/v2/things", 404), ("POST", "/v1/embeddings", 404),
                                 ("GET", "/v1/completions", 405), ("DELETE", "/v1/models", 405)):
        r = httpx.request(method, url(server, path))
        assert r.status_code == status and r.headers["content-type"] == "application/json", (method, path)
        assert path in r.json()["error"]["message"] and "/v1/chat/completions" in r.json()["error"]["message"]
    assert httpx.get(url(server, "/v1/models/")).json()["data"][0]["id"] == "tiny-llama"  # a trailing slash is fine


def test_a_stalled_client_cannot_hold_a_connection(server: Server) -> None:
    started = time.perf_counter()
    got = replies(exchange(server, post_head("100") + b'{"prompt":'))  # 10 of 100 bytes, then silence
    assert [(s, b["error"]["code"]) for s, b in got] == [(408, 408)]
    assert "did not arrive" in got[0][1]["error"]["message"]
    assert exchange(server, b"POST /v1/completions HTTP/1.1\r\nHost:") == b""  # a head that never ends: closed
    with socket.create_connection(("127.0.0.1", server.server_address[1])) as s:  # trickling does not help
        for _ in range(int(TIMEOUT / 0.2) + 5):
            try:
                s.sendall(b"X")
            except OSError:
                break
            time.sleep(0.2)
        else:
            pytest.fail("a connection trickling its head was never closed")
    assert time.perf_counter() - started < 4 * TIMEOUT + 3


def test_the_api_key_guards_every_route(tiny_lm) -> None:
    with serving(tiny_lm, api_key="s3cret") as (srv, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.post(url(srv, "/v1/completions"), json=COMPLETION, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(url(srv, "/nowhere")).status_code == 401  # routes are not revealed either
        good = {"Authorization": "Bearer s3cret"}
        assert httpx.post(url(srv, "/v1/completions"), json=COMPLETION, headers=good).status_code == 200
        assert httpx.get(url(srv, "/v1/models"), headers=good).json()["data"][0]["id"] == "tiny-llama"


def test_beyond_loopback_the_cli_refuses_to_start_without_a_key(monkeypatch, capsys) -> None:
    from kinject.cli.main import main

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    monkeypatch.delenv("KINJECT_API_KEY", raising=False)
    monkeypatch.setattr(sys, "argv", ["kinject", "serve", "--host", "0.0.0.0", "--port", "0", "--model", "nowhere"])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: --host 0.0.0.0 can be reached from other machines: set --api-key"), err


def test_requests_queue_for_the_model_and_beyond_the_queue_get_503(tiny_lm) -> None:
    """With the model busy (its lock held here), one request uses it, one waits, the next is
    turned away at once; the event loop keeps answering; then both admitted ones get their own reply."""
    with serving(tiny_lm, max_queue=1) as (srv, gen):
        answers: dict[int, httpx.Response] = {}

        def ask(i: int) -> None:
            answers[i] = httpx.post(url(srv, "/v1/completions"), timeout=30,
                                    json={"prompt": f"request {i}:", "echo": True, "max_tokens": 1 + i})

        with gen.lock:
            clients = [threading.Thread(target=ask, args=(i,)) for i in (1, 2)]
            for t in clients:
                t.start()
            deadline = time.monotonic() + 10
            while httpx.get(url(srv, "/health")).json()["requests_in_progress"] < 2:
                assert time.monotonic() < deadline, "the two requests were never admitted"
                time.sleep(0.02)
            r = httpx.post(url(srv, "/v1/completions"), json=COMPLETION)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            error = r.json()["error"]
            assert error["type"] == "server_busy" and "1 requests are waiting" in error["message"]
        for t in clients:
            t.join(30)
        for i in (1, 2):
            assert answers[i].status_code == 200, answers[i].text
            reply = answers[i].json()
            assert reply["choices"][0]["text"].startswith(f"request {i}:")
            assert reply["usage"]["completion_tokens"] <= 1 + i
        assert httpx.get(url(srv, "/health")).json()["requests_in_progress"] == 0
