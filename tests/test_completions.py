"""`/v1/completions` in `kinject serve` and the `openai-completions` scoring backend: request and
reply parsing, prompt log-probabilities against a plain forward, the client against a real
server (same log-likelihoods and greedy flags as the in-process hf backend), scripted server
faults, and a real `kinject serve` process with SmolLM2-135M on MMLU and SciQ."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from kinject.core.errors import KinjectError
from kinject.lm.backends import HFBackend
from kinject.lm.completions import BadReply, OpenAICompletionsBackend, continuation_score, parse_reply
from kinject.lm.generators import LocalGenerator
from kinject.lm.scoring import Scored, encode, predictions
from kinject.lm.serve import CompletionRequest, RequestError, make_server, parse_completion_request, run_completions
from kinject.runtime.models import CPU
from kinject.tasks.registry import load_task
from kinject.tasks.task import Prompt, render, select

# ---------------------------------------------------------------------------- serve: request parsing


def test_completion_request_accepts_the_four_prompt_shapes() -> None:
    one = parse_completion_request({"prompt": "Hello", "echo": True, "logprobs": 1, "max_tokens": 0,
                                    "temperature": 0})
    assert one == CompletionRequest(("Hello",), True, 1, 0, 0.0, 0)
    assert parse_completion_request({"prompt": [5, 6, 7]}).prompts == ((5, 6, 7),)
    assert parse_completion_request({"prompt": ["a", "b"]}).prompts == ("a", "b")
    assert parse_completion_request({"prompt": [[1, 2], [3]], "seed": 4}).prompts == ((1, 2), (3,))
    mixed = parse_completion_request({"prompt": ["a", [9, 8]], "logprobs": None, "stop": None, "n": 1})
    assert mixed == CompletionRequest(("a", (9, 8)), False, None, 16, 1.0, 0)  # OpenAI's defaults


@pytest.mark.parametrize("body, message", [
    ([], "JSON object"),
    ({"echo": True}, "'prompt' is required"),
    ({"prompt": []}, "'prompt' must be"),
    ({"prompt": 3}, "'prompt' must be"),
    ({"prompt": ["a", []]}, r"prompt\[1\]"),
    ({"prompt": [[1, "x"]]}, r"prompt\[0\]"),
    ({"prompt": [[1, True]]}, r"prompt\[0\]"),
    ({"prompt": ["a"] * 65}, "at most 64 prompts"),
    ({"prompt": "a", "echo": "yes"}, "'echo'"),
    ({"prompt": "a", "logprobs": 6}, "'logprobs'"),
    ({"prompt": "a", "logprobs": True}, "'logprobs'"),
    ({"prompt": "a", "max_tokens": -1}, "'max_tokens'"),
    ({"prompt": "a", "max_tokens": 0}, "needs 'echo'"),
    ({"prompt": "a", "temperature": 3}, "'temperature'"),
    ({"prompt": "a", "temperature": False}, "'temperature'"),
    ({"prompt": "a", "seed": 1.5}, "'seed'"),
    ({"prompt": "a", "stream": True}, "streaming"),
    ({"prompt": "a", "n": 2}, "n=1"),
    ({"prompt": "a", "best_of": 3}, "n=1"),
    ({"prompt": "a", "stop": ["\n"]}, "'stop'"),
    ({"prompt": "a", "suffix": "z"}, "'suffix'"),
])
def test_bad_completion_requests_are_named(body: Any, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_completion_request(body)


# ---------------------------------------------------------------------------- client: reply parsing


def choice(values: list[float | None], tops: list[dict | None], index: int = 0) -> dict:
    return {"index": index, "text": "", "finish_reason": "length",
            "logprobs": {"tokens": ["t"] * len(values), "token_logprobs": values, "top_logprobs": tops,
                         "text_offset": list(range(len(values)))}}


def test_continuation_score_sums_the_continuation_and_ignores_the_generated_token() -> None:
    # prompt: 3 context tokens + 2 continuation tokens, then 1 generated token (max_tokens=1)
    c = choice([None, -1.0, -2.0, -0.5, -0.25, -9.0],
               [None, {"a": -1.0}, {"b": -0.1}, {"c": -0.5, "d": -3.0}, {"e": -0.25}, {"f": -0.01}])
    assert continuation_score(c, 3, [11, 12]) == (-0.75, True)
    assert continuation_score(c, 2, [10, 11, 12]) == (-2.75, False)  # -2.0 is not the top (-0.1)
    assert continuation_score(c, 5, [13]) == (-9.0, False)  # had it been asked for, the generated token counts
    tied = choice([None, -0.7], [None, {" x": -0.7, " y": -0.7}])
    assert continuation_score(tied, 1, [4]) == (-0.7, True)  # a tie for the top is greedy, as in lm-eval


def test_parse_reply_orders_choices_by_index() -> None:
    data = {"choices": [choice([None, -3.0, -9.0], [None, {"x": -1.0}, {"y": -1.0}], index=1),
                        choice([None, -1.0, -9.0], [None, {"x": -1.0}, {"y": -1.0}], index=0)]}
    assert parse_reply(data, 1, [[7], [8]]) == Scored((-1.0, -3.0), (True, False))


@pytest.mark.parametrize("data, message", [
    ({}, "no choices"),
    ({"choices": [choice([None, -1.0], [None, {"x": -1.0}])]}, "1 choices for 2 prompts"),
    ({"choices": [{"index": 0, "text": "x", "logprobs": None}] * 2}, "no 'logprobs'"),
    ({"choices": [choice([None], [None])] * 2}, "echoes 1 token"),
    ({"choices": [choice([None, None], [None, None])] * 2}, "no log-probability"),
    ({"choices": [choice([None, -1.0], [None, {}])] * 2}, "no top_logprobs"),
])
def test_unusable_replies_are_rejected(data: dict, message: str) -> None:
    with pytest.raises(BadReply, match=message):
        parse_reply(data, 1, [[1], [2]])


# ---------------------------------------------------------------------------- serve: the computation


def test_prompt_logprobs_equal_a_plain_forward(tiny_lm) -> None:
    import torch

    model, tok = tiny_lm
    ids = tok("Question: What is a cell?\nAnswer: the basic unit of life")["input_ids"]
    choices, usage = run_completions(model, tok, CompletionRequest((tuple(ids),), True, 2, 0, 0.0, 0))
    with torch.inference_mode():
        lp = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    got = choices[0]["logprobs"]
    assert got["token_logprobs"][0] is None and got["top_logprobs"][0] is None
    assert got["token_logprobs"][1:] == pytest.approx([float(lp[j, ids[j + 1]]) for j in range(len(ids) - 1)],
                                                      abs=1e-6)
    assert all(1 <= len(t) <= 2 for t in got["top_logprobs"][1:])  # 1: two top tokens decode alike (bytes)
    assert [max(t.values()) for t in got["top_logprobs"][1:]] == pytest.approx(lp[:-1].max(-1).values.tolist(),
                                                                              abs=1e-6)
    assert "".join(got["tokens"]) == choices[0]["text"] == tok.decode(ids)
    assert got["text_offset"][0] == 0 and got["text_offset"][-1] == len(choices[0]["text"]) - len(got["tokens"][-1])
    assert choices[0]["finish_reason"] == "length" and usage == {"prompt_tokens": len(ids), "completion_tokens": 0,
                                                                 "total_tokens": len(ids)}


def test_generation_is_greedy_at_temperature_zero_and_seeded_otherwise(tiny_lm) -> None:
    import torch

    model, tok = tiny_lm
    greedy = CompletionRequest(("Question: What is a cell?", "Answer:"), False, 1, 5, 0.0, 0)
    choices, usage = run_completions(model, tok, greedy)
    ids = tok("Question: What is a cell?")["input_ids"]
    ref = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=5, do_sample=False,
                         pad_token_id=0, eos_token_id=tok.eos_token_id)[0, len(ids):].tolist()
    body = ref[:ref.index(tok.eos_token_id)] if tok.eos_token_id in ref else ref
    assert choices[0]["text"] == tok.decode(body)
    assert len(choices[0]["logprobs"]["token_logprobs"]) == len(body)
    assert all(v is not None for v in choices[0]["logprobs"]["token_logprobs"])  # no echo: generated tokens only
    assert usage["prompt_tokens"] == len(ids) + len(tok("Answer:")["input_ids"])
    sampled = CompletionRequest(("Answer:",), True, None, 8, 1.0, 7)
    a, _ = run_completions(model, tok, sampled)
    b, _ = run_completions(model, tok, sampled)
    assert a == b and a[0]["text"].startswith("Answer:") and a[0]["logprobs"] is None


def test_token_ids_outside_the_vocabulary_and_overlong_prompts_are_refused(tiny_lm) -> None:
    model, tok = tiny_lm
    with pytest.raises(RequestError, match=r"prompt\[1\] holds token ids outside the vocabulary"):
        run_completions(model, tok, CompletionRequest(((1, 2), (1, 10**6)), True, 1, 0, 0.0, 0))
    with pytest.raises(RequestError, match="exceeds the model's context length 512"):
        run_completions(model, tok, CompletionRequest(((1,) * 510,), True, 1, 3, 0.0, 0))
    with pytest.raises(RequestError, match="encodes to no tokens"):
        run_completions(model, tok, CompletionRequest(("",), True, 1, 0, 0.0, 0))


# ---------------------------------------------------------------------------- the client against kinject serve


@pytest.fixture(scope="module")
def tiny_server(tiny_lm, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """`kinject serve` (in a thread) with the tiny model, and a folder holding its tokenizer."""
    model, tok = tiny_lm
    folder = tmp_path_factory.mktemp("tiny")
    model.config.save_pretrained(folder)
    tok.save_pretrained(folder)
    server = make_server(LocalGenerator("tiny", model=model, tokenizer=tok), "127.0.0.1", 0, "tiny-llama")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", str(folder)
    finally:
        server.shutdown()
        server.server_close()


TINY_PROMPTS = [
    Prompt("Question: What is a cell?\nAnswer:", (" the basic unit of life", " mitochondria", " 7"), ("a", "b", "c")),
    Prompt("The following are questions (with answers) about biology.\n\nQuestion: What is a cell?\nAnswer: the "
           "basic unit of life\n\nQuestion: Name an organelle.\nAnswer:", (" A", " B", " C", " D"), tuple("ABCD")),
    Prompt("The following are questions (with answers) about biology.\n\nQuestion: What is a cell?\nAnswer: the "
           "basic unit of life\n\nQuestion: Where is DNA?\nAnswer: ", ("nucleus", "golgi apparatus"), ("n", "g")),
    Prompt("", ("mitochondria", " ribosome"), ("m", "r")),  # empty context: scored from BOS
]


def test_client_matches_the_hf_backend_over_http(tiny_lm, tiny_server) -> None:
    model, tok = tiny_lm
    url, folder = tiny_server
    client = OpenAICompletionsBackend(url, "tiny-llama", folder, concurrency=3)
    try:
        assert client.describe() == {"backend": "openai-completions", "base_url": url, "served_model": "tiny-llama",
                                     "device": "remote", "dtype": "remote", "world_size": 1}
        assert client.is_main
        done: list[int] = []
        got = client.loglikelihood(TINY_PROMPTS, progress=done.append)
    finally:
        client.close()
    groups = ["bio", "bio", "bio", None]  # the hf backend shares the few-shot prefix: other numerics, same numbers
    ref = HFBackend(model, tok, CPU, 2, "tiny").loglikelihood(TINY_PROMPTS, groups)
    assert done == [1] * len(TINY_PROMPTS)
    for g, r in zip(got, ref):
        assert g.logliks == pytest.approx(r.logliks, abs=1e-4)
        assert g.greedy == r.greedy


def test_kinject_serve_answers_bad_completion_requests_in_openai_form(tiny_server) -> None:
    url, _ = tiny_server
    for body, status, message in (({"prompt": "a", "logprobs": 9}, 400, "'logprobs'"),
                                  ({"prompt": [[1, 10**6]], "echo": True, "max_tokens": 0}, 400, "vocabulary"),
                                  ({"prompt": "a", "model": "other"}, 404, "this server has 'tiny-llama'")):
        r = httpx.post(f"{url}/completions", json=body)
        assert r.status_code == status and message in r.json()["error"]["message"]
    r = httpx.post(f"{url}/embeddings", json={"input": "a"})
    assert r.status_code == 404 and "/v1/completions" in r.json()["error"]["message"]
    r = httpx.post(f"{url.removesuffix('/v1')}/completions", json={"prompt": [1, 2], "echo": True, "max_tokens": 0,
                                                                   "logprobs": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"]["top_logprobs"] == [None, {}]


# ---------------------------------------------------------------------------- the client: bad servers, faults


class FakeServer:
    """A stdlib OpenAI look-alike: /models lists `models`; /completions echoes every token with
    log-probability -1 (the top one) — or misbehaves as `mode` says."""

    def __init__(self, models: list[str], mode: Callable[[int], tuple[int, dict] | None] = lambda n: None) -> None:
        self.posts = 0
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self.send(200, {"object": "list", "data": [{"id": m} for m in models]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.posts += 1
                scripted = mode(fake.posts)
                if scripted is not None:
                    self.send(*scripted)
                    return
                self.send(200, {"choices": [
                    choice([None] + [-1.0] * len(p), [None] + [{"t": -1.0}] * len(p), i)
                    for i, p in enumerate(body["prompt"])]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def start(*args: Any) -> FakeServer:
        servers.append(FakeServer(*args))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def one_line_error(call: Callable[[], Any]) -> str:
    with pytest.raises(KinjectError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_unreachable_server_is_one_line(tiny_server) -> None:
    _, folder = tiny_server
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    message = one_line_error(lambda: OpenAICompletionsBackend(f"http://127.0.0.1:{port}/v1", "m", folder))
    assert message.startswith(f"cannot reach http://127.0.0.1:{port}/v1/models") and "start the server" in message


def test_wrong_model_name_names_what_is_served(tiny_server) -> None:
    url, folder = tiny_server
    message = one_line_error(lambda: OpenAICompletionsBackend(url, "smollm2-135m", folder))
    assert message == (f"{url} does not serve 'smollm2-135m'; it serves 'tiny-llama' "
                       f"(name it with openai:{url}#MODEL)")


def test_server_without_prompt_logprobs_is_one_line(tiny_server, fake_server) -> None:
    _, folder = tiny_server
    plain = fake_server(["m"], lambda n: (200, {"choices": [{"index": 0, "text": "x", "logprobs": None}]}))
    message = one_line_error(lambda: OpenAICompletionsBackend(plain.url, "m", folder))
    assert message.startswith(f"{plain.url} does not return prompt log-probabilities (echo + logprobs) for 'm'")
    assert message.endswith("vLLM and kinject serve do (llama.cpp's llama-server does not)")
    generated_only = fake_server(["m"], lambda n: (200, {"choices": [  # llama-server's newer logprobs shape
        {"index": 0, "text": "x", "logprobs": {"content": [{"token": "x", "logprob": -1.0, "top_logprobs": []}]}}]}))
    message = one_line_error(lambda: OpenAICompletionsBackend(generated_only.url, "m", folder))
    assert "does not return prompt log-probabilities" in message and "echoes no token log-probabilities" in message
    refusing = fake_server(["m"], lambda n: (400, {"error": {"message": "echo is not\nsupported"}}))
    message = one_line_error(lambda: OpenAICompletionsBackend(refusing.url, "m", folder))
    assert "does not return prompt log-probabilities" in message and "echo is not supported" in message


def test_transient_errors_are_retried_and_lasting_ones_stop_the_run(tiny_server, fake_server) -> None:
    _, folder = tiny_server
    flaky = fake_server(["m"], lambda n: (503, {"error": {"message": "busy"}}) if n in (2, 3) else None)
    client = OpenAICompletionsBackend(flaky.url, "m", folder, concurrency=1, backoff=0.01)
    scored = client.loglikelihood(TINY_PROMPTS[:2])
    assert flaky.posts == 5  # probe, 2 x 503, then both questions
    for p, s in zip(TINY_PROMPTS, scored):  # every token -1 and the top one
        _, conts = encode(client.tok, p, client.max_length)
        assert s == Scored(tuple(-1.0 * len(c) for c in conts), (True,) * len(conts))
    client.close()
    down = fake_server(["m"], lambda n: None if n == 1 else (500, {"error": {"message": "out of memory"}}))
    client = OpenAICompletionsBackend(down.url, "m", folder, concurrency=2, max_retries=2, backoff=0.01)
    message = one_line_error(lambda: client.loglikelihood(TINY_PROMPTS[:1]))
    assert message == f"{down.url}/completions: HTTP 500 after 3 tries: out of memory"
    client.close()
    rejecting = fake_server(["m"], lambda n: None if n == 1 else (400, {"error": {"message": "prompt too long"}}))
    client = OpenAICompletionsBackend(rejecting.url, "m", folder, backoff=0.01)
    assert one_line_error(lambda: client.loglikelihood(TINY_PROMPTS[:1])) == (
        f"{rejecting.url}/completions: HTTP 400: prompt too long")
    assert rejecting.posts == 2  # a 4xx is not retried
    client.close()


# ---------------------------------------------------------------------------- a real `kinject serve` process


@pytest.mark.slow
def test_openai_completions_backend_equals_hf_with_smollm2() -> None:
    from kinject.runtime.models import load_lm

    proc = subprocess.Popen([sys.executable, "-m", "kinject.cli.main", "serve", "--model", "smollm2-135m", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("serving smollm2-135m on http://127.0.0.1:"), line
        url = line.split(" on ")[1].split()[0]
        remote = OpenAICompletionsBackend(url, "smollm2-135m", "smollm2-135m")
        model, tok = load_lm("smollm2-135m")
        local = HFBackend(model, tok, CPU, 8, "smollm2-135m")
        for spec, shots, limit in (("mmlu:anatomy", 5, 3), ("sciq:support", 0, 3)):
            task = load_task(spec)
            items = select(task, limit)
            prompts = [render(task, it, shots) for it in items]
            got = remote.loglikelihood(prompts)
            ref = local.loglikelihood(prompts, [f"{it.subject}" for it in items])
            for p, g, r in zip(prompts, got, ref):
                assert max(abs(a - b) for a, b in zip(g.logliks, r.logliks)) < 1e-4, (spec, g, r)
                assert g.greedy == r.greedy
                assert predictions(g, p.choice_texts) == predictions(r, p.choice_texts)
        remote.close()
        message = one_line_error(lambda: OpenAICompletionsBackend(url, "qwen2.5-0.5b", "smollm2-135m"))
        assert "it serves 'smollm2-135m'" in message
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
def test_backend_speed_benchmark_runs_at_smoke_scale() -> None:
    """benchmarks/backend_speed.py keeps running: 2 questions per task against a real server."""
    script = Path(__file__).parent.parent / "benchmarks" / "backend_speed.py"
    proc = subprocess.run([sys.executable, str(script), "--limit", "2"], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("all") and "prediction agreement 1.0000" in last, proc.stdout
