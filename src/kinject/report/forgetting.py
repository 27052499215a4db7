"""Forgetting: what each fine-tuned model lost on the control tasks, and what it gained on its target.

Every fine-tuned model of a run with `control:` tasks is scored on them closed-book, as is the
base model; `losses` pairs each with the base model on the same questions (difference, paired
bootstrap CI, McNemar), `forgetting_table` is the report's table, `tradeoff` the points of its figure
(`plots.plot_tradeoff`: knowledge gained on the target task against ability lost on the
controls, one point per method) and `forgetting_note` the clause the recommendation adds about a chosen fine-tune.
"""

from __future__ import annotations

from dataclasses import dataclass

from kinject.core.stats import Comparison, compare
from kinject.eval.methods import family, family_label, headline_label, headlines
from kinject.eval.results import Condition
from kinject.report.render import Block, Cell, Heading, Para, Table, fmt_delta, fmt_p
from kinject.report.rundata import Run, groups_of


@dataclass(frozen=True)
class Loss:
    """One fine-tuned model on one control task, against the base model on the same questions."""

    cond: Condition
    base: Condition
    cmp: Comparison

    @property
    def label(self) -> str:
        """The fine-tuning method's family, as the report names it."""
        return family_label(family(self.cond.method)[0])


def losses(run: Run) -> list[Loss]:
    """Every fine-tuned model's control conditions paired with the base model's (same model,
    control task and shots); bootstrapped once per run (the table, plot and recommendation share them)."""
    if "losses" not in run.derived:
        run.derived["losses"] = _losses(run)
    return run.derived["losses"]  # type: ignore[return-value]


def _losses(run: Run) -> list[Loss]:
    base = {(c.model, c.task, c.shots): c for c in run.controls if c.training_id is None}
    out = []
    for c in run.controls:
        b = base.get((c.model, c.task, c.shots))
        if c.training_id is None or b is None:
            continue
        cmp = compare(run.correct.get(b.id, {}), run.correct.get(c.id, {}), "Base", c.method)
        if cmp is not None:
            out.append(Loss(c, b, cmp))
    return out


def of_training(run: Run, training_id: str | None) -> list[Loss]:
    """The control-task comparisons of one fine-tuned model."""
    return [x for x in losses(run) if training_id is not None and x.cond.training_id == training_id]


def forgetting_note(run: Run, c: Condition) -> str:
    """', and it lowered sciq by −0.050 [CI] (McNemar p=…)' for a fine-tuned condition whose model
    scored significantly below base on a control; ', with no significant loss on sciq, …' otherwise."""
    mine = of_training(run, c.training_id)
    if not mine:
        return ""
    worse = [x for x in mine if x.cmp.verdict == "worse"]
    if worse:
        return "; it forgot: " + ", ".join(
            f"{x.cond.task} {fmt_delta(x.cmp.diff)} [95% CI {fmt_delta(x.cmp.ci_low)}, {fmt_delta(x.cmp.ci_high)}], "
            f"McNemar {fmt_p(x.cmp.p)}" for x in worse)
    return f"; no significant loss on the control tasks ({', '.join(sorted({x.cond.task for x in mine}))})"


def significant_loss(run: Run, c: Condition) -> bool:
    """Whether the condition's fine-tuned model did significantly worse on a control task."""
    return any(x.cmp.verdict == "worse" for x in of_training(run, c.training_id))


def forgetting_table(run: Run) -> list[Block]:
    """Per model: each fine-tuned variant's Δ on every control task against the base model."""
    found = losses(run)
    if not run.controls:
        return [Para("No control tasks in this run: add `control: [sciq, mmlu:paper@cloze]` to the config to "
                     "measure what fine-tuning costs elsewhere.", "note")]
    if not found:
        return [Para("No fine-tuned model finished on the control tasks.", "note")]
    blocks: list[Block] = [Para("Each fine-tuned model scored closed-book on the control tasks, against the base "
                                "model on the same questions: Δ [95% paired bootstrap CI], McNemar p. Negative "
                                "and significant = forgetting.", "small")]
    seeds = len({x.cond.seed for x in found}) > 1
    for model in sorted({x.cond.model for x in found}):
        mine = [x for x in found if x.cond.model == model]
        controls = sorted({(x.cond.task, x.cond.shots) for x in mine})
        headers = ["fine-tuned for", "method"] + (["seed"] if seeds else [])
        for task, shots in controls:
            headers += [f"{task}{f' {shots}-shot' if shots else ''} Δ", "p"]
        base_row: list[Cell | str] = ["—", "Base (accuracy)"] + ([""] if seeds else [])
        for task, shots in controls:
            b = next(x.base for x in mine if (x.cond.task, x.cond.shots) == (task, shots))
            lo_hi = run.ci.get(b.id)
            base_row += [Cell(f"{b.score:.3f}", f"[{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else "", below=False),
                         Cell(f"n={b.n}")]
        rows = [base_row]
        keys = sorted({(x.cond.target or "", x.label, x.cond.seed) for x in mine})
        for target, label, seed in keys:
            row: list[Cell | str] = [target, label] + ([Cell(str(seed))] if seeds else [])
            for task, shots in controls:
                x = next((x for x in mine if (x.cond.target or "", x.label, x.cond.seed, x.cond.task, x.cond.shots)
                          == (target, label, seed, task, shots)), None)
                if x is None:
                    row += [Cell("—"), Cell("")]
                    continue
                tone = {"better": "good", "worse": "bad"}.get(x.cmp.verdict, "")
                row += [Cell(fmt_delta(x.cmp.diff), f"[{fmt_delta(x.cmp.ci_low)}, {fmt_delta(x.cmp.ci_high)}]",
                             tone=tone, below=False), Cell(fmt_p(x.cmp.p).removeprefix("p="), tone=tone)]
            rows.append(row)
        if len({x.cond.model for x in found}) > 1:
            blocks.append(Heading(3, model))
        blocks.append(Table(headers, rows))
    return blocks


@dataclass(frozen=True)
class Point:
    """One method on one target task: its gain there and its model's mean Δ on the controls."""

    task: str
    model: str
    label: str
    gain: float
    lost: float


def tradeoff(run: Run) -> list[Point]:
    """Per target task × model row with controls: RAG (no weights changed: no loss) and every
    fine-tuned headline column (gain of its best condition over base; its model's mean control Δ)."""
    points = []
    for g in groups_of(run):
        heads = headlines(g.conds)
        base = heads.get("base")
        if base is None:
            continue
        for key, c in heads.items():
            if key == "base":
                continue
            cmp = compare(run.correct.get(base.id, {}), run.correct.get(c.id, {}))
            mine = of_training(run, c.training_id)
            if cmp is None or (c.training_id is not None and not mine):
                continue
            lost = sum(x.cmp.diff for x in mine) / len(mine) if mine else 0.0
            points.append(Point(g.task, g.model, headline_label(key, c), cmp.diff, lost))
    return points
