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

from kinject.errors import KinjectError


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


NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
"""Write failures that are about the machine, not the data: disk full, quota, file-size limit, read-only."""


def is_no_room(exc: BaseException) -> bool:
    """Whether `exc` is a write that failed for lack of room (see NO_ROOM), as OSError or sqlite reports it."""
    if isinstance(exc, OSError):
        return exc.errno in NO_ROOM
    return isinstance(exc, sqlite3.OperationalError) and any(
        s in str(exc) for s in ("database or disk is full", "disk I/O error", "readonly database"))


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
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (f"cannot write {what}: {reason[:300]}; free disk space (or fix permissions) and rerun: "
            f"what was finished before is kept")
