"""`kinject results` / `kinject report`: tables, statistics, recommendation, plots and atomic output,
on small stores built here through the results Store API (synthetic per-question outcomes)."""

from __future__ import annotations

import csv
import math
import re
import shutil
import sys
from pathlib import Path

import pytest

from kinject.core.errors import KinjectError
from kinject.core.stats import BOOT_ITERS, bootstrap_ci, compare, mcnemar_exact, paired_bootstrap
from kinject.eval.methods import family, headlines, parse_method
from kinject.eval.results import Condition, LossPoint, Row, Stage, Store, Training
from kinject.report.build import results_rows, write_csv, write_report
from kinject.report.recommend import recommend
from kinject.report.rundata import groups_of, load_run

N = 120


def outcomes(right: set[int], n: int = N) -> list[int]:
    return [1 if i in right else 0 for i in range(n)]


def put(store: Store, task: str, method: str, k: int, correct: list[int], *, model: str = "m", metric: str = "acc",
        paraphrases: int = 0, training_id: str | None = None, eval_s: float = 2.0, train_s: float = 0.0,
        subjects: bool = False, seed: int = 0) -> str:
    cid = f"{task}/{model}/{method}/{k}/s{seed}"
    acc = sum(correct) / len(correct)
    se = math.sqrt(acc * (1 - acc) / (len(correct) - 1))
    score = {"acc": acc, "acc_stderr": se} if metric == "acc" else {"acc": 0.25, "acc_stderr": 0.04,
                                                                    "acc_norm": acc, "acc_norm_stderr": se}
    cond = Condition(cid, model, task, method, k, 0, paraphrases, seed, metric, "done", n=len(correct),
                     recall=0.8 if k else None, eval_s=eval_s, train_s=train_s, peak_rss_mb=900.0 + 10 * k,
                     training_id=training_id, **score)
    rows = [Row(f"q{i:03d}", ("anatomy" if i < len(correct) // 2 else "astronomy") if subjects else None,
                0, 0 if c else 1, 0 if c else 1, c, (-1.0, -2.0), ()) for i, c in enumerate(correct)]
    store.put_condition(cond, rows)
    return cid


BASE = set(range(60))                               # 0.50
RAG = {1: BASE | set(range(60, 80)),                # 0.667
       2: BASE | set(range(60, 92)),                # 0.767, the best K
       3: BASE | set(range(60, 86))}                # 0.717
FT = (BASE - {0, 1, 2}) | set(range(60, 64))        # 0.508: 3 lost, 4 gained → not significant


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sciq: RAG clearly beats base, FT does not; with paraphrase conditions, training curves, a failure.
    mmlu (acc_norm): RAG +2 questions over base, not significant."""
    run = tmp_path_factory.mktemp("run")
    with Store(run, create=True) as s:
        put(s, "sciq", "base", 0, outcomes(BASE))
        for k, right in RAG.items():
            put(s, "sciq", "rag", k, outcomes(right))
        put(s, "sciq", "ft", 0, outcomes(FT), training_id="t-reg", train_s=60.0)
        for k, right in RAG.items():
            put(s, "sciq", "ft+rag", k, outcomes(right - {0}), training_id="t-reg", train_s=60.0)
        for npar, extra in ((2, 6), (4, 10)):
            put(s, "sciq", f"ft-par:{npar}", 0, outcomes(BASE | set(range(60, 60 + extra))), paraphrases=npar,
                training_id=f"t-par{npar}", train_s=120.0)
            put(s, "sciq", f"ft-par:{npar}+rag", 2, outcomes(RAG[2] | {100}), paraphrases=npar,
                training_id=f"t-par{npar}", train_s=120.0)
        s.put_condition(Condition("sciq/m/lora/0", "m", "sciq", "lora", 0, 0, 0, 0, "acc", "failed",
                                  error="CUDA out of memory. Tried to allocate 2.00 GiB"))
        put(s, "mmlu:paper@cloze", "base", 0, outcomes(set(range(48))), metric="acc_norm", subjects=True)
        put(s, "mmlu:paper@cloze", "rag", 1, outcomes(set(range(50))), metric="acc_norm", subjects=True)
        put(s, "mmlu:paper@cloze", "ft", 0, outcomes(set(range(47))), metric="acc_norm", training_id="t-reg",
            subjects=True)
        for tid, npar in (("t-reg", 0), ("t-par2", 2), ("t-par4", 4)):
            curve = [LossPoint(step, (step - 1) // 4 + 1, 3.0 - 0.1 * step, "train") for step in range(1, 13)]
            curve += [LossPoint(4 * e, e, 2.9 - 0.3 * e, "val") for e in (1, 2, 3)]
            s.put_training(Training(tid, "m", "sciq", "full", npar, 0, lr=1e-5, epochs=3, steps=30, blocks=40,
                                    final_loss=1.8, val_loss=2.0, wall_s=60.0, peak_rss_mb=2100.0), curve)
        s.put_stage(Stage("a1", "corpus", "sciq corpus", "cached", 0.1, 300.0))
        s.put_stage(Stage("b2", "finetune", "m on sciq", "computed", 60.0, 2100.0))
        s.put_stage(Stage("c3", "finetune", "lora m on sciq", "failed", 3.0, 4000.0, "CUDA out of memory"))
    return run


@pytest.fixture(scope="module")
def report(full_run: Path) -> Path:
    return write_report(full_run)


def test_bootstrap_ci_contains_estimate_and_is_deterministic() -> None:
    x = outcomes(set(range(0, N, 3)))
    lo, hi = bootstrap_ci(x)
    assert lo < sum(x) / len(x) < hi
    assert (lo, hi) == bootstrap_ci(x)
    se = math.sqrt((1 / 3) * (2 / 3) / N)  # the bootstrap agrees with the normal interval to ~0.01 here
    assert lo == pytest.approx(1 / 3 - 1.96 * se, abs=0.015) and hi == pytest.approx(1 / 3 + 1.96 * se, abs=0.015)
    assert bootstrap_ci([1] * 10) == (1.0, 1.0)


def test_mcnemar_matches_hand_computed_exact_binomial() -> None:
    # 3 questions only A got right, 12 only B: p = 2 · P(X ≤ 3), X ~ Binomial(15, 1/2)
    #   = 2 · (1 + 15 + 105 + 455) / 2^15 = 1152 / 32768
    hand = 0.03515625
    assert mcnemar_exact(3, 12) == hand and mcnemar_exact(12, 3) == hand
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 7) == 2 / 2 ** 7
    for only_a, only_b in ((40, 60), (500, 561), (1, 30)):  # exact integer arithmetic, large n
        n, m = only_a + only_b, min(only_a, only_b)
        exact = min(1.0, sum(math.comb(n, i) for i in range(m + 1)) / 2 ** (n - 1))
        assert mcnemar_exact(only_a, only_b) == pytest.approx(exact, rel=1e-9)
    a = {f"q{i}": 1 for i in range(20)} | {f"q{i}": 0 for i in range(20, 40)}
    b = dict(a) | {"q0": 0, "q1": 0, "q2": 0} | {f"q{i}": 1 for i in range(20, 32)}
    cmp = compare(a, b)
    assert cmp is not None and (cmp.only_a, cmp.only_b, cmp.n) == (3, 12, 40)
    assert cmp.p == pytest.approx(hand) and cmp.diff == pytest.approx(9 / 40)
    assert cmp.ci_low < cmp.diff < cmp.ci_high
    assert compare(a, {"other": 1}) is None


def test_mcnemar_is_scipys_exact_binomial_test_on_a_known_table() -> None:
    """A 2×2 table of paired outcomes (both right 50, only A 7, only B 19, both wrong 24): the exact
    McNemar p is scipy's two-sided binomial test of 7 successes in 26 at 1/2, and `compare` on
    per-question records with that table reports it."""
    from scipy.stats import binomtest

    p = binomtest(7, 26, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact(7, 19) == pytest.approx(p, rel=1e-12) == 2 * sum(math.comb(26, i) for i in range(8)) / 2 ** 26
    a = {f"q{i}": int(i < 50 + 7) for i in range(100)}                     # 0-49 both, 50-56 only A
    b = {f"q{i}": int(i < 50 or 57 <= i < 57 + 19) for i in range(100)}   # 57-75 only B, 76-99 neither
    cmp = compare(a, b)
    assert cmp is not None and (cmp.only_a, cmp.only_b, cmp.n) == (7, 19, 100)
    assert cmp.p == pytest.approx(p, rel=1e-12) and cmp.diff == pytest.approx(0.12)


def test_report_and_results_json_share_one_paired_bootstrap(full_run: Path, report: Path) -> None:
    """The report's CI for RAG vs base is exactly what results.json's `rag_gain` gets from
    `paired_bootstrap` for the same per-question lists (one implementation, one resample count)."""
    from kinject.eval import evaluation

    assert evaluation.paired_bootstrap is paired_bootstrap
    run = load_run(full_run)
    sciq = next(g for g in groups_of(run) if g.task == "sciq")
    heads = headlines(sciq.conds)
    base, rag = run.correct[heads["base"].id], run.correct[heads["rag"].id]
    cmp = compare(base, rag)
    ids = sorted(base)
    gain = paired_bootstrap([base[i] for i in ids], [rag[i] for i in ids])
    assert cmp is not None and gain["n"] == cmp.n == N
    assert (gain["diff"], gain["ci_low"], gain["ci_high"]) == (cmp.diff, cmp.ci_low, cmp.ci_high)
    assert gain["level"] == 0.95 and gain["ci_low"] < gain["diff"] < gain["ci_high"]
    md = (report / "report.md").read_text()
    ci = f"[{gain['ci_low']:+.3f}, {gain['ci_high']:+.3f}]".replace("-", "−")
    assert re.search(r"\| RAG K=2 vs Base \| [^|]+ \| \+0\.267 \| " + re.escape(ci) + r" \|", md)
    assert f"({BOOT_ITERS} resamples" in md


def test_one_method_parser_names_the_report_columns() -> None:
    assert family("ft-par:5+rag") == ("ft-par:5", True) and family("rag") == ("base", True)
    assert family("lora") == ("lora", False) and family("ft+rag") == ("ft", True)
    assert parse_method("ft-par:5+rag").family == "ft-par:5" and parse_method("base").family == "base"
    assert family("something-new") == ("something-new", False)  # a name from another version


def test_table_picks_best_k_and_marks_it(full_run: Path) -> None:
    run = load_run(full_run)
    sciq = next(g for g in groups_of(run) if g.task == "sciq")
    heads = headlines(sciq.conds)
    assert heads["rag"].k == 2 and heads["ft+rag"].k == 2
    assert heads["ft-par"].method == "ft-par:4"  # 10 more right than base beats 6 more
    assert list(heads) == ["base", "rag", "ft", "ft+rag", "ft-par", "ft-par+rag"]
    lo, hi = run.ci[heads["rag"].id]
    assert lo < heads["rag"].score < hi


def test_recommendation_picks_rag_when_clearly_better(full_run: Path) -> None:
    run = load_run(full_run)
    sciq = next(g for g in groups_of(run) if g.task == "sciq")
    sentence = recommend(sciq, run)
    assert sentence.startswith("Use RAG (K=2): +0.267 over base")
    assert "McNemar p<0.001" in sentence
    # FT+RAG and FT-par+RAG (K=2) are no better than RAG alone: the cheaper RAG is chosen, and FT is n.s.
    assert "FT-par+RAG (N=2, K=2) scored +0.275 but was not significantly better than RAG (K=2) (p=1.00)" in sentence
    assert "FT did not differ significantly from base (+0.008, p=1.00)" in sentence
    assert sentence.endswith(".") and not re.search(r"\.\s+[A-Z]", sentence)  # one sentence


def test_recommendation_says_not_significant_when_not(full_run: Path) -> None:
    run = load_run(full_run)
    mmlu = next(g for g in groups_of(run) if g.task.startswith("mmlu"))
    sentence = recommend(mmlu, run)
    assert "No method beat the base model significantly at n=120" in sentence
    assert "RAG (K=1)" in sentence and "not significant at this sample size" in sentence
    assert re.search(r"about \d+ questions would detect a gain this size", sentence)


def test_recommendation_weighs_combinations_and_losses(tmp_path: Path) -> None:
    with Store(tmp_path / "a", create=True) as s:   # FT+RAG significantly above RAG, above base
        put(s, "t", "base", 0, outcomes(set(range(30))))
        put(s, "t", "rag", 1, outcomes(set(range(60))))
        put(s, "t", "ft", 0, outcomes(set(range(31))))
        put(s, "t", "ft+rag", 1, outcomes(set(range(100))))
    with Store(tmp_path / "b", create=True) as s:   # retrieval hurts
        put(s, "t", "base", 0, outcomes(set(range(60))))
        put(s, "t", "rag", 1, outcomes(set(range(30))))
    a, b = load_run(tmp_path / "a"), load_run(tmp_path / "b")
    sentence = recommend(groups_of(a)[0], a)
    assert sentence.startswith("Use FT+RAG (K=1): +0.583 over base")
    assert "RAG (K=1) also beat base (+0.250, p<0.001) but significantly less (FT+RAG (K=1) vs RAG (K=1): p<0.001)" \
        in sentence
    sentence = recommend(groups_of(b)[0], b)
    assert sentence.startswith("Keep the base model: no method beat it at n=120 (the best, RAG (K=1), −0.250")
    assert sentence.endswith("; RAG (K=1) scored significantly below base.")


def test_every_fine_tuning_seed_is_compared_with_the_one_base_run(tmp_path: Path) -> None:
    """Base and RAG are evaluated once (seed 0); fine-tuning runs per seed (here 1 and 2)."""
    with Store(tmp_path, create=True) as s:
        put(s, "t", "base", 0, outcomes(set(range(30))))
        put(s, "t", "rag", 1, outcomes(set(range(90))))
        put(s, "t", "ft", 0, outcomes(set(range(60))), training_id="t1", seed=1)
        put(s, "t", "ft", 0, outcomes(set(range(31))), training_id="t2", seed=2)
    run = load_run(tmp_path)
    groups = groups_of(run)
    assert [(g.seed, sorted(c.method for c in g.conds)) for g in groups] == [(1, ["base", "ft", "rag"]),
                                                                             (2, ["base", "ft", "rag"])]
    assert [recommend(g, run).split(":")[0] for g in groups] == ["Use RAG (K=1)", "Use RAG (K=1)"]
    assert "FT also beat base (+0.250" in recommend(groups[0], run)


def test_report_contents(report: Path, full_run: Path) -> None:
    md = (report / "report.md").read_text()
    assert report == full_run / "report"
    # the paper's table: best K marked, CI next to every accuracy
    assert re.search(r"\| m \| 0 \| 120 \| 0\.500 \[0\.\d+, 0\.\d+\] \| 0\.767 \[0\.\d+, 0\.\d+\] \(K=2\) \|", md)
    assert "| Base | RAG | FT-reg | FT-par | FT-reg+RAG | FT-par+RAG |" in md  # the new-knowledge table
    assert "(N=4)" in md and "(N=2, K=2)" in md
    assert "RAG (K=2) vs FT" in md and "RAG K=2 vs Base" in md and "FT+RAG (K=2) vs RAG (K=2)" in md
    assert "FT-par (N=4) vs FT" in md and "FT-par N=2+RAG K=2 vs Base" in md
    # a task of several subjects is broken down per subject (the paper's rows)
    assert re.search(r"\| m \| 0 \| anatomy \| 60 \| 0\.800 \[0\.\d+, 0\.\d+\] \| 0\.833 \[0\.\d+, 0\.\d+\] "
                     r"\(K=1\) \| 0\.783 \[", md)
    assert "| m | 0 | astronomy | 60 | 0.000 [0.000, 0.000] | 0.000 [0.000, 0.000] (K=1) |" in md
    assert md.count("| subject |") == 1  # sciq has no subjects
    # failures listed, with their error, and the failed stage
    failures = md.split("## Failures", 1)[1].split("## Provenance", 1)[0]
    assert "lora" in failures and "CUDA out of memory. Tried to allocate 2.00 GiB" in failures
    assert "lora m on sciq" in failures
    for png in ("accuracy_vs_k.png", "accuracy_vs_paraphrases.png", "training_loss.png", "cost_vs_accuracy.png"):
        assert f"]({png})" in md and (report / png).stat().st_size > 10_000
    assert "kinject 0.1.0" in md and "3 stages (1 computed, 1 cached, 1 failed)" in md
    assert '"kind": "kinject-report"' in (report / "meta.json").read_text()


def test_html_is_self_contained(report: Path) -> None:
    page = (report / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "<script" not in page and "@import" not in page
    assert "<table>" in page and "<style>" in page


def test_missing_plots_are_noted_not_drawn(tmp_path: Path) -> None:
    """No RAG, no paraphrases, no loss curves, no timings: no plot is drawn, each gets its note; a
    task with only a base result, and one without any base result, are said so."""
    with Store(tmp_path, create=True) as s:
        right = outcomes(set(range(30)), 40)
        s.put_condition(Condition("b", "m", "sciq", "base", 0, 0, 0, 0, "acc", "done", n=40, acc=0.75, acc_stderr=0.07),
                        [Row(f"q{i}", None, 0, 0, 0, c, (0.0, -1.0), ()) for i, c in enumerate(right)])
        s.put_condition(Condition("f", "m", "other", "ft", 0, 0, 0, 0, "acc", "done", n=2, acc=0.5, acc_stderr=0.5))
    out = write_report(tmp_path, tmp_path / "rep")
    md = (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "report.html", "report.md"]
    assert "Accuracy vs K: no RAG conditions in this run." in md
    assert "Accuracy vs number of paraphrases: no paraphrase conditions in this run" in md
    assert "Training loss: no fine-tuning loss curves in this run." in md
    assert "Cost vs accuracy: no condition recorded its wall time or peak memory." in md
    assert "Only the base model was evaluated here" in md
    assert "No base-model result with per-question records" in md
    assert "<img" not in (out / "report.html").read_text()
    page = (out / "report.html").read_bytes()
    again = write_report(tmp_path, tmp_path / "rep")  # an earlier report may be replaced; same bytes
    assert (again / "report.md").read_text() == md and (again / "report.html").read_bytes() == page


def test_empty_and_failed_only_run(tmp_path: Path) -> None:
    with Store(tmp_path, create=True) as s:
        s.put_condition(Condition("a", "m", "sciq", "base", 0, 0, 0, 0, "acc", "failed", error="boom\nline 2"))
    md = (write_report(tmp_path) / "report.md").read_text()
    assert "1 condition (0 done, 1 failed)" in md and "| sciq | m | base | 0 | 0 | 0 | boom line 2 |" in md
    assert "Accuracy vs K: no RAG conditions in this run." in md
    assert "Cost vs accuracy: no condition recorded its wall time or peak memory." in md


def test_report_is_atomic_and_guards_its_folder(full_run: Path, report: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    before = {p.name: p.read_bytes() for p in report.iterdir()}
    import kinject.report.build as rep

    def broken(blocks: object, title: str, folder: Path) -> str:
        (folder / "report.html").write_text("<html><body>half a page")
        raise OSError("disk full")

    monkeypatch.setattr(rep, "to_html", broken)
    with pytest.raises(OSError, match="disk full"):
        write_report(full_run)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in report.iterdir()} == before  # the finished report is untouched
    assert not [p for p in full_run.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    precious = tmp_path / "docs"
    precious.mkdir()
    (precious / "thesis.tex").write_text("x")
    with pytest.raises(KinjectError, match="not an earlier kinject report"):
        write_report(full_run, precious)
    with pytest.raises(KinjectError, match="replace the run directory"):
        write_report(full_run, full_run)
    with pytest.raises(KinjectError, match="no results.sqlite"):
        write_report(tmp_path)
    assert (precious / "thesis.tex").read_text() == "x"


def test_unchanged_run_reuses_plots(full_run: Path, report: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun whose data did not change (only stage statuses did) copies the previous images
    instead of starting matplotlib; new data redraws them."""
    import kinject.report.build as rep

    run = tmp_path / "run"
    shutil.copytree(full_run, run)

    drawn = []

    def draw(run: object, path: Path) -> None:
        drawn.append(path.name)
        raise RuntimeError("no fonts")

    monkeypatch.setattr(rep, "PLOTS", tuple((f, t, draw) for f, t, _ in rep.PLOTS))
    with Store(run) as s:
        s.put_stage(Stage("a1", "corpus", "sciq corpus", "computed", 0.1, 300.0))
    out = write_report(run)
    assert drawn == []
    for png in report.glob("*.png"):
        assert (out / png.name).read_bytes() == png.read_bytes()
    assert (out / "report.html").read_text().count("data:image/png") == 4
    with Store(run) as s:
        put(s, "sciq", "rag", 5, outcomes(RAG[3]))
    md = (write_report(run) / "report.md").read_text()  # new data: redrawn; a plot that fails is a note
    assert len(drawn) == len(rep.PLOTS) and not list(out.glob("*.png"))
    assert "*Accuracy vs K: could not be drawn (RuntimeError: no fonts).*" in md


def test_results_csv(full_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.csv"
    write_csv(results_rows(full_run), path)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 16 and {r["status"] for r in rows} == {"done", "failed"}
    best = next(r for r in rows if r["method"] == "rag" and r["k"] == "2")
    assert float(best["score"]) == pytest.approx(92 / 120)
    mmlu = next(r for r in rows if r["task"].startswith("mmlu") and r["method"] == "base")
    assert float(mmlu["score"]) == pytest.approx(0.4) and float(mmlu["acc"]) == 0.25  # acc_norm is the headline
    assert [p.name for p in path.parent.iterdir()] == ["results.csv"]


def test_cli_results_and_report(full_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kinject.cli.main import app

    res = CliRunner().invoke(app, ["results", str(full_run), "--csv", str(tmp_path / "r.csv")])
    assert res.exit_code == 0, res.output
    assert "0.767 ± 0.039" in res.output and "failed" in res.output and (tmp_path / "r.csv").is_file()
    run = tmp_path / "run"
    with Store(run, create=True) as s:
        put(s, "sciq", "base", 0, outcomes(set(range(7)), 10), eval_s=None)  # type: ignore[arg-type]
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert (run / "report" / "report.html").is_file() and "report.html" in res.output
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert res.exit_code != 0 and isinstance(res.exception, KinjectError)


def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(chromium() is None, reason="no chromium on PATH (apt-get install chromium to run this check)")
def test_html_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    import numpy as np
    from matplotlib.image import imread

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from report_screenshot import screenshot

    png = screenshot(report / "report.html", tmp_path / "page.png", width=1200, height=2400)
    img = imread(png)
    assert img.shape[:2] == (2400, 1200)
    ink = (img[..., :3] < 0.5).any(axis=2)
    assert ink[:300].mean() > 0.002          # the title and first paragraphs rendered
    assert ink.mean() > 0.01                  # tables and plots, not a blank page
    assert np.ptp(img[..., :3]) > 0.5
