"""A run as the read side sees it: `load_run` reads a run directory's results.sqlite once into a
`Run` (conditions, per-question correctness and subjects, training runs and loss curves, stages,
the store's checksum, and every finished accuracy's bootstrap CI), and `groups_of` splits it
into the rows of the paper's tables (`Group`: task × model × shots × fine-tuning seed). The
report's tables, plots and recommendation all read this, never the store.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from kinject.core.errors import KinjectError
from kinject.core.stats import bootstrap_ci
from kinject.eval.methods import family
from kinject.eval.results import DB_NAME, Condition, LossPoint, Stage, Store, Training
from kinject.runtime.hyper import MIN_STEPS


@dataclass
class Run:
    """Everything the report reads from a run's results.sqlite."""

    dir: Path
    conditions: list[Condition]
    correct: dict[str, dict[str, int]]          # condition id → item id → 1/0 under the task's metric
    subjects: dict[str, dict[str, str]]         # condition id → item id → subject (items that have one)
    cited: dict[str, dict[str, tuple[str, ...]]]  # condition id → item id → where its retrieved chunks come from
    free: dict[str, dict[str, dict]]            # condition id → item id → free-form answer and grades (@free tasks)
    trainings: list[Training]
    curves: dict[str, list[LossPoint]]
    stages: list[Stage]
    db_sha256: str
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)  # condition id → bootstrap CI
    derived: dict[str, object] = field(default_factory=dict, repr=False)
    """Results the read side derives once per run and several parts reuse (e.g. forgetting's paired tests)."""

    @property
    def done(self) -> list[Condition]:
        """Finished conditions of the target tasks (the paper's tables)."""
        return [c for c in self.conditions if c.status == "done" and c.score is not None and c.role == "target"]

    def under_trained(self) -> dict[str, int]:
        """Training id → optimizer steps, for fine-tunes with fewer than `MIN_STEPS`."""
        return {t.id: t.steps for t in self.trainings if t.steps is not None and t.steps < MIN_STEPS}

    @property
    def controls(self) -> list[Condition]:
        """Finished conditions of the control tasks (forgetting)."""
        return [c for c in self.conditions if c.status == "done" and c.score is not None and c.role == "control"]

    @property
    def failed(self) -> list[Condition]:
        """Conditions that did not finish or have no score."""
        return [c for c in self.conditions if c.status != "done" or c.score is None]


def load_run(run_dir: Path) -> Run:
    """Read a run directory's store (a one-line error when it has none) and bootstrap every accuracy."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KinjectError(f"{run_dir} is not a folder; give a run directory written by `kinject run`")
    with Store(run_dir) as store:
        conditions = store.conditions()
        rows = {c.id: store.rows(c.id) for c in conditions}
        trainings = store.trainings()
        curves = {t.id: store.curve(t.id) for t in trainings}
        stages = store.stages()
    sha = hashlib.sha256((run_dir / DB_NAME).read_bytes()).hexdigest()
    correct = {cid: {r.item_id: int(r.correct) for r in rs} for cid, rs in rows.items()}
    subjects = {cid: {r.item_id: r.subject for r in rs if r.subject} for cid, rs in rows.items()}
    cited = {cid: {r.item_id: r.cited for r in rs if r.cited} for cid, rs in rows.items()}
    free = {cid: {r.item_id: r.free for r in rs if r.free} for cid, rs in rows.items()}
    run = Run(run_dir, conditions, correct, subjects, cited, free, trainings, curves, stages, sha)
    for c in run.done + run.controls:
        if correct[c.id]:
            run.ci[c.id] = bootstrap_ci(list(correct[c.id].values()))
    return run



@dataclass
class Group:
    """One row of the paper's table: a task × model (× shots, × seed) and its conditions."""

    task: str
    model: str
    shots: int
    seed: int
    conds: list[Condition]

    @property
    def name(self) -> str:
        """The row's title: task · model · shots."""
        return f"{self.task} · {self.model} · {self.shots}-shot"

    @property
    def metric(self) -> str:
        """The metric the row's conditions report."""
        return self.conds[0].metric


def groups_of(run: Run) -> list[Group]:
    """Rows by task × model × shots × seed. The seed is the fine-tuning seed: base and RAG
    conditions (evaluated once, no training) join every seed's row, so each fine-tuned model is
    compared with the same base model."""
    trained_seeds: dict[tuple, set[int]] = {}
    for c in run.done:
        if family(c.method)[0] != "base":
            trained_seeds.setdefault((c.task, c.model, c.shots), set()).add(c.seed)
    out: dict[tuple, Group] = {}
    for c in run.done:
        row = (c.task, c.model, c.shots)
        seeds = sorted(trained_seeds.get(row, {c.seed})) if family(c.method)[0] == "base" else [c.seed]
        for seed in seeds:
            out.setdefault((*row, seed), Group(c.task, c.model, c.shots, seed, [])).conds.append(c)
    return [out[k] for k in sorted(out)]

