"""Terminal output shared by every long step: one progress-bar style (done/total, elapsed, eta)."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(console: Console, unit: str = "", disable: bool = False) -> Progress:
    """A bar per task: description, bar, `done/total unit`, elapsed time, time remaining.
    Rich draws it only on a terminal; in a log file the per-stage lines are what remains."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, disable=disable)


class BarRow:
    """Callbacks for one row of `bar`: `total(t)`, `advance(k)` and `update(done, total)`. The row
    is added on the first call, once the work has started, so an input error found before it
    prints its one line alone."""

    def __init__(self, bar: Progress, description: str, total: int | None = None) -> None:
        self.bar, self.description, self.initial_total = bar, description, total
        self.job: TaskID | None = None

    def _row(self) -> TaskID:
        if self.job is None:
            self.job = self.bar.add_task(self.description, total=self.initial_total)
        return self.job

    def total(self, t: int) -> None:
        """Set the row's total."""
        self.bar.update(self._row(), total=t)

    def advance(self, k: int) -> None:
        """Count k more done."""
        self.bar.advance(self._row(), k)

    def update(self, done: int, total: int) -> None:
        """Set the row's done and total."""
        self.bar.update(self._row(), completed=done, total=total)


def quiet_libraries() -> None:
    """Before the libraries load: no tokenizer fork warnings, transformers' and the hub's own
    logging and bars off (kinject draws its own), so errors stay one line. A user's settings win."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
