"""The resumable job runner behind every synthetic-data recipe, and its cache. This module owns
`run_jobs` (send each job's prompt to a `Generator` in batches that share a seed, validate the
replies through the recipe's callbacks, retry unfinished jobs with a new seed a bounded number
of times), `SynthCache` (finished work in one SQLite file, committed the moment it exists, so a
killed run resumes where it stopped and a rerun costs nothing), the content keys entries are
stored under (chunk text, generator, round, recipe and its settings), and the `YieldReport` that
counts what was asked, what came back usable and why the rest was dropped.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kinject.core.errors import KinjectError
from kinject.lm.backends import mix_seed
from kinject.lm.generators import Generator, Messages

if TYPE_CHECKING:
    from kinject.knowledge.corpus import Chunk

Progress = Callable[[int], None]
"""Told how many units (rounds, chunks) just finished."""


def default_cache() -> Path:
    """Where generator work is cached unless told otherwise."""
    from kinject.runtime.assets import kinject_home

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
        """The value cached under `key`; None when there is none."""
        with self._lock:
            row = self._db.execute("SELECT value FROM items WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, kind: str, value: Any) -> None:
        """Cache a value under `key`, replacing any earlier one."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)",
                             (key, kind, json.dumps(value), time.time()))
            self._db.commit()

    def close(self) -> None:
        """Release the SQLite connection."""
        self._db.close()


def job_key(*parts: Any) -> str:
    """The cache key of a unit of work: a hash of everything that decides its result."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def text_hash(text: str) -> str:
    """A chunk's text as a key part (keys name content, not ids)."""
    return hashlib.sha256(text.encode()).hexdigest()


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
        """The report as JSON-ready fields, with the yield worked out."""
        return {"kind": self.kind, "generator": self.generator, "chunks": self.chunks,
                "empty_chunks": self.empty_chunks, "asked": self.asked, "valid": self.valid,
                "yield": round(self.valid / self.asked, 4) if self.asked else None,
                "rejected": dict(self.rejected.most_common()), "attempts": self.attempts, "retried": self.retried,
                "no_reply": self.no_reply, "unfinished": self.unfinished, "from_cache": self.from_cache,
                "seconds": round(self.seconds, 1), **self.extra, "generator_stats": self.generator_stats}


@dataclass
class Job:
    """One unit of work (a paraphrase round, or a chunk's questions) across its attempts."""

    chunk: "Chunk"
    unit: int
    key: str
    attempt: int = 0
    got: list = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    replies: int = 0
    last_reply: str | None = None


def run_jobs(jobs: list[Job], generator: Generator, report: YieldReport, cache: SynthCache, kind: str,
             messages: Callable[[Job], Messages], max_tokens: Callable[[Job], int], seed: int,
             temperature: float, max_attempts: int, absorb: Callable[[Job, str], None], done: Callable[[Job], bool],
             finish: Callable[[Job], Any], progress: Progress) -> None:
    """Send every job's prompt, validate replies (`absorb`), retry the unfinished ones with a new
    seed up to `max_attempts`, cache each job the moment it is finished.

    A batch shares one seed, so it holds jobs of one (unit, attempt). Retries go to the front of
    the queue: a chunk is finished soon after it is started, so a killed run loses little.
    """
    size = max(1, generator.batch_size)
    queue = list(jobs)
    while queue:
        unit, attempt = queue[0].unit, queue[0].attempt
        batch: list[Job] = []
        rest: list[Job] = []
        for j in queue:
            (batch if len(batch) < size and (j.unit, j.attempt) == (unit, attempt) else rest).append(j)
        replies = generator.complete([messages(j) for j in batch], seed=mix_seed(seed, unit, attempt),
                                     max_tokens=max(max_tokens(j) for j in batch), temperature=temperature)
        report.attempts += len(batch)
        report.retried += len(batch) if attempt else 0
        again: list[Job] = []
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
