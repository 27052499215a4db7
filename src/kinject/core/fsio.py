"""Atomic output folders: a stage's result appears complete or not at all."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from kinject.core.errors import KinjectError, error_line


def atomic_dir(out: Path, write: Callable[[Path], object]) -> None:
    """Run `write(tmp)` in a sibling `.tmp-<name>-*` folder, then swap it into `out` by rename.

    If `write` fails (or the process dies) the previous `out` is untouched; a killed writer
    leaves only a `.tmp-*` folder, which is never read as a result.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        write(tmp)
        if out.exists():
            trash = out.parent / f".trash-{out.name}-{uuid.uuid4().hex[:12]}"
            os.rename(out, trash)
            os.rename(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file whole through a sibling `.tmp-<name>-*` file and a rename, so a reader never
    sees half of it and a killed writer leaves only the temporary file's name behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:12]}"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_text(path: Path) -> str:
    """A user's text file as str, or a one-line error for a missing, binary or non-UTF-8 file."""
    if not path.is_file():
        raise KinjectError(f"{path} does not exist or is not a file")
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise KinjectError(f"{path}: looks like a binary file; give UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KinjectError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); re-encode it as UTF-8") from exc


def iter_jsonl(path: Path) -> Iterator[tuple[str, int, object]]:
    """(where, line number, parsed value) for each non-blank line; `where` is "file:line" for
    error messages. Invalid JSON is a one-line error naming the line."""
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{n}", n, json.loads(line)
        except json.JSONDecodeError as exc:
            raise KinjectError(f"{path}:{n}: not valid JSON ({exc.msg}; column {exc.colno})") from exc


def check_new_output(out: Path) -> None:
    """An output folder must be new or empty, so no old result is mistaken for this run's."""
    if out.exists() and not out.is_dir():
        raise KinjectError(f"--out {out} is a file; give a folder")
    if out.exists() and any(out.iterdir()):
        raise KinjectError(f"output folder {out} is not empty; choose another --out or remove it")


def check_replaceable(out: Path, what: str, files: Collection[str]) -> None:
    """`out` is about to be replaced whole (see `atomic_dir`): it must be new, empty, or hold only
    the files of an earlier `what`, so that no file of the user's is ever deleted with it."""
    if out.exists() and not out.is_dir():
        raise KinjectError(f"--out {out} is a file; give a folder")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in files) if out.is_dir() else []
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise KinjectError(f"--out {out} holds '{foreign[0]}'{more}, which is not part of a {what}, and the folder "
                           f"is replaced whole; choose a new or empty folder")


NO_ROOM = {errno.ENOSPC, errno.EDQUOT}
"""Write failures that mean the disk (or the user's quota) is full."""
MACHINE_LIMITS = NO_ROOM | {errno.EFBIG, errno.EROFS}
"""Write failures that are about the machine, not the data: also a file-size limit, a read-only disk."""


def is_no_room(exc: BaseException) -> bool:
    """Whether `exc` is a write that failed for lack of room, as OSError or sqlite reports it."""
    if isinstance(exc, OSError):
        return exc.errno in NO_ROOM
    return isinstance(exc, sqlite3.OperationalError) and "database or disk is full" in str(exc)


def is_machine_limit(exc: BaseException) -> bool:
    """A write refused by the machine (full disk, quota, file-size limit, read-only file system)."""
    return is_no_room(exc) or (isinstance(exc, OSError) and exc.errno in MACHINE_LIMITS)


def write_hint(exc: BaseException) -> str:
    """What to do about a failed write, by its real cause; the disk-space hint only for a full disk."""
    if is_no_room(exc):
        return "free disk space and rerun: what was finished before is kept"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return "a file-size limit (ulimit -f) stopped it; raise the limit and rerun: what was finished is kept"
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "the folder is read-only or not yours; fix its permissions or choose another folder"
    if isinstance(exc, sqlite3.OperationalError) and "readonly database" in str(exc):
        return ("the database became read-only (its file was replaced or its permissions changed while in use, "
                "e.g. by another process); rerun")
    return "rerun: what was finished before is kept"


@contextmanager
def writing(what: Path) -> Iterator[None]:
    """Turn a failed write inside the block into a one-line error naming `what`.

    Only wrap pure I/O: libraries report a full disk in their own ways (OSError; RuntimeError
    from torch.save and faiss.write_index; safetensors' SafetensorError; sqlite3.OperationalError),
    so the block's errors of those kinds are taken to be write failures."""
    try:
        yield
    except KinjectError:
        raise
    except (OSError, RuntimeError, sqlite3.Error) as exc:
        raise KinjectError(_cannot_write(what, exc)) from exc
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":
            raise
        raise KinjectError(_cannot_write(what, exc)) from exc


def _cannot_write(what: Path, exc: BaseException) -> str:
    return f"cannot write {what}: {error_line(exc)}; {write_hint(exc)}"


@contextmanager
def owned(folder: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold `folder` for this process alone while the block runs (a lock file beside it, since
    the folder itself is replaced atomically). A second process refuses at once with one line
    naming the holder (pid, start time) — or, with `wait`, blocks until the holder is done
    (for cache stages: it then finds the finished output). The lock dies with its process."""
    import time

    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    info = folder.parent / f".{folder.name}.owner"
    lock = FileLock(str(folder.parent / f".{folder.name}.lock"))
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        try:
            holder = json.loads(info.read_text())
            who = f"pid {holder['pid']}, started {holder['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            who = "another process"
        raise KinjectError(f"{folder} is in use by another {what} ({who}); wait for it to finish or use another "
                           f"folder") from None
    try:
        atomic_write_text(info, json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        yield
    finally:
        info.unlink(missing_ok=True)
        lock.release()
