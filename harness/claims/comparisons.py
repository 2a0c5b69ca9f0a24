"""Comparisons: the evidence of a relation (:class:`Comparison`) and the statistics that decide one (a stated
minimum effect, Wilson intervals, sign tests over seeded pairs)."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.errors import HarnessError
from harness.stats import Z95, wilson


@dataclass(frozen=True)
class Comparison:
    """Both sides of a relation and whether it holds.

    Attributes:
        holds: the relation holds with its margin.
        value: the side that must be larger (recorded as the claim's value).
        other: the side it is compared with (recorded as the claim's ``bound`` column).
        detail: what decided it (intervals, pair counts, factor), recorded in the row's extra.
        undecidable: why the measurement cannot decide the relation at all (e.g. too few trials for
            any two rates to be apart); the claim is then unverified with this reason, and fails under
            ``--strict-claims`` (:func:`undecided`).
    """

    holds: bool
    value: float
    other: float
    detail: dict = field(default_factory=dict)
    undecidable: str = ""


def compared(x: float) -> float:
    """A collapse (non-finite) compares as +inf; NaN stays NaN."""
    x = float(x)
    return math.inf if math.isinf(x) else x


def greater(value: float, other: float, *, factor: float = 1.0) -> Comparison:
    """``value > factor * other``, strictly: a tie never holds, so a no-op (both sides equal) fails.

    A collapse is +inf and NaN never holds. Two collapses (inf vs inf) never hold: neither side is
    larger. With ``factor > 1`` the other side must be positive: a factor cannot scale 0 or a negative
    number into a minimum effect, so ``other <= 0`` does not hold (the detail says why).
    """
    v, o = compared(value), compared(other)
    detail: dict = {"test": "min_effect", "factor": factor}
    if math.isnan(v) or math.isnan(o):
        holds = False
    elif math.isinf(o):
        holds = False
    elif factor > 1.0 and o <= 0.0:
        holds = False
        detail["refused"] = f"the other side is {o:g} <= 0: a factor {factor:g} states no minimum effect on it"
    else:
        holds = v > factor * o
    return Comparison(holds, v, o, detail)


def has_effect(changed: Sequence[bool]) -> Comparison:
    """The effect guard: at least one trial changed the output (``changed[i]``: trial i was not masked
    and moved the perplexity ratio off 1 or the KL off 0). Recorded sides: the trials with an effect
    and 0. Every trial unchanged (a perturbation that does nothing) fails.
    """
    if not changed:
        raise HarnessError("an effect guard needs at least one trial")
    hits = sum(bool(c) for c in changed)
    return Comparison(hits > 0, float(hits), 0.0, {"test": "effect", "trials": len(changed), "with_effect": hits})


def trial_changed(ratio: float, kl: float | None, masked: bool = False) -> bool:
    """Whether one trial moved the output at all: not masked, and its ratio is not exactly 1 or its KL is
    above 0 (a collapse, non-finite, counts as moved)."""
    if masked:
        return False
    r = float(ratio)
    return (not math.isnan(r) and r != 1.0) or (kl is not None and not (float(kl) <= 0.0))


def rate_greater(hits: int, trials: int, other_hits: int, other_trials: int, *, z: float = Z95) -> Comparison:
    """The rate ``hits/trials`` is above ``other_hits/other_trials`` with non-overlapping Wilson intervals.

    At 5 trials a side this needs e.g. 4/5 vs 0/5 (z = 1.96); it holds at any seed for rates far apart.
    """
    low, high = wilson(hits, trials, z)
    o_low, o_high = wilson(other_hits, other_trials, z)
    detail = {"test": "wilson", "z": z, "ci": [low, high], "other_ci": [o_low, o_high],
              "hits": hits, "trials": trials, "other_hits": other_hits, "other_trials": other_trials}
    undecidable = ""
    if wilson(trials, trials, z)[0] <= wilson(0, other_trials, z)[1]:
        undecidable = (f"{trials} vs {other_trials} trials cannot separate any two rates at this confidence "
                       "(even all vs none overlap): run the preset's trial count")
    return Comparison(low > o_high, hits / trials, other_hits / other_trials, detail, undecidable)


def paired_greater(values: Sequence[float], others: Sequence[float], *, factor: float = 1.0) -> Comparison:
    """Every seeded pair has ``value > factor * other`` (:func:`greater`: strict; a collapse is +inf).

    The recorded sides are the smallest ``value`` and the largest ``other``.
    """
    if len(values) != len(others) or not values:
        raise HarnessError(f"paired comparison needs equal, non-empty sides, got {len(values)} and {len(others)}")
    pairs = [greater(v, o, factor=factor).holds for v, o in zip(values, others, strict=True)]
    vs, os_ = [compared(v) for v in values], [compared(o) for o in others]
    return Comparison(all(pairs), min(vs), max(os_),
                      {"test": "paired", "factor": factor, "pairs": len(pairs), "pairs_holding": sum(pairs),
                       "values": vs, "others": os_})


def paired_majority(values: Sequence[float], others: Sequence[float], *, z: float = Z95) -> Comparison:
    """In most seeded pairs ``value > other`` (a sign test; a collapse is +inf, two collapses are a tie).

    Holds when the Wilson interval of the share of pairs with ``value > other`` lies above 1/2 (at
    20 pairs: 15 or more). Recorded sides: the medians of ``values`` and ``others``. Undecidable
    below 4 pairs (3 of 3 is not above 1/2 at this confidence; 4 of 4 is).
    """
    if len(values) != len(others) or not values:
        raise HarnessError(f"paired comparison needs equal, non-empty sides, got {len(values)} and {len(others)}")
    vs, os_ = [compared(v) for v in values], [compared(o) for o in others]
    wins = sum(v > o for v, o in zip(vs, os_, strict=True))  # NaN and inf-vs-inf never win
    n = len(vs)
    low, high = wilson(wins, n, z)
    undecidable = "" if wilson(n, n, z)[0] > 0.5 else f"{n} pairs cannot show a majority at this confidence"
    return Comparison(low > 0.5, statistics.median(vs), statistics.median(os_),
                      {"test": "sign", "z": z, "pairs": n, "pairs_holding": wins, "ci": [low, high]}, undecidable)


def increasing(xs: Sequence[float], values: Sequence[float], *, factor: float = 1.0) -> Comparison:
    """``values`` grow with ``xs``: each step strictly above ``factor`` times the previous one (collapse = +inf).

    Recorded sides: the last value and the first one.
    """
    if len(xs) != len(values) or len(values) < 2:
        raise HarnessError(f"a trend needs two or more points with an x each, got {len(xs)} x, {len(values)} values")
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ys = [compared(values[i]) for i in order]
    steps = [greater(b, a, factor=factor).holds for a, b in itertools.pairwise(ys)]
    return Comparison(all(steps), ys[-1], ys[0],
                      {"test": "increasing", "factor": factor, "xs": [xs[i] for i in order], "values": ys})
