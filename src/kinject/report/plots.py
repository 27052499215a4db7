"""The report's figures, drawn with matplotlib (Agg, imported only when a figure is drawn):
accuracy against K with CI bands, accuracy against the number of paraphrases, training and
validation loss per step, accuracy against cost (wall time, peak memory), and knowledge gained
on the target against ability lost on the control tasks (forgetting). Each drawer takes
a `Run` and a PNG path and returns None when it drew, or a one-line note saying why there is
nothing to draw; `PLOTS` lists them in report order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

from kinject.eval.methods import (
    HEADLINE_LABEL,
    HEADLINES,
    family,
    family_label,
    headlines,
    paraphrases_of,
)
from kinject.eval.results import Condition, Training
from kinject.report.forgetting import losses, tradeoff
from kinject.report.rundata import Run, groups_of


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 7.5, "axes.grid": True,
                         "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _grid(plt, n: int, width: float = 4.6, height: float = 3.3, ncols: int = 3):
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(plt, fig, path: Path) -> None:
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def _line_key(c: Condition) -> tuple[str, str, int, int]:
    return (c.model, family(c.method)[0], c.shots, c.seed)


def plot_acc_vs_k(run: Run, path: Path) -> str | None:
    """Accuracy against K per task, one line per model variant (its K=0 point is the closed-book
    condition), with the bootstrap CI as a band. Returns a note instead when there is no RAG."""
    tasks = sorted({c.task for c in run.done if family(c.method)[1] and c.k > 0})
    if not tasks:
        return "Accuracy vs K: no RAG conditions in this run."
    plt = _plt()
    fig, axes = _grid(plt, len(tasks))
    for ax, task in zip(axes, tasks):
        lines: dict[tuple, list[Condition]] = {}
        for c in run.done:
            if c.task == task:
                lines.setdefault(_line_key(c), []).append(c)
        shots = len({key[2] for key in lines}) > 1
        seeds = len({key[3] for key in lines}) > 1
        models = len({key[0] for key in lines}) > 1
        for key in sorted(lines):
            pts = sorted(lines[key], key=lambda c: c.k)
            xs = [c.k for c in pts]
            label = (f"{family_label(key[1])} model" + (f" · {key[0]}" if models else "") + (f" · {key[2]}-shot" if shots else "")
                     + (f" · seed {key[3]}" if seeds else ""))
            (line,) = ax.plot(xs, [c.score for c in pts], marker="o", ms=4, lw=1.5, label=label)
            if len(pts) == 1 and pts[0].id in run.ci:
                lo, hi = run.ci[pts[0].id]
                ax.errorbar(xs, [pts[0].score], yerr=[[pts[0].score - lo], [hi - pts[0].score]],
                            color=line.get_color(), capsize=3, lw=1)
            elif all(c.id in run.ci for c in pts):
                ax.fill_between(xs, [run.ci[c.id][0] for c in pts], [run.ci[c.id][1] for c in pts],
                                color=line.get_color(), alpha=0.15, lw=0)
        ax.set_title(f"{task} ({run_metric(run, task)})")
        ax.set_xlabel("K (retrieved chunks in the prompt)")
        ax.set_ylabel("accuracy")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="best")
    _save(plt, fig, path)
    return None


def run_metric(run: Run, task: str) -> str:
    """The metric a task's conditions report (acc when it has none)."""
    return next((c.metric for c in run.conditions if c.task == task), "acc")


def plot_acc_vs_paraphrases(run: Run, path: Path) -> str | None:
    """Accuracy against the number of paraphrases per chunk (N=0 is FT-reg), per task; the base
    model is the dashed reference line."""
    tasks = sorted({c.task for c in run.done if paraphrases_of(family(c.method)[0]) is not None})
    if not tasks:
        return ("Accuracy vs number of paraphrases: no paraphrase conditions in this run (add `ft-par:N` methods, "
                "which need a `generator`, to draw it).")
    plt = _plt()
    fig, axes = _grid(plt, len(tasks))
    for ax, task in zip(axes, tasks):
        lines: dict[tuple, list[tuple[int, Condition]]] = {}
        for c in run.done:
            fam, rag = family(c.method)
            n = 0 if fam == "ft" else paraphrases_of(fam)
            if c.task == task and n is not None:
                lines.setdefault((c.model, c.shots, c.k if rag else 0, c.seed), []).append((n, c))
        models = len({key[0] for key in lines}) > 1
        for key in sorted(lines):
            pts = sorted(lines[key], key=lambda nc: nc[0])
            if all(n == 0 for n, _ in pts):
                continue  # a K with no paraphrase condition: nothing to show against N
            xs = [n for n, _ in pts]
            label = ("FT" if key[2] == 0 else f"FT+RAG K={key[2]}") + (f" · {key[0]}" if models else "")
            (line,) = ax.plot(xs, [c.score for _, c in pts], marker="o", ms=4, lw=1.5, label=label)
            if all(c.id in run.ci for _, c in pts):
                ax.fill_between(xs, [run.ci[c.id][0] for _, c in pts], [run.ci[c.id][1] for _, c in pts],
                                color=line.get_color(), alpha=0.15, lw=0)
        for c in run.done:
            if c.task == task and c.method == "base":
                ax.axhline(c.score, color="grey", ls="--", lw=1, label="base" + (f" · {c.model}" if models else ""))
        ax.set_title(f"{task} ({run_metric(run, task)})")
        ax.set_xlabel("paraphrases per chunk (0 = FT-reg)")
        ax.set_ylabel("accuracy")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="best")
    _save(plt, fig, path)
    return None


MAX_CURVES = 12


def _training_label(t: Training) -> str:
    bits = [t.model, t.kb, t.method]
    if t.paraphrases:
        bits.append(f"N={t.paraphrases}")
    if t.lr is not None:
        bits.append(f"lr={t.lr:g}")
    return " · ".join(bits)


def plot_training_loss(run: Run, path: Path) -> str | None:
    """Training loss per optimiser step, epoch boundaries dashed, validation loss per epoch as markers."""
    trained = [t for t in run.trainings if any(p.kind == "train" for p in run.curves.get(t.id, []))]
    if not trained:
        return "Training loss: no fine-tuning loss curves in this run."
    plt = _plt()
    shown = trained[:MAX_CURVES]
    fig, axes = _grid(plt, len(shown), ncols=2, width=5.2, height=3.1)
    for ax, t in zip(axes, shown):
        train = [p for p in run.curves[t.id] if p.kind == "train"]
        val = [p for p in run.curves[t.id] if p.kind == "val"]
        ax.plot([p.step for p in train], [p.loss for p in train], lw=1.2, label="train loss")
        for prev, cur in itertools.pairwise(train):
            if math.ceil(cur.epoch) != math.ceil(prev.epoch):
                ax.axvline((prev.step + cur.step) / 2, color="grey", ls="--", lw=0.8)
        if val:
            ax.plot([p.step for p in val], [p.loss for p in val], "o", color="C3", ms=5, label="validation loss")
        ax.set_title(_training_label(t), fontsize=8.5)
        ax.set_xlabel("optimiser step (dashed: epoch boundaries)")
        ax.set_ylabel("loss (nats/token)")
        ax.legend(loc="best")
    _save(plt, fig, path)
    if len(trained) > MAX_CURVES:
        return f"Training loss: showing the first {MAX_CURVES} of {len(trained)} training runs."
    return None


_HEADLINE_COLOURS = dict(zip(HEADLINES, ["#6e7781", "C0", "C1", "C3"] + [f"C{i % 10}" for i in range(4, len(HEADLINES))]))
_MARKERS = "osD^vP*X"


def plot_cost(run: Run, path: Path) -> str | None:
    """Accuracy against cost per method (each at its best K / N, as in the tables): wall seconds
    (training + scoring) and peak memory, one row of two panels per task."""
    pts = [(key, c) for g in groups_of(run) for key, c in headlines(g.conds).items()
           if c.train_s is not None or c.eval_s is not None or c.peak_rss_mb is not None]
    if not pts:
        return "Cost vs accuracy: no condition recorded its wall time or peak memory."
    plt = _plt()
    tasks = sorted({c.task for _, c in pts})
    models = sorted({c.model for _, c in pts})
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.1 * len(tasks)), squeeze=False, layout="constrained")
    for row, task in zip(axes, tasks):
        mine = [(key, c) for key, c in pts if c.task == task]
        for ax, what in zip(row, ("time", "memory")):
            xs = []
            for key, c in mine:
                x = c.peak_rss_mb if what == "memory" else (
                    None if c.train_s is None and c.eval_s is None else (c.train_s or 0) + (c.eval_s or 0))
                if x is None:
                    continue
                xs.append(x)
                label = HEADLINE_LABEL[key] + (f" · {c.model}" if len(models) > 1 else "")
                ax.scatter([x], [c.score], s=42, color=_HEADLINE_COLOURS[key], marker=_MARKERS[models.index(c.model) % 8],
                           edgecolor="white", lw=0.5, label=label, zorder=3)
            ax.set_xlabel("wall seconds (training + scoring)" if what == "time" else "peak memory (MB)")
            ax.set_ylabel("accuracy")
            ax.set_title(f"{task}: accuracy vs {what}")
            if not xs:
                ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", color="#57606a")
    legend: dict[str, object] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside right upper", title="method (best K / N)",
               title_fontsize=7.5)
    _save(plt, fig, path)
    return None


def plot_tradeoff(run: Run, path: Path) -> str | None:
    """Knowledge gained on the target task (Δ vs base) against ability lost on the controls (mean
    Δ vs base), one point per method; the top-right quadrant gains without forgetting."""
    if not losses(run):
        return "Knowledge gained vs ability lost: no fine-tuned model was scored on control tasks."
    points = tradeoff(run)
    plt = _plt()
    rows = sorted({(p.task, p.model) for p in points})
    fig, axes = _grid(plt, len(rows), width=5.2, height=3.9)
    for ax, (task, model) in zip(axes, rows):
        mine = [p for p in points if (p.task, p.model) == (task, model)]
        ax.axhline(0, color="#8c959f", lw=0.8)
        ax.axvline(0, color="#8c959f", lw=0.8)
        for i, p in enumerate(mine):
            ax.scatter([p.lost], [p.gain], s=40, color=f"C{i % 10}", zorder=3, label=p.label)
            ax.annotate(p.label, (p.lost, p.gain), xytext=(4, 4), textcoords="offset points", fontsize=7)
        ax.set_xlabel("Δ accuracy on control tasks (mean, vs base)")
        ax.set_ylabel(f"Δ accuracy on {task} (vs base)")
        ax.set_title(f"{task} · {model}", fontsize=9)
        ax.legend(loc="best", fontsize=7)
    _save(plt, fig, path)
    return None


PLOTS: tuple[tuple[str, str, Callable[[Run, Path], str | None]], ...] = (
    ("accuracy_vs_k.png", "Accuracy vs K", plot_acc_vs_k),
    ("accuracy_vs_paraphrases.png", "Accuracy vs number of paraphrases", plot_acc_vs_paraphrases),
    ("training_loss.png", "Training loss", plot_training_loss),
    ("cost_vs_accuracy.png", "Cost vs accuracy", plot_cost),
    ("gained_vs_forgotten.png", "Knowledge gained vs ability lost (forgetting)", plot_tradeoff),
)

