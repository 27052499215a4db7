"""`kinject serve` under load: concurrent clients send a mix of valid, malformed and oversized
requests, and every reply must be the one its request asked for.

    python benchmarks/serve_load.py                            # 200 requests, 16 clients, smollm2-135m
    python benchmarks/serve_load.py --requests 20 --clients 4  # smoke run

Starts `kinject serve --model MODEL --port 0 --api-key KEY` itself. Request i is one of: a
completion that echoes a prompt naming i, with max_tokens 1 + i % 4 (its reply must echo that
prompt and stay within those tokens: a reply sent to the wrong client shows), a chat completion,
malformed JSON (400), invalid arguments (400), a body over 8 MiB (413), a non-numeric
Content-Length on a raw socket with a request smuggled after it (one 400, nothing else), no API
key (401) or an unknown route (404). Prints requests/s and p50/p95 latency; exits 1 when a reply
does not match its request or the server is not alive and idle afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

import httpx

from kinject.lm.serve import MAX_BODY

KEY = "serve-load"
KINDS = (["completion"] * 10 + ["chat"] * 3
         + ["bad_json", "bad_args", "oversized", "bad_length", "no_key", "unknown_route", "completion"])
MODEL_KINDS = {"completion", "chat"}
OVERSIZED = json.dumps({"prompt": "x" * MAX_BODY}).encode()


def start_server(model: str, clients: int, log) -> subprocess.Popen:
    """A `kinject serve` process on a free port whose queue holds every client (so none gets 503)."""
    return subprocess.Popen([sys.executable, "-m", "kinject.cli.main", "serve", "--model", model, "--port", "0",
                             "--api-key", KEY, "--queue", str(max(32, clients))],
                            stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def error_of(r: httpx.Response, status: int, words: str) -> str | None:
    if r.status_code != status:
        return f"HTTP {r.status_code}, expected {status}: {r.text[:200]}"
    message = r.json().get("error", {}).get("message", "")
    return None if words in message else f"error message {message!r} lacks {words!r}"


def raw_bad_length(base: str) -> str | None:
    """A non-numeric Content-Length followed by a second request: one JSON 400, then the server closes."""
    host, port = base.removeprefix("http://").split("/")[0].rsplit(":", 1)
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: ten\r\n\r\n"
            f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    if got.count(b"HTTP/1.1 ") != 1 or not got.startswith(b"HTTP/1.1 400 "):
        return f"expected exactly one 400, got {got[:300]!r}"
    return None if b'"code": 400' in got else f"not an OpenAI error: {got[:300]!r}"


def one_request(client: httpx.Client, base: str, model: str, n: int, i: int) -> tuple[str, str | None]:
    """Send request i; its kind and what is wrong with its reply (None: it matches)."""
    kind = KINDS[i % len(KINDS)]
    max_tokens = 1 + i % 4
    if kind == "completion":
        prompt = f"Request {i} of {n}:"
        r = client.post(f"{base}/completions", json={"model": model, "prompt": prompt, "echo": True,
                                                     "max_tokens": max_tokens, "temperature": 0})
        if r.status_code != 200:
            return kind, f"HTTP {r.status_code}: {r.text[:200]}"
        reply = r.json()
        if not reply["choices"][0]["text"].startswith(prompt) or reply["model"] != model:
            return kind, f"reply {reply['choices'][0]['text'][:80]!r} is not the one for {prompt!r}"
        return kind, None if reply["usage"]["completion_tokens"] <= max_tokens else f"usage {reply['usage']}"
    if kind == "chat":
        r = client.post(f"{base}/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": f"Say the number {i}."}],
            "max_tokens": max_tokens, "temperature": 0})
        if r.status_code != 200:
            return kind, f"HTTP {r.status_code}: {r.text[:200]}"
        reply = r.json()
        ok = reply["object"] == "chat.completion" and reply["usage"]["completion_tokens"] <= max_tokens
        return kind, None if ok else f"reply {reply} exceeds max_tokens {max_tokens}"
    if kind == "bad_json":
        r = client.post(f"{base}/completions", content=f'{{"prompt": "Request {i}'.encode(),
                        headers={"Content-Type": "application/json"})
        return kind, error_of(r, 400, "not valid JSON")
    if kind == "bad_args":
        return kind, error_of(client.post(f"{base}/completions", json={"prompt": "x", "max_tokens": -i}), 400,
                              "'max_tokens'")
    if kind == "oversized":
        return kind, error_of(client.post(f"{base}/completions", content=OVERSIZED), 413, f"over {MAX_BODY} bytes")
    if kind == "bad_length":
        return kind, raw_bad_length(base)
    if kind == "no_key":
        return kind, error_of(httpx.post(f"{base}/completions", json={"prompt": "x"}), 401, "API key")
    return kind, error_of(client.post(f"{base}/embeddings", json={"input": "x"}), 404, "no route")


def run_load(base: str, model: str, n: int, clients: int) -> list[tuple[str, float, str | None]]:
    """`n` requests from `clients` threads, each with its own keep-alive connection: (kind, seconds, problem)."""
    todo: queue.Queue[int] = queue.Queue()
    for i in range(n):
        todo.put(i)
    results: list[tuple[str, float, str | None]] = []
    lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as client:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                started = time.perf_counter()
                try:
                    kind, problem = one_request(client, base, model, n, i)
                except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:  # a dropped or unreadable reply
                    kind, problem = KINDS[i % len(KINDS)], f"{type(exc).__name__}: {exc}"
                with lock:
                    results.append((kind, time.perf_counter() - started, problem and f"request {i}: {problem}"))

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="catalog name or model folder to serve")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    args = ap.parse_args()

    with tempfile.TemporaryFile("w+") as log:
        proc = start_server(args.model, args.clients, log)
        try:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if " on http://" not in line:
                log.seek(0)
                sys.exit(f"kinject serve did not start: {line!r}\n{log.read()[-2000:]}")
            base = line.split(" on ")[1].split()[0]
            print(f"{args.model} on {base}: {args.requests} requests from {args.clients} concurrent clients",
                  flush=True)
            started = time.perf_counter()
            results = run_load(base, args.model, args.requests, args.clients)
            elapsed = time.perf_counter() - started
            health = httpx.get(base.removesuffix("/v1") + "/health", headers={"Authorization": f"Bearer {KEY}"})
            alive = proc.poll() is None and health.status_code == 200 and health.json()["requests_in_progress"] == 0
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)

    problems = [p for _, _, p in results if p]
    counts = Counter(kind for kind, _, _ in results)
    print("kinds: " + ", ".join(f"{k} {counts[k]}" for k in dict.fromkeys(KINDS)))
    groups = {"all": [s for _, s, _ in results],
              "model": [s for kind, s, _ in results if kind in MODEL_KINDS],
              "rejected": [s for kind, s, _ in results if kind not in MODEL_KINDS]}
    for label, values in groups.items():
        if values:
            print(f"latency {label:9s} p50 {percentile(values, 50) * 1000:8.1f} ms  "
                  f"p95 {percentile(values, 95) * 1000:8.1f} ms  (n={len(values)})")
    print(f"throughput {len(results) / elapsed:.1f} requests/s ({len(results)} in {elapsed:.1f} s)")
    for p in problems[:10]:
        print(f"MISMATCH {p}")
    print(f"replies matching their requests: {len(results) - len(problems)}/{args.requests}; "
          f"server {'alive and idle' if alive else 'NOT alive and idle'}")
    if problems or len(results) != args.requests or not alive:
        sys.exit(1)


if __name__ == "__main__":
    main()
