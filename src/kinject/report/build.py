"""The read side of a run: `kinject report` and `kinject results`. `write_report` orchestrates a
report: it loads the run (rundata), assembles the blocks (the recommendation, tables, plots,
failures, provenance), renders them to report.md and a self-contained report.html (render) and
writes the folder atomically, reusing the previous report's images when the plotted data did
not change. `results_rows` / `results_table` / `write_csv` are `kinject results`: every
condition as a terminal table or a CSV file. The statistics are in stats, method names in
methods, the figures in plots, the tables in tables, the recommendation in recommend.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

from kinject import __version__
from kinject.core.errors import KinjectError, error_line, one_line
from kinject.core.fsio import atomic_dir, atomic_write_text
from kinject.core.stats import BOOT_ITERS, BOOT_SEED, LEVEL
from kinject.eval.methods import condition_label
from kinject.eval.results import DB_NAME, Condition, Store
from kinject.report.forgetting import forgetting_table
from kinject.report.plots import PLOTS
from kinject.report.recommend import recommend
from kinject.report.render import (
    Block,
    Cell,
    Heading,
    Image,
    Para,
    Table,
    fmt_num,
    to_html,
    to_markdown,
)
from kinject.report.rundata import Run, groups_of, load_run
from kinject.report.tables import (
    conditions_table,
    free_tables,
    paired_tables,
    paper_tables,
    question_difficulty,
    retrieved_sources,
    two_kinds,
)

REPORT_KIND = "kinject-report"


def plot_key(run: Run) -> str:
    """A hash of everything the plots draw (not the stage table): an unchanged run reuses the
    previous report's images, so a fully cached rerun does not start matplotlib at all. The CI
    procedure is part of the key: images drawn with other CI bands are redrawn."""
    data = [__version__, ["scipy-percentile", BOOT_ITERS, BOOT_SEED, LEVEL], [asdict(c) for c in run.conditions], sorted((k, sorted(v.items())) for k, v in run.correct.items()),
            [asdict(t) for t in run.trainings], sorted((k, [asdict(p) for p in v]) for k, v in run.curves.items())]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def sampled_design(run_dir: Path) -> str | None:
    """The design in one sentence when fine-tuning trained on a sample of the knowledge base
    (`finetune.train_on: sample`, what `kinject init` writes to fit a time budget), so a reader
    weighs FT's result accordingly; None otherwise."""
    import yaml

    try:
        ft = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("finetune") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    if ft.get("train_on") != "sample" or not isinstance(ft.get("sample"), dict):
        return None
    size, fraction = ft["sample"].get("size"), ft["sample"].get("fraction")
    how = f"{size:,} chunks" if size else f"{fraction:.0%} of the chunks"
    return (f"Design: FT trained on {how} of the knowledge base, the evaluated questions' source chunks and a "
            f"seeded random sample of the others, to fit the time budget. Fine-tuning on every chunk dilutes "
            f"each fact further, so read FT's gain here as an upper bound of what full-corpus fine-tuning gives.")


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
    for line in two_kinds(groups) + question_difficulty(groups):
        blocks.append(Para(line, "rec"))
    design = sampled_design(run.dir)
    if design and any("ft" in c.method for c in run.conditions):
        blocks.append(Para(design, "note"))
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
    free = free_tables(run, groups) if groups else []
    if free:
        blocks.append(Heading(2, "Free-form answers"))
        blocks.append(Para("Each question answered by greedy generation and graded against its reference answer and "
                           "aliases: right = the reference stated (numbers and dates compared as such) or, on a "
                           "question the documents do not answer, an abstention; EM and F1 are SQuAD's; "
                           "hallucinated = answered a question the documents do not answer; citation precision = "
                           "the passage the answer leans on holds the reference. Right is the accuracy of the "
                           "tables and paired tests above.", "small"))
        blocks += free
    sources = retrieved_sources(run, groups) if groups else []
    if sources:
        blocks.append(Heading(2, "Retrieved sources"))
        blocks.append(Para("The documents RAG put into the prompts most often, at its best K, and how many of "
                           "those questions it then answered right.", "small"))
        blocks += sources
    if run.controls or any(c.role == "control" for c in run.conditions):
        blocks.append(Heading(2, "Forgetting"))
        blocks += forgetting_table(run)
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
                note = f"{title}: could not be drawn ({error_line(exc, 200, named=True)})."
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
                              Cell(one_line(c.error or f"status {c.status}, no score"), num=False)]
                             for c in failed]))
    if failed_stages:
        blocks.append(Para("Failed stages:", "small"))
        blocks.append(Table(["stage", "label", "error"],
                            [[s.kind, s.label, Cell(one_line(s.error or "failed"), num=False)]
                             for s in failed_stages]))
    if not failed and not failed_stages:
        blocks.append(Para("None: every condition and stage finished.", "note"))
    blocks += provenance(run)
    return blocks, plots


def provenance(run: Run) -> list[Block]:
    """The report's provenance section: run folder, store hash, version, stages and fine-tuning runs."""
    blocks: list[Block] = [Heading(2, "Provenance")]
    counts = {s: sum(1 for st in run.stages if st.status == s) for s in ("cached", "computed", "failed")}
    blocks.append(Para(f"Run directory: {run.dir.resolve()} · {DB_NAME} sha256 {run.db_sha256[:16]} · "
                       f"kinject {__version__} · {len(run.stages)} stages ({counts['computed']} computed, "
                       f"{counts['cached']} cached, {counts['failed']} failed).", "small"))
    if run.trainings:
        thin = run.under_trained()
        blocks.append(Para("Fine-tuning runs:", "small"))
        blocks.append(Table(["training", "model", "kb", "method", "par.", "lr", "epochs", "steps", "final loss",
                             "val loss", "wall s", "peak MB"],
                            [[t.id[:12], t.model, t.kb, t.method, Cell(str(t.paraphrases)),
                              Cell("" if t.lr is None else f"{t.lr:g}"), Cell(fmt_num(t.epochs, 0)),
                              Cell(fmt_num(t.steps, 0), "under-trained" if t.id in thin else "",
                                   tone="bad" if t.id in thin else "", below=False),
                              Cell(fmt_num(t.final_loss, 4)), Cell(fmt_num(t.val_loss, 4)), Cell(fmt_num(t.wall_s, 1)),
                              Cell(fmt_num(t.peak_rss_mb, 0))] for t in run.trainings]))
    if run.stages:
        blocks.append(Para("Stages (cached: reused from an earlier run with the same inputs):", "small"))
        blocks.append(Table(["stage", "label", "device", "status", "wall s", "peak MB", "peak GPU MB"],
                            [[s.kind, s.label, s.device or "", Cell(s.status, tone="bad" if s.status == "failed"
                                                                    else "", num=False),
                              Cell(fmt_num(s.wall_s, 1)), Cell(fmt_num(s.peak_rss_mb, 0)), Cell(fmt_num(s.peak_gpu_mb, 0))]
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
    """A run directory's conditions (a one-line error when it is not a folder)."""
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
                      "" if c.n is None else str(c.n), score, fmt_num(c.recall, 3), fmt_num(c.eval_s, 1),
                      fmt_num(c.train_s, 1), fmt_num(c.peak_rss_mb, 0), status)
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
