"""Fault drills at tiny scale: kill -9 at random moments of `kinject run`, a disk that fills up
while a checkpoint, an index or a corpus is written, and two runs into separate caches that
must agree to the last bit.

Every command runs in a real process that is really killed. Importing torch and transformers
costs seconds per process, so the processes are forked from a "zygote" that imported them
once: each fork then runs `kinject.cli.main.main` with its own argv, environment, working folder,
log file and (for the disk drills) a file-size limit. A write past RLIMIT_FSIZE fails inside
the write system call exactly as on a full disk, only with EFBIG instead of ENOSPC, so the
libraries' own error paths (torch.save, safetensors, faiss, pyarrow, sqlite) are exercised
without mocks. (Generator faults — HTTP 500s, 429s, timeouts, dropped connections, garbage
replies against a real local server — are drilled in tests/test_synth.py.)
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from workspace import CURIE, CURIE_PAR, EVEREST, EVEREST_PAR, FACTS, config, save_tiny_embedder, write_facts

ZYGOTE = r'''
import json, os, resource, signal, sys, time
os.environ.update(TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
import accelerate, faiss, sentence_transformers, torch, transformers  # the slow imports, once
import kinject.cli.main, kinject.eval.evaluation, kinject.experiment.run, kinject.train.finetune, kinject.rag.retrieval, kinject.lm.scoring
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.chdir(job["cwd"])
        os.environ.update(job["env"])
        if job["fsize"]:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (job["fsize"], resource.RLIM_INFINITY))
        sys.argv = ["kinject", *job["argv"]]
        code = 0
        try:
            kinject.cli.main.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    killed = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        late = job["kill_after"] is not None and time.monotonic() - started >= job["kill_after"]
        if late or (job["kill_when"] and os.path.exists(job["kill_when"])):
            os.kill(pid, signal.SIGKILL)
            killed = True
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.01)
    print(json.dumps({"code": os.waitstatus_to_exitcode(status), "killed": killed,
                      "seconds": time.monotonic() - started}), flush=True)
'''


class Zygote:
    """A process that imported kinject's heavy dependencies once and forks one child per command."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.n = 0

    def run(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None, kill_after: float | None = None,
            kill_when: Path | None = None, fsize: int | None = None) -> tuple[int, bool, float, str]:
        """(exit code, killed?, seconds, stdout+stderr) of `kinject ARGV`; SIGKILL after `kill_after`
        seconds or once `kill_when` exists; writes limited to `fsize` bytes per file."""
        self.n += 1
        log = cwd / f"proc-{self.n}.log"
        job = {"argv": argv, "cwd": str(cwd), "env": env or {}, "log": str(log), "fsize": fsize,
               "kill_after": kill_after, "kill_when": str(kill_when) if kill_when else None}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return reply["code"], reply["killed"], reply["seconds"], log.read_text()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


@pytest.fixture(scope="module")
def project(tiny_lm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LM, a tiny 64-d embedder (the LM's body, mean-pooled), 6 facts, 6 questions, a config."""
    root = tmp_path_factory.mktemp("drill")
    model, tok = tiny_lm
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    save_tiny_embedder(root / "emb", tok)
    write_facts(root)
    (root / "drill.yaml").write_text(config("drill", root / "emb"))
    return root


def run_argv(name: str) -> list[str]:
    return ["run", "drill.yaml", "--no-report", "--out", f"run-{name}", "--cache", f"cache-{name}"]


def home(project: Path, name: str) -> dict[str, str]:
    """Each run gets its own $KINJECT_HOME too (the embedding-vector cache lives there)."""
    return {"KINJECT_HOME": str(project / f"home-{name}")}


def results(run_dir: Path) -> dict[str, list]:
    """Everything in the store that must be reproducible: timings and memory excluded."""
    db = sqlite3.connect(run_dir / "results.sqlite")
    out = {
        "conditions": db.execute("SELECT id, model, task, method, k, shots, paraphrases, seed, metric, status, error, "
                                 "n, acc, acc_stderr, acc_norm, acc_norm_stderr, recall, mrr, training_id "
                                 "FROM conditions ORDER BY id").fetchall(),
        "records": db.execute("SELECT * FROM records ORDER BY condition_id, item_id").fetchall(),
        "trainings": db.execute("SELECT id, model, kb, method, paraphrases, seed, lr, epochs, steps, blocks, "
                                "final_loss, val_loss FROM trainings ORDER BY id").fetchall(),
        "train_log": db.execute("SELECT * FROM train_log ORDER BY training_id, kind, step").fetchall(),
    }
    db.close()
    return out


@pytest.fixture(scope="module")
def reference(project: Path, zygote: Zygote) -> tuple[dict, float]:
    """An uninterrupted run: its results and its wall time."""
    code, killed, seconds, log = zygote.run(run_argv("ref"), project, home(project, "ref"))
    assert code == 0 and not killed, log
    return results(project / "run-ref"), seconds


# ---------------------------------------------------------------------------- determinism


@pytest.mark.slow
def test_two_runs_into_separate_caches_agree_exactly(project: Path, zygote: Zygote, reference) -> None:
    """Same config, fresh caches, fresh processes: every per-question log-likelihood, every loss of
    the fine-tuning curve and every metric is bit-identical (CPU, fp32)."""
    code, _, _, log = zygote.run(run_argv("again"), project, home(project, "again"))
    assert code == 0, log
    again = results(project / "run-again")
    ref = reference[0]
    assert len(ref["records"]) == 6 * 6 and len(ref["train_log"]) > 0
    assert again == ref  # exact: no tolerance
    logliks = [json.loads(r[7]) for r in ref["records"]]
    assert all(len(x) == 4 and all(isinstance(v, float) for v in x) for x in logliks)


# ---------------------------------------------------------------------------- kill -9


def _stage_in_flight(log: str) -> str:
    """The stage a killed process was in, from its "[i/N] kind label" lines."""
    started = re.findall(r"\[(\d+)/\d+\] (\w+) ", log)
    return f"{started[-1][1]} (stage {started[-1][0]})" if started else "start-up (no stage begun)"


def _reached(steps, cost: dict) -> float:
    """Where on the reference timeline a rerun starts: the cost of the finished stages, plus the
    share of a fine-tuning that its checkpoint already holds."""
    at = 0.0
    for s in steps:
        wall, total = cost[s.key]
        ckpt = s.out / "checkpoint" / "trainer.json"
        if s.done():
            at += wall
        elif total and ckpt.is_file():
            at += wall * json.loads(ckpt.read_text())["step"] / total
    return at


@pytest.mark.slow
def test_kill_9_at_ten_random_moments_then_resume(project: Path, zygote: Zygote, reference) -> None:
    """Ten kill points drawn by a seeded RNG over the uninterrupted run's duration. The chain:
    run, kill at point 1; rerun, kill at point 2; ...; a final rerun completes. A rerun skips
    finished stages in ~0 s, so each process is killed at (point - the reference time of the
    stages already finished): the kills fall across the whole run, not all into its first
    seconds. Where the machine has sped up since the reference run, a run may end before its
    kill: then the later points lie past the end, and the chain stops there (at least half the
    kills must have landed). The end result must equal the uninterrupted run's exactly."""
    from rich.console import Console

    from kinject.experiment.config import load_config
    from kinject.experiment.planning import plan

    ref, ref_seconds = reference
    cfg = load_config(project / "drill.yaml")
    cost = {}
    for s in plan(cfg, project / "cache-ref", Console(quiet=True)).steps:
        steps = json.loads((s.out / "summary.json").read_text())["steps"] if s.kind == "finetune" else None
        cost[s.key] = (json.loads((s.out.parent / f"{s.out.name}.cost.json").read_text())["wall_s"], steps)
    rng = random.Random(8)
    points = sorted(rng.uniform(0.02, 0.85) * ref_seconds for _ in range(10))
    kills = []
    for point in points:
        delay = max(0.2, point - _reached(plan(cfg, project / "cache-chain", Console(quiet=True)).steps, cost))
        code, killed, seconds, log = zygote.run(run_argv("chain"), project, home(project, "chain"), kill_after=delay)
        if not killed:  # the machine ran faster than during the reference: the rest of the points lie past the end
            assert code == 0, log
            break
        kills.append((round(point, 1), round(delay, 1), _stage_in_flight(log)))
    assert len(kills) >= len(points) // 2, f"only {len(kills)} of {len(points)} kills landed: {kills}"
    code, killed, _, log = zygote.run(run_argv("chain"), project, home(project, "chain"))
    print(f"\nreference {ref_seconds:.1f}s; kills (point on the reference timeline s, delay s, in flight):")
    for k in kills:
        print("  ", *k)
    assert code == 0, log
    assert results(project / "run-chain") == ref


# ---------------------------------------------------------------------------- disk full


FT = ["finetune", "--model", "tiny", "--corpus", "kb", "--epochs", "2", "--block-size", "32", "--batch", "4",
      "--micro-batch", "2", "--save-every", "1", "--val-fraction", "0", "--lr", "1e-3"]


def _one_error_line(log: str) -> str:
    lines = [ln for ln in log.splitlines() if ln.strip()]
    assert "Traceback" not in log and len(lines) >= 1 and lines[-1].startswith("error: "), log
    assert all(not ln.startswith("error") for ln in lines[:-1]), log
    print("\n", lines[-1])
    return lines[-1]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(project: Path, zygote: Zygote) -> Path:
    code, _, _, log = zygote.run(["corpus", "build", "--source", "kb.jsonl", "--tokenizer", "tiny", "--chunk-tokens",
                                  "64", "--min-tokens", "4", "--out", "kb"], project, home(project, "disk"))
    assert code == 0, log
    return project / "kb"


@pytest.mark.slow
def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(project: Path, zygote: Zygote, corpus) -> None:
    env = home(project, "disk")
    code, _, _, log = zygote.run(FT + ["--out", "ft-clean"], project, env)
    assert code == 0, log
    # a run killed once its first checkpoint exists, then resumed on a disk that is full
    _, killed, _, _ = zygote.run(FT + ["--out", "ft"], project, env, kill_when=project / "ft/checkpoint/trainer.json")
    assert killed
    ckpt = project / "ft" / "checkpoint"
    before = _files(ckpt)
    weights = len(before["model.safetensors"])
    code, _, _, log = zygote.run(FT + ["--out", "ft", "--resume"], project, env, fsize=weights // 2)
    line = _one_error_line(log)
    assert code == 2 and "cannot write" in line and "checkpoint" in line and "File too large" in line, log
    assert _files(ckpt) == before, "the last good checkpoint changed"
    assert not (project / "ft" / ".tmp-checkpoint").exists() and not (project / "ft" / "model").exists()
    # space is back: the checkpoint loads and the run ends on the uninterrupted run's loss curve
    code, _, _, log = zygote.run(FT + ["--out", "ft", "--resume"], project, env)
    assert code == 0 and "resumed at" in log, log
    clean = [json.loads(x) for x in (project / "ft-clean" / "log.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (project / "ft" / "log.jsonl").read_text().splitlines()]
    assert [r.get("loss") for r in resumed] == [r.get("loss") for r in clean]


@pytest.mark.slow
def test_disk_full_while_writing_an_index_keeps_the_previous_one(project: Path, zygote: Zygote, corpus) -> None:
    from kinject.rag.retrieval import DenseRetriever, Embedder

    env = home(project, "disk")
    build = ["index", "build", "--corpus", "kb", "--embedder", str(project / "emb"), "--out", "ix"]
    code, _, _, log = zygote.run(build, project, env)
    assert code == 0, log
    before = _files(project / "ix")
    # a rebuild (vectors cached) on a full disk: index.faiss cannot be written
    code, _, _, log = zygote.run(build, project, env, fsize=len(before["index.faiss"]) // 2)
    line = _one_error_line(log)
    assert code == 2 and "cannot write ix/index.faiss" in line and "File too large" in line, log
    assert _files(project / "ix") == before
    assert not [p for p in project.glob(".tmp-ix-*")], "a temporary index folder was left behind"
    retriever = DenseRetriever(project / "ix", Embedder(str(project / "emb"), cache_dir=project / "vectors"))
    assert len(retriever.search(["Where does the Quimby River flow?"], 2)[0]) == 2
    # the disk fills while the embedding cache grows (nothing cached yet): one line, no index folder
    code, _, _, log = zygote.run(build[:-1] + ["ix-new"], project, home(project, "disk-empty"), fsize=4096)
    line = _one_error_line(log)
    assert code == 2 and "cannot write" in line and ".sqlite" in line, log
    assert not (project / "ix-new").exists()


@pytest.mark.slow
def test_disk_full_while_writing_a_corpus_leaves_nothing(project: Path, zygote: Zygote) -> None:
    code, _, _, log = zygote.run(["corpus", "build", "--source", "kb.jsonl", "--tokenizer", "tiny", "--min-tokens",
                                  "4", "--out", "kb-full"], project, home(project, "disk"), fsize=1024)
    line = _one_error_line(log)
    assert code == 2 and "cannot write" in line and "kb-full" in line, log
    assert not (project / "kb-full").exists() and not list(project.glob(".tmp-kb-full-*"))


# ---------------------------------------------------------------------------- cache keys


def test_editing_an_input_file_changes_the_stage_keys(tmp_path: Path) -> None:
    """Cache keys must follow what a stage reads: the same config over an edited file is new work."""
    from rich.console import Console

    from kinject.experiment.config import load_config
    from kinject.experiment.planning import plan

    (tmp_path / "tiny").mkdir()  # planning never loads the model
    (tmp_path / "kb.jsonl").write_text(json.dumps({"id": "d0", "title": "Zorblat", "text": FACTS[0][1]}) + "\n")
    (tmp_path / "task.jsonl").write_text(json.dumps({"question": "When was Zorblat found?",
                                                     "choices": ["2031", "1999"], "gold": 0}) + "\n")
    (tmp_path / "drill.yaml").write_text(config("drill", "minilm-l6"))

    def keys() -> dict[str, str]:
        steps = plan(load_config(tmp_path / "drill.yaml"), tmp_path / "cache", Console(quiet=True)).steps
        return {f"{s.kind} {s.label}": s.key for s in steps}

    before = keys()
    assert keys() == before  # stable
    (tmp_path / "kb.jsonl").write_text(json.dumps({"id": "d0", "title": "Zorblat", "text": FACTS[1][1]}) + "\n")
    after = keys()
    assert after["corpus facts"] != before["corpus facts"]

    # a local embedder folder named relative to the config (not the working directory) is keyed by its files
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "config.json").write_text("{}")
    (tmp_path / "drill.yaml").write_text(config("drill", "emb"))
    local = keys()
    assert local["index facts-emb"] != after["index facts-minilm-l6"]
    (tmp_path / "emb" / "config.json").write_text('{"hidden_size": 8}')
    assert keys()["index facts-emb"] != local["index facts-emb"]


# ---------------------------------------------------------------------------- generator faults inside `kinject run`

GEN_CONFIG = """\
name: gen
models: [tiny]
k: [0]
methods: [ft-par:1]
generator: openai:scripted
knowledge_bases:
  facts:
    sources: [gen_kb.jsonl]
    chunk_tokens: 256
    min_tokens: 4
tasks:
  - task: gen_task.jsonl@cloze
    kb: facts
finetune:
  lr: [0.001]
  epochs: 1
  block_size: 32
  batch: 4
  micro_batch: 2
  val_fraction: 0
"""


@pytest.fixture
def gen_project(project: Path) -> Path:
    """The drill project plus a 2-fact knowledge base whose paraphrases the scripted server knows."""
    with open(project / "gen_kb.jsonl", "w") as fh:
        for i, text in enumerate((CURIE, EVEREST)):
            fh.write(json.dumps({"id": f"g{i}", "title": text.split()[1], "text": text}) + "\n")
    (project / "gen_task.jsonl").write_text(
        json.dumps({"question": "Who shared the 1903 prize?", "choices": ["Pierre Curie", "Niels Bohr"], "gold": 0})
        + "\n" + json.dumps({"question": "How high is Everest?", "choices": ["8,849 m", "5,895 m"], "gold": 0}) + "\n")
    (project / "gen.yaml").write_text(GEN_CONFIG)
    return project


def _paraphrase_report(cache: Path) -> dict:
    (stage,) = [p for p in (cache / "paraphrase").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return json.loads((stage / "report.json").read_text())


@pytest.mark.slow
def test_a_flaky_generator_is_retried_counted_and_the_run_completes(gen_project: Path, zygote: Zygote) -> None:
    from test_synth import FaultServer

    ok = {"paraphrases": [CURIE_PAR]}, {"paraphrases": [EVEREST_PAR]}
    server = FaultServer(gen_project, [
        {"match": "Curie", "steps": [{"status": 500}, {"drop": True}, {"raw": "<html>502</html>"},
                                     {"content": json.dumps(ok[0])}]},
        {"match": "Everest", "steps": [{"status": 429, "retry_after": 0}, {"content": "Sure! Here it is."},
                                       {"content": json.dumps(ok[1])}]},
    ])
    try:
        env = {**home(gen_project, "gen"), "KINJECT_API_BASE": server.url, "KINJECT_API_KEY": "test"}
        code, _, _, log = zygote.run(["run", "gen.yaml", "--no-report", "--out", "run-gen", "--cache", "cache-gen"],
                                     gen_project, env)
    finally:
        server.stop()
    assert code == 0, log
    report = _paraphrase_report(gen_project / "cache-gen")
    stats = report["generator_stats"]
    print("\n", json.dumps({k: report[k] for k in ("asked", "valid", "rejected", "retried", "unfinished")}), stats)
    assert (report["asked"], report["valid"], report["unfinished"]) == (2, 2, 0)
    assert stats["retries"] >= 4 and stats["errors"]["http_500"] == 1 and stats["errors"]["http_429"] == 1
    assert report["rejected"].get("not_json", 0) == 1 and report["retried"] == 1
    db = sqlite3.connect(gen_project / "run-gen" / "results.sqlite")
    assert db.execute("SELECT method, status FROM conditions").fetchall() == [("ft-par:1", "done")]


@pytest.mark.slow
def test_a_dead_generator_does_not_cache_an_unfinished_paraphrase_stage(gen_project: Path, zygote: Zygote) -> None:
    from test_synth import FaultServer

    dead = FaultServer(gen_project, [{"match": "Curie", "steps": [{"status": 400}]},  # refused at once, every time
                                     {"match": "Everest", "steps": [{"status": 400}]}], max_requests=1000)
    env = {**home(gen_project, "dead"), "KINJECT_API_BASE": dead.url, "KINJECT_API_KEY": "test"}
    argv = ["run", "gen.yaml", "--no-report", "--out", "run-dead", "--cache", "cache-dead"]
    try:
        code, _, _, log = zygote.run(argv, gen_project, env)
    finally:
        dead.stop()
    assert code == 1 and "paraphrase" in log, log  # the failed stage is reported, the run exits 1
    stages = gen_project / "cache-dead" / "paraphrase"
    assert not [p for p in (stages.iterdir() if stages.exists() else ()) if p.is_dir()
                and not p.name.startswith(".")], "an unfinished paraphrase stage was cached"


# ---------------------------------------------------------------------------- one line in a fresh process


@pytest.mark.slow
def test_a_fresh_process_prints_exactly_one_line(project: Path, zygote: Zygote) -> None:
    """tests/test_bad_inputs.py runs the CLI in-process, where libraries are already imported and
    configured; here each bad input gets its own process, as a user's shell gives it: stdout and
    stderr together hold exactly one line (no warning, no progress bar), and the exit code is 2."""
    bad = Path(__file__).parent / "bad_inputs"
    cut = project / "cut"
    shutil.copytree(project / "tiny", cut)
    (cut / "model.safetensors").write_bytes((cut / "model.safetensors").read_bytes()[:1000])
    for argv, name in ((["eval", "--model", str(cut), "--task", "task.jsonl", "--out", "o"], "cut"),
                       (["eval", "--model", "tiny", "--task", str(bad / "tasks" / "gold_out_of_range.jsonl"),
                         "--out", "o"], "gold_out_of_range.jsonl:1"),
                       (["index", "build", "--corpus", str(bad), "--embedder", "emb", "--out", "o"], "bad_inputs"),
                       (["run", str(bad / "configs" / "unknown_method.yaml")], "unknown_method.yaml:4")):
        code, _, _, log = zygote.run(argv, project, home(project, "fresh"))
        lines = [ln for ln in log.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], log
        assert not (project / "o").exists()
