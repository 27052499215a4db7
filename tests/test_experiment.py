"""`kinject run`: config validation, the stage cache, failure isolation and kill/resume at tiny scale."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from workspace import FACTS, write_project

from kinject.core.errors import KinjectError
from kinject.eval.methods import parse_method
from kinject.experiment.config import load_config
from kinject.experiment.run import run


@pytest.fixture
def project(tiny_lm, tmp_path: Path) -> Path:
    """A folder with a tiny model, a 6-document knowledge base, 6 questions and a config."""
    return write_project(tmp_path, tiny_lm)


def _results(run_dir: Path) -> tuple[list, list]:
    """Everything in the store that must be reproducible (timings and memory excluded)."""
    db = sqlite3.connect(run_dir / "results.sqlite")
    conds = db.execute("SELECT id, model, task, method, k, shots, paraphrases, seed, metric, status, n, acc, "
                       "acc_norm, recall, mrr FROM conditions ORDER BY id").fetchall()
    rows = db.execute("SELECT * FROM records ORDER BY condition_id, item_id").fetchall()
    db.close()
    return conds, rows


def test_methods_parse() -> None:
    assert parse_method("ft-par:10+rag") == parse_method("ft-par:10+rag")
    m = parse_method("ft-par:10+rag")
    assert (m.ft, m.paraphrases, m.rag) == ("full", 10, True)
    assert parse_method("lora").ft == "lora" and not parse_method("lora").rag
    assert parse_method("rag").ft is None and parse_method("rag").rag
    for bad in ("fine-tune", "ft-par:0", "ft+rag+rag", "RAG", "lora-par:3"):
        with pytest.raises(ValueError):
            parse_method(bad)


@pytest.mark.parametrize("edit, where, what", [
    ("methods: [base, rag, ft, ft+rag]", "methods: [base, rga]", ("tiny.yaml:4:", "methods.1", "unknown method 'rga'")),
    ("k: [0, 1, 2]", "k: [0, -1]", ("tiny.yaml:3:", "k:", ">= 0")),
    ("k: [0, 1, 2]", "k: [0]", ("tiny.yaml:", "tasks.0", "rag methods need a K above 0")),
    ("    kb: facts", "    kb: facts\n    k: [-2]", ("tiny.yaml:13:", "tasks.0.k", ">= 0")),
    ("  epochs: 2", "  epochs: 0", ("tiny.yaml:15:", "finetune.epochs", "greater than or equal to 1")),
    ("    kb: facts", "    kb: fcts", ("tiny.yaml:12:", "tasks.0.kb", "unknown knowledge base 'fcts'")),
    ("  batch: 4", "  bacth: 4", ("tiny.yaml:17:", "finetune.bacth", "unknown key")),
    ("models: [tiny]", "models: [no-such-model]", ("tiny.yaml:2:", "models.0", "unknown model 'no-such-model'")),
])
def test_config_errors_name_file_line_and_key(project: Path, edit: str, where: str, what: tuple) -> None:
    path = project / "tiny.yaml"
    path.write_text(path.read_text().replace(edit, where))
    with pytest.raises(KinjectError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message
    for part in what:
        assert part in message


def test_task_k_overrides_the_runs_k(project: Path) -> None:
    from kinject.experiment.planning import plan

    path = project / "tiny.yaml"
    path.write_text(path.read_text().replace("    kb: facts", "    kb: facts\n    k: [0, 2]"))
    p = plan(load_config(path), project / "c", Console(quiet=True))
    assert sorted(k for ev in p.evals for k in ev.method_names) == [0, 0, 2, 2]  # base/rag@2, ft/ft+rag@2


def test_unknown_task_fails_before_any_work(project: Path) -> None:
    path = project / "tiny.yaml"
    path.write_text(path.read_text().replace("task.jsonl@cloze", "mmlu:no_such_subject"))
    proc = subprocess.run([sys.executable, "-m", "kinject.cli.main", "run", str(path), "--cache", str(project / "c")],
                          capture_output=True, text=True, cwd=project)
    assert proc.returncode == 2
    assert "tiny.yaml:11: tasks.0.task" in proc.stderr and "Traceback" not in proc.stderr
    assert not (project / "c").exists()


@pytest.mark.slow
def test_grid_runs_is_cached_and_isolates_failures(project: Path) -> None:
    console = Console(stderr=True, quiet=True)
    first = run(project / "tiny.yaml", project / "run1", project / "cache", console, report=False)
    assert (first.computed, first.failed) == (5, [])  # corpus, index, eval base, finetune, eval ft
    conds, rows = _results(project / "run1")
    assert sorted((c[3], c[4]) for c in conds) == [("base", 0), ("ft", 0), ("ft+rag", 1), ("ft+rag", 2),
                                                    ("rag", 1), ("rag", 2)]
    assert len(rows) == 6 * 6
    recall = {(c[3], c[4]): c[13] for c in conds}
    assert recall["rag", 2] >= recall["rag", 1] > 0  # questions carry their source chunk
    again = run(project / "tiny.yaml", project / "run2", project / "cache", console, report=False)
    assert (again.computed, again.cached) == (0, 5)
    assert _results(project / "run2") == (conds, rows)

    # A second model whose folder is broken: its conditions fail, the first model's still run.
    (project / "broken").mkdir()
    (project / "broken" / "config.json").write_text("{not json")
    path = project / "tiny.yaml"
    path.write_text(path.read_text().replace("models: [tiny]", "models: [tiny, broken]"))
    mixed = run(path, project / "run3", project / "cache", console, report=False)
    assert mixed.failed and all("broken" in f for f in mixed.failed)
    db = sqlite3.connect(project / "run3" / "results.sqlite")
    status = dict(db.execute("SELECT model || ' ' || method || ' ' || k, status FROM conditions").fetchall())
    assert status["tiny ft+rag 2"] == "done" and status["broken ft+rag 2"] == "failed"
    assert db.execute("SELECT error FROM conditions WHERE model = 'broken' AND method = 'ft'").fetchone()[0]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_results(project: Path) -> None:
    """kill -9 at three moments (after the corpus, mid-training, mid-eval); each rerun continues;
    the end result equals an uninterrupted run's."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "kinject.cli.main", "run", "tiny.yaml", "--no-report"]
    subprocess.run(cmd + ["--out", "clean", "--cache", "cache-clean"], cwd=project, env=env, check=True,
                   capture_output=True)

    def killed_after(marker: str, delay: float = 0.0) -> None:
        """Start the run, SIGKILL it `delay` s after `marker` appears in its log."""
        proc = subprocess.Popen(cmd + ["--out", "killed", "--cache", "cache-killed"], cwd=project, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:
            if marker in line:
                time.sleep(delay)
                break
        assert proc.poll() is None, f"the run finished before '{marker}'"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    killed_after("index")  # the corpus is built, the index is being built
    killed_after("epoch 1/2")  # mid-training, after the first epoch's checkpoint
    killed_after("[5/5] eval", delay=1.0)  # scoring the fine-tuned model
    final = subprocess.run(cmd + ["--out", "killed", "--cache", "cache-killed"], cwd=project, env=env,
                           capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert _results(project / "killed") == _results(project / "clean")


@pytest.mark.slow
def test_paraphrase_methods_run_through_a_real_generator(project: Path) -> None:
    """ft-par:N asks the generator (here the tiny local model: it writes gibberish, which validation
    drops and counts) and fine-tunes on chunks + the paraphrases that passed."""
    path = project / "tiny.yaml"
    text = path.read_text().replace("methods: [base, rag, ft, ft+rag]", "methods: [ft-par:2]")
    path.write_text(text.replace("name: tiny", f"name: tiny\ngenerator: local:{project / 'tiny'}"))
    summary = run(path, project / "run", project / "cache", Console(stderr=True, quiet=True), report=False)
    assert summary.failed == []
    (par_dir,) = [p for p in (project / "cache" / "paraphrase").iterdir() if p.is_dir()]
    report = json.loads((par_dir / "report.json").read_text())
    assert report["chunks"] >= len(FACTS) and report["asked"] == 2 * report["chunks"]
    assert report["unfinished"] == 0 and report["attempts"] >= report["asked"]
    # a random 2-layer model writes gibberish: none of it passes, and every reply is counted under a reason
    assert report["valid"] == 0, report
    assert sum(report["rejected"].values()) >= report["asked"], report
    db = sqlite3.connect(project / "run" / "results.sqlite")
    assert db.execute("SELECT method, paraphrases, status FROM conditions").fetchall() == [("ft-par:2", 2, "done")]
    assert db.execute("SELECT paraphrases FROM trainings").fetchall() == [(2,)]


def test_a_stage_that_fails_on_a_bug_keeps_its_traceback(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain bug inside a stage (here an eval that raises ZeroDivisionError) fails that stage
    only; its full traceback is in the run's logs/ and the recorded error points to it."""
    import kinject.experiment.planning

    def broken(*args, **kwargs):
        return 1 / 0

    monkeypatch.setattr(kinject.experiment.planning, "eval_stage", broken)
    summary = run(project / "tiny.yaml", project / "run", project / "cache", Console(quiet=True), report=False)
    assert summary.failed
    logs = sorted((project / "run" / "logs").glob("eval-*.log"))
    assert logs and "ZeroDivisionError" in logs[0].read_text() and "in broken" in logs[0].read_text()
    db = sqlite3.connect(project / "run" / "results.sqlite")
    errors = [e for (e,) in db.execute("SELECT error FROM conditions WHERE status = 'failed'")]
    assert errors and all("ZeroDivisionError" in e and "traceback: " in e and ".log" in e for e in errors)
