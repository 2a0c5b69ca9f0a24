"""Progress of a campaign cell: trials done / total and the time left, as log records.

The engine calls :meth:`Progress.step` after every trial. Each step is a DEBUG record of the logger
``harness.campaign.progress`` carrying ``esa_progress`` (a :class:`Snapshot`) for a live display (the
pytest plugin ``fixtures/campaign.py`` draws one updating line on a terminal); the end of a cell is one
INFO line. Nothing is printed here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """Where a cell stands: ``done`` of ``total`` trials after ``elapsed`` seconds."""

    cell: str
    done: int
    total: int
    elapsed: float
    finished: bool = False

    @property
    def eta(self) -> float | None:
        """Estimated seconds left (None before the first trial)."""
        return None if self.done == 0 else self.elapsed / self.done * (self.total - self.done)

    def line(self) -> str:
        if self.finished:
            rate = self.done / self.elapsed if self.elapsed > 0 else float("inf")
            return f"{self.cell}: {self.done} trials in {self.elapsed:.1f} s ({rate:.2f} trials/s)"
        eta = "?" if self.eta is None else f"{self.eta:.0f} s"
        return f"{self.cell}: {self.done}/{self.total} trials, {self.elapsed:.0f} s, about {eta} left"


class Progress:
    """Counts the trials of one cell and logs where it stands."""

    def __init__(self, cell: str, total: int) -> None:
        self.cell, self.total, self.done = cell, total, 0
        self._start = time.perf_counter()

    def snapshot(self, finished: bool = False) -> Snapshot:
        return Snapshot(self.cell, self.done, self.total, time.perf_counter() - self._start, finished)

    def step(self, n: int = 1) -> None:
        self.done += n
        snap = self.snapshot()
        log.debug("%s", snap.line(), extra={"esa_progress": snap})

    def finish(self) -> None:
        snap = self.snapshot(finished=True)
        log.info("%s", snap.line(), extra={"esa_progress": snap})
