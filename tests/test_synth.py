"""Synthetic data: reply parsing and validation, generators (local, OpenAI-compatible over real HTTP),
`kinject serve`, paraphrase and question runs under scripted faults, resume from the cache."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
from workspace import CURIE, CURIE_PAR, EVEREST, EVEREST_PAR

from kinject.core.errors import KinjectError
from kinject.knowledge.corpus import Chunk
from kinject.lm.generators import GeneratorOptions, LocalGenerator, OpenAIGenerator, open_generator
from kinject.synth.paraphrase import (
    check_paraphrase,
    extract_paraphrases,
    paraphrase_corpus,
    paraphrase_messages,
    write_paraphrase_dir,
)
from kinject.synth.questions import (
    Question,
    balance_gold,
    generate_questions,
    parse_questions,
    parse_selection,
    write_task,
)
from kinject.synth.replies import names, numbers, parse_json_reply, similarity

AMAZON = "The Amazon River carries more water than any other river and flows through Brazil, Peru and Colombia."
DANUBE = "The Danube flows through 10 countries, among them Austria and Hungary, before reaching the Black Sea."


def chunk(cid: str, text: str, title: str = "") -> Chunk:
    return Chunk(cid, f"doc/{cid}", title or cid, text, len(text.split()), 0, len(text))


def reply(*paraphrases: str) -> str:
    return json.dumps({"paraphrases": list(paraphrases)})


# ---------------------------------------------------------------------------- a scripted fault server

FAULT_SERVER = r'''
import json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

script = json.load(open(sys.argv[1]))
lock, counts, log = threading.Lock(), {}, []

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, body, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/_log":
            with lock:
                self.send(200, json.dumps(log).encode())
        else:
            self.send(200, json.dumps({"object": "list", "data": [{"id": "scripted"}]}).encode())

    def do_POST(self):
        raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
        with lock:
            if len(log) >= script["max_requests"]:
                step, key = {"status": 503}, "over-limit"
            else:
                key = next((r["match"] for r in script["rules"] if r["match"] in raw), "default")
                steps = next((r["steps"] for r in script["rules"] if r["match"] == key), [{"status": 404}])
                step = steps[min(counts.get(key, 0), len(steps) - 1)]
                counts[key] = counts.get(key, 0) + 1
            log.append(key)
        time.sleep(step.get("sleep", 0))
        if step.get("drop"):
            self.close_connection = True
            return
        status = step.get("status", 200)
        if "raw" in step:
            body = step["raw"].encode()
        elif status == 200:
            body = json.dumps({"choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": step["content"]}}]}).encode()
        else:
            body = json.dumps({"error": {"message": "scripted failure"}}).encode()
        self.send(status, body, [("Retry-After", str(step["retry_after"]))] if "retry_after" in step else [])

srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
'''


class FaultServer:
    def __init__(self, tmp: Path, rules: list[dict], max_requests: int = 100) -> None:
        script = tmp / f"script-{id(self)}.json"
        script.write_text(json.dumps({"rules": rules, "max_requests": max_requests}))
        self.proc = subprocess.Popen([sys.executable, "-c", FAULT_SERVER, str(script)], stdout=subprocess.PIPE,
                                     text=True)
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}/v1"

    def log(self) -> list[str]:
        return httpx.get(self.url.removesuffix("/v1") + "/_log").json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def fault_server(tmp_path: Path):
    servers: list[FaultServer] = []

    def start(rules: list[dict], max_requests: int = 100) -> FaultServer:
        servers.append(FaultServer(tmp_path, rules, max_requests))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def fast_client(url: str, **kw) -> OpenAIGenerator:
    """Short timeouts and backoff so fault tests take milliseconds, not minutes."""
    return OpenAIGenerator(url, kw.pop("model", "scripted"), **{"timeout": 2.0, "max_retries": 3, "backoff": 0.01,
                                                                "concurrency": 2, **kw})


# ---------------------------------------------------------------------------- parsing and validation (pure)


def test_replies_are_parsed_leniently() -> None:
    assert extract_paraphrases('Sure!\n```json\n{"paraphrases": ["one\ntwo", "three"]}\n```') == ["one\ntwo", "three"]
    assert extract_paraphrases('Here you go: {"paraphrases": ["x"]} Hope it helps.') == ["x"]
    assert extract_paraphrases('["a", {"text": "b"}]') == ["a", "b"]
    assert extract_paraphrases('{"paraphrase": "only one"}') == ["only one"]
    assert extract_paraphrases('{"rewritten": ["p", "q"]}') == ["p", "q"]
    assert extract_paraphrases('{"paraphrases": ["cut off in the mid') is None  # truncated
    assert extract_paraphrases("A plain sentence with no JSON at all.") is None
    assert parse_json_reply('{"questions": [{"q": 1}, {"q": 2}') is None  # never an inner object of a cut reply
    assert parse_selection('{"keep": [3, 1, 3, 9]}', 4) == [2, 0]
    assert parse_selection("I keep 1 and 2", 4) is None


def test_names_and_numbers_of_a_source() -> None:
    assert numbers(EVEREST) == {"8849"}
    assert numbers("In 2024, 3.5% of 1,200 cells") == {"2024", "3.5", "1200"}
    assert {"Curie", "Nobel", "Prize", "Physics", "Pierre", "Chemistry"} <= names(CURIE)
    assert "Marie" not in names(CURIE)  # a sentence start only: not treated as a name
    assert names("Cells hold DNA and mRNA. The nucleus stores it.") == {"DNA", "mRNA"}


@pytest.mark.parametrize("candidate, reason", [
    (CURIE_PAR, None),
    (CURIE_PAR + " " + CURIE_PAR, "too_long"),
    ("Curie won prizes.", "too_short"),
    ("  " + CURIE.upper() + " ", "copy"),
    (CURIE.replace("together with", "with"), "near_copy"),
    (CURIE_PAR.replace("1911", "1912"), "lost_numbers"),
    (CURIE_PAR.replace("Pierre Curie", "her husband"), "lost_names"),
    ("", "empty"),
])
def test_paraphrase_checks(candidate: str, reason: str | None) -> None:
    assert check_paraphrase(CURIE, candidate) == reason


def test_a_paraphrase_that_drops_facts_is_rejected() -> None:
    # a real reply of the 0.5B model: right length, no name or number to miss, but the facts are gone
    src = "Blood vessels include arteries, veins, and capillaries."
    assert check_paraphrase(src, "Blood vessels are the three main structures in the body that carry blood.") \
        == "lost_facts"
    assert check_paraphrase(src, "Arteries, veins and capillaries are the kinds of blood vessels.") is None


def test_number_words_count_as_the_number() -> None:
    assert check_paraphrase(DANUBE, "Before it ends in the Black Sea, the Danube crosses ten countries, Austria and "
                                 "Hungary among them.") is None


def test_paraphrase_prompt_is_the_papers_instruction() -> None:
    from kinject.synth.paraphrase import DEMO_PARAPHRASES, DEMO_TEXT

    messages = paraphrase_messages(CURIE, 3)
    text = messages[-1]["content"]
    for phrase in ("keep every fact", "change the wording", "as long as", "as different as possible",
                   '{"paraphrases": [', CURIE):
        assert phrase in text
    demo = extract_paraphrases(messages[2]["content"])
    assert messages[2]["role"] == "assistant" and demo == list(DEMO_PARAPHRASES)
    assert [check_paraphrase(DEMO_TEXT, d) for d in demo] == [None, None]  # the worked example obeys the rules
    assert similarity(*DEMO_PARAPHRASES) < 0.85


def test_question_prompt_and_its_worked_example() -> None:
    from kinject.synth.questions import DEMO_QUESTIONS, question_messages

    messages = question_messages(CURIE, "Marie Curie", 4)
    assert "answerable" not in messages[-1]["content"] and "never seen this text" in messages[-1]["content"]
    assert messages[-1]["content"].endswith(CURIE) and "Title: Marie Curie" in messages[-1]["content"]
    demo, rejected = parse_questions(messages[2]["content"])
    assert len(demo) == len(DEMO_QUESTIONS) == 4 and not rejected  # the example passes every check
    assert sorted(q.answer for q in demo) == [0, 1, 2, 3]


def test_question_parsing_rejects_bad_questions_by_reason() -> None:
    rows = [
        {"question": "Which element did Marie Curie discover?", "options": ["A. Radium", "B. Iron", "C. Neon",
                                                                            "D. Tin"], "answer": "A"},
        {"question": "In which year did Curie win the Chemistry prize?", "options": ["1903", "1911", "1920", "1898"],
         "answer": "1911"},
        {"question": "Who shared the 1903 prize?", "options": ["Pierre", "Albert", "Niels", "Max"], "answer": 0},
        {"question": "Which river?", "options": ["a", "b", "c"], "answer": "a"},
        {"question": "Which one?", "options": ["x", "X ", "y", "z"], "answer": "y"},
        {"question": "Which one?", "options": ["w", "x", "y", "z"], "answer": "q"},
        {"question": "According to the passage, what did she find?", "options": ["w", "x", "y", "z"], "answer": "w"},
        {"question": "Did Curie discover radium or iron?", "options": ["radium", "iron", "tin", "lead"],
         "answer": "radium"},
        "not a question",
    ]
    qs, rejected = parse_questions("```json\n" + json.dumps({"questions": rows}) + "\n```")
    assert [q.options[q.answer] for q in qs] == ["Radium", "1911", "Pierre"]
    assert qs[0].options == ("Radium", "Iron", "Neon", "Tin")  # option letters stripped
    assert rejected == Counter({"not_4_options": 1, "duplicate_options": 1, "answer_not_an_option": 1,
                                "refers_to_text": 1, "answer_in_question": 1, "bad_shape": 1})
    assert parse_questions("I cannot write questions.")[1] == Counter({"not_json": 1})


def test_an_answer_must_be_stated_in_the_text() -> None:
    from kinject.synth.questions import grounded

    assert grounded("Radium", CURIE) and grounded("radium and polonium", CURIE) and grounded("1911", CURIE)
    assert grounded("8,849 m", EVEREST) and grounded("the border of Nepal", EVEREST) and grounded("B", CURIE)
    assert not grounded("12.5", CURIE) and not grounded("1911 and 1920", CURIE)
    assert not grounded("A large area of land covered by water", "A wetland is an area that is wet.")


def test_answer_positions_are_balanced_and_seeded() -> None:
    qs = [(Question(f"Question {i}?", (f"right {i}", f"w1 {i}", f"w2 {i}", f"w3 {i}"), 0), chunk(f"c{i % 3}", "t"))
          for i in range(10)]
    items = balance_gold(qs, seed=1)
    assert items == balance_gold(qs, seed=1)
    assert [it.gold for it in items] != [it.gold for it in balance_gold(qs, seed=2)]
    assert sorted(Counter(it.gold for it in items).values()) == [2, 2, 3, 3]
    # placed by the rule cloze and newfacts use (kinject.tasks.cloze.balanced_choices); pinned: same seed, same task
    assert [it.gold for it in items] == [2, 0, 1, 3, 1, 3, 0, 0, 1, 2]
    assert items[0].choices == ("w2 0", "w3 0", "right 0", "w1 0")
    for i, it in enumerate(items):
        assert it.choices[it.gold] == f"right {i}" and sorted(it.choices) == sorted(qs[i][0].options)
        assert it.source_chunks == (f"c{i % 3}",)
    assert len({it.id for it in items}) == 10


def test_generator_specs() -> None:
    cpu = GeneratorOptions(device="cpu")
    assert open_generator("local", cpu).id == "local:qwen2.5-0.5b"
    assert open_generator("local:smollm2-135m", cpu).id == "local:smollm2-135m"
    from kinject.runtime.devices import Placement

    # samples of another dtype or device are cached apart
    assert LocalGenerator(placement=Placement("cpu", "bf16")).id == "local:qwen2.5-0.5b@bf16"
    assert LocalGenerator(placement=Placement("cuda:0", "bf16")).id == "local:qwen2.5-0.5b@cuda-bf16"
    gen = open_generator("openai:http://127.0.0.1:9/v1#my-model")
    assert gen.id == "openai:my-model" and gen.base_url == "http://127.0.0.1:9/v1"
    gen.close()
    with pytest.raises(KinjectError, match="unknown generator"):
        open_generator("gpt4")
    with pytest.raises(KinjectError, match="http"):
        OpenAIGenerator("localhost:8000/v1")


# ---------------------------------------------------------------------------- local generator and serve


def test_local_generator_is_deterministic_per_seed(tiny_lm) -> None:
    model, tok = tiny_lm
    gen = LocalGenerator("tiny", model=model, tokenizer=tok, batch_size=2)
    prompts = [[{"role": "user", "content": t}] for t in ("What is a cell?", "Answer: the nucleus", "mitochondria")]
    a = gen.complete(prompts, seed=1, max_tokens=8, temperature=1.0)
    assert len(a) == 3 and all(isinstance(t, str) for t in a)
    assert gen.complete(prompts, seed=1, max_tokens=8, temperature=1.0) == a
    assert gen.complete(prompts, seed=2, max_tokens=8, temperature=1.0) != a
    greedy = gen.generate(prompts[:1], seed=5, max_tokens=6, temperature=0.0)[0]
    assert greedy == gen.generate(prompts[:1], seed=6, max_tokens=6, temperature=0.0)[0]
    assert greedy.finish_reason in ("stop", "length") and 1 <= greedy.completion_tokens <= 6
    assert gen.stats.requests == 11 and gen.stats.failures == 0


def test_serve_speaks_the_openai_api_over_http(tiny_lm) -> None:
    from kinject.lm.serve import make_server

    model, tok = tiny_lm
    server = make_server(LocalGenerator("tiny", model=model, tokenizer=tok), "127.0.0.1", 0, "tiny-llama")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        fresh = OpenAIGenerator(url)  # no model named: the cache key asks /v1/models before any prompt
        assert fresh.id == "openai:tiny-llama" and fresh.stats.requests == 1
        fresh.close()
        dead = OpenAIGenerator("http://127.0.0.1:9/v1", max_retries=0)  # unreachable: keyed by its URL
        assert dead.id == "openai:http://127.0.0.1:9/v1#?"
        dead.close()
        client = OpenAIGenerator(url, concurrency=2)  # no model named: taken from /v1/models
        prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}]
                   for q in ("What is a cell?", "Name an organelle.", "What is DNA?")]
        texts = client.complete(prompts, seed=3, max_tokens=8, temperature=0.7)
        assert client.model == "tiny-llama" and client.id == "openai:tiny-llama"
        assert all(isinstance(t, str) for t in texts)
        assert client.complete(prompts, seed=3, max_tokens=8, temperature=0.7) == texts  # seed is honoured
        assert client.stats.as_dict() == {"requests": 7, "retries": 0, "failures": 0, "skipped": 0, "errors": {}}
        client.close()
        body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        r = httpx.post(f"{url}/chat/completions", json=body)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4
        assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
        for bad, status in (({**body, "stream": True}, 400), ({**body, "messages": []}, 400),
                            ({**body, "max_tokens": 0}, 400), ({**body, "model": "other"}, 404)):
            r = httpx.post(f"{url}/chat/completions", json=bad)
            assert r.status_code == status and r.json()["error"]["message"]
        with pytest.raises(KinjectError, match="404"):
            OpenAIGenerator(url, "other").complete([body["messages"]], seed=0, max_tokens=4, temperature=0)
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------- faults over real HTTP


def test_transient_faults_are_retried_and_counted(fault_server) -> None:
    server = fault_server([
        {"match": "alpha", "steps": [{"status": 500}, {"status": 429, "retry_after": 0},
                                     {"raw": "<html>oops</html>"}, {"content": "A1"}]},
        {"match": "beta", "steps": [{"sleep": 1.5, "content": "too late"}, {"content": "B1"}]},
        {"match": "gamma", "steps": [{"drop": True}, {"content": "G1"}]},
        {"match": "delta", "steps": [{"status": 500}]},
        {"match": "epsilon", "steps": [{"status": 400}]},
    ])
    client = fast_client(server.url, timeout=0.5, concurrency=5)
    prompts = [[{"role": "user", "content": w}] for w in ("alpha", "beta", "gamma", "delta", "epsilon")]
    assert client.complete(prompts, seed=0, max_tokens=8, temperature=0) == ["A1", "B1", "G1", None, None]
    stats = client.stats.as_dict()
    client.close()
    assert stats == {"requests": 13, "retries": 8, "failures": 2, "skipped": 0,
                     "errors": {"bad_response": 1, "http_400": 1, "http_429": 1, "http_500": 5, "timeout": 1,
                                "transport": 1}}
    assert Counter(server.log()) == {"alpha": 4, "beta": 2, "gamma": 2, "delta": 4, "epsilon": 1}


def test_a_dead_endpoint_fails_fast_without_raising() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = fast_client(f"http://127.0.0.1:{port}/v1", max_retries=1, concurrency=1, give_up_after=2)
    prompts = [[{"role": "user", "content": str(i)}] for i in range(5)]
    assert client.complete(prompts, seed=0, max_tokens=8, temperature=0) == [None] * 5
    assert client.stats.as_dict() == {"requests": 4, "retries": 2, "failures": 2, "skipped": 3,
                                      "errors": {"connect": 4}}
    client.close()


def test_paraphrase_run_survives_faults_and_resumes_from_the_cache(fault_server, tmp_path: Path) -> None:
    from kinject.cli.train import _read_texts

    chunks = [chunk("c1", CURIE), chunk("c2", EVEREST), chunk("c3", AMAZON), chunk("c4", "   "),
              chunk("c5", DANUBE)]
    server = fault_server([
        {"match": "Curie", "steps": [{"content": reply(CURIE)}, {"content": reply(CURIE_PAR)}]},
        {"match": "Everest", "steps": [{"content": "Mount Everest is tall."}, {"content": '{"paraphrases": ["On'},
                                       {"content": "```json\n" + reply(EVEREST_PAR.replace("8849", "8,849")) + "```"}]},
        {"match": "Amazon", "steps": [{"status": 500}]},
        {"match": "Danube", "steps": [{"content": reply("Before reaching the Black Sea, the Danube crosses eleven "
                                                        "countries, among them Austria and Hungary.")},
                                      {"content": reply(DANUBE.replace("flows", "runs"))}, {"content": "[]"}]},
    ])
    cache = tmp_path / "cache.sqlite"
    client = fast_client(server.url, max_retries=1)
    done: list[int] = []
    pars, report = paraphrase_corpus(chunks, client, 1, cache, done.append, max_attempts=3)
    client.close()
    assert [(p.chunk_id, p.round, p.attempt) for p in pars] == [("c1", 0, 1), ("c2", 0, 2)]
    assert pars[0].text == CURIE_PAR and pars[0].generator == client.id
    r = report.as_dict()
    assert (r["chunks"], r["empty_chunks"], r["asked"], r["valid"], r["unfinished"]) == (5, 1, 4, 2, 1)
    assert r["rejected"] == {"copy": 1, "not_json": 2, "lost_numbers": 1, "near_copy": 1, "empty": 1}
    assert sum(done) == 4 and r["no_reply"] == 3 and r["generator_stats"]["failures"] == 3
    assert Counter(server.log()) == {"Curie": 2, "Everest": 3, "Amazon": 6, "Danube": 3}

    out = tmp_path / "par"
    write_paraphrase_dir(out, pars, report, {"command": "test"})
    assert _read_texts(out) == [CURIE_PAR, EVEREST_PAR.replace("8849", "8,849")]
    assert json.loads((out / "report.json").read_text())["valid"] == 2

    # the endpoint recovers: a rerun asks only for the round that never got a reply
    amazon = "Flowing through Brazil, Peru and Colombia, the Amazon River carries more water than any other river."
    server2 = fault_server([{"match": "Amazon", "steps": [{"content": reply(amazon)}]}])
    client2 = fast_client(server2.url)
    pars2, report2 = paraphrase_corpus(chunks, client2, 1, cache, max_attempts=3)
    client2.close()
    assert server2.log() == ["Amazon"]
    assert [p.chunk_id for p in pars2] == ["c1", "c2", "c3"] and pars2[:2] == pars
    assert (report2.from_cache, report2.valid, report2.unfinished, report2.attempts) == (3, 3, 0, 1)


def test_a_killed_run_keeps_finished_rounds(tiny_lm, tmp_path: Path) -> None:
    model, tok = tiny_lm
    chunks = [chunk(f"k{i}", f"Cell {i} holds a nucleus and {i + 2} mitochondria.") for i in range(3)]
    cache = tmp_path / "cache.sqlite"

    def stop_after_first(k: int) -> None:
        raise KeyboardInterrupt

    gen = LocalGenerator("tiny", model=model, tokenizer=tok, batch_size=1)
    with pytest.raises(KeyboardInterrupt):
        paraphrase_corpus(chunks, gen, 2, cache, stop_after_first, max_attempts=1, max_tokens=4)
    first = gen.stats.requests
    gen2 = LocalGenerator("tiny", model=model, tokenizer=tok, batch_size=1)
    _, report = paraphrase_corpus(chunks, gen2, 2, cache, max_attempts=1, max_tokens=4)
    assert report.from_cache == 1 and report.attempts == 5 and gen2.stats.requests == 5 and first >= 1
    _, again = paraphrase_corpus(chunks, LocalGenerator("tiny", model=model, tokenizer=tok), 2, cache,
                                 max_attempts=1, max_tokens=4)
    assert again.from_cache == 6 and again.attempts == 0 and again.rejected == report.rejected


def test_question_recipe_end_to_end(fault_server, tmp_path: Path) -> None:
    from kinject.tasks.registry import load_task

    def q(text: str, options: list[str], answer: str) -> dict:
        return {"question": text, "options": options, "answer": answer}

    curie = [q("Which element did Marie Curie discover?", ["Radium", "Iron", "Neon", "Tin"], "Radium"),
             q("In which year did Marie Curie win the Nobel Prize in Chemistry?", ["1903", "1911", "1920", "1898"],
               "1911"),
             q("Who shared the 1903 Nobel Prize in Physics with Marie Curie?", ["Pierre Curie", "Albert Einstein",
                                                                                "Niels Bohr", "Max Planck"], "A"),
             q("Which prize?", ["Nobel", "Nobel", "Abel", "Wolf"], "Nobel"),
             q("How many children did Marie Curie have?", ["2", "3", "4", "5"], "2")]  # not in the text
    everest = [q("How high is Mount Everest?", ["8,849 m", "7,200 m", "9,100 m", "6,500 m"], "8,849 m"),
               q("Which element did Marie Curie discover?", ["Nepal", "Gold", "Zinc", "Neon"], "Nepal")]
    server = fault_server([
        {"match": "Pick the 2 most specific", "steps": [{"content": '{"keep": [3, 1]}'}]},
        {"match": "Curie won", "steps": [{"content": json.dumps({"questions": curie})}]},
        {"match": "Everest", "steps": [{"status": 503}, {"content": "Sorry, I can't."},
                                       {"content": json.dumps({"questions": everest})}]},
    ])
    client = fast_client(server.url, max_retries=1)
    chunks = [chunk("c1", CURIE, "Marie Curie"), chunk("c2", EVEREST, "Mount Everest"), chunk("c3", "")]
    items, report = generate_questions(chunks, client, cache_path=tmp_path / "c.sqlite", seed=0)
    client.close()
    r = report.as_dict()
    assert [it.question for it in items] == ["Who shared the 1903 Nobel Prize in Physics with Marie Curie?",
                                             "Which element did Marie Curie discover?",
                                             "How high is Mount Everest?"]
    assert [it.source_chunks for it in items] == [("c1",), ("c1",), ("c2",)]
    assert [it.choices[it.gold] for it in items] == ["Pierre Curie", "Radium", "8,849 m"]
    assert (r["asked"], r["valid"], r["empty_chunks"], r["generated"], r["valid_candidates"]) == (4, 3, 1, 8, 5)
    assert r["rejected"] == {"duplicate_options": 1, "answer_not_in_text": 1, "not_json": 1, "duplicate": 1}
    assert r["no_reply"] == 0 and r["generator_stats"]["errors"] == {"http_503": 1}
    assert Counter(server.log()) == {"Pick the 2 most specific": 1, "Curie won": 1, "Everest": 3}

    path = tmp_path / "task.jsonl"
    report_path = write_task(path, items, r, {"command": "test"})
    task = load_task(str(path))
    assert [(it.id, it.gold, it.source_chunks) for it in task.items] == [(it.id, it.gold, it.source_chunks)
                                                                         for it in items]
    assert task.items[0].source == CURIE and json.loads(report_path.read_text())["valid"] == 3


# ---------------------------------------------------------------------------- the CLI


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    from kinject.cli.main import main

    monkeypatch.setattr(sys, "argv", ["kinject", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_paraphrase_and_questions(fault_server, tmp_path: Path, monkeypatch, capsys) -> None:
    from kinject.knowledge.corpus import write_chunks

    corpus = tmp_path / "kb"
    corpus.mkdir()
    write_chunks(corpus / "chunks.parquet", [chunk("c1", CURIE), chunk("c2", EVEREST)])
    (corpus / "meta.json").write_text("{}")
    server = fault_server([{"match": "Curie", "steps": [{"content": reply(CURIE_PAR)}]},
                           {"match": "Everest", "steps": [{"status": 500}]}])
    code, out, err = run_cli(monkeypatch, capsys, "paraphrase", "--corpus", str(corpus), "--out", str(tmp_path / "p"),
                             "--n", "1", "--generator", f"openai:{server.url}#scripted", "--max-retries", "0",
                             "--max-attempts", "2", "--cache", str(tmp_path / "c.sqlite"))
    assert code == 2 and "1 rounds got no reply" in err and "rerun the same command" in err
    assert "yield: 1 valid of 2 asked" in out
    assert json.loads((tmp_path / "p" / "report.json").read_text())["unfinished"] == 1

    for args, message in ((["paraphrase", "--corpus", str(tmp_path), "--out", str(tmp_path / "x")],
                           "not a corpus folder"),
                          (["paraphrase", "--corpus", str(corpus), "--out", str(tmp_path / "x"), "--generator", "gpt"],
                           "unknown generator"),
                          (["questions", "--corpus", str(corpus), "--out", str(tmp_path / "t.txt")], "end in .jsonl"),
                          (["questions", "--corpus", str(corpus), "--out", str(tmp_path / "t.jsonl"), "--method",
                            "magic"], "--method must be llm or cloze")):
        code, _, err = run_cli(monkeypatch, capsys, *args)
        assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_cloze_questions(tmp_path: Path, monkeypatch, capsys) -> None:
    from kinject.knowledge.corpus import write_chunks
    from kinject.tasks.registry import load_task

    corpus = tmp_path / "kb"
    corpus.mkdir()
    write_chunks(corpus / "chunks.parquet", [chunk("c1", CURIE), chunk("c2", EVEREST), chunk("c3", AMAZON),
                                             chunk("c4", DANUBE)])
    (corpus / "meta.json").write_text("{}")
    code, out, _ = run_cli(monkeypatch, capsys, "questions", "--corpus", str(corpus), "--out",
                           str(tmp_path / "cloze.jsonl"), "--method", "cloze", "--keep", "1")
    assert code == 0 and "cloze questions" in out
    items = load_task(str(tmp_path / "cloze.jsonl")).items
    assert items and all(it.source_chunks and it.source_chunks[0] in {"c1", "c2", "c3", "c4"} for it in items)
    first = (tmp_path / "cloze.jsonl").read_bytes()
    # its own earlier output is replaced: the file then equals a fresh --keep 2 run's, byte for byte
    for out in ("cloze.jsonl", "fresh.jsonl"):
        code, _, _ = run_cli(monkeypatch, capsys, "questions", "--corpus", str(corpus), "--out",
                             str(tmp_path / out), "--method", "cloze", "--keep", "2")
        assert code == 0
    replaced = (tmp_path / "cloze.jsonl").read_bytes()
    assert replaced == (tmp_path / "fresh.jsonl").read_bytes() and replaced != first
    assert len(load_task(str(tmp_path / "cloze.jsonl")).items) > len(items)


# ---------------------------------------------------------------------------- a real `kinject serve` process


@pytest.mark.slow
def test_kinject_serve_process_with_smollm2(tmp_path: Path) -> None:
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "kinject.cli.main", "serve", "--model", "smollm2-135m", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even if CI ignores it
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving smollm2-135m on http://127.0.0.1:"), line
        url = line.split(" on ")[1].split()[0]
        client = OpenAIGenerator(url, "smollm2-135m", timeout=60)
        prompts = [[{"role": "user", "content": "What is the capital of France?"}],
                   [{"role": "user", "content": "Name a planet."}]]
        texts = client.complete(prompts, seed=0, max_tokens=12, temperature=0)
        assert all(isinstance(t, str) and t.strip() for t in texts), texts
        pars, report = paraphrase_corpus([chunk("c1", EVEREST)], client, 1, tmp_path / "c.sqlite", max_attempts=1,
                                         max_tokens=40)
        assert report.attempts == 1 and report.unfinished == 0 and report.valid == len(pars) <= 1
        assert client.stats.as_dict() == {"requests": 3, "retries": 0, "failures": 0, "skipped": 0, "errors": {}}
        client.close()
        proc.send_signal(signal.SIGINT)  # Ctrl-C: exit 130 and one line, no traceback
        assert proc.wait(30) == 130
        assert proc.stderr.read().strip().splitlines()[-1].startswith("interrupted: ")
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def test_cli_training_pairs_offline_and_through_a_generator(fault_server, tmp_path: Path, monkeypatch,
                                                             capsys) -> None:
    """`kinject questions --pairs`: offline cloze pairs that never state a question of --exclude, and
    the fact-based recipe through a scripted OpenAI endpoint, validated and cached."""
    from kinject.knowledge.corpus import write_chunks
    from kinject.synth.trainpairs import read_pairs
    from kinject.tasks.registry import load_task

    corpus = tmp_path / "kb"
    corpus.mkdir()
    write_chunks(corpus / "chunks.parquet", [chunk("c1", CURIE), chunk("c2", EVEREST), chunk("c3", AMAZON),
                                             chunk("c4", DANUBE)])
    (corpus / "meta.json").write_text("{}")
    assert run_cli(monkeypatch, capsys, "questions", "--corpus", str(corpus), "--out", str(tmp_path / "task.jsonl"),
                   "--method", "cloze", "--keep", "1")[0] == 0
    code, out, _ = run_cli(monkeypatch, capsys, "questions", "--corpus", str(corpus), "--pairs", "--method", "cloze",
                           "--keep", "3", "--exclude", str(tmp_path / "task.jsonl"), "--out", str(tmp_path / "p.jsonl"))
    assert code == 0 and "training pairs" in out
    pairs = read_pairs(tmp_path / "p.jsonl")
    asked = {(it.question, it.choices[it.gold]) for it in load_task(str(tmp_path / "task.jsonl")).items}
    assert pairs and not asked & {(p.question, p.answer) for p in pairs}
    assert json.loads((tmp_path / "p.report.json").read_text())["dropped_as_evaluated"] >= 1

    curie = [{"question": "In which year did Marie Curie win the Nobel Prize in Physics?", "answer": "1903"},
             {"question": "What did Marie Curie discover according to the text?", "answer": "polonium and radium"},
             {"question": "In which field was Marie Curie's second Nobel Prize?", "answer": "Chemistry"}]
    server = fault_server([{"match": "Curie won", "steps": [{"content": json.dumps({"pairs": curie})}]},
                           {"match": "Everest rises", "steps": [{"content": "no JSON here"}]}])
    args = ["questions", "--corpus", str(corpus), "--pairs", "--limit", "2", "--keep", "3", "--max-attempts", "1",
            "--generator", f"openai:{server.url}#scripted", "--cache", str(tmp_path / "c.sqlite"),
            "--out", str(tmp_path / "llm.jsonl")]
    code, out, _ = run_cli(monkeypatch, capsys, *args)
    assert code == 0, out
    got = read_pairs(tmp_path / "llm.jsonl")
    assert [(p.question, p.answer, p.chunk_id) for p in got] == [(curie[0]["question"], "1903", "c1"),
                                                                  (curie[2]["question"], "Chemistry", "c1")]
    report = json.loads((tmp_path / "llm.report.json").read_text())
    assert report["rejected"]["refers_to_text"] == 1 and report["rejected"]["not_json"] == 1

    code, _, err = run_cli(monkeypatch, capsys, "questions", "--corpus", str(corpus), "--out",
                           str(tmp_path / "t2.jsonl"), "--exclude", "newfacts")
    assert code == 2 and "--exclude applies to --pairs only" in err


def test_commands_and_run_stages_make_the_same_pairs_and_paraphrases(fault_server, tmp_path: Path, monkeypatch,
                                                                      capsys) -> None:
    """`kinject questions --pairs` and `kinject paraphrase` on the first chunks of a corpus write what
    a run's pairs and paraphrase stages write for those chunks, byte for byte: one implementation
    (cloze distractors drawn from the whole knowledge base either way)."""
    from rich.console import Console
    from workspace import FACTS

    from kinject.experiment.stages import Selection, pairs_stage, paraphrase_stage
    from kinject.knowledge.corpus import write_chunks
    from kinject.runtime.models import CPU

    corpus = tmp_path / "kb"
    corpus.mkdir()
    write_chunks(corpus / "chunks.parquet", [chunk("c1", CURIE, "Marie Curie"), chunk("c2", EVEREST, "Mount Everest")]
                 + [chunk(f"f{i}", text, title) for i, (title, text, _, _) in enumerate(FACTS)])
    (corpus / "meta.json").write_text("{}")
    first_two = Selection(("c1", "c2"))
    quiet = Console(quiet=True)
    task = str(tmp_path / "task.jsonl")
    (tmp_path / "task.jsonl").write_text(json.dumps({  # an evaluated question: no pair may state it
        "question": "Marie Curie won the Nobel Prize in ___ in 1903 together with Pierre Curie, and a second Nobel "
                    "Prize in Chemistry in 1911 for the discovery of polonium and radium.",
        "choices": ["Physics", "Biology", "Music", "Law"], "gold": 0}) + "\n")

    pairs_stage(corpus, first_two, "cloze", 3, [task], 5, CPU, tmp_path / "stage-cache", tmp_path / "pairs", quiet)
    code, _, err = run_cli(monkeypatch, capsys, "questions", "--corpus", str(corpus), "--pairs", "--method", "cloze",
                           "--limit", "2", "--keep", "3", "--seed", "5", "--exclude", task, "--out",
                           str(tmp_path / "pairs.jsonl"))
    assert code == 0, err
    made = (tmp_path / "pairs.jsonl").read_bytes()
    assert made == (tmp_path / "pairs" / "pairs.jsonl").read_bytes() and b"Lake Osmer" in made  # another chunk's
    assert json.loads((tmp_path / "pairs.report.json").read_text())["dropped_as_evaluated"] == 1

    facts = {"Curie": [{"question": "In which year did Marie Curie win the Nobel Prize in Physics?", "answer": "1903"}],
             "Everest": [{"question": "How high does Mount Everest rise?", "answer": "8,849 metres"}]}
    server = fault_server([{"match": k, "steps": [{"content": json.dumps({"pairs": v})}]} for k, v in facts.items()])
    spec = f"openai:{server.url}#scripted"
    pairs_stage(corpus, first_two, spec, 3, [task], 5, CPU, tmp_path / "stage-cache", tmp_path / "llm", quiet)
    code, _, err = run_cli(monkeypatch, capsys, "questions", "--corpus", str(corpus), "--pairs", "--limit", "2",
                           "--keep", "3", "--seed", "5", "--exclude", task, "--generator", spec, "--cache",
                           str(tmp_path / "stage-cache" / "pairs-cache.sqlite"), "--out", str(tmp_path / "llm.jsonl"))
    assert code == 0, err
    assert Counter(server.log()) == {"Curie": 1, "Everest": 1}  # same recipe settings: the stage's cache served all
    assert (tmp_path / "llm.jsonl").read_bytes() == (tmp_path / "llm" / "pairs.jsonl").read_bytes()

    server = fault_server([{"match": "Curie", "steps": [{"content": reply(CURIE_PAR)}]},
                           {"match": "Everest", "steps": [{"content": reply(EVEREST_PAR)}]}])
    spec = f"openai:{server.url}#scripted"
    paraphrase_stage(corpus, first_two, spec, 1, 0, CPU, tmp_path / "stage-cache", tmp_path / "par-stage", quiet)
    code, _, err = run_cli(monkeypatch, capsys, "paraphrase", "--corpus", str(corpus), "--limit", "2", "--n", "1",
                           "--generator", spec, "--cache", str(tmp_path / "cli.sqlite"), "--out", str(tmp_path / "par"))
    assert code == 0, err
    assert Counter(server.log()) == {"Curie": 2, "Everest": 2}  # each entry point asked; no shared cache
    made = (tmp_path / "par" / "paraphrases.parquet").read_bytes()
    assert made == (tmp_path / "par-stage" / "paraphrases.parquet").read_bytes()
    assert json.loads((tmp_path / "par" / "report.json").read_text())["valid"] == 2
