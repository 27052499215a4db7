"""Two processes on one folder: a run folder, an index or corpus folder, and a shared stage cache
are owned by one process at a time; a second one refuses in one line naming the holder (or, for
a cache stage, waits and reuses the finished output) and never corrupts the first."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from workspace import save_tiny_embedder, write_project

from kinject.core.fsio import owned


def test_a_second_owner_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    with owned(tmp_path / "run", "kinject run"):
        child = subprocess.run([sys.executable, "-c",
                                "import sys; from pathlib import Path; from kinject.core.fsio import owned\n"
                                "from kinject.core.errors import KinjectError\n"
                                f"try:\n    with owned(Path({str(tmp_path / 'run')!r}), 'kinject run'): pass\n"
                                "except KinjectError as e:\n    print(e); sys.exit(2)"],
                               capture_output=True, text=True)
        assert child.returncode == 2
        assert f"{tmp_path / 'run'} is in use by another kinject run (pid {os.getpid()}, started " in child.stdout
    with owned(tmp_path / "run", "kinject run"):  # released: free again, in this process too
        pass


def test_a_waiting_owner_gets_the_folder_once_it_is_free(tmp_path: Path) -> None:
    import threading

    order: list[str] = []

    def second() -> None:
        with owned(tmp_path / "stage", "stage", wait=True):
            order.append("second")

    with owned(tmp_path / "stage", "stage"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first done")
    t.join(5)
    assert order == ["first done", "second"]


def _results(run_dir: Path) -> tuple[list, list]:
    db = sqlite3.connect(run_dir / "results.sqlite")
    conds = db.execute("SELECT id, status, n, acc, acc_norm, recall FROM conditions ORDER BY id").fetchall()
    rows = db.execute("SELECT * FROM records ORDER BY condition_id, item_id").fetchall()
    db.close()
    return conds, rows


@pytest.mark.slow
def test_two_runs_of_one_config_at_once(tiny_lm, tmp_path: Path) -> None:
    """The drill: a second `kinject run` into the folder the first holds refuses at once, naming it;
    the first finishes unharmed with the results of a run alone. A second run into its own folder
    over the same cache waits for the stages the first is building and reuses them."""
    write_project(tmp_path, tiny_lm)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "kinject", "run", "tiny.yaml", "--no-report", "--cache", "cache"]
    alone = subprocess.run([*cmd[:-1], "cache-alone", "--out", "alone"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert alone.returncode == 0, alone.stderr[-2000:]

    first = subprocess.Popen([*cmd, "--out", "shared"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    holder = tmp_path / ".shared.owner"  # the first run holds the folder once this exists
    deadline = time.monotonic() + 300
    while not holder.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holder.exists(), "the first run never took its folder"
    second = subprocess.run([*cmd, "--out", "shared"], cwd=tmp_path, env=env, capture_output=True, text=True)
    other = subprocess.Popen([*cmd, "--out", "other"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    _, first_err = first.communicate(timeout=600)
    _, other_err = other.communicate(timeout=600)
    assert first.returncode == 0, first_err[-2000:]
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "shared is in use by another kinject run (pid" in lines[0], second.stderr
    assert other.returncode == 0, other_err[-2000:]
    assert _results(tmp_path / "shared") == _results(tmp_path / "alone") == _results(tmp_path / "other")


@pytest.mark.slow
def test_two_index_builds_into_one_folder(tiny_lm, tmp_path: Path) -> None:
    """A second `index build` (or `corpus build`) into a folder being built refuses in one line
    and leaves the folder to its owner; once free, the same command builds it."""
    from kinject.knowledge.corpus import Document, build_corpus

    _, tok = tiny_lm
    build_corpus([Document(f"d{i}", "t", f"Fact number {i} is about item {i}.") for i in range(8)], tok,
                 tmp_path / "kb", max_tokens=64, min_tokens=1)
    save_tiny_embedder(tmp_path / "emb", tok)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KINJECT_HOME": str(tmp_path / "home")}
    build = [sys.executable, "-m", "kinject", "index", "build", "--corpus", "kb", "--embedder", "emb", "--out", "ix",
             "--device", "cpu"]
    with owned(tmp_path / "ix", "index build"):  # a build in progress elsewhere
        busy = subprocess.run(build, cwd=tmp_path, env=env, capture_output=True, text=True)
    lines = busy.stderr.strip().splitlines()
    assert busy.returncode == 2 and len(lines) == 1 and lines[0].startswith(
        f"error: ix is in use by another index build (pid {os.getpid()}"), busy.stderr
    assert not (tmp_path / "ix").exists()
    done = subprocess.run(build, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and (tmp_path / "ix" / "index.faiss").is_file(), done.stderr


def test_a_full_disk_hint_is_only_given_for_a_full_disk() -> None:
    import errno

    from kinject.core.fsio import write_hint

    assert "free disk space" in write_hint(OSError(errno.ENOSPC, "No space left on device"))
    assert "free disk space" in write_hint(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert "free disk space" in write_hint(sqlite3.OperationalError("database or disk is full"))
    for exc in (OSError(errno.EFBIG, "File too large"), OSError(errno.EACCES, "Permission denied"),
                sqlite3.OperationalError("attempt to write a readonly database"), OSError(errno.EIO, "I/O error")):
        assert "disk space" not in write_hint(exc), exc
    assert "another process" in write_hint(sqlite3.OperationalError("attempt to write a readonly database"))
