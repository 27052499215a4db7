"""Synthetic data from a corpus: paraphrases (the paper's FT-par) and multiple-choice questions.

Both recipes run on a `Generator`: any OpenAI-compatible chat endpoint (a hosted API, vLLM,
llama.cpp, Ollama, `kinject serve`) or a local HF instruct model. Small and remote generators
fail in many ways (down endpoints, 429/5xx, timeouts, prose instead of JSON, a copy of the
input), so every reply is validated, a bad one is retried a bounded number of times with a new
seed, and every outcome is counted in a yield report. Finished work is written to a SQLite cache
keyed by (chunk text, generator, round, recipe) as soon as it exists: a killed run resumes
where it stopped and a rerun costs nothing.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import random
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kinject.assets import Log, quiet
from kinject.backends import Completion, HFBackend, mix_seed
from kinject.devices import Placement, resolve
from kinject.errors import KinjectError
from kinject.fsio import atomic_dir, atomic_write_text, check_replaceable
from kinject.models import CPU

if TYPE_CHECKING:
    from kinject.corpus import Chunk
    from kinject.tasks import Item

Messages = list[dict[str, str]]
Progress = Callable[[int], None]

DEFAULT_LOCAL = "qwen2.5-0.5b"
SPEC_HELP = ("local[:MODEL] (an HF instruct model run here; MODEL = catalog name, folder, .gguf or hub id; "
             f"default {DEFAULT_LOCAL}), or openai:BASE_URL[#MODEL] for any OpenAI-compatible chat endpoint "
             "(e.g. openai:http://127.0.0.1:8000/v1#qwen2.5-0.5b; without #MODEL the server's first model), "
             "or openai:MODEL (base URL from $KINJECT_API_BASE / $OPENAI_BASE_URL, default "
             "https://api.openai.com/v1). API key from $KINJECT_API_KEY or $OPENAI_API_KEY.")


# ---------------------------------------------------------------------------- generators


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
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def as_dict(self) -> dict[str, Any]:
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
                 temperature: float) -> list[str | None]: ...

    def close(self) -> None: ...


def render_chat(tok: Any, messages: Messages) -> str:
    """The model's chat template; a plain "role: content" transcript for tokenizers without one."""
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


class LocalGenerator:
    """An HF causal LM run in this process: chat template, left-padded batches, seeded sampling.

    The same prompts with the same seed give the same replies (each micro-batch samples under
    its own seed, derived from the call's seed, in a forked RNG that leaves global state alone).
    The model loads on first use, so a run served entirely from the cache never loads it.
    """

    def __init__(self, ref: str = DEFAULT_LOCAL, *, model: Any = None, tokenizer: Any = None,
                 batch_size: int = 4, top_p: float = 0.95, placement: Placement = CPU, log: Log = quiet) -> None:
        self.ref = ref
        # samples differ across dtypes and devices: they are cached apart (CPU fp32 keeps the plain id)
        tag = "-".join(([placement.kind] if placement.kind != "cpu" else []) +
                       ([placement.dtype] if placement.dtype != "fp32" else []))
        self.id = f"local:{ref}" + (f"@{tag}" if tag else "")
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
                from kinject.models import load_lm

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
        return [c.text for c in self.generate(prompts, seed=seed, max_tokens=max_tokens, temperature=temperature)]

    def close(self) -> None:
        pass


class OpenAIGenerator:
    """Any OpenAI-compatible `/chat/completions` endpoint, over httpx.

    Requests run `concurrency` at a time. Connection errors, timeouts, HTTP 429 and 5xx and
    unreadable 200 responses are retried with exponential backoff (honouring Retry-After);
    other 4xx fail the prompt; 401/403/404 are configuration errors and stop the run. After
    `give_up_after` consecutive failed prompts the endpoint is taken to be down and the rest
    are skipped (counted), so a dead server costs seconds, not hours.
    """

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None,
                 timeout: float = 120.0, max_retries: int = 4, backoff: float = 0.5, max_backoff: float = 30.0,
                 concurrency: int = 4, give_up_after: int = 12, top_p: float | None = None) -> None:
        import httpx

        if not re.match(r"https?://", base_url):
            raise KinjectError(f"generator base URL must start with http:// or https://, got '{base_url}'")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.give_up_after = give_up_after
        self.top_p = top_p
        self.concurrency = max(1, concurrency)
        self.batch_size = 4 * self.concurrency
        self.stats = GeneratorStats()
        key = api_key if api_key is not None else os.environ.get("KINJECT_API_KEY") or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(base_url=self.base_url, headers=headers,
                                    timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                                    limits=httpx.Limits(max_connections=self.concurrency))
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

    def _request(self, method: str, path: str, body: dict | None = None) -> Any | None:
        """JSON of a 200 response, retried on transient errors; None when every try failed."""
        import httpx

        for attempt in range(self.max_retries + 1):
            if self._consecutive >= self.give_up_after:
                self.stats.add(skipped=1)
                return None
            if attempt:
                self.stats.add(retries=1)
            self.stats.add(requests=1)
            wait = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
            try:
                r = self._client.request(method, path, json=body)
            except httpx.TimeoutException:
                kind = "timeout"
            except httpx.ConnectError:
                kind = "connect"
            except httpx.TransportError:
                kind = "transport"
            else:
                if r.status_code == 200:
                    try:
                        data = r.json()
                    except ValueError:
                        data = None
                    if isinstance(data, dict):
                        with self._lock:
                            self._consecutive = 0
                        return data
                    kind = "bad_response"
                elif r.status_code in (401, 403):
                    raise KinjectError(f"{self.base_url}{path}: HTTP {r.status_code} (not authorised); set "
                                       f"KINJECT_API_KEY or OPENAI_API_KEY to a valid key")
                elif r.status_code == 404:
                    raise KinjectError(f"{self.base_url}{path}: HTTP 404; check the base URL (usually ends in /v1) "
                                       f"and the model name '{self.model}'")
                elif r.status_code == 429 or r.status_code >= 500:
                    kind = f"http_{r.status_code}"
                    retry_after = r.headers.get("retry-after", "")
                    if retry_after.replace(".", "", 1).isdigit():
                        wait = min(self.max_backoff, float(retry_after))
                else:  # other 4xx: this request is wrong (e.g. too long); retrying will not help
                    self.stats.error(f"http_{r.status_code}")
                    break
            self.stats.error(kind)
            if attempt < self.max_retries:
                time.sleep(wait)
        self.stats.add(failures=1)
        with self._lock:
            self._consecutive += 1
        return None

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
        with self._model_lock:
            ready = self._resolve_model()
        if not ready:
            self.stats.add(failures=len(prompts))
            return [None] * len(prompts)
        futures = [self._pool.submit(self._one, p, seed, max_tokens, temperature) for p in prompts]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()


def open_generator(spec: str, *, concurrency: int = 4, timeout: float = 120.0, max_retries: int = 4,
                   batch_size: int = 4, device: str = "auto", dtype: str = "auto", log: Log = quiet) -> Generator:
    """A generator from its spec; see `SPEC_HELP` for the syntax. `concurrency`, `timeout` and
    `max_retries` apply to endpoints, `batch_size`, `device` and `dtype` to local models."""
    kind, _, rest = spec.partition(":")
    if kind == "local":
        return LocalGenerator(rest or DEFAULT_LOCAL, batch_size=batch_size, placement=resolve(device, dtype), log=log)
    if kind == "openai":
        if rest.startswith(("http://", "https://")):
            base, _, model = rest.partition("#")
        else:
            base = os.environ.get("KINJECT_API_BASE") or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
            model = rest
        return OpenAIGenerator(base, model or None, timeout=timeout, max_retries=max_retries, concurrency=concurrency)
    raise KinjectError(f"unknown generator '{spec}'; use {SPEC_HELP}")


# ---------------------------------------------------------------------------- reply parsing (pure)

_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)(?:```|$)", re.S)


def parse_json_reply(reply: str) -> Any | None:
    """The JSON value in a model reply, leniently: code fences, prose around it, raw newlines in
    strings are all accepted; `None` when there is no complete JSON object or array."""
    text = reply.strip()
    m = _FENCE.search(text)
    candidates = [m.group(1).strip(), text] if m else [text]
    decoder = json.JSONDecoder(strict=False)
    for cand in candidates:
        # only the outermost value: a truncated reply must not yield one of its inner objects
        for start in sorted(i for i in (cand.find("{"), cand.find("[")) if i >= 0):
            try:
                return decoder.raw_decode(cand, start)[0]
            except ValueError:
                continue
    return None


def _strings(value: Any) -> list[str] | None:
    """A list of strings out of a list whose entries are strings or one-field objects."""
    if not isinstance(value, list):
        return None
    out = []
    for v in value:
        if isinstance(v, dict):
            v = next((x for x in v.values() if isinstance(x, str)), None)
        if isinstance(v, str):
            out.append(v)
    return out


def extract_paraphrases(reply: str) -> list[str] | None:
    """The paraphrases of a `{"paraphrases": [...]}` reply (or a bare list, or an object with one
    list or string field); `None` when the reply holds no usable JSON."""
    data = parse_json_reply(reply)
    if isinstance(data, dict):
        for k, v in data.items():
            if k.lower().startswith("paraphrase"):
                return _strings(v) if isinstance(v, list) else [v] if isinstance(v, str) else None
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            return _strings(lists[0])
        strs = [v for v in data.values() if isinstance(v, str)]
        return strs or None
    return _strings(data)


# ---------------------------------------------------------------------------- paraphrase recipe (pure)

PARAPHRASE_RECIPE = "paraphrase-v2"
DEMO_TEXT = ("The Eiffel Tower in Paris was completed in 1889. It is 330 metres tall and was designed by the company "
             "of Gustave Eiffel.")
DEMO_PARAPHRASES = (
    "Gustave Eiffel's company designed the Eiffel Tower, a 330-metre structure in Paris that was finished in 1889.",
    "Finished in 1889, the Paris landmark known as the Eiffel Tower rises 330 metres and was the work of Gustave "
    "Eiffel's company.",
)


def _paraphrase_request(text: str, k: int) -> str:
    many = f"{k} paraphrases" if k > 1 else "one paraphrase"
    rules = ["keep every fact of the text, with every name, number and date exactly as written;",
             "change the wording and the sentence structure as much as you can;",
             "be about as long as the text."]
    if k > 1:
        rules.append("be as different as possible from the other paraphrases.")
    shape = ", ".join(f'"<paraphrase {i + 1}>"' for i in range(k))
    return (f"Write {many} of the text below. Each paraphrase must:\n" + "".join(f"- {r}\n" for r in rules)
            + f'Answer with JSON only, exactly in this form: {{"paraphrases": [{shape}]}}\n\nText:\n{text.strip()}')


def paraphrase_messages(text: str, k: int = 1) -> Messages:
    """The paper's instruction: keep every fact, change the wording, same length, paraphrases as
    different as possible from each other, answer as JSON `{"paraphrases": [...]}`. One worked
    example comes first: small local models copy or split the text without it."""
    demo = [DEMO_PARAPHRASES[i % len(DEMO_PARAPHRASES)] for i in range(min(k, 2))]
    return [
        {"role": "system", "content": "You rewrite texts faithfully. You answer with JSON only."},
        {"role": "user", "content": _paraphrase_request(DEMO_TEXT, len(demo))},
        {"role": "assistant", "content": json.dumps({"paraphrases": demo})},
        {"role": "user", "content": _paraphrase_request(text, k)},
    ]


_WORD = re.compile(r"[A-Za-z0-9][\w'’-]*")
_NUMBER = re.compile(r"\d+(?:[.,:/]\d+)*")
_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                 "fifteen sixteen seventeen eighteen nineteen twenty").split()
_NOT_NAMES = {"I", "A", "An", "The"}


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def numbers(text: str) -> set[str]:
    """Numbers as written (thousands separators dropped): '1,200' and '1200' are the same."""
    return {re.sub(r"(?<=\d),(?=\d{3}\b)", "", n) for n in _NUMBER.findall(text)}


def names(text: str) -> set[str]:
    """Capitalised words that are not just sentence starts, and acronyms (DNA, mRNA) anywhere."""
    found: set[str] = set()
    for m in _WORD.finditer(text):
        w = re.sub(r"['’]s$", "", m.group())
        if w in _NOT_NAMES or not any(c.isupper() for c in w) or w.isdigit():
            continue
        before = text[:m.start()].rstrip(" \"'(“‘[")
        sentence_start = not before or before[-1] in ".!?:;\n"
        if any(c.isupper() for c in w[1:]) or not sentence_start:
            found.add(w)
    # a sentence-initial word is a name when it also appears capitalised mid-sentence: covered above
    return found


def similarity(a: str, b: str) -> float:
    """Word-sequence similarity in [0, 1] (difflib ratio on lower-cased words)."""
    return difflib.SequenceMatcher(None, _WORD.findall(a.lower()), _WORD.findall(b.lower()), autojunk=False).ratio()


_STOP = set("the a an of in on at to for from by with and or but is are was were be been it its this that these "
            "those as into than then there their they he she his her which who whom what when where how not no "
            "can may also more most other some such only has have had do does did".split())


_WORD3 = re.compile(r"[a-z][a-z'-]{2,}")


def content_words(text: str) -> list[str]:
    """Lower-cased words of 3+ letters that are not function words."""
    return [w for w in _WORD3.findall(text.lower()) if w not in _STOP]


def coverage(words: Sequence[str], text: str) -> float:
    """Share of `words` found in `text`, compared on their first five letters (plurals, endings)."""
    stems = {w[:5] for w in _WORD3.findall(text.lower())}
    return sum(w[:5] in stems for w in words) / len(words) if words else 1.0


@dataclass(frozen=True)
class ParaphraseRules:
    min_length: float = 0.5
    max_length: float = 1.5
    near_copy: float = 0.85
    """Word-sequence similarity at or above which a paraphrase counts as a copy of the source,
    or as a duplicate of an earlier paraphrase of the same chunk."""
    min_coverage: float = 0.4
    """Share of the source's distinct content words a paraphrase must keep (first five letters
    compared): below it, facts were dropped ("Blood vessels include arteries, veins, and
    capillaries" → "Blood vessels carry blood"). Rewording with synonyms stays well above it."""


def check_paraphrase(source: str, candidate: str, rules: ParaphraseRules = ParaphraseRules()) -> str | None:
    """Why `candidate` is not a usable paraphrase of `source` (a reason name), or None if it is."""
    cand = " ".join(candidate.split())
    if not cand:
        return "empty"
    ratio = len(cand) / max(1, len(" ".join(source.split())))
    if ratio < rules.min_length:
        return "too_short"
    if ratio > rules.max_length:
        return "too_long"
    if _norm(cand) == _norm(source):
        return "copy"
    if similarity(source, cand) >= rules.near_copy:
        return "near_copy"
    have_numbers = numbers(cand)
    low = cand.lower()
    for n in numbers(source):
        if n not in have_numbers and not (n.isdigit() and int(n) < len(_NUMBER_WORDS)
                                          and re.search(rf"\b{_NUMBER_WORDS[int(n)]}\b", low)):
            return "lost_numbers"
    for name in names(source):
        if not re.search(rf"(?<![\w]){re.escape(name.lower())}", low):
            return "lost_names"
    if coverage(sorted(set(content_words(source))), cand) < rules.min_coverage:
        return "lost_facts"
    return None


# ---------------------------------------------------------------------------- cache


def default_cache() -> Path:
    from kinject.assets import kinject_home

    return kinject_home() / "cache" / "synth.sqlite"


class SynthCache:
    """Finished generator work by content key, in one SQLite file (WAL, safe across processes).

    Every `put` commits at once: whatever finished before a crash is there on the next run.
    `path=None` keeps it in memory (tests, or a caller that wants no cache).
    """

    def __init__(self, path: Path | None) -> None:
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KinjectError(f"cache {path}: cannot create the folder {path.parent} ({exc.strerror}); "
                               f"give another --cache") from exc
        try:
            self._db = sqlite3.connect(str(path) if path else ":memory:", timeout=60, check_same_thread=False)
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS items (key TEXT PRIMARY KEY, kind TEXT, value TEXT, "
                             "created REAL)")
        except sqlite3.DatabaseError as exc:
            raise KinjectError(f"cache {path}: {exc}; remove the file or give another --cache") from exc
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM items WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, kind: str, value: Any) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)",
                             (key, kind, json.dumps(value), time.time()))
            self._db.commit()

    def close(self) -> None:
        self._db.close()


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------- paraphrase runs


@dataclass(frozen=True)
class Paraphrase:
    text: str
    chunk_id: str
    round: int
    attempt: int
    generator: str
    doc_id: str = ""
    title: str = ""


@dataclass
class YieldReport:
    """What was asked of a generator, what came back usable, and why the rest was dropped."""

    kind: str
    generator: str
    chunks: int = 0
    empty_chunks: int = 0
    asked: int = 0
    valid: int = 0
    rejected: Counter = field(default_factory=Counter)
    """Each rejected candidate by reason (one request may yield several candidates)."""
    attempts: int = 0
    """Prompts sent this run (cached work sends none)."""
    retried: int = 0
    """Prompts sent again because the earlier reply was missing or unusable."""
    no_reply: int = 0
    """Prompts that got no reply at all (endpoint errors after the generator's own retries)."""
    unfinished: int = 0
    """Units (rounds / chunks) that never got a reply; not cached, so a rerun tries them again."""
    from_cache: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    generator_stats: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "generator": self.generator, "chunks": self.chunks,
                "empty_chunks": self.empty_chunks, "asked": self.asked, "valid": self.valid,
                "yield": round(self.valid / self.asked, 4) if self.asked else None,
                "rejected": dict(self.rejected.most_common()), "attempts": self.attempts, "retried": self.retried,
                "no_reply": self.no_reply, "unfinished": self.unfinished, "from_cache": self.from_cache,
                "seconds": round(self.seconds, 1), **self.extra, "generator_stats": self.generator_stats}


@dataclass
class _Job:
    """One unit of work (a paraphrase round, or a chunk's questions) across its attempts."""

    chunk: "Chunk"
    unit: int
    key: str
    attempt: int = 0
    got: list = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    replies: int = 0
    last_reply: str | None = None


def _run_jobs(jobs: list[_Job], generator: Generator, report: YieldReport, cache: SynthCache, kind: str,
              messages: Callable[[_Job], Messages], max_tokens: Callable[[_Job], int], seed: int,
              temperature: float, max_attempts: int, absorb: Callable[[_Job, str], None], done: Callable[[_Job], bool],
              finish: Callable[[_Job], Any], progress: Progress) -> None:
    """Send every job's prompt, validate replies (`absorb`), retry the unfinished ones with a new
    seed up to `max_attempts`, cache each job the moment it is finished.

    A batch shares one seed, so it holds jobs of one (unit, attempt). Retries go to the front of
    the queue: a chunk is finished soon after it is started, so a killed run loses little.
    """
    size = max(1, generator.batch_size)
    queue = list(jobs)
    while queue:
        unit, attempt = queue[0].unit, queue[0].attempt
        batch: list[_Job] = []
        rest: list[_Job] = []
        for j in queue:
            (batch if len(batch) < size and (j.unit, j.attempt) == (unit, attempt) else rest).append(j)
        replies = generator.complete([messages(j) for j in batch], seed=mix_seed(seed, unit, attempt),
                                     max_tokens=max(max_tokens(j) for j in batch), temperature=temperature)
        report.attempts += len(batch)
        report.retried += len(batch) if attempt else 0
        again: list[_Job] = []
        for j, reply in zip(batch, replies, strict=True):  # a generator answers every prompt
            if reply is None:
                report.no_reply += 1
            else:
                j.replies += 1
                j.last_reply = reply
                absorb(j, reply)
            if done(j) or j.attempt + 1 >= max_attempts:
                if j.replies:
                    cache.put(j.key, kind, finish(j))
                else:
                    report.unfinished += 1
                progress(1)
            else:
                j.attempt += 1
                again.append(j)
        queue = again + rest


def paraphrase_corpus(chunks: Sequence["Chunk"], generator: Generator, n: int = 10, cache_path: Path | None = None,
                      progress: Progress = lambda k: None, *, per_round: int = 1, seed: int = 0,
                      temperature: float = 0.7, max_attempts: int = 3, rules: ParaphraseRules = ParaphraseRules(),
                      max_tokens: int | None = None, total: Callable[[int], None] = lambda t: None,
                      ) -> tuple[list[Paraphrase], YieldReport]:
    """`n` validated paraphrases per chunk, asked `per_round` at a time, each round under its own
    seed. Returns the paraphrases (chunk order, then round) and the yield report.

    `total(t)` is told the number of rounds first, `progress(k)` is called as rounds finish.
    `max_tokens` caps a reply (default: enough for `per_round` paraphrases at the longest valid
    length).
    """
    if n < 1 or per_round < 1:
        raise KinjectError(f"--n and --per-round must be at least 1, got {n} and {per_round}")
    t0 = time.perf_counter()
    rounds = math.ceil(n / per_round)
    gen_id = generator.id  # a remote generator may ask its server which model it is: once
    report = YieldReport("paraphrase", gen_id, chunks=len(chunks))
    cache = SynthCache(cache_path)
    results: dict[tuple[str, int], dict] = {}
    todo: list[_Job] = []
    live = [c for c in chunks if c.text.strip()]
    report.empty_chunks = len(chunks) - len(live)
    total(len(live) * rounds)
    for c in live:
        for r in range(rounds):
            want = min(per_round, n - r * per_round)
            report.asked += want
            key = _key(PARAPHRASE_RECIPE, gen_id, _text_hash(c.text), r, want, seed, temperature,
                       max_attempts, rules.__dict__, max_tokens)
            hit = cache.get(key)
            if hit is not None:
                results[(c.id, r)] = hit
                report.from_cache += 1
                progress(1)
            else:
                todo.append(_Job(c, r, key))

    def want(j: _Job) -> int:
        return min(per_round, n - j.unit * per_round)

    def absorb(j: _Job, reply: str) -> None:
        cands = extract_paraphrases(reply)
        if cands is None:
            j.rejected["not_json"] += 1
            return
        if not cands:
            j.rejected["empty"] += 1
        for cand in cands[:want(j) - len(j.got)]:
            reason = check_paraphrase(j.chunk.text, cand, rules)
            if reason is None and any(similarity(g[0], cand) >= rules.near_copy for g in j.got):
                reason = "duplicate"
            if reason is None:
                j.got.append((" ".join(cand.split()), j.attempt))
            else:
                j.rejected[reason] += 1

    def finish(j: _Job) -> dict:
        value = {"paraphrases": j.got, "rejected": dict(j.rejected), "attempts": j.attempt + 1,
                 "last_reply": j.last_reply}
        results[(j.chunk.id, j.unit)] = value
        return value

    try:
        _run_jobs(todo, generator, report, cache, "paraphrase", lambda j: paraphrase_messages(j.chunk.text, want(j)),
                  lambda j: max_tokens or _reply_budget(j.chunk.text, want(j), rules), seed, temperature,
                  max_attempts, absorb, lambda j: len(j.got) >= want(j), finish, progress)
    finally:
        cache.close()
    out: list[Paraphrase] = []
    for c in live:
        kept: list[str] = []
        for r in range(rounds):
            value = results.get((c.id, r))
            if value is None:
                continue
            report.rejected.update(value["rejected"])
            for text, attempt in value["paraphrases"]:
                if any(similarity(k, text) >= rules.near_copy for k in kept):
                    report.rejected["duplicate"] += 1  # across rounds: same seed family, same output
                    continue
                kept.append(text)
                out.append(Paraphrase(text, c.id, r, attempt, gen_id, c.doc_id, c.title))
    report.valid = len(out)
    report.seconds = time.perf_counter() - t0
    report.generator_stats = generator.stats.as_dict()
    return out, report


def _reply_budget(text: str, k: int, rules: ParaphraseRules) -> int:
    """Tokens a reply may need: k paraphrases at the longest valid length (~3.5 characters a token,
    generous for English) plus JSON; anything longer would be rejected as too long anyway, and a
    small model that loops stops here instead of holding its batch."""
    return int(len(text) * rules.max_length / 3.5 * k) + 24 * k + 16


def write_paraphrases(paraphrases: Sequence[Paraphrase], path: Path) -> None:
    """A Parquet file of the paraphrases (text, chunk_id, round, attempt, doc_id, title,
    generator): what `kinject finetune --extra-texts` reads (its 'text' column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("text", pa.string()), ("chunk_id", pa.string()), ("round", pa.int32()),
                        ("attempt", pa.int32()), ("doc_id", pa.string()), ("title", pa.string()),
                        ("generator", pa.string())])
    rows = [{"text": p.text, "chunk_id": p.chunk_id, "round": p.round, "attempt": p.attempt, "doc_id": p.doc_id,
             "title": p.title, "generator": p.generator} for p in paraphrases]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


PARAPHRASE_FILES = ("paraphrases.parquet", "report.json", "meta.json")
"""What a paraphrase folder holds (`kinject paraphrase --out`)."""


def write_paraphrase_dir(out: Path, paraphrases: Sequence[Paraphrase], report: YieldReport,
                         meta: dict[str, Any]) -> None:
    """`out/paraphrases.parquet`, `out/report.json` (the yield) and `out/meta.json`, atomically."""
    check_replaceable(out, "paraphrase folder", PARAPHRASE_FILES)

    def write(tmp: Path) -> None:
        write_paraphrases(paraphrases, tmp / "paraphrases.parquet")
        (tmp / "report.json").write_text(json.dumps(report.as_dict(), indent=2))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    atomic_dir(out, write)


# ---------------------------------------------------------------------------- question recipe (pure)

QUESTION_RECIPE = "questions-v3"
_REFERS_TO_TEXT = re.compile(r"\b(the|this|that|above|given)\s+(text|passage|paragraph|article|excerpt|chunk)\b"
                             r"|\baccording to\b|\bmentioned\b", re.I)


@dataclass(frozen=True)
class Question:
    question: str
    options: tuple[str, ...]
    answer: int


DEMO_QUESTIONS = (
    {"question": "In which year was the Eiffel Tower in Paris completed?", "options": ["1875", "1889", "1901", "1912"],
     "answer": "1889"},
    {"question": "How tall is the Eiffel Tower?", "options": ["210 metres", "450 metres", "330 metres", "120 metres"],
     "answer": "330 metres"},
    {"question": "Whose company designed the iron tower completed in Paris in 1889?",
     "options": ["Gustave Eiffel", "Isambard Brunel", "Louis Pasteur", "Victor Hugo"], "answer": "Gustave Eiffel"},
    {"question": "In which city does the Eiffel Tower stand?", "options": ["Lyon", "Brussels", "Marseille", "Paris"],
     "answer": "Paris"},
)


def _question_request(text: str, title: str, k: int) -> str:
    shape = ('{"questions": [{"question": "...", "options": ["...", "...", "...", "..."], '
             '"answer": "<the correct option, copied exactly>"}]}')
    about = f"Title: {title.strip()}\n" if title.strip() else ""
    return (f"Write {k} multiple-choice questions about the facts stated in the text below.\n"
            "- Each question must make sense to a reader who has never seen this text: name who or what it is "
            "about, and never refer to \"the text\" or \"the passage\".\n"
            "- Each question asks for one specific fact from the text (a name, number, date, place, cause or "
            "property) that has exactly one correct answer.\n"
            "- Each question has exactly 4 options: the correct answer and 3 wrong answers of the same kind "
            "that sound plausible.\n"
            "- Do not put the answer in the question.\n"
            f"Answer with JSON only, in this form: {shape}\n\n{about}Text:\n{text.strip()}")


def question_messages(text: str, title: str = "", k: int = 4) -> Messages:
    """The paper's recipe, step 1: k specific 4-option questions answerable without the text.
    One worked example comes first, as for paraphrases (small models need the shape shown)."""
    demo = list(DEMO_QUESTIONS[:max(1, min(k, len(DEMO_QUESTIONS)))])
    return [
        {"role": "system", "content": "You write exam questions. You answer with JSON only."},
        {"role": "user", "content": _question_request(DEMO_TEXT, "Eiffel Tower", len(demo))},
        {"role": "assistant", "content": json.dumps({"questions": demo})},
        {"role": "user", "content": _question_request(text, title, k)},
    ]


def select_messages(questions: Sequence[Question], keep: int = 2) -> Messages:
    """Step 2: the generator keeps the `keep` most specific of its own questions."""
    listing = "\n".join(f"{i + 1}. {q.question} (answer: {q.options[q.answer]})" for i, q in enumerate(questions))
    return [
        {"role": "system", "content": "You review exam questions. You answer with JSON only."},
        {"role": "user", "content":
            f"Here are {len(questions)} questions. Pick the {keep} most specific ones: each asks for one precise "
            f"fact with a single unambiguous answer.\n\n{listing}\n\n"
            f'Answer with JSON only, in this form: {{"keep": [{", ".join(str(i + 1) for i in range(keep))}]}} '
            f"(the numbers of the questions you keep)."},
    ]


def _answer_index(answer: Any, options: Sequence[str]) -> int | None:
    """The correct option from an index (0- or 1-based is ambiguous: 0-based), a letter, or its text."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int):
        return answer if 0 <= answer < len(options) else None
    if not isinstance(answer, str):
        return None
    a = answer.strip()
    m = re.fullmatch(r"\(?([A-Da-d])[.):]?", a)
    if m:
        return "abcd".index(m.group(1).lower())
    m = re.match(r"([A-D])[.):]\s+(.*)", a)  # "B. Paris"
    if m and _norm(m.group(2)) == _norm(options["ABCD".index(m.group(1))]):
        return "ABCD".index(m.group(1))
    hits = [i for i, o in enumerate(options) if _norm(o) == _norm(a)]
    return hits[0] if len(hits) == 1 else None


def _strip_letter(option: str) -> str:
    """"A. Paris" / "(b) Paris" → "Paris" (models often letter their options)."""
    return re.sub(r"^\(?[A-Da-d][.)]\s+", "", option.strip())


def parse_questions(reply: str) -> tuple[list[Question], Counter]:
    """Valid questions of a step-1 reply and a count of the rejected ones by reason."""
    rejected: Counter = Counter()
    data = parse_json_reply(reply)
    rows = data.get("questions") if isinstance(data, dict) else data
    if isinstance(data, dict) and rows is None:
        rows = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(rows, list):
        rejected["not_json"] += 1
        return [], rejected
    out: list[Question] = []
    for row in rows:
        reason, q = _question(row)
        if q is None:
            rejected[reason] += 1
        else:
            out.append(q)
    return out, rejected


def _question(row: Any) -> tuple[str, Question | None]:
    if not isinstance(row, dict):
        return "bad_shape", None
    text = row.get("question")
    options = row.get("options", row.get("choices"))
    answer = row.get("answer", row.get("correct_answer", row.get("correct")))
    if not isinstance(text, str) or not text.strip() or not isinstance(options, list):
        return "bad_shape", None
    if len(options) != 4:
        return "not_4_options", None
    if not all(isinstance(o, (str, int, float)) and str(o).strip() for o in options):
        return "empty_option", None
    opts = tuple(_strip_letter(str(o)) for o in options)
    if len({_norm(o) for o in opts}) != 4:
        return "duplicate_options", None
    gold = _answer_index(answer, opts)
    if gold is None:
        return "answer_not_an_option", None
    text = " ".join(text.split())
    if _REFERS_TO_TEXT.search(text):
        return "refers_to_text", None
    if len(opts[gold]) >= 4 and re.search(rf"\b{re.escape(_norm(opts[gold]))}\b", _norm(text)):
        return "answer_in_question", None
    return "", Question(text, opts, gold)


def grounded(answer: str, text: str) -> bool:
    """Whether the text states the answer: each of its numbers appears in the text, and at least
    half of its content words do (compared on their first five letters, so plurals and endings
    match). A small model's invented answer ("12.5%" for a formula, a fact from elsewhere) fails;
    an answer with no content words (a bare letter or symbol) passes."""
    nums = numbers(answer)
    if nums and not nums <= numbers(text):
        return False
    words = content_words(answer)
    return not words or coverage(words, text) >= 0.5


def parse_selection(reply: str, n: int) -> list[int] | None:
    """0-based indices of a `{"keep": [...]}` reply (1-based numbers, as asked), or None."""
    data = parse_json_reply(reply)
    if isinstance(data, dict):
        data = data.get("keep", next((v for v in data.values() if isinstance(v, list)), None))
    if not isinstance(data, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in data):
        return None
    picked = []
    for v in data:
        if 1 <= v <= n and v - 1 not in picked:
            picked.append(v - 1)
    return picked or None


def balance_gold(questions: Sequence[tuple[Question, "Chunk"]], seed: int) -> list["Item"]:
    """Task items whose gold positions are balanced over A-D (each letter ±1), distractor order
    shuffled; deterministic for a seed. Ids are `<chunk id>/q<j>`; the source chunk is kept."""
    from kinject.tasks import Item

    rng = random.Random(seed)
    slots = [i % 4 for i in range(len(questions))]
    rng.shuffle(slots)
    items: list[Item] = []
    per_chunk: Counter = Counter()
    for (q, chunk), slot in zip(questions, slots):
        wrong = [o for i, o in enumerate(q.options) if i != q.answer]
        rng.shuffle(wrong)
        choices = wrong[:slot] + [q.options[q.answer]] + wrong[slot:]
        per_chunk[chunk.id] += 1
        items.append(Item(id=f"{chunk.id}/q{per_chunk[chunk.id]}", question=q.question, choices=tuple(choices),
                          gold=slot, source=chunk.text, source_chunks=(chunk.id,)))
    return items


# ---------------------------------------------------------------------------- question runs


def generate_questions(chunks: Sequence["Chunk"], generator: Generator, *, keep: int = 2, candidates: int = 4,
                       cache_path: Path | None = None, seed: int = 0, temperature: float = 0.7,
                       max_attempts: int = 3, max_tokens: int = 512, progress: Progress = lambda k: None,
                       total: Callable[[int], None] = lambda t: None) -> tuple[list["Item"], YieldReport]:
    """The paper's question recipe over a corpus: per chunk `candidates` questions (retried with a
    new seed while fewer than `keep` are valid), then the generator keeps the `keep` most specific
    (first valid ones when its pick is unusable, counted). Questions are de-duplicated over the
    corpus and their answer positions balanced over A-D."""
    if keep < 1 or candidates < keep:
        raise KinjectError(f"need 1 <= --keep <= --candidates, got keep {keep}, candidates {candidates}")
    t0 = time.perf_counter()
    gen_id = generator.id  # a remote generator may ask its server which model it is: once
    report = YieldReport("questions", gen_id, chunks=len(chunks))
    counts: Counter = Counter()
    cache = SynthCache(cache_path)
    live = [c for c in chunks if c.text.strip()]
    report.empty_chunks = len(chunks) - len(live)
    report.asked = keep * len(live)
    total(len(live))
    results: dict[str, dict] = {}
    todo: list[_Job] = []

    def qkey(c: "Chunk") -> str:
        return _key(QUESTION_RECIPE, gen_id, _text_hash(c.text), c.title, keep, candidates, seed, temperature,
                    max_attempts, max_tokens)

    for c in live:
        hit = cache.get(qkey(c))
        if hit is not None:
            results[c.id] = hit
            report.from_cache += 1
            progress(1)
        else:
            todo.append(_Job(c, 0, qkey(c)))

    def absorb(j: _Job, reply: str) -> None:
        qs, rejected = parse_questions(reply)
        j.rejected.update(rejected)
        for q in qs:
            if not grounded(q.options[q.answer], j.chunk.text):
                j.rejected["answer_not_in_text"] += 1
            elif any(_norm(q.question) == _norm(g.question) for g in j.got):
                j.rejected["duplicate"] += 1
            else:
                j.got.append(q)

    pending_select: list[_Job] = []

    def finish(j: _Job) -> dict:
        value = {"questions": [[q.question, list(q.options), q.answer] for q in j.got], "rejected": dict(j.rejected),
                 "generated": len(j.got) + sum(j.rejected.values()), "attempts": j.attempt + 1, "kept": None,
                 "last_reply": j.last_reply}
        if len(j.got) > keep:
            pending_select.append(j)
            value["kept"] = "pending"
        results[j.chunk.id] = value
        return value

    # step 1 jobs are cached with "kept": "pending" when a selection is due, then re-cached after step 2
    try:
        _run_jobs(todo, generator, report, cache, "questions", lambda j: question_messages(j.chunk.text, j.chunk.title,
                                                                                           candidates),
                  lambda j: max_tokens, seed, temperature, max_attempts, absorb, lambda j: len(j.got) >= keep,
                  finish, progress)
        for c in live:  # a run killed between the steps left some chunks pending: select them now
            value = results.get(c.id)
            if value is not None and value["kept"] == "pending" and all(p.chunk.id != c.id for p in pending_select):
                pending_select.append(_Job(c, 0, qkey(c),
                                           got=[Question(q, tuple(o), a) for q, o, a in value["questions"]]))
        for b in range(0, len(pending_select), max(1, generator.batch_size)):
            batch = pending_select[b:b + generator.batch_size]
            replies = generator.complete([select_messages(j.got, keep) for j in batch], seed=mix_seed(seed, "select"),
                                         max_tokens=64, temperature=0.0)
            report.attempts += len(batch)
            for j, reply in zip(batch, replies, strict=True):
                picked = parse_selection(reply, len(j.got)) if reply is not None else None
                if reply is None:
                    report.no_reply += 1
                    continue  # stays pending in the cache; a rerun asks again
                if picked is None or len(picked) < keep:
                    counts["selection_fallback"] += 1
                    picked = (picked or []) + [i for i in range(len(j.got)) if i not in (picked or [])]
                value = results[j.chunk.id]
                value["kept"] = picked[:keep]
                cache.put(j.key, "questions", value)
    finally:
        cache.close()
    chosen: list[tuple[Question, Chunk]] = []
    seen: set[str] = set()
    for c in live:
        value = results.get(c.id)
        if value is None:
            continue
        report.rejected.update(value["rejected"])
        counts["generated"] += value["generated"]
        qs = [Question(q, tuple(o), a) for q, o, a in value["questions"]]
        counts["valid_candidates"] += len(qs)
        kept = value["kept"]
        if kept == "pending":
            counts["selection_unfinished"] += 1
            continue
        picks = [qs[i] for i in kept] if isinstance(kept, list) else qs[:keep]
        if len(qs) < keep:
            counts["chunks_short_of_questions"] += 1
        for q in picks:
            k = _norm(q.question)
            if k in seen:
                report.rejected["duplicate"] += 1
                continue
            seen.add(k)
            chosen.append((q, c))
    items = balance_gold(chosen, seed)
    report.valid = len(items)
    report.unfinished += counts["selection_unfinished"]  # step 2 got no reply: a rerun asks again
    report.seconds = time.perf_counter() - t0
    report.extra = {**dict(counts), "gold_balance": dict(sorted(Counter("ABCD"[it.gold] for it in items).items()))}
    report.generator_stats = generator.stats.as_dict()
    return items, report


def write_task(out: Path, items: Sequence["Item"], report: dict[str, Any], meta: dict[str, Any]) -> Path:
    """The task JSONL `kinject eval --task` reads (question, choices, gold, id, source,
    source_chunks) and `<name>.report.json` (yield + provenance) next to it; each file is
    written whole and renamed into place, so a killed run never leaves a half task."""
    if out.suffix != ".jsonl":
        raise KinjectError(f"--out {out}: a task file must end in .jsonl")
    lines = [json.dumps({"id": it.id, "question": it.question, "choices": list(it.choices), "gold": it.gold,
                         "source": it.source, "source_chunks": list(it.source_chunks),
                         **({"subject": it.subject} if it.subject else {})}, ensure_ascii=False)
             for it in items]
    report_path = out.with_suffix(".report.json")
    for path, text in ((out, "".join(line + "\n" for line in lines)),
                       (report_path, json.dumps({**report, "meta": meta}, indent=2))):
        atomic_write_text(path, text)
    return report_path
