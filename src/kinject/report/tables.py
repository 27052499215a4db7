"""The report's tables, as render blocks: the paper's tables per task (Base / RAG / FT / FT+RAG
at the best K, the arms beyond the paper (SFT, RAFT, replay), the new-knowledge table with
FT-par, and a per-subject breakdown), the paired
tests (every condition against the base model, and the paper's method-against-method
questions, each with its difference, CI, discordant counts, McNemar p and verdict), and the
table of every condition.
"""

from __future__ import annotations

from collections.abc import Sequence

from kinject.core.stats import Comparison, bootstrap_ci, compare
from kinject.eval.methods import (
    HEADLINE_LABEL,
    HEADLINES,
    condition_label,
    family,
    headline_label,
    headlines,
    setting_tag,
)
from kinject.eval.results import Condition
from kinject.report.render import Block, Cell, Heading, Para, Table, fmt_delta, fmt_num, fmt_p
from kinject.report.rundata import Group, Run


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


PAPER_COLUMNS = ("base", "rag", "ft", "ft+rag", "lora", "lora+rag")


def paper_tables(run: Run, groups: Sequence[Group]) -> list[Block]:
    """Per task: the paper's Table 1 layout (base / RAG / FT / FT+RAG at the best K), and, for tasks
    with paraphrase conditions, the new-knowledge table (base / RAG / FT-reg / FT-par / +RAG)."""
    seeds = len({g.seed for g in groups}) > 1
    blocks: list[Block] = []
    for task in sorted({g.task for g in groups}):
        tg = [g for g in groups if g.task == task]
        heads = [headlines(g.conds) for g in tg]
        blocks.append(Heading(3, f"{task} ({tg[0].metric})"))
        cols = [k for k in PAPER_COLUMNS if any(k in h for h in heads)]
        lead = ["model", "shots"] + (["seed"] if seeds else []) + ["n"]
        rows = [_row_head(g, seeds) + [_acc_cell(run, h.get(k), setting_tag(k, h[k]) if k in h else "")
                                      for k in cols] for g, h in zip(tg, heads)]
        blocks.append(Table(lead + [HEADLINE_LABEL[k] for k in cols], rows))
        beyond = [k for k in HEADLINES if k not in PAPER_COLUMNS and not k.startswith("ft-par")
                  and any(k in h for h in heads)]
        if beyond:  # the arms the 2023 paper left out: SFT, RAFT, replay
            cols = [k for k in ("base", "rag", "ft", "ft+rag") if any(k in h for h in heads)] + beyond
            rows = [_row_head(g, seeds) + [_acc_cell(run, h.get(k), setting_tag(k, h[k]) if k in h else "")
                                          for k in cols] for g, h in zip(tg, heads)]
            blocks.append(Para("Beyond the paper: supervised fine-tuning on QA pairs (SFT), RAFT, replay, prompt "
                               "distillation (Distill), knowledge modules (KModule).", "small"))
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
    return [label, acc, Cell(fmt_delta(cmp.diff), tone=tone), Cell(f"[{fmt_delta(cmp.ci_low)}, {fmt_delta(cmp.ci_high)}]"),
            Cell(f"{cmp.only_b} / {cmp.only_a}"), Cell(fmt_p(cmp.p).removeprefix("p=")),
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
        # and every arm beyond the paper against both roads: RAG, and unsupervised fine-tuning
        pairs += [(k, b) for k in heads if k not in PAPER_COLUMNS and not k.startswith("ft-par")
                  for b in ("rag", "ft", *(("sft", "raft") if k.startswith(("distill", "kmodule")) else ()),
                            *(("distill-lora",) if k.startswith("kmodule") else ()))]
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
    """Every condition of the run in one table, with its score, CI, recall, time and status."""
    rows: list[list[Cell | str]] = []
    for c in run.conditions:
        lo_hi = run.ci.get(c.id)
        rows.append([c.task + (" (control)" if c.role == "control" else ""), c.model, c.method, Cell(str(c.k)), Cell(str(c.shots)), Cell(str(c.paraphrases)),
                     Cell("" if c.n is None else str(c.n)),
                     Cell("—" if c.score is None else f"{c.score:.3f}",
                          f"[{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else "", below=False),
                     Cell(fmt_num(c.recall, 3)), Cell(fmt_num(c.eval_s, 1)), Cell(fmt_num(c.train_s, 1)), Cell(fmt_num(c.peak_rss_mb, 0)),
                     Cell(c.status, tone="" if c.status == "done" else "bad", num=False)])
    return Table(["task", "model", "method", "K", "shots", "par.", "n", "score [95% CI]", "recall@K",
                  "eval s", "train s", "peak MB", "status"], rows)


def retrieved_sources(run: Run, groups: Sequence[Group], top: int = 5) -> list[Block]:
    """Per task × model, the sources its best RAG condition put into prompts most often (file,
    pages, section), with how many of those questions it answered right: where answers come from."""
    from collections import Counter

    blocks: list[Block] = []
    for g in groups:
        c = headlines(g.conds).get("rag")
        cited = run.cited.get(c.id, {}) if c is not None else {}
        if c is None or not cited:
            continue
        uses: Counter = Counter()
        right: Counter = Counter()
        for item, sources in cited.items():
            for src in set(sources):
                uses[src] += 1
                right[src] += run.correct.get(c.id, {}).get(item, 0)
        blocks.append(Heading(3, f"{g.name} · {headline_label('rag', c)}"))
        blocks.append(Table(["source (file, pages, section)", "questions", "answered right"],
                            [[Cell(src, num=False), Cell(str(n)), Cell(str(right[src]))]
                             for src, n in uses.most_common(top)]))
        if len(uses) > top:
            blocks.append(Para(f"… and {len(uses) - top} more sources.", "note"))
    return blocks



def _free_cell(values: list[float]) -> Cell:
    """A free-form measure's mean over the questions it is defined on, with its bootstrap CI."""
    if not values:
        return Cell("—")
    lo, hi = bootstrap_ci(values)
    return Cell(f"{sum(values) / len(values):.3f}", f"[{lo:.3f}, {hi:.3f}]", f"n={len(values)}", below=True)


def free_tables(run: Run, groups: Sequence[Group], examples: int = 3) -> list[Block]:
    """Per free-form task and model: each condition's grades of its generated answers (right = the
    fact stated, or an unanswerable question declined; SQuAD EM and F1, contains, abstained on
    answerable questions, hallucinated on unanswerable ones, citation precision with retrieval),
    and a few questions where the arms disagree, their answers side by side."""
    blocks: list[Block] = []
    for g in groups:
        conds = [c for c in g.conds if run.free.get(c.id)]
        if not conds:
            continue
        blocks.append(Heading(3, f"{g.task} · {g.model} · {g.shots}-shot (free-form answers)"))
        judged = any("judge" in f for c in conds for f in run.free[c.id].values())
        rows = []
        for c in conds:
            free = list(run.free[c.id].values())
            ans = [f for f in free if f["answerable"]]
            verdicts = [float(f["judge"] == "correct") for f in ans if f.get("judge")]
            rows.append([condition_label(c), _acc_cell(run, c), *([_free_cell(verdicts)] if judged else []),
                         _free_cell([f["em"] for f in ans]), _free_cell([f["f1"] for f in ans]),
                         _free_cell([f["contains"] for f in ans]),
                         _free_cell([float(f["abstained"]) for f in ans]),
                         _free_cell([float(f["hallucinated"]) for f in free if not f["answerable"]]),
                         _free_cell([float(f["supported"]) for f in ans if f.get("supported") is not None])])
        blocks.append(Table(["condition", "right", *(["judge: correct"] if judged else []), "EM", "F1", "contains", "abstained (answerable)",
                             "hallucinated (unanswerable)", "citation precision"], rows))
        items = sorted(set.intersection(*(set(run.free[c.id]) for c in conds)))
        split = [i for i in items if len({run.correct[c.id].get(i) for c in conds}) > 1][:examples]
        if split:
            blocks.append(Para("Questions where the conditions disagree, each one's answer (✓ right):", "small"))
            first = run.free[conds[0].id]
            blocks.append(Table(["question", "reference", *(condition_label(c) for c in conds)],
                                [[Cell(first[i].get("question", i), num=False),
                                  Cell(first[i].get("reference") or "(not answered by the documents)", num=False),
                                  *(Cell(("✓ " if run.correct[c.id].get(i) else "") +
                                                             (run.free[c.id][i]["answer"] or "(nothing)"), num=False)
                                                        for c in conds)] for i in split]))
    return blocks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties ranked by their mean); None under 3 pairs or without spread."""
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def two_kinds(groups: Sequence[Group]) -> list[str]:
    """Where a task is scored both by multiple choice and in free form (`T` and `T@free`, one model,
    one seed): whether the two pick the same best arm, and the rank correlation of the arms they
    share, so the recommendation says when the two kinds of evidence disagree."""
    notes = []
    for g in groups:
        if not g.task.endswith("@free"):
            continue
        base = g.task.removesuffix("@free")
        for m in groups:
            if m.task.partition("@")[0] != base or m.task.endswith("@free") or (m.model, m.seed) != (g.model, g.seed):
                continue
            free, mc = headlines(g.conds), headlines(m.conds)
            shared = [k for k in free if k in mc]
            if len(shared) < 2:
                continue
            best_free = max(shared, key=lambda k: free[k].score or 0)
            best_mc = max(shared, key=lambda k: mc[k].score or 0)
            rho = spearman([mc[k].score or 0 for k in shared], [free[k].score or 0 for k in shared])
            corr = f"; rank correlation of the {len(shared)} arms' accuracies ρ = {rho:+.2f}" if rho is not None else ""
            same = best_free == best_mc
            notes.append(f"**{base} · {g.model}**: multiple choice and free-form answers "
                         f"{'agree' if same else 'disagree'} on the best arm ({HEADLINE_LABEL[best_mc]}"
                         f"{'' if same else f' by multiple choice, {HEADLINE_LABEL[best_free]} in free form'})"
                         f"{corr}.")
    return notes


INIT_QUESTIONS = ".questions.jsonl@cloze"
"""The task `kinject init` writes: cloze questions cut from the documents themselves."""


def question_difficulty(groups: Sequence[Group]) -> list[str]:
    """Where a run scores init's automatic cloze questions and the person's own questions with the
    same model (`kinject init --questions`): each shared arm's accuracy on both, so the report says
    how much easier the automatic questions are (a copied sentence is easy to retrieve; a question
    in one's own words is not) and which verdict to read."""
    notes = []
    for auto in (g for g in groups if g.task.endswith(INIT_QUESTIONS)):
        for own in groups:
            if own is auto or own.task.endswith(INIT_QUESTIONS) or (own.model, own.seed) != (auto.model, auto.seed):
                continue
            a, o = headlines(auto.conds), headlines(own.conds)
            shared = [k for k in a if k in o and a[k].score is not None and o[k].score is not None]
            if not shared:
                continue
            pairs = ", ".join(f"{HEADLINE_LABEL[k]} {a[k].score:.3f} → {o[k].score:.3f}" for k in shared)
            gap = max(shared, key=lambda k: abs((a[k].score or 0) - (o[k].score or 0)))
            diff = (a[gap].score or 0) - (o[gap].score or 0)
            name = own.task.rsplit("/", 1)[-1]
            notes.append(f"**Automatic questions against yours ({name}, {own.model})**: {pairs} (automatic → yours). "
                         f"The largest gap is {HEADLINE_LABEL[gap]}'s, {diff:+.3f}: "
                         + ("the automatic cloze questions are easier, so read the verdict on your questions."
                            if diff > 0 else "your questions are no harder than the automatic ones here."))
    return notes
