"""The recommendation: one sentence per task × model saying which method to use and the paired
evidence behind it. A method is only called better than the base model when McNemar's test and
the paired-bootstrap CI agree (`Comparison.verdict`); among the significantly better ones the
cheapest to deploy (`cost_rank`) wins unless a costlier one is significantly better than it; a
fine-tune that scored significantly below base on the control tasks gives way to a method that
did not and is not significantly worse on the target (forgetting is named either way); the
other road (fine-tuning when RAG is chosen, RAG otherwise) is reported for contrast; and when
nothing wins, the sentence says how many questions would detect a gain of the size seen.
"""

from __future__ import annotations

from kinject.core.stats import Comparison, compare
from kinject.eval.methods import cost_rank, headline_label, headlines
from kinject.eval.results import Condition
from kinject.report.forgetting import forgetting_note, significant_loss
from kinject.report.render import fmt_delta, fmt_p
from kinject.report.rundata import Group, Run
from kinject.runtime.hyper import MIN_STEPS


def _ci(c: Comparison) -> str:
    return f"[95% CI {fmt_delta(c.ci_low)}, {fmt_delta(c.ci_high)}]"


def recommend(group: Group, run: Run) -> str:
    """One sentence per task × model: what to use, and the paired evidence behind it; a fine-tuned
    arm with too few optimizer steps to mean anything is named as under-trained."""
    thin = run.under_trained()
    marks = sorted({f"{headline_label(k, c)} ({thin[c.training_id]} steps)" for k, c in headlines(group.conds).items()
                    if c.training_id in thin})
    text = _recommend(group, run)
    if marks:
        text = (text.removesuffix(".") + f"; under-trained, so not a verdict on fine-tuning: {', '.join(marks)} "
                f"made fewer than {MIN_STEPS} optimizer steps (lower finetune.batch or raise finetune.epochs).")
    return text


def _recommend(group: Group, run: Run) -> str:
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
        top = max(cands, key=lambda k: (cands[k][1].diff, -cost_rank(k)))
        cmp = cands[top][1]
        worse = [k for k, (_, c) in cands.items() if c.verdict == "worse"]
        tail = (f"; {', '.join(name(k) for k in worse)} scored significantly below base" if worse else "")
        if cmp.diff <= 0:
            return (f"Keep the base model: no method beat it at n={n} (the best, {name(top)}, {fmt_delta(cmp.diff)} "
                    f"{_ci(cmp)}, McNemar {fmt_p(cmp.p)}){tail}.")
        need = cmp.questions_needed()
        more = (f"about {need} questions would detect a gain this size" if need and need > n
                else "score more questions before choosing")
        return (f"No method beat the base model significantly at n={n}: the best, {name(top)}, gained "
                f"{fmt_delta(cmp.diff)} {_ci(cmp)}, McNemar {fmt_p(cmp.p)}, which is not significant at this sample "
                f"size{tail} — {more}.")
    best = max(better, key=lambda k: (cands[k][1].diff, -cost_rank(k)))
    chosen = best
    for key in sorted(better, key=lambda k: cost_rank(k)):
        if key == best:
            break
        vs = compare(run.correct[cands[key][0].id], run.correct[cands[best][0].id])
        if vs is not None and vs.verdict != "better":
            chosen = key
            break
    forgot = None
    if significant_loss(run, cands[chosen][0]):  # weigh forgetting: an equal method that keeps the rest wins
        keeps = [k for k in better if not significant_loss(run, cands[k][0])]
        alt = max(keeps, key=lambda k: (cands[k][1].diff, -cost_rank(k))) if keeps else None
        vs = compare(run.correct[cands[alt][0].id], run.correct[cands[chosen][0].id]) if alt else None
        if alt is not None and vs is not None and vs.verdict != "better":
            forgot, chosen = chosen, alt
    cmp = cands[chosen][1]
    parts = [f"Use {name(chosen)}: {fmt_delta(cmp.diff)} over base {_ci(cmp)}, McNemar "
             f"{fmt_p(cmp.p)}{forgetting_note(run, cands[chosen][0])}"]
    if forgot is not None:
        parts.append(f"{name(forgot)} scored {fmt_delta(cands[forgot][1].diff)} but was not significantly better "
                     f"and lost ability elsewhere{forgetting_note(run, cands[forgot][0])}")
    if chosen != best and best != forgot:
        vs = compare(run.correct[cands[chosen][0].id], run.correct[cands[best][0].id])
        assert vs is not None
        parts.append(f"{name(best)} scored {fmt_delta(cands[best][1].diff)} but was not significantly better than "
                     f"{name(chosen)} ({fmt_p(vs.p)})")
    # The other road, for contrast: fine-tuning when RAG is chosen, RAG otherwise.
    other = [k for k in (["ft", "ft-par", "lora"] if chosen == "rag" else ["rag"])
             if k in cands and k not in (chosen, best, forgot)]
    for k in other[:1]:
        oc = cands[k][1]
        if oc.verdict == "better":
            vs = compare(run.correct[cands[k][0].id], run.correct[cands[chosen][0].id])
            what = (f"also beat base ({fmt_delta(oc.diff)}, {fmt_p(oc.p)}) but significantly less "
                    f"({name(chosen)} vs {name(k)}: {fmt_p(vs.p)})" if vs is not None and vs.verdict == "better" else
                    f"also beat base ({fmt_delta(oc.diff)}, {fmt_p(oc.p)}) and did not differ significantly from "
                    f"{name(chosen)} ({fmt_p(vs.p) if vs is not None else 'no common questions'})")
        else:
            what = {"worse": f"was worse than base ({fmt_delta(oc.diff)}, {fmt_p(oc.p)})",
                    "n.s.": f"did not differ significantly from base ({fmt_delta(oc.diff)}, {fmt_p(oc.p)})"}[oc.verdict]
        parts.append(f"{name(k)} {what}")
    return "; ".join(parts) + "."

