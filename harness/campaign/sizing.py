"""Campaign sizes chosen by the precision asked for: ``--margin E --confidence C``.

A rate cell (collapse rate of bit flips) runs *sequentially*: its first ``start`` trials, then more in
chunks, until the Wilson interval of its rate at confidence C has a half-width of at most E, or until
the cap. The cap is Leveugle et al.'s sample size (DATE 2009) for the cell's site population N at the
worst case p = 1/2: n = N t^2 p(1-p) / (e^2 (N-1) + t^2 p(1-p)), which for a large population at
+-1% and 99% is about 16.6k trials; a cell never needs more than that, and adaptive stopping usually
needs far fewer (a rate near 0 or 1 is pinned down early). Every stop is recorded with the interval it
achieved (:class:`Sizing`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from harness.option_values import bounded_float
from harness.stats import wilson


@dataclass(frozen=True)
class Precision:
    """The precision a rate cell is sized for: its Wilson interval's half-width at most ``margin`` at
    ``confidence``."""

    margin: float
    confidence: float

    def __post_init__(self) -> None:
        bounded_float(self.margin, "--margin (a half-width of a rate)", 0, 0.5, low_open=True, high_open=True)
        bounded_float(self.confidence, "--confidence (e.g. 0.95)", 0.5, 1, high_open=True)

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(0.5 + self.confidence / 2)

    def half_width(self, hits: int, trials: int) -> float:
        low, high = wilson(hits, trials, self.z)
        return (high - low) / 2

    def leveugle(self, population: float = math.inf, p: float = 0.5) -> int:
        """Leveugle's sample size for a population of ``population`` sites (inf: the large-population limit)."""
        t2pq = self.z ** 2 * p * (1 - p)
        if math.isinf(population):
            return math.ceil(t2pq / self.margin ** 2)
        return math.ceil(population * t2pq / (self.margin ** 2 * (population - 1) + t2pq))


@dataclass(frozen=True)
class Sizing:
    """How a cell was sized and what it achieved (recorded with its rate)."""

    rule: str  # "fixed" (the preset's or --trials) or "sequential Wilson"
    trials: int
    hits: int
    ci: tuple[float, float]
    confidence: float
    margin: float | None = None
    cap: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"sizing": self.rule, "trials": self.trials, "collapses": self.hits, "ci_low": self.ci[0],
                "ci_high": self.ci[1], "ci_confidence": self.confidence, "half_width": (self.ci[1] - self.ci[0]) / 2,
                "margin_asked": self.margin, "cap": self.cap}


def sequential(run: Callable[[int, int], Iterable[Any]], hit: Callable[[Any], bool], *, start: int,
               precision: Precision | None, population: float = math.inf) -> Iterator[Any]:
    """Run a rate cell's trials, yielding each trial's record; the last thing yielded is its :class:`Sizing`.

    Args:
        run: ``run(first, count)`` runs trials ``first .. first+count-1`` and yields their records.
        hit: whether a record counts (a collapse).
        start: trials run first (the preset's count); with no ``precision``, the only ones.
        precision: stop when the half-width is at most its margin, or at Leveugle's cap for ``population``.
    """
    hits = trials = 0
    for rec in run(0, start):
        hits, trials = hits + bool(hit(rec)), trials + 1
        yield rec
    if precision is None:
        yield Sizing("fixed", trials, hits, wilson(hits, trials), 0.95)
        return
    cap = max(start, precision.leveugle(population))
    while trials < cap and precision.half_width(hits, trials) > precision.margin:
        chunk = min(cap - trials, max(10, trials // 2))
        for rec in run(trials, chunk):
            hits, trials = hits + bool(hit(rec)), trials + 1
            yield rec
    yield Sizing("sequential Wilson", trials, hits, wilson(hits, trials, precision.z), precision.confidence,
                 precision.margin, cap)
