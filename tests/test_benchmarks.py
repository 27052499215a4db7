"""Every script in benchmarks/ runs here at smoke scale, so an API change that breaks one fails
the suite. Each runs as its own process (as a user would start it) and is checked on what it
prints, not only on its exit status. gpu_check.py and backend_speed.py have their smoke tests in
test_gpu_check.py and test_completions.py; the ones here that load a real model are `slow`."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from workspace import FACTS, save_tiny_embedder

BENCH = Path(__file__).parents[1] / "benchmarks"
NUM = r"([0-9]+(?:\.[0-9]+)?)"


def bench(script: str, *args: str | Path, timeout: float = 600, env: dict | None = None) -> str:
    """Run benchmarks/`script` with `args`; its stdout, after asserting it exited 0."""
    proc = subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"no match for {pattern!r} in:\n{text}"
    return float(m.group(1))


@pytest.fixture(scope="module")
def tiny_folder(tiny_lm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny 2-layer LM saved as a model folder, a tiny embedder, and a corpus of the six
    invented facts (each document the fact 4 times) as kb.jsonl."""
    root = tmp_path_factory.mktemp("bench")
    model, tok = tiny_lm
    model.save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    save_tiny_embedder(root / "embedder", tok)
    with open(root / "kb.jsonl", "w") as fh:
        for rep in range(3):
            for i, (title, text, _, _) in enumerate(FACTS):
                fh.write(json.dumps({"id": f"d{rep}-{i}", "title": title, "text": " ".join([text] * 4)}) + "\n")
    return root


def test_lmeval_bridge_imports_and_measures() -> None:
    """The helper module the lm-eval benchmarks share: its entry points exist, the matmul
    roofline measures something, and lm-eval's task templates it copies are installed."""
    import torch

    sys.path.insert(0, str(BENCH))
    try:
        import lmeval_bridge
    finally:
        sys.path.remove(str(BENCH))
    for name in ("prepare", "run_lm_eval", "hflm", "export_condition", "matmul_peak", "Condition", "LmEvalRun"):
        assert callable(getattr(lmeval_bridge, name)), name
    assert lmeval_bridge.Condition("mmlu:anatomy@cloze", 5).label == "mmlu:anatomy@cloze 5-shot"
    assert lmeval_bridge.matmul_peak(torch.float32, n=64) > 0
    tasks = lmeval_bridge._lm_eval_tasks_dir()
    for template in ("mmlu/default/mmlu_anatomy.yaml", "mmlu/continuation/mmlu_anatomy.yaml", "sciq/sciq.yaml"):
        assert (tasks / template).is_file(), template


def test_finetune_speed_smoke(tiny_folder: Path) -> None:
    """All three trainers (kinject, HF padded, HF packed) run 2 steps on the tiny model and the
    script prints tokens/s for each, the ratios between them, (--profile) their op tables and
    (--compile) kinject's compiled trainer against the others."""
    out = bench("finetune_speed.py", "--model", tiny_folder / "lm", "--source", tiny_folder / "kb.jsonl",
                "--steps", "2", "--micro-batch", "2", "--block-size", "32", "--profile", "--compile")
    assert "micro-batch 2, 2 steps each (steps 2..2 timed)" in out, out
    # --profile: where each trainer's time goes, op by op, and which optimizer the HF Trainer used
    assert "where kinject's trainer spends its time" in out and "where the HF Trainer (packed)" in out, out
    assert out.count("aten::") >= 10 and "HF Trainer (packed): optimizer " in out, out
    padded = number(r"HF Trainer, per-chunk padding: +" + NUM + " useful tokens/s", out)
    packed = number(r"HF Trainer, packed blocks +: +" + NUM + " tokens/s", out)
    ours = number(r"kinject, packed blocks +: +" + NUM + r" tokens/s  \(64 tokens/step", out)
    assert min(padded, packed, ours) > 0, out
    share = number(r"tokens/step, " + NUM + "% of each batch padding", out)
    assert 0 <= share < 100, out
    vs_padded = number(r"kinject vs HF Trainer \(tokens/s\): " + NUM + "x per-chunk padding", out)
    vs_packed = number(r"x per-chunk padding, " + NUM + "x packed blocks", out)
    assert math.isclose(vs_padded, ours / padded, rel_tol=0.02, abs_tol=0.01), out
    assert math.isclose(vs_packed, ours / packed, rel_tol=0.02, abs_tol=0.01), out
    assert number(r"peak RSS \(each its own process\): kinject " + NUM + " GB", out) > 0, out
    assert "each trainer in its own process, 1 round(s)" in out, out
    compiled = number(r"kinject, compiled +: +" + NUM + " tokens/s", out)
    assert compiled > 0 and math.isclose(number(r"s with the compile\): " + NUM + "x HF packed", out), compiled / packed,
                                         rel_tol=0.02, abs_tol=0.01), out


def test_finetune_speed_refuses_a_corpus_too_small(tiny_folder: Path) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "finetune_speed.py"), "--model", str(tiny_folder / "lm"),
                           "--source", str(tiny_folder / "kb.jsonl"), "--steps", "1000"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode != 0 and "lower --steps" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_finetune_speed_refuses_no_rounds(tiny_folder: Path) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "finetune_speed.py"), "--model", str(tiny_folder / "lm"),
                           "--source", str(tiny_folder / "kb.jsonl"), "--rounds", "0"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "--rounds must be at least 1" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_embed_speed_smoke(tiny_folder: Path) -> None:
    """Cold, warm and incremental index builds with the tiny embedder on 18 documents."""
    out = bench("embed_speed.py", "--embedder", tiny_folder / "embedder", "--source", tiny_folder / "kb.jsonl",
                "--tokenizer", tiny_folder / "lm")
    n = int(number(r" on ([0-9]+) .*kb\.jsonl chunks", out))
    assert n >= 18, out
    for label in ("encode loop, one text per call", "encode, batch 32", "kinject index build, cold cache",
                  "kinject index build, warm cache"):
        assert number(re.escape(label) + r"[^:]*: +" + NUM + " chunks/s", out) > 0, out
    total, now = re.search(r"after adding 10 documents: ([0-9]+) chunks, ([0-9]+) embedded now", out).groups()
    assert int(total) >= n + 10 and int(now) == int(total) - n, out  # only the new documents' chunks


def test_question_audit_smoke(tiny_folder: Path, tmp_path: Path) -> None:
    """On the fixture folder of a user's documents: each sampled question printed with its source
    and verdict, then the answer types' mix and the pass rate (the fixture's questions all pass)."""
    from docfixtures import write_docs

    docs = write_docs(tmp_path / "docs")
    out = bench("question_audit.py", "--folder", docs, "--n", "4", "--tokenizer", tiny_folder / "lm")
    shown = re.findall(r"^\[\d+\] (\S+).* · (ok|FAIL [a-z,]+)$", out, re.M)
    assert len(shown) == 4 and all((docs / source).is_file() for source, _ in shown), out
    assert out.count("\n    Q: ") == 4 and out.count("\n    A: ") == 4 and "___" in out, out
    assert re.search(r"questions from \d+ chunks of 7 documents; types: number \d+%", out), out
    assert number(r"pass rate: 4/4 \(" + NUM + "%\\)", out) == 100.0, out


NO_APT = pytest.mark.skipif(shutil.which("apt-get") is None, reason="the real folder comes from Debian packages")


def test_realfolder_copy_takes_globs_and_the_second_folders_generated_files(tmp_path: Path) -> None:
    """The second real folder keeps what a user's export holds (Sphinx's `_sources` .txt, its search
    page) where the first drops it; a `*` in a take copies every match into the named folder."""
    sys.path.insert(0, str(BENCH))
    try:
        import realfolder_fetch as rf
    finally:
        sys.path.remove(str(BENCH))
    site = tmp_path / "pkg" / "html"
    for name in ("index.html", "search.html", "_sources/index.rst.txt", "_static/basic.css",
                 "releaselog/3_35_0.html", "releaselog/3_35_1.html", "releaselog/3_36_0.html"):
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text("x")
    rf._copy(site, tmp_path / "first")
    rf._copy(site, tmp_path / "second", second=True)
    rf._copy(site / "releaselog" / "3_35_*.html", tmp_path / "logs", second=True)
    listed = {k: sorted(p.relative_to(tmp_path / k).as_posix() for p in (tmp_path / k).rglob("*") if p.is_file())
              for k in ("first", "second", "logs")}
    assert listed["first"] == ["index.html", "releaselog/3_35_0.html", "releaselog/3_35_1.html",
                               "releaselog/3_36_0.html"]
    assert listed["second"] == sorted(["_sources/index.rst.txt", "index.html", "search.html", *listed["first"][1:]])
    assert listed["logs"] == ["3_35_0.html", "3_35_1.html"]


@NO_APT
@pytest.mark.slow
def test_real_folder_smoke(tmp_path: Path) -> None:
    """The smoke-scale real folder (MkDocs' own site, the Debian FAQ PDF, httpx's changelog, pulled
    from Debian and PyPI into the cache): what was read and skipped, init's design at a budget that
    fits and its refusal at one that does not, and the audit of its questions."""
    out = bench("real_folder.py", "--small", "--minutes", "30,1", "--audit", "20", "--out", tmp_path, timeout=900)
    assert re.search(r"files \(\d+ html, 1 markdown, 1 pdf\), \d+ PDF pages, [1-9]\d* redirect pages left out", out), out
    assert number(r"→ " + NUM + " chunks", out) > 100, out
    line = next(ln for ln in out.splitlines() if ln.startswith("--minutes 30:"))
    assert re.search(r"\d+ of \d+ questions over \d+ documents, FT on \d+ of \d+ chunks", line), line
    assert number(r"planned " + NUM + " min", line) <= 30, line
    assert "--minutes 1: refused:" in out and "give --minutes" in out, out
    assert number(r"audit: \d+/\d+ questions pass every machine check \(" + NUM + r"%\)", out) >= 90, out
    assert (tmp_path / "m30.yaml").is_file() and "train_on:" in (tmp_path / "m30.yaml").read_text()


@NO_APT
@pytest.mark.slow
def test_retrieval_choice_smoke() -> None:
    """Hand-written questions on the smoke-scale folder, recall only: every retriever with and
    without context headers, each recall a share."""
    out = bench("retrieval_choice.py", "--small", "--no-rag", "--limit", "12", timeout=900)
    rows = re.findall(r"^(dense minilm-l6|bm25|hybrid minilm-l6)\s+(on|off)\s+([0-9.]+)\s+([0-9.]+)", out, re.M)
    assert {(r, h) for r, h, *_ in rows} == {(r, h) for r in ("dense minilm-l6", "bm25", "hybrid minilm-l6")
                                             for h in ("on", "off")}, out
    assert all(0 <= float(a) <= float(b) <= 1 for *_, a, b in rows), out


def _minimal_run(run: Path) -> None:
    """A run folder holding what `kinject report` reads: base vs RAG on 40 questions, one FT."""
    from kinject.eval.results import Condition, Row, Store

    def put(store: Store, method: str, k: int, right: int, training_id: str | None = None) -> None:
        correct = [1 if i < right else 0 for i in range(40)]
        acc = right / 40
        store.put_condition(Condition(f"sciq/m/{method}/{k}/s0", "m", "sciq", method, k, 0, 0, 0, "acc", "done",
                                      n=40, acc=acc, acc_stderr=math.sqrt(acc * (1 - acc) / 39),
                                      recall=0.8 if k else None, eval_s=1.0, training_id=training_id),
                            [Row(f"q{i:02d}", None, 0, 0 if c else 1, 0 if c else 1, c, (-1.0, -2.0), ())
                             for i, c in enumerate(correct)])

    with Store(run, create=True) as s:
        put(s, "base", 0, 16)
        put(s, "rag", 1, 30)
        put(s, "ft", 0, 18, training_id="t")


def _browser() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_report_screenshot_without_a_browser_writes_the_report_and_says_what_to_install(tmp_path: Path) -> None:
    _minimal_run(tmp_path / "run")
    bare = tmp_path / "bin"  # a PATH with no browser on it
    bare.mkdir()
    proc = subprocess.run([sys.executable, str(BENCH / "report_screenshot.py"), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PATH": str(bare)})
    assert proc.returncode == 1, proc.stderr
    assert "report written in" in proc.stdout and (tmp_path / "run" / "report" / "report.html").is_file()
    assert "no chromium" in proc.stderr and "apt-get install chromium" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.skipif(_browser() is None, reason="no chromium on PATH (apt-get install chromium to run this check)")
def test_report_screenshot_smoke(tmp_path: Path) -> None:
    """From a run folder: writes the report, screenshots it in headless Chromium, reports the size."""
    _minimal_run(tmp_path / "run")
    png = tmp_path / "shot.png"
    out = bench("report_screenshot.py", tmp_path / "run", "--out", png, "--width", "1000", "--height", "1400")
    assert "report written in" in out and (tmp_path / "run" / "report" / "report.html").is_file(), out
    assert "screenshot 1000x1400 in" in out and str(png) in out, out
    assert number(r"\(" + NUM + "% of pixel rows have content\\)", out) >= 10, out
    from matplotlib.image import imread

    assert imread(png).shape[:2] == (1400, 1000)


@pytest.mark.slow
def test_load_speed_smoke() -> None:
    """SmolLM2-135M from its safetensors folder and from the GGUF: both load, logits agree."""
    out = bench("load_speed.py", "--model", "smollm2-135m")
    assert out.startswith("smollm2-135m: safetensors folder"), out
    assert number(r"safetensors folder " + NUM + "s", out) > 0 and number(r"GGUF " + NUM + "s", out) > 0, out
    assert number(r"speed-up " + NUM + "x", out) > 0, out
    assert number(r"max \|logit diff\| ([0-9.e+-]+)", out) < 1e-3, out  # the same weights


@pytest.mark.slow
def test_lm_eval_parity_smoke(tmp_path: Path) -> None:
    """2 questions of an MMLU 5-shot and a SciQ closed-book condition: lm-eval and kinject agree."""
    out_json = tmp_path / "parity.json"
    out = bench("lm_eval_parity.py", "--conditions", "mmlu:anatomy:5", "sciq:0", "--limit", "2", "--out", out_json)
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["condition"] for r in rows] == ["mmlu:anatomy 5-shot", "sciq 0-shot"], out
    for r in rows:
        assert r["n"] == 2 and r["agree"] == 1.0 and r["agree_norm"] == 1.0, r
        assert r["max_loglik_diff"] < 1e-3 and r["acc_kinject"] == r["acc_lm_eval"], r
        assert f"{r['condition']:28s} n=   2 agree=1.0000 agree_norm=1.0000" in out, out


@pytest.mark.slow
def test_scoring_speed_smoke() -> None:
    """2 questions of MMLU 5-shot and SciQ with passages: questions/s of both, predictions agree, the
    ceiling at the model's own matmul shapes, and the profile of the scoring."""
    out = bench("scoring_speed.py", "--conditions", "mmlu:anatomy:5", "sciq:support:0", "--limit", "2", "--profile")
    assert number(r"matmul peak \(fp32, 2048\^3, [0-9]+ threads\): " + NUM + " GFLOP/s", out) > 0, out
    for label in ("mmlu:anatomy 5-shot", "sciq:support 0-shot"):
        line = next((ln for ln in out.splitlines() if ln.startswith(label)), None)
        assert line is not None, out
        assert " n=2 " in line and "prediction agreement 1.0000" in line, line
        assert number(r"kinject\[fp32\] " + NUM + " q/s", line) > 0 and number(r"speed-up " + NUM + "x", line) > 0
        assert number(r"kinject " + NUM + " tokens", line) > 0, line
    ceilings = [ln for ln in out.splitlines() if "ceiling: the same linear-layer matmuls alone" in ln]
    assert len(ceilings) == 2 and all(number(NUM + " GFLOP/s =", ln) > 0 for ln in ceilings), out
    assert out.count("--- where kinject's") == 2 and "aten::mm" in out, out


@pytest.mark.slow
def test_ask_quality_smoke() -> None:
    """2 questions a fixture group and 1 SciQ question, SmolLM2-135M answering: every group is
    reported with its rate and the checks that abstained; off-topic questions abstain."""
    out = bench("ask_quality.py", "--model", "smollm2-135m", "--limit", "2", "--sciq", "1")
    assert "ask with smollm2-135m, bm25 retrieval, embedder minilm-l6 (chunk ≥ 0.35, sentence ≥ 0.60), k=3" in out, out
    for group, n in (("answerable", 2), ("missing", 2), ("off-topic", 2), ("sciq, own passage in", 1),
                     ("sciq, own passage out", 1)):
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(group + " ")), None)
        assert line is not None and re.search(rf"\d+/{n} ", line), out
    assert re.search(r"off-topic +2/2 +100\.0% +off-topic 2 ", out), out


def test_generation_speed_smoke(tiny_folder: Path, tmp_path: Path) -> None:
    """Batched free-form answering against a per-question generate loop, with the tiny LM on 6
    questions of a free-form file (one of them a few-shot example)."""
    task = tmp_path / "free.jsonl"
    task.write_text("".join(json.dumps({"question": f"What is fact {i}?", "answer": f"answer {i}",
                                        **({"split": "dev"} if i == 0 else {})}) + "\n" for i in range(7)))
    out = bench("generation_speed.py", "--model", tiny_folder / "lm", "--task", task, "--n", "6", "--shots", "1",
                "--batch-size", "4")
    assert number(r"per-question model\.generate loop: +" + NUM + " questions/s", out) > 0, out
    assert number(r"kinject batched, batch 4: +" + NUM + " questions/s", out) > 0, out
    assert re.search(r"speed-up: [0-9.]+x; same answers: [0-9]+/6", out), out


def test_serve_load_smoke(tiny_folder: Path) -> None:
    """20 requests from 4 clients against `kinject serve` with the tiny LM: every kind of request
    is sent, every reply matches its request, and the server is alive and idle afterwards."""
    out = bench("serve_load.py", "--model", tiny_folder / "lm", "--requests", "20", "--clients", "4")
    assert "20 requests from 4 concurrent clients" in out, out
    assert "replies matching their requests: 20/20; server alive and idle" in out, out
    assert number(r"throughput " + NUM + " requests/s", out) > 0, out
    assert number(r"latency model +p50 +" + NUM + " ms", out) > 0 and number(r"p95 +" + NUM + " ms", out) > 0, out
