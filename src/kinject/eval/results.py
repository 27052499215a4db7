"""The results store: one SQLite file per run directory, written by `kinject run`, read by the report.

Why SQLite: a run is many conditions × hundreds of questions; one file that any tool (pandas,
the `sqlite3` shell, a notebook) can query beats a tree of JSON files, and a transaction per
condition means a killed run never leaves a half-imported condition behind.

Tables
------
conditions  one row per evaluated condition (model × task × method × K × shots × paraphrases × seed), of
            a target task or of a control task (forgetting)
records     one row per question of a condition (per-question correctness, log-likelihoods, retrieval)
trainings   one row per fine-tuning run (hyper-parameters, time, memory, final/validation loss)
train_log   the loss curve of each training run (step, epoch, loss; kind = train | val)
stages      one row per pipeline stage the run used (kind, cache key, cached or computed, time, memory, error)
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from kinject.core.errors import KinjectError

DB_NAME = "results.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS conditions (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    task TEXT NOT NULL,
    method TEXT NOT NULL,          -- base | rag | ft | ft+rag | ft-par:N | ft-par:N+rag | lora | lora+rag
    k INTEGER NOT NULL,            -- retrieved chunks in the prompt (0 = none)
    shots INTEGER NOT NULL,
    paraphrases INTEGER NOT NULL,  -- paraphrases per chunk the model was fine-tuned on (0 = none)
    seed INTEGER NOT NULL,
    metric TEXT NOT NULL,          -- the headline metric for this task: acc or acc_norm
    status TEXT NOT NULL,          -- done | failed
    error TEXT,
    n INTEGER,
    acc REAL, acc_stderr REAL, acc_norm REAL, acc_norm_stderr REAL,
    recall REAL,                   -- recall@k of the questions' source chunks (NULL when unknown or k = 0)
    mrr REAL,
    eval_s REAL,                   -- wall seconds of this condition's scoring
    train_s REAL,                  -- wall seconds of the fine-tuning (and paraphrasing) it needed, 0 for none
    peak_rss_mb REAL,              -- peak resident memory of the stages it needed
    training_id TEXT,              -- trainings.id of the fine-tuned model, NULL for the base model
    role TEXT NOT NULL DEFAULT 'target',  -- target | control (a task scored closed-book for forgetting)
    target TEXT                    -- control rows of a fine-tuned model: the task it was fine-tuned for
);
CREATE TABLE IF NOT EXISTS records (
    condition_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    subject TEXT,
    gold INTEGER NOT NULL,
    pred INTEGER NOT NULL,
    pred_norm INTEGER NOT NULL,
    correct INTEGER NOT NULL,      -- 1 if the headline metric's prediction is the gold answer
    logliks TEXT NOT NULL,         -- JSON list, one per choice
    retrieved TEXT NOT NULL,       -- JSON list of chunk ids put into the prompt, best first
    cited TEXT,                    -- JSON list: where each of those chunks comes from (file, pages, section)
    free TEXT,                     -- JSON object: a free-form answer and its grades (@free tasks), else NULL
    PRIMARY KEY (condition_id, item_id)
);
CREATE TABLE IF NOT EXISTS trainings (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    kb TEXT NOT NULL,
    method TEXT NOT NULL,          -- the trained variant: ft | lora | ft-par:N | sft | raft | ... (+replay)
    paraphrases INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    lr REAL, epochs INTEGER, steps INTEGER, blocks INTEGER,
    final_loss REAL, val_loss REAL,
    wall_s REAL, peak_rss_mb REAL
);
CREATE TABLE IF NOT EXISTS train_log (
    training_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    epoch REAL NOT NULL,
    loss REAL NOT NULL,
    kind TEXT NOT NULL             -- train | val
);
CREATE TABLE IF NOT EXISTS stages (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,            -- corpus | index | paraphrase | finetune | eval
    label TEXT NOT NULL,
    status TEXT NOT NULL,          -- computed | cached | failed
    wall_s REAL,
    peak_rss_mb REAL,
    error TEXT,
    device TEXT,                   -- where it ran: device · dtype · backend or launcher
    peak_gpu_mb REAL               -- peak GPU memory allocated by torch (CUDA only)
);
"""


@dataclass(frozen=True)
class Condition:
    """One evaluated condition (model × task × method × K × shots × seed): its status and scores."""
    id: str
    model: str
    task: str
    method: str
    k: int
    shots: int
    paraphrases: int
    seed: int
    metric: str
    status: str
    error: str | None = None
    n: int | None = None
    acc: float | None = None
    acc_stderr: float | None = None
    acc_norm: float | None = None
    acc_norm_stderr: float | None = None
    recall: float | None = None
    mrr: float | None = None
    eval_s: float | None = None
    train_s: float | None = None
    peak_rss_mb: float | None = None
    training_id: str | None = None
    role: str = "target"
    """target, or control: a task scored closed-book to measure forgetting."""
    target: str | None = None
    """A control condition of a fine-tuned model: the task it was fine-tuned for."""

    @property
    def score(self) -> float | None:
        """The headline accuracy (acc or acc_norm, per the task)."""
        return self.acc_norm if self.metric == "acc_norm" else self.acc


@dataclass(frozen=True)
class Row:
    """One question's outcome in one condition."""

    item_id: str
    subject: str | None
    gold: int
    pred: int
    pred_norm: int
    correct: int
    logliks: tuple[float, ...]
    retrieved: tuple[str, ...]
    cited: tuple[str, ...] = ()
    """Where each retrieved chunk comes from: "manual.pdf p. 12 · Setup"."""
    free: dict | None = None
    """A free-form question's answer and grades (`kinject.eval.freeform`); None for multiple choice."""


@dataclass(frozen=True)
class Training:
    """One fine-tuning run: what it trained on, with which settings, and what it cost."""
    id: str
    model: str
    kb: str
    method: str
    paraphrases: int
    seed: int
    lr: float | None = None
    epochs: int | None = None
    steps: int | None = None
    blocks: int | None = None
    final_loss: float | None = None
    val_loss: float | None = None
    wall_s: float | None = None
    peak_rss_mb: float | None = None


@dataclass(frozen=True)
class LossPoint:
    """One point of a training's loss curve (train or validation)."""
    step: int
    epoch: float
    loss: float
    kind: str


@dataclass(frozen=True)
class Stage:
    """One stage of a run: its status, time, memory and any error."""
    key: str
    kind: str
    label: str
    status: str
    wall_s: float | None = None
    peak_rss_mb: float | None = None
    error: str | None = None
    device: str | None = None
    peak_gpu_mb: float | None = None


def samples_file(condition: str) -> str:
    """File name of a condition's per-question records inside an `kinject eval` output folder."""
    return "samples_" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in condition) + ".jsonl"


def _cols(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


class Store:
    """Read/write access to a run directory's results.sqlite (a context manager)."""

    def __init__(self, run_dir: Path, create: bool = False) -> None:
        path = Path(run_dir) / DB_NAME
        if not create and not path.is_file():
            raise KinjectError(f"{run_dir}: no {DB_NAME} here; is this a folder written by `kinject run`?")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path)
            self.db.executescript(SCHEMA)
            # columns added since: runs written before devices, control tasks, citations
            for table, col, kind in (("stages", "device", "TEXT"), ("stages", "peak_gpu_mb", "REAL"),
                                     ("conditions", "role", "TEXT NOT NULL DEFAULT 'target'"),
                                     ("conditions", "target", "TEXT"), ("records", "cited", "TEXT"),
                                     ("records", "free", "TEXT")):
                if col not in {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {col} {kind}")
        except sqlite3.DatabaseError as exc:
            raise KinjectError(f"{path}: not a readable results database ({exc}); delete it and rerun") from None
        self.path = path

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.db.close()

    # -- writing (each call is one transaction) --------------------------------------------

    def put_condition(self, cond: Condition, rows: Sequence[Row] = ()) -> None:
        """Insert or replace a condition and its per-question rows atomically."""
        with self.db:
            self.db.execute("DELETE FROM records WHERE condition_id = ?", (cond.id,))
            cols = _cols(Condition)
            self.db.execute(f"INSERT OR REPLACE INTO conditions ({','.join(cols)}) VALUES "
                            f"({','.join('?' * len(cols))})", [getattr(cond, c) for c in cols])
            self.db.executemany(
                "INSERT INTO records (condition_id, item_id, subject, gold, pred, pred_norm, correct, logliks, "
                "retrieved, cited, free) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(cond.id, r.item_id, r.subject, r.gold, r.pred, r.pred_norm, r.correct,
                  json.dumps(list(r.logliks)), json.dumps(list(r.retrieved)), json.dumps(list(r.cited)),
                  None if r.free is None else json.dumps(r.free)) for r in rows])

    def set_free(self, condition_id: str, free: dict[str, dict]) -> None:
        """Replace the free-form grades of a condition's records (item id → grades), e.g. with a
        judge's verdicts added."""
        with self.db:
            self.db.executemany("UPDATE records SET free = ? WHERE condition_id = ? AND item_id = ?",
                                [(json.dumps(f), condition_id, item) for item, f in free.items()])

    def put_training(self, tr: Training, curve: Iterable[LossPoint] = ()) -> None:
        """Record a training and replace its loss curve."""
        with self.db:
            self.db.execute("DELETE FROM train_log WHERE training_id = ?", (tr.id,))
            cols = _cols(Training)
            self.db.execute(f"INSERT OR REPLACE INTO trainings ({','.join(cols)}) VALUES "
                            f"({','.join('?' * len(cols))})", [getattr(tr, c) for c in cols])
            self.db.executemany("INSERT INTO train_log VALUES (?,?,?,?,?)",
                                [(tr.id, p.step, p.epoch, p.loss, p.kind) for p in curve])

    def put_stage(self, stage: Stage) -> None:
        """Record a stage, replacing an earlier record of the same key."""
        with self.db:
            cols = _cols(Stage)
            self.db.execute(f"INSERT OR REPLACE INTO stages ({','.join(cols)}) VALUES "
                            f"({','.join('?' * len(cols))})", [getattr(stage, c) for c in cols])

    # -- reading ----------------------------------------------------------------------------

    def conditions(self) -> list[Condition]:
        """Every condition, ordered for the report."""
        cols = _cols(Condition)
        cur = self.db.execute(f"SELECT {','.join(cols)} FROM conditions "
                              "ORDER BY task, model, shots, paraphrases, method, k, seed")
        return [Condition(*row) for row in cur]

    def rows(self, condition_id: str) -> list[Row]:
        """A condition's scored questions, in item order."""
        cur = self.db.execute("SELECT item_id, subject, gold, pred, pred_norm, correct, logliks, retrieved, cited, "
                              "free FROM records WHERE condition_id = ? ORDER BY item_id", (condition_id,))
        return [Row(i, s, g, p, pn, c, tuple(json.loads(ll)), tuple(json.loads(rt)), tuple(json.loads(ct or "[]")),
                    json.loads(fr) if fr else None)
                for i, s, g, p, pn, c, ll, rt, ct, fr in cur]

    def trainings(self) -> list[Training]:
        """Every training, by id."""
        cols = _cols(Training)
        return [Training(*row) for row in self.db.execute(f"SELECT {','.join(cols)} FROM trainings ORDER BY id")]

    def curve(self, training_id: str) -> list[LossPoint]:
        """A training's loss curve, by kind then step."""
        cur = self.db.execute("SELECT step, epoch, loss, kind FROM train_log WHERE training_id = ? "
                              "ORDER BY kind, step", (training_id,))
        return [LossPoint(*row) for row in cur]

    def stages(self) -> list[Stage]:
        """Every stage, by kind and label."""
        cols = _cols(Stage)
        return [Stage(*row) for row in self.db.execute(f"SELECT {','.join(cols)} FROM stages ORDER BY kind, label")]


def as_dict(obj: object) -> dict:
    """A dataclass as a dict."""
    return asdict(obj)  # type: ignore[call-overload]
