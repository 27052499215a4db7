"""The read side of a run: `kinject results` (every condition as a table or CSV) and `kinject report`
(Markdown + a self-contained HTML page: the paper's tables, CIs, paired tests, plots, a recommendation).

Why paired statistics: every method of a task is scored on the same questions, so the honest
question is "on how many questions does method B get right what A gets wrong, and vice versa?".
McNemar's exact test on those discordant pairs and a paired bootstrap of the difference use that
pairing; comparing two independent CIs would miss real differences and invite eyeballing. A
recommendation only calls a method better when both say so (p < 0.05 and the CI excludes 0).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import itertools
import json
import math
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from kinject import __version__
from kinject.errors import KinjectError
from kinject.fsio import atomic_dir, atomic_write_text
from kinject.results import DB_NAME, Condition, LossPoint, Stage, Store, Training

BOOT_ITERS = 2000     # bootstrap resamples: CI ends stable to ~0.005 at n = 100
BOOT_SEED = 0         # fixed, so the same run always gives the same report
LEVEL = 0.95
ALPHA = 0.05
REPORT_KIND = "kinject-report"


# ------------------------------------------------------------------------------------ statistics


def bootstrap_ci(values: Sequence[float], iters: int = BOOT_ITERS, seed: int = BOOT_SEED,
                 level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap CI of a mean, resampling questions; seeded, so deterministic."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(iters, x.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p: a binomial test of the discordant pairs against 1/2, i.e.
    2 · P(X ≤ min) for X ~ Binomial(only_a + only_b, 1/2), capped at 1. Integer arithmetic keeps it
    exact at any sample size (the same value as scipy's binomtest, without importing scipy)."""
    n, m = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, i) for i in range(m + 1)) / 2 ** (n - 1))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], iters: int = BOOT_ITERS, seed: int = BOOT_SEED,
                     level: float = LEVEL) -> tuple[float, float, float]:
    """(mean of b − a, CI low, CI high): questions resampled in pairs, percentile CI, seeded. The
    same procedure as kinject.scoring.paired_bootstrap, here so a report needs no torch import."""
    import numpy as np

    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    lo, hi = bootstrap_ci(diff, iters, seed, level)
    return float(diff.mean()), lo, hi


@dataclass(frozen=True)
class Comparison:
    """B versus A on the questions both answered (diff = acc(B) − acc(A))."""

    a: str
    b: str
    n: int
    diff: float
    ci_low: float
    ci_high: float
    only_a: int          # questions A got right and B wrong
    only_b: int          # questions B got right and A wrong
    p: float
    sd: float            # standard deviation of the per-question difference (for a sample-size estimate)

    @property
    def verdict(self) -> str:
        """'better' / 'worse' only when McNemar and the bootstrap CI agree; 'n.s.' otherwise."""
        if self.p < ALPHA and self.ci_low > 0:
            return "better"
        if self.p < ALPHA and self.ci_high < 0:
            return "worse"
        return "n.s."

    def questions_needed(self) -> int | None:
        """Questions a paired test would need to detect a difference this size (5% level, 80% power)."""
        if self.diff == 0 or self.sd == 0:
            return None
        return math.ceil(((1.959964 + 0.841621) * self.sd / abs(self.diff)) ** 2)


def compare(a: dict[str, int], b: dict[str, int], label_a: str = "A", label_b: str = "B") -> Comparison | None:
    """Pair two conditions' per-question correctness by item id; None when they share no question."""
    import numpy as np

    common = sorted(a.keys() & b.keys())
    if not common:
        return None
    xa = [a[i] for i in common]
    xb = [b[i] for i in common]
    diff, lo, hi = paired_bootstrap(xa, xb)
    only_a = sum(1 for u, v in zip(xa, xb) if u and not v)
    only_b = sum(1 for u, v in zip(xa, xb) if v and not u)
    d = np.asarray(xb, dtype=np.float64) - np.asarray(xa, dtype=np.float64)
    return Comparison(label_a, label_b, len(common), diff, lo, hi,
                      only_a, only_b, mcnemar_exact(only_a, only_b), float(d.std(ddof=1)) if len(d) > 1 else 0.0)


# ------------------------------------------------------------------------------------ the run's data


@dataclass
class Run:
    """Everything the report reads from a run's results.sqlite."""

    dir: Path
    conditions: list[Condition]
    correct: dict[str, dict[str, int]]          # condition id → item id → 1/0 under the task's metric
    subjects: dict[str, dict[str, str]]         # condition id → item id → subject (items that have one)
    trainings: list[Training]
    curves: dict[str, list[LossPoint]]
    stages: list[Stage]
    db_sha256: str
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)  # condition id → bootstrap CI

    @property
    def done(self) -> list[Condition]:
        return [c for c in self.conditions if c.status == "done" and c.score is not None]

    @property
    def failed(self) -> list[Condition]:
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
    run = Run(run_dir, conditions, correct, subjects, trainings, curves, stages, sha)
    for c in run.done:
        if correct[c.id]:
            run.ci[c.id] = bootstrap_ci(list(correct[c.id].values()))
    return run


# ------------------------------------------------------------------------------------ methods


def family(method: str) -> tuple[str, bool]:
    """('base' | 'ft' | 'ft-par:N' | 'lora' | …, whether retrieved chunks are in the prompt)."""
    rag = method == "rag" or method.endswith("+rag")
    fam = "base" if method in ("base", "rag") else method.removesuffix("+rag")
    return fam, rag


def paraphrases_of(fam: str) -> int | None:
    m = re.fullmatch(r"ft-par:(\d+)", fam)
    return int(m.group(1)) if m else None


_FAMILY_LABEL = {"base": "Base", "ft": "FT", "lora": "LoRA"}


def family_label(fam: str) -> str:
    n = paraphrases_of(fam)
    return f"FT-par N={n}" if n is not None else _FAMILY_LABEL.get(fam, fam)


def method_label(method: str) -> str:
    """'Base', 'RAG', 'FT+RAG', 'FT-par N=5+RAG', …"""
    fam, rag = family(method)
    if fam == "base":
        return "RAG" if rag else "Base"
    return family_label(fam) + ("+RAG" if rag else "")


def condition_label(c: Condition) -> str:
    """A condition as a reader names it: 'RAG K=3', 'FT', 'FT-par N=5+RAG K=1'."""
    return method_label(c.method) + (f" K={c.k}" if family(c.method)[1] else "")


# The headline columns of the paper's tables, in order; the cost rank orders methods from the
# simplest to deploy (no training) to the most expensive, for recommending the cheapest of equals.
HEADLINES = ("base", "rag", "ft", "ft+rag", "lora", "lora+rag", "ft-par", "ft-par+rag")
COST_RANK = {"rag": 1, "lora": 2, "ft": 3, "ft-par": 4, "lora+rag": 5, "ft+rag": 6, "ft-par+rag": 7}
HEADLINE_LABEL = {"base": "Base", "rag": "RAG", "ft": "FT", "ft+rag": "FT+RAG", "lora": "LoRA",
                  "lora+rag": "LoRA+RAG", "ft-par": "FT-par", "ft-par+rag": "FT-par+RAG"}


def _headline_of(c: Condition) -> str | None:
    fam, rag = family(c.method)
    key = "ft-par" if paraphrases_of(fam) is not None else fam
    if key not in ("base", "ft", "lora", "ft-par") or (rag and c.k == 0):
        return None  # a '+rag' condition at K=0 duplicates its closed-book one; the tables skip it
    if not rag:
        return key
    return "rag" if key == "base" else key + "+rag"


def headlines(conds: Sequence[Condition]) -> dict[str, Condition]:
    """The paper's columns for one task × model row: the base model, and each method at its best
    K (and best N of paraphrases); ties go to the smaller K / N (cheaper prompts, less data)."""
    best: dict[str, Condition] = {}
    for c in sorted(conds, key=lambda c: (c.k, c.paraphrases, c.method)):
        key = _headline_of(c)
        if key is None or c.score is None:
            continue
        if key not in best or c.score > best[key].score:  # type: ignore[operator]
            best[key] = c
    return {k: best[k] for k in HEADLINES if k in best}


def headline_label(key: str, c: Condition) -> str:
    """'RAG (K=3)', 'FT-par (N=5)', 'FT-par+RAG (N=5, K=3)': the column with the chosen setting."""
    tag = setting_tag(key, c)
    return HEADLINE_LABEL[key] + (f" {tag}" if tag else "")


def setting_tag(key: str, c: Condition) -> str:
    """'(K=3)', '(N=5, K=3)' or '' for a headline column's chosen condition."""
    marks = []
    if key.startswith("ft-par"):
        marks.append(f"N={paraphrases_of(family(c.method)[0])}")
    if key.endswith("rag"):
        marks.append(f"K={c.k}")
    return f"({', '.join(marks)})" if marks else ""


# ------------------------------------------------------------------------------------ groups


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
        return f"{self.task} · {self.model} · {self.shots}-shot"

    @property
    def metric(self) -> str:
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


# ------------------------------------------------------------------------------------ recommendation


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


def _d(x: float) -> str:
    return f"{x:+.3f}".replace("-", "−")


def _ci(c: Comparison) -> str:
    return f"[95% CI {_d(c.ci_low)}, {_d(c.ci_high)}]"


def recommend(group: Group, run: Run) -> str:
    """One sentence per task × model: what to use, and the paired evidence behind it."""
    heads = headlines(group.conds)
    if "base" not in heads or not run.correct.get(heads["base"].id):
        return "No base-model result with per-question records, so no method can be compared against it."
    base = heads["base"]
    cands: dict[str, tuple[Condition, Comparison]] = {}
    for key, c in heads.items():
        cmp = None if key == "base" else compare(run.correct[base.id], run.correct.get(c.id, {}))
        if cmp is not None:
            cands[key] = (c, cmp)
    if not cands:
        return "Only the base model was evaluated here; there is nothing to compare it with."
    n = len(run.correct[base.id])

    def name(key: str) -> str:
        return headline_label(key, cands[key][0])

    better = [k for k, (_, cmp) in cands.items() if cmp.verdict == "better"]
    if not better:
        top = max(cands, key=lambda k: (cands[k][1].diff, -COST_RANK.get(k, 9)))
        cmp = cands[top][1]
        worse = [k for k, (_, c) in cands.items() if c.verdict == "worse"]
        tail = (f"; {', '.join(name(k) for k in worse)} scored significantly below base" if worse else "")
        if cmp.diff <= 0:
            return (f"Keep the base model: no method beat it at n={n} (the best, {name(top)}, {_d(cmp.diff)} "
                    f"{_ci(cmp)}, McNemar {_p(cmp.p)}){tail}.")
        need = cmp.questions_needed()
        more = (f"about {need} questions would detect a gain this size" if need and need > n
                else "score more questions before choosing")
        return (f"No method beat the base model significantly at n={n}: the best, {name(top)}, gained "
                f"{_d(cmp.diff)} {_ci(cmp)}, McNemar {_p(cmp.p)}, which is not significant at this sample "
                f"size{tail} — {more}.")
    best = max(better, key=lambda k: (cands[k][1].diff, -COST_RANK.get(k, 9)))
    chosen = best
    for key in sorted(better, key=lambda k: COST_RANK.get(k, 9)):
        if key == best:
            break
        vs = compare(run.correct[cands[key][0].id], run.correct[cands[best][0].id])
        if vs is not None and vs.verdict != "better":
            chosen = key
            break
    cmp = cands[chosen][1]
    parts = [f"Use {name(chosen)}: {_d(cmp.diff)} over base {_ci(cmp)}, McNemar {_p(cmp.p)}"]
    if chosen != best:
        vs = compare(run.correct[cands[chosen][0].id], run.correct[cands[best][0].id])
        assert vs is not None
        parts.append(f"{name(best)} scored {_d(cands[best][1].diff)} but was not significantly better than "
                     f"{name(chosen)} ({_p(vs.p)})")
    # The other road, for contrast: fine-tuning when RAG is chosen, RAG otherwise.
    other = [k for k in (["ft", "ft-par", "lora"] if chosen == "rag" else ["rag"])
             if k in cands and k not in (chosen, best)]
    for k in other[:1]:
        oc = cands[k][1]
        if oc.verdict == "better":
            vs = compare(run.correct[cands[k][0].id], run.correct[cands[chosen][0].id])
            what = (f"also beat base ({_d(oc.diff)}, {_p(oc.p)}) but significantly less "
                    f"({name(chosen)} vs {name(k)}: {_p(vs.p)})" if vs is not None and vs.verdict == "better" else
                    f"also beat base ({_d(oc.diff)}, {_p(oc.p)}) and did not differ significantly from "
                    f"{name(chosen)} ({_p(vs.p) if vs is not None else 'no common questions'})")
        else:
            what = {"worse": f"was worse than base ({_d(oc.diff)}, {_p(oc.p)})",
                    "n.s.": f"did not differ significantly from base ({_d(oc.diff)}, {_p(oc.p)})"}[oc.verdict]
        parts.append(f"{name(k)} {what}")
    return "; ".join(parts) + "."


# ------------------------------------------------------------------------------------ document model


@dataclass(frozen=True)
class Cell:
    """A table cell: main text, a muted part (a CI), a tag (the chosen K), a tone (good/bad)."""

    text: str
    muted: str = ""
    tag: str = ""
    tone: str = ""
    num: bool = True
    below: bool = True   # HTML: the muted part on its own line (keeps wide tables narrow)


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell | str]]


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str            # **bold** is the only inline markup
    kind: str = ""       # "" | note | rec | small


@dataclass(frozen=True)
class Image:
    file: str
    alt: str


Block = Heading | Para | Table | Image


def _md_cell(c: Cell | str) -> str:
    s = c if isinstance(c, str) else " ".join(x for x in (c.text, c.muted, c.tag) if x)
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            out.append(f"*{b.text}*" if b.kind == "note" else f"> {b.text}" if b.kind == "rec" else b.text)
        elif isinstance(b, Image):
            out.append(f"![{b.alt}]({b.file})")
        else:
            num = [all(isinstance(r[i], Cell) and r[i].num for r in b.rows) if b.rows else False
                   for i in range(len(b.headers))]
            lines = ["| " + " | ".join(b.headers) + " |",
                     "|" + "|".join("---:" if n else "---" for n in num) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


CSS = """
:root{color-scheme:light}
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue","DejaVu Sans",Arial,sans-serif;
 font-size:15px;line-height:1.55;color:#1f2328;background:#fff;max-width:1120px;margin:2rem auto;padding:0 1.5rem}
h1{font-size:1.75rem;margin:0 0 .4rem;padding-bottom:.35rem;border-bottom:2px solid #d0d7de}
h2{font-size:1.3rem;margin:2.2rem 0 .6rem;padding-bottom:.25rem;border-bottom:1px solid #d8dee4}
h3{font-size:1.05rem;margin:1.5rem 0 .4rem}
p{margin:.5rem 0}
.scroll{overflow-x:auto;margin:.6rem 0 1.1rem}
table{border-collapse:collapse;font-size:.86rem;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:.32rem .6rem;vertical-align:top}
th{background:#f3f5f7;text-align:left;font-weight:600;white-space:nowrap}
tbody tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;white-space:nowrap}
.muted{color:#6e7781;font-size:.82em}
td .muted.ci{display:block;line-height:1.25}
.tag{color:#0550ae;font-size:.86em;font-weight:600}
.good{color:#116329;font-weight:600}
.bad{color:#a40e26;font-weight:600}
.note{color:#57606a;font-style:italic}
.small{color:#57606a;font-size:.86rem}
.rec{background:#f6f8fa;border-left:4px solid #0969da;padding:.55rem .9rem;margin:.55rem 0;border-radius:0 4px 4px 0}
figure{margin:.8rem 0 1.2rem}
img{max-width:100%;height:auto;border:1px solid #e1e4e8;border-radius:4px}
"""


def _html_cell(c: Cell | str) -> str:
    if isinstance(c, str):
        return f"<td>{html.escape(c)}</td>"
    inner = html.escape(c.text)
    if c.tone:
        inner = f'<span class="{c.tone}">{inner}</span>'
    if c.tag:
        inner += f' <span class="tag">{html.escape(c.tag)}</span>'
    if c.muted:
        inner += f' <span class="muted{" ci" if c.below else ""}">{html.escape(c.muted)}</span>'
    return f'<td class="num">{inner}</td>' if c.num else f"<td>{inner}</td>"


def to_html(blocks: Sequence[Block], title: str, folder: Path) -> str:
    """A self-contained page: CSS in the head, every image inlined as a base64 PNG."""
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            cls = f' class="{b.kind}"' if b.kind else ""
            body.append(f"<p{cls}>{_inline(b.text)}</p>")
        elif isinstance(b, Image):
            data = base64.b64encode((folder / b.file).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.alt)}"></figure>')
        else:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.headers)
            rows = "".join("<tr>" + "".join(_html_cell(c) for c in r) + "</tr>" for r in b.rows)
            body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


# ------------------------------------------------------------------------------------ tables


def _acc_cell(run: Run, c: Condition | None, tag: str = "", below: bool = True) -> Cell:
    if c is None or c.score is None:
        return Cell("—")
    lo_hi = run.ci.get(c.id)
    muted = f"[{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else ""
    return Cell(f"{c.score:.3f}", muted, tag, below=below)


def _row_head(g: Group, seeds: bool) -> list[Cell | str]:
    cells: list[Cell | str] = [g.model, Cell(str(g.shots))]
    if seeds:
        cells.append(Cell(str(g.seed)))
    cells.append(Cell(str(max((c.n or 0) for c in g.conds))))
    return cells


def paper_tables(run: Run, groups: Sequence[Group]) -> list[Block]:
    """Per task: the paper's Table 1 layout (base / RAG / FT / FT+RAG at the best K), and, for tasks
    with paraphrase conditions, the new-knowledge table (base / RAG / FT-reg / FT-par / +RAG)."""
    seeds = len({g.seed for g in groups}) > 1
    blocks: list[Block] = []
    for task in sorted({g.task for g in groups}):
        tg = [g for g in groups if g.task == task]
        heads = [headlines(g.conds) for g in tg]
        blocks.append(Heading(3, f"{task} ({tg[0].metric})"))
        cols = [k for k in ("base", "rag", "ft", "ft+rag", "lora", "lora+rag") if any(k in h for h in heads)]
        lead = ["model", "shots"] + (["seed"] if seeds else []) + ["n"]
        rows = [_row_head(g, seeds) + [_acc_cell(run, h.get(k), setting_tag(k, h[k]) if k in h else "")
                                      for k in cols] for g, h in zip(tg, heads)]
        blocks.append(Table(lead + [HEADLINE_LABEL[k] for k in cols], rows))
        if any("ft-par" in h or "ft-par+rag" in h for h in heads):
            cols = ["base", "rag", "ft", "ft-par", "ft+rag", "ft-par+rag"]
            labels = ["Base", "RAG", "FT-reg", "FT-par", "FT-reg+RAG", "FT-par+RAG"]
            rows = [_row_head(g, seeds) + [_acc_cell(run, h.get(k), setting_tag(k, h[k]) if k in h else "")
                                          for k in cols] for g, h in zip(tg, heads)]
            blocks.append(Para(f"New knowledge ({task}): fine-tuning on the chunks alone (FT-reg) "
                               "versus on the chunks plus N paraphrases of each (FT-par, best N shown)."))
            blocks.append(Table(lead + labels, rows))
        blocks += _subject_table(run, tg, heads, seeds)
    return blocks


def _subject_table(run: Run, tg: Sequence[Group], heads: Sequence[dict[str, Condition]], seeds: bool) -> list[Block]:
    """A task of several subjects (e.g. mmlu:paper) broken down per subject, as the paper's tables
    are; each column keeps the condition chosen on the whole task."""
    cols = [k for k in HEADLINES if any(k in h for h in heads)]
    rows: list[list[Cell | str]] = []
    for g, h in zip(tg, heads):
        base = h.get("base") or next(iter(h.values()))
        subjects = sorted(set(run.subjects.get(base.id, {}).values()))
        if len(subjects) < 2:
            continue
        for subject in subjects:
            cells: list[Cell | str] = [g.model, Cell(str(g.shots))] + ([Cell(str(g.seed))] if seeds else [])
            cells.append(subject)
            ids = [i for i, s in run.subjects.get(base.id, {}).items() if s == subject]
            cells.append(Cell(str(len(ids))))
            for k in cols:
                c = h.get(k)
                got = [run.correct.get(c.id, {}).get(i) for i in ids] if c is not None else []
                got = [x for x in got if x is not None]
                if not got:
                    cells.append(Cell("—"))
                    continue
                lo, hi = bootstrap_ci(got)
                cells.append(Cell(f"{sum(got) / len(got):.3f}", f"[{lo:.3f}, {hi:.3f}]",
                                  setting_tag(k, c)))  # type: ignore[arg-type]
            rows.append(cells)
    if not rows:
        return []
    lead = ["model", "shots"] + (["seed"] if seeds else []) + ["subject", "n"]
    return [Para(f"Per subject ({tg[0].task}); each column's K / N is the one chosen on the whole task:", "small"),
            Table(lead + [HEADLINE_LABEL[k] for k in cols], rows)]


def _cmp_row(label: str, acc: Cell, cmp: Comparison | None) -> list[Cell | str]:
    if cmp is None:
        return [label, acc, Cell("no common questions", num=False), Cell(""), Cell(""), Cell(""), Cell("")]
    tone = {"better": "good", "worse": "bad"}.get(cmp.verdict, "")
    return [label, acc, Cell(_d(cmp.diff), tone=tone), Cell(f"[{_d(cmp.ci_low)}, {_d(cmp.ci_high)}]"),
            Cell(f"{cmp.only_b} / {cmp.only_a}"), Cell(_p(cmp.p).removeprefix("p=")),
            Cell(cmp.verdict, tone=tone, num=False)]


_ROW_ORDER = {"base": 0, "ft": 1, "ft-par": 2, "lora": 3}


def paired_tables(run: Run, groups: Sequence[Group]) -> list[Block]:
    """Every condition against the base model, and the best RAG against each fine-tuned model."""
    blocks: list[Block] = []
    headers = ["comparison", "accuracy", "Δ", "95% CI of Δ", "only A / only B right", "McNemar p", "verdict"]
    for g in groups:
        heads = headlines(g.conds)
        rows: list[list[Cell | str]] = []
        base = heads.get("base")
        if base is not None and run.correct.get(base.id):
            order = sorted(g.conds, key=lambda c: (_ROW_ORDER.get(family(c.method)[0].split(":")[0], 9),
                                                   c.paraphrases, family(c.method)[1], c.k))
            for c in order:
                if c.id == base.id:
                    continue
                label = condition_label(c)
                rows.append(_cmp_row(f"{label} vs Base", _acc_cell(run, c, below=False),
                                     compare(run.correct[base.id], run.correct.get(c.id, {}), "Base", label)))
        # The paper's questions: RAG or fine-tuning? does fine-tuning add to RAG? do paraphrases help?
        pairs = [("rag", "ft"), ("rag", "ft-par"), ("rag", "lora"), ("ft+rag", "rag"), ("ft-par+rag", "rag"),
                 ("ft-par", "ft"), ("ft-par+rag", "ft+rag")]
        for a, b in pairs:
            if a in heads and b in heads:
                ca, cb = heads[a], heads[b]
                rows.append(_cmp_row(f"{headline_label(a, ca)} vs {headline_label(b, cb)}", _acc_cell(run, ca, below=False),
                                     compare(run.correct.get(cb.id, {}), run.correct.get(ca.id, {}))))
        blocks.append(Heading(3, g.name))
        if rows:
            blocks.append(Table(headers, rows))
        else:
            blocks.append(Para("No base-model records here, so no paired test was possible.", "note"))
    return blocks


def conditions_table(run: Run) -> Table:
    rows: list[list[Cell | str]] = []
    for c in run.conditions:
        lo_hi = run.ci.get(c.id)
        rows.append([c.task, c.model, c.method, Cell(str(c.k)), Cell(str(c.shots)), Cell(str(c.paraphrases)),
                     Cell("" if c.n is None else str(c.n)),
                     Cell("—" if c.score is None else f"{c.score:.3f}",
                          f"[{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else "", below=False),
                     Cell(_f(c.recall, 3)), Cell(_f(c.eval_s, 1)), Cell(_f(c.train_s, 1)), Cell(_f(c.peak_rss_mb, 0)),
                     Cell(c.status, tone="" if c.status == "done" else "bad", num=False)])
    return Table(["task", "model", "method", "K", "shots", "par.", "n", "score [95% CI]", "recall@K",
                  "eval s", "train s", "peak MB", "status"], rows)


def _f(x: float | None, digits: int) -> str:
    return "" if x is None else f"{x:.{digits}f}"


# ------------------------------------------------------------------------------------ plots


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


_HEADLINE_COLOURS = dict(zip(HEADLINES, ("#6e7781", "C0", "C1", "C3", "C2", "C4", "C5", "C6")))
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


PLOTS: tuple[tuple[str, str, Callable[[Run, Path], str | None]], ...] = (
    ("accuracy_vs_k.png", "Accuracy vs K", plot_acc_vs_k),
    ("accuracy_vs_paraphrases.png", "Accuracy vs number of paraphrases", plot_acc_vs_paraphrases),
    ("training_loss.png", "Training loss", plot_training_loss),
    ("cost_vs_accuracy.png", "Cost vs accuracy", plot_cost),
)


# ------------------------------------------------------------------------------------ the report


def plot_key(run: Run) -> str:
    """A hash of everything the plots draw (not the stage table): an unchanged run reuses the
    previous report's images, so a fully cached rerun does not start matplotlib at all."""
    data = [__version__, [asdict(c) for c in run.conditions], sorted((k, sorted(v.items())) for k, v in run.correct.items()),
            [asdict(t) for t in run.trainings], sorted((k, [asdict(p) for p in v]) for k, v in run.curves.items())]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def build_report(run: Run, folder: Path, previous: dict[str, dict] | None = None,
                 previous_dir: Path | None = None) -> tuple[list[Block], dict[str, dict]]:
    """Draw the plots into `folder` (or copy `previous` ones, drawn from the same data) and return
    the report's blocks and what each plot gave (drawn or not, its note)."""
    groups = groups_of(run)
    done, failed = run.done, run.failed
    tasks = sorted({c.task for c in run.conditions})
    models = sorted({c.model for c in run.conditions})
    blocks: list[Block] = [Heading(1, f"kinject report: {run.dir.resolve().name}")]
    n_all = len(run.conditions)
    summary = (f"{n_all} condition{'s' * (n_all != 1)} ({len(done)} done, {len(failed)} failed) over "
               f"{len(tasks)} task{'s' * (len(tasks) != 1)} and {len(models)} model{'s' * (len(models) != 1)}.")
    if failed:
        summary += f" **{len(failed)} condition{'s' * (len(failed) != 1)} failed: see Failures.**"
    blocks.append(Para(summary))
    blocks.append(Para(f"Accuracy is each task's headline metric (acc, or acc_norm for cloze tasks). Intervals are "
                       f"95% percentile bootstrap CIs over questions ({BOOT_ITERS} resamples, seed {BOOT_SEED}). "
                       "Differences are paired on the same questions: McNemar's exact test on the questions "
                       "only one side got right, and a paired bootstrap CI of the difference. A method is called "
                       "better or worse only when p < 0.05 and the CI excludes 0.", "small"))
    blocks.append(Heading(2, "Recommendation"))
    if not groups:
        blocks.append(Para("No condition finished, so there is nothing to recommend yet.", "note"))
    shots, seeds = len({g.shots for g in groups}) > 1, len({g.seed for g in groups}) > 1
    for g in groups:
        who = f"{g.task} · {g.model}" + (f" · {g.shots}-shot" if shots else "") + (f" · seed {g.seed}" if seeds else "")
        n = max((c.n or 0) for c in g.conds)
        blocks.append(Para(f"**{who}**, n={n}: {recommend(g, run)}", "rec"))
    blocks.append(Para("The best K (and best N of paraphrases) is chosen on the same questions it is scored on, as "
                       "in the paper; this favours those columns slightly, and p-values are not corrected for the "
                       "number of comparisons.", "note"))
    mismatch = [c for c in done if run.correct.get(c.id)
                and abs(sum(run.correct[c.id].values()) / len(run.correct[c.id]) - c.score) > 1e-6]  # type: ignore[operator]
    if mismatch:
        blocks.append(Para("Warning: the per-question records do not average to the stored score for "
                           + ", ".join(f"{c.task}/{condition_label(c)}" for c in mismatch)
                           + "; their CIs and tests use the records.", "note"))
    blocks.append(Heading(2, "Results"))
    if groups:
        blocks.append(Para("Accuracy [95% CI]. RAG columns show the best K, marked (K=…); FT-par the best number of "
                           "paraphrases per chunk, marked (N=…).", "small"))
        blocks += paper_tables(run, groups)
    else:
        blocks.append(Para("No finished conditions.", "note"))
    blocks.append(Heading(2, "Paired tests"))
    blocks.append(Para("In a row 'A vs B', Δ = accuracy(A) − accuracy(B) on the questions both answered, and "
                       "'only A / only B right' count the questions only A, or only B, got right (McNemar's "
                       "discordant pairs).", "small"))
    blocks += paired_tables(run, groups) if groups else [Para("No finished conditions.", "note")]
    blocks.append(Heading(2, "Plots"))
    plots: dict[str, dict] = {}
    for fname, title, draw in PLOTS:
        blocks.append(Heading(3, title))
        old = (previous or {}).get(fname)
        if old is not None and previous_dir is not None and (not old["drawn"] or (previous_dir / fname).is_file()):
            if old["drawn"]:
                shutil.copyfile(previous_dir / fname, folder / fname)
            note = old["note"]
        else:
            try:
                note = draw(run, folder / fname)
            except Exception as exc:  # noqa: BLE001 - one unplottable figure must not cost the whole report
                (folder / fname).unlink(missing_ok=True)
                note = f"{title}: could not be drawn ({type(exc).__name__}: {_one_line(str(exc), 200)})."
        plots[fname] = {"drawn": (folder / fname).is_file(), "note": note}
        if plots[fname]["drawn"]:
            blocks.append(Image(fname, title))
        if note:
            blocks.append(Para(note, "note"))
    blocks.append(Heading(2, "All conditions"))
    blocks.append(conditions_table(run) if run.conditions else Para("No conditions recorded.", "note"))
    blocks.append(Heading(2, "Failures"))
    failed_stages = [s for s in run.stages if s.status == "failed"]
    if failed:
        blocks.append(Para("Conditions that did not finish (no score; the rest of the report leaves them out):",
                           "small"))
        blocks.append(Table(["task", "model", "method", "K", "shots", "paraphrases", "error"],
                            [[c.task, c.model, c.method, Cell(str(c.k)), Cell(str(c.shots)), Cell(str(c.paraphrases)),
                              Cell(_one_line(c.error or f"status {c.status}, no score"), num=False)]
                             for c in failed]))
    if failed_stages:
        blocks.append(Para("Failed stages:", "small"))
        blocks.append(Table(["stage", "label", "error"],
                            [[s.kind, s.label, Cell(_one_line(s.error or "failed"), num=False)]
                             for s in failed_stages]))
    if not failed and not failed_stages:
        blocks.append(Para("None: every condition and stage finished.", "note"))
    blocks += provenance(run)
    return blocks, plots


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def provenance(run: Run) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Provenance")]
    counts = {s: sum(1 for st in run.stages if st.status == s) for s in ("cached", "computed", "failed")}
    blocks.append(Para(f"Run directory: {run.dir.resolve()} · {DB_NAME} sha256 {run.db_sha256[:16]} · "
                       f"kinject {__version__} · {len(run.stages)} stages ({counts['computed']} computed, "
                       f"{counts['cached']} cached, {counts['failed']} failed).", "small"))
    if run.trainings:
        blocks.append(Para("Fine-tuning runs:", "small"))
        blocks.append(Table(["training", "model", "kb", "method", "par.", "lr", "epochs", "steps", "final loss",
                             "val loss", "wall s", "peak MB"],
                            [[t.id[:12], t.model, t.kb, t.method, Cell(str(t.paraphrases)),
                              Cell("" if t.lr is None else f"{t.lr:g}"), Cell(_f(t.epochs, 0)), Cell(_f(t.steps, 0)),
                              Cell(_f(t.final_loss, 4)), Cell(_f(t.val_loss, 4)), Cell(_f(t.wall_s, 1)),
                              Cell(_f(t.peak_rss_mb, 0))] for t in run.trainings]))
    if run.stages:
        blocks.append(Para("Stages (cached: reused from an earlier run with the same inputs):", "small"))
        blocks.append(Table(["stage", "label", "device", "status", "wall s", "peak MB", "peak GPU MB"],
                            [[s.kind, s.label, s.device or "", Cell(s.status, tone="bad" if s.status == "failed"
                                                                    else "", num=False),
                              Cell(_f(s.wall_s, 1)), Cell(_f(s.peak_rss_mb, 0)), Cell(_f(s.peak_gpu_mb, 0))]
                             for s in run.stages]))
    return blocks


def _check_out(run_dir: Path, out: Path) -> None:
    """The report folder is replaced wholesale, so refuse anything that is not an earlier report."""
    if out.resolve() == run_dir.resolve() or run_dir.resolve().is_relative_to(out.resolve()):
        raise KinjectError(f"--out {out} would replace the run directory; give a folder inside or beside it")
    if out.exists() and not out.is_dir():
        raise KinjectError(f"--out {out} is a file; give a folder")
    if out.exists() and any(out.iterdir()):
        try:
            kind = json.loads((out / "meta.json").read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind != REPORT_KIND:
            raise KinjectError(f"--out {out} is not empty and is not an earlier kinject report; "
                               "choose another folder or remove it")


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write report.md, report.html (self-contained) and the plots into `out` (default
    RUN_DIR/report) atomically: a half-written report never replaces a finished one."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report"
    run = load_run(run_dir)
    _check_out(run_dir, out)
    key = plot_key(run)
    try:
        old = json.loads((out / "meta.json").read_text())
        previous = old["plots"] if old.get("plot_key") == key else None
    except (OSError, ValueError, KeyError, TypeError):
        previous = None

    def write(tmp: Path) -> None:
        blocks, plots = build_report(run, tmp, previous, out)
        (tmp / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
        title = f"kinject report: {run.dir.resolve().name}"
        (tmp / "report.html").write_text(to_html(blocks, title, tmp), encoding="utf-8")
        meta = {"kind": REPORT_KIND, "kinject_version": __version__, "run_dir": str(run_dir.resolve()),
                "results_sha256": run.db_sha256, "conditions": len(run.conditions), "failed": len(run.failed),
                "bootstrap": {"iters": BOOT_ITERS, "seed": BOOT_SEED, "level": LEVEL},
                "plot_key": key, "plots": plots, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    atomic_dir(out, write)
    return out


# ------------------------------------------------------------------------------------ kinject results


CSV_FIELDS = [f.name for f in fields(Condition)] + ["score"]


def results_rows(run_dir: Path) -> list[Condition]:
    if not Path(run_dir).is_dir():
        raise KinjectError(f"{run_dir} is not a folder; give a run directory written by `kinject run`")
    with Store(Path(run_dir)) as store:
        return store.conditions()


def results_table(conds: Sequence[Condition], title: str):
    """The conditions as a rich table for the terminal."""
    from rich.table import Table as RichTable

    table = RichTable(title=title)
    for col in ("task", "model", "method", "K", "shots", "par.", "n", "score ± stderr", "recall@K", "eval s",
                "train s", "peak MB", "status"):
        table.add_column(col, justify="left" if col in ("task", "model", "method", "status") else "right")
    for c in conds:
        stderr = c.acc_norm_stderr if c.metric == "acc_norm" else c.acc_stderr
        score = "" if c.score is None else f"{c.score:.3f}" + ("" if stderr is None else f" ± {stderr:.3f}")
        score += f" {c.metric}" if score else ""
        status = c.status if c.status == "done" else f"[red]{c.status}[/red]"
        table.add_row(c.task, c.model, c.method, str(c.k), str(c.shots), str(c.paraphrases),
                      "" if c.n is None else str(c.n), score, _f(c.recall, 3), _f(c.eval_s, 1),
                      _f(c.train_s, 1), _f(c.peak_rss_mb, 0), status)
    return table


def write_csv(conds: Sequence[Condition], path: Path) -> None:
    """Every condition column plus the headline score; written to a temporary file and renamed."""
    path = Path(path)
    if path.is_dir():
        raise KinjectError(f"--csv {path} is a folder; give a file name")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for c in conds:
        writer.writerow({**asdict(c), "score": c.score})
    atomic_write_text(path, buf.getvalue())
