"""Atomic output folders: a stage's result appears complete or not at all."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


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
