"""Claims: what a suite asserts about a model, declared in code next to the test that measures it.

Two kinds:

- a *relation* compares two quantities measured in the same run (super weights zeroed vs as many
  random weights; exp-MSB vs mantissa-LSB collapse rate; Wanda vs magnitude at equal sparsity). It
  needs no per-model number and is asserted on every model it applies to. Its margin comes from a
  statistic that holds at the preset's trial count (:func:`rate_greater`: non-overlapping Wilson
  intervals; :func:`paired_greater`: every seeded pair; :func:`greater`: a stated minimum effect).
- a *bound* is a regression bound: a model-specific number for one statistic, kept in
  ``suites/bounds/<suite>.toml`` (``[model] name = number``) and derived from that model's runs at
  several seeds (``python -m reports export-bounds``). ``side="max"`` holds when value <= bound,
  ``side="min"`` when value >= bound. A non-finite value (a collapse) compares as +inf: it never
  passes a ``max`` and NaN passes nothing.

Every checked claim has one of four outcomes (:class:`Outcome`): passed, failed, unverified (a bound
with no number for this model) and not applicable (the claim cannot apply: no super weight found,
random weights, a layer the model lacks), the last always with a reason.
"""

from __future__ import annotations

import itertools
import math
import statistics
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Literal

from harness.errors import HarnessError
from harness.stats import wilson

Z_BOUND = 3.290527  # two-sided 99.9% normal quantile: rate bounds hold at any seed but a one-in-a-thousand draw


class Outcome(StrEnum):
    """What checking a claim on one model gave."""

    PASSED = "passed"
    FAILED = "failed"
    UNVERIFIED = "unverified"
    NOT_APPLICABLE = "not_applicable"


@dataclass(frozen=True)
class Claim:
    """One declared claim of a suite.

    Attributes:
        suite: the analysis name (test file ``suites/test_<suite>.py``, bounds file ``<suite>.toml``).
        name: unique within the suite; the store's ``metric`` column of the claim row.
        statement: the claim in plain words.
        kind: ``"relation"`` or ``"bound"``.
        statistic: what is measured (a metric name or a short phrase).
        side: bound: ``"max"`` (value <= bound), ``"min"`` (value >= bound) or ``"within"`` (low <=
            value <= high, the bound a ``[low, high]`` pair: rates, whose regressions go either way);
            relation: ``"min"`` (the measured side must be the larger one).
        pretrained_only: not applicable on random-weight models (the tiny families), whose
            behaviour says nothing about trained models.
        margin: how the relation's margin or the bound's number is chosen, in words.
        seeded: the statistic depends on ``--seed`` (sampled sites, noise); a seed-independent one
            (an ablation map, a pruning curve) gets its bound from two agreeing seeds instead of five.
    """

    suite: str
    name: str
    statement: str
    kind: Literal["relation", "bound"]
    statistic: str
    side: Literal["max", "min", "within"] = "min"
    pretrained_only: bool = True
    margin: str = ""
    seeded: bool = True

    @property
    def key(self) -> str:
        return f"{self.suite}.{self.name}"


_DECLARED: dict[str, dict[str, Claim]] = {}


class ClaimSet:
    """The claims of one suite; declare them at module level of ``suites/test_<suite>.py``.

    Args:
        suite: the analysis name.
    """

    def __init__(self, suite: str) -> None:
        self.suite = suite
        self.claims: dict[str, Claim] = _DECLARED.setdefault(suite, {})

    def _add(self, claim: Claim) -> Claim:
        known = self.claims.get(claim.name)
        if known is not None and known != claim:
            raise HarnessError(f"claim {claim.key} is declared twice with different definitions")
        self.claims[claim.name] = claim
        return claim

    def relation(self, name: str, statement: str, *, statistic: str, pretrained_only: bool = True,
                 margin: str = "", seeded: bool = True) -> Claim:
        """Declare a relational claim (no per-model number)."""
        return self._add(Claim(self.suite, name, statement, "relation", statistic, "min", pretrained_only, margin,
                               seeded))

    def bound(self, name: str, statement: str, *, side: Literal["max", "min", "within"], statistic: str,
              pretrained_only: bool = False, margin: str = "", seeded: bool = True) -> Claim:
        """Declare a regression bound (its number per model lives in ``suites/bounds/<suite>.toml``)."""
        if side not in ("max", "min", "within"):
            raise HarnessError(f"claim {self.suite}.{name}: side must be 'max', 'min' or 'within', got {side!r}")
        return self._add(Claim(self.suite, name, statement, "bound", statistic, side, pretrained_only, margin,
                               seeded))

    def __iter__(self) -> Iterator[Claim]:
        return iter(self.claims.values())


def declared(suite: str | None = None) -> dict[str, Claim]:
    """Declared claims by key (``suite.name``), of one suite or of every suite imported so far."""
    return {c.key: c for s, claims in _DECLARED.items() if suite in (None, s) for c in claims.values()}


# -- comparisons (the evidence of a relation) -----------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Both sides of a relation and whether it holds.

    Attributes:
        holds: the relation holds with its margin.
        value: the side that must be larger (recorded as the claim's value).
        other: the side it is compared with (recorded as the claim's ``bound`` column).
        detail: what decided it (intervals, pair counts, factor), recorded in the row's extra.
        undecidable: why the measurement cannot decide the relation at all (e.g. too few trials for
            any two rates to be apart); the claim is then recorded as not applicable with this reason.
    """

    holds: bool
    value: float
    other: float
    detail: dict = field(default_factory=dict)
    undecidable: str = ""


def _big(x: float) -> float:
    """A collapse (non-finite) compares as +inf; NaN stays NaN."""
    x = float(x)
    return math.inf if math.isinf(x) else x


def greater(value: float, other: float, *, factor: float = 1.0) -> Comparison:
    """``value >= factor * other`` (a stated minimum effect); a collapse is +inf, NaN never holds.

    Two collapses (inf vs inf) do not hold for ``factor > 1``: neither side is larger.
    """
    v, o = _big(value), _big(other)
    if math.isnan(v) or math.isnan(o):
        holds = False
    elif math.isinf(o):
        holds = math.isinf(v) and factor <= 1.0
    else:
        holds = v >= factor * o
    return Comparison(holds, v, o, {"test": "min_effect", "factor": factor})


def rate_greater(hits: int, trials: int, other_hits: int, other_trials: int, *, z: float = 1.959964) -> Comparison:
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
    """Every seeded pair has ``value >= factor * other`` (a collapse is +inf).

    The recorded sides are the smallest ``value`` and the largest ``other``.
    """
    if len(values) != len(others) or not values:
        raise HarnessError(f"paired comparison needs equal, non-empty sides, got {len(values)} and {len(others)}")
    pairs = [greater(v, o, factor=factor).holds for v, o in zip(values, others, strict=True)]
    vs, os_ = [_big(v) for v in values], [_big(o) for o in others]
    return Comparison(all(pairs), min(vs), max(os_),
                      {"test": "paired", "factor": factor, "pairs": len(pairs), "pairs_holding": sum(pairs),
                       "values": vs, "others": os_})


def paired_majority(values: Sequence[float], others: Sequence[float], *, z: float = 1.959964) -> Comparison:
    """In most seeded pairs ``value > other`` (a sign test; a collapse is +inf, two collapses are a tie).

    Holds when the Wilson interval of the share of pairs with ``value > other`` lies above 1/2 (at
    20 pairs: 15 or more). Recorded sides: the medians of ``values`` and ``others``. Undecidable
    below 4 pairs (3 of 3 is not above 1/2 at this confidence; 4 of 4 is).
    """
    if len(values) != len(others) or not values:
        raise HarnessError(f"paired comparison needs equal, non-empty sides, got {len(values)} and {len(others)}")
    vs, os_ = [_big(v) for v in values], [_big(o) for o in others]
    wins = sum(v > o for v, o in zip(vs, os_, strict=True))  # NaN and inf-vs-inf never win
    n = len(vs)
    low, high = wilson(wins, n, z)
    undecidable = "" if wilson(n, n, z)[0] > 0.5 else f"{n} pairs cannot show a majority at this confidence"
    return Comparison(low > 0.5, statistics.median(vs), statistics.median(os_),
                      {"test": "sign", "z": z, "pairs": n, "pairs_holding": wins, "ci": [low, high]}, undecidable)


def increasing(xs: Sequence[float], values: Sequence[float], *, factor: float = 1.0) -> Comparison:
    """``values`` grow with ``xs``: each step at least ``factor`` times the previous one (collapse = +inf).

    Recorded sides: the last value and the first one.
    """
    if len(xs) != len(values) or len(values) < 2:
        raise HarnessError(f"a trend needs two or more points with an x each, got {len(xs)} x, {len(values)} values")
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ys = [_big(values[i]) for i in order]
    steps = [greater(b, a, factor=factor).holds for a, b in itertools.pairwise(ys)]
    return Comparison(all(steps), ys[-1], ys[0],
                      {"test": "increasing", "factor": factor, "xs": [xs[i] for i in order], "values": ys})


# -- bounds ---------------------------------------------------------------------------------------


def _bounds_file(path: Path) -> dict[str, dict[str, float | tuple[float, float]]]:
    """The parsed bounds file (``{}`` when missing), re-read when the file changes."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    return _parse_bounds(path, stat.st_mtime_ns, stat.st_size)


@cache
def _parse_bounds(path: Path, mtime_ns: int, size: int) -> dict[str, dict[str, float | tuple[float, float]]]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise HarnessError(f"{path}: not valid TOML ({err})") from None
    out: dict[str, dict[str, float | tuple[float, float]]] = {}
    for model, table in data.items():
        if not isinstance(table, dict):
            raise HarnessError(f"{path}: top-level key {model!r} must be a [model] table of claim = number")
        nested = [name for name, value in table.items() if isinstance(value, dict)]
        if nested:  # TOML reads a bare key with a dot as a table: `a_0.01_max = 1` is {"a_0": {"01_max": 1}}
            raise HarnessError(f"{path}: [{model}] has dotted claim names ({', '.join(nested)}...): quote them, "
                               f'e.g. "noise_0.01_ppl_ratio" = 1.0')
        out[model] = {}
        for name, value in table.items():
            if isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value):
                out[model][name] = (float(value[0]), float(value[1]))
            elif _is_number(value):
                out[model][name] = float(value)
            else:
                raise HarnessError(f"{path}: [{model}] {name} must be a number, or [low, high] for a 'within' bound")
    return out


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def bounds_path(bounds_dir: Path, suite: str) -> Path:
    return Path(bounds_dir) / f"{suite}.toml"


def check_bounds_file(bounds_dir: Path, suite: str) -> None:
    """Every name in ``<suite>.toml`` must be a declared bound of the suite.

    Raises:
        HarnessError: one line naming the suite, the offending name and the bounds it declares.
    """
    path = bounds_path(bounds_dir, suite)
    claims = _DECLARED.get(suite, {})
    bounds = sorted(n for n, c in claims.items() if c.kind == "bound")
    for model, table in _bounds_file(path).items():
        for name in table:
            claim = claims.get(name)
            if claim is None or claim.kind != "bound":
                what = "a relation, which takes no number" if claim is not None else "not declared"
                shown = ", ".join(bounds[:12]) + (f", ... ({len(bounds)} in all)" if len(bounds) > 12 else "")
                raise HarnessError(f"{path}: [{model}] {name} is {what}; suite {suite} declares the bounds "
                                   f"{shown or '(none)'}")
            if (claim.side == "within") != isinstance(table[name], tuple):
                want = "a [low, high] pair" if claim.side == "within" else "one number"
                raise HarnessError(f"{path}: [{model}] {name} is a '{claim.side}' bound and takes {want}")


def bound_for(bounds_dir: Path, claim: Claim, model: str) -> float | tuple[float, float] | None:
    """The number of bound ``claim`` for ``model``, or None (then the claim is unverified)."""
    return _bounds_file(bounds_path(bounds_dir, claim.suite)).get(model, {}).get(claim.name)


def models_with_bounds(bounds_dir: Path, suite: str) -> set[str]:
    return set(_bounds_file(bounds_path(bounds_dir, suite)))


# -- judging --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """A claim checked on one model: its outcome, both sides, and why."""

    claim: Claim
    outcome: Outcome
    value: float | None
    other: float | tuple[float, float] | None  # the bound ([low, high] for 'within'), or the relation's other side
    reason: str = ""
    detail: dict = field(default_factory=dict)

    @property
    def message(self) -> str:
        c = self.claim
        if self.outcome is Outcome.NOT_APPLICABLE:
            return f"claim {c.key} not applicable: {self.reason}"
        if self.outcome is Outcome.UNVERIFIED:
            return f"claim {c.key} unverified: {self.reason}"
        if c.kind == "bound" and c.side == "within":
            low, high = self.other
            where = "in" if self.outcome is Outcome.PASSED else "outside"
            return f"claim {c.key} {self.outcome}: {self.value:.6g} {where} [{low:.6g}, {high:.6g}]"
        if c.kind == "bound":
            side = "<=" if c.side == "max" else ">="
            if self.outcome is Outcome.PASSED:
                return f"claim {c.key} holds: {self.value:.6g} {side} {self.other:.6g}"
            return f"claim {c.key} failed: {self.value:.6g} is not {side} {self.other:.6g}"
        verb = "holds" if self.outcome is Outcome.PASSED else "failed"
        return f"claim {c.key} {verb} ({c.statement}): {self.value:.6g} vs {self.other:.6g} {self.detail}"


VACUOUS_RATE = ("the bound [0, 1] admits every rate: at the trial count it was derived for, one run can show any "
                "rate; run more trials per cell (--trials, or the full preset) and export the bound again")


def judge_bound(claim: Claim, value: float, bound: float | tuple[float, float] | None) -> Verdict:
    """Check a regression bound; no number for the model -> unverified; a rate bound of [0, 1], which no
    rate can break, -> not applicable (:data:`VACUOUS_RATE`)."""
    if claim.kind != "bound":
        raise HarnessError(f"claim {claim.key} is a relation: pass a Comparison, not a number")
    v = _big(value)
    if bound is None:
        return Verdict(claim, Outcome.UNVERIFIED, v, None,
                       f"no number for this model in suites/bounds/{claim.suite}.toml")
    if claim.side == "within" and "rate" in claim.statistic and bound[0] <= 0.0 and bound[1] >= 1.0:
        return Verdict(claim, Outcome.NOT_APPLICABLE, v, tuple(bound), VACUOUS_RATE)
    if math.isnan(v):
        ok = False
    elif claim.side == "within":
        ok = bound[0] <= v <= bound[1]
    elif claim.side == "max":
        ok = v <= bound
    else:
        ok = v >= bound
    return Verdict(claim, Outcome.PASSED if ok else Outcome.FAILED, v,
                   tuple(bound) if isinstance(bound, tuple) else float(bound))


def judge_relation(claim: Claim, comparison: Comparison) -> Verdict:
    """Check a relation from its :class:`Comparison`."""
    if claim.kind != "relation":
        raise HarnessError(f"claim {claim.key} is a bound: pass its measured number, not a Comparison")
    outcome = Outcome.PASSED if comparison.holds else Outcome.FAILED
    return Verdict(claim, outcome, comparison.value, comparison.other, claim.statement, dict(comparison.detail))


def not_applicable(claim: Claim, reason: str) -> Verdict:
    if not reason:
        raise HarnessError(f"claim {claim.key}: not applicable needs a reason")
    return Verdict(claim, Outcome.NOT_APPLICABLE, None, None, reason)


# -- deriving bounds from measured runs ------------------------------------------------------------


def _binomial_quantile(n: int, p: float, q: float) -> int:
    """The smallest k with P(Binomial(n, p) <= k) >= q."""
    total = 0.0
    for k in range(n + 1):
        total += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if total >= q - 1e-12:
            return k
    return n


@dataclass(frozen=True)
class DerivedBound:
    """A regression bound derived from the values of several seeds, and how."""

    value: float | tuple[float, float] | None  # None: no honest bound (censored, collapsed, too few seeds)
    how: str


def derive_bound(claim: Claim, values: Sequence[float], *, rate_trials: int | None = None,
                 min_seeds: int = 5, rel_margin: float = 0.05, sd_margin: float = 3.0,
                 censored: Sequence[float] = ()) -> DerivedBound:
    """A bound for ``claim`` from its values at several seeds.

    Rates (``rate_trials`` given): the pooled rate's Wilson interval at the preset's trial count,
    z = 3.29 (99.9%): a ``min`` bound at its lower limit, ``max`` at its upper, ``within`` both.
    Other statistics: the worst seed widened by max(``sd_margin`` x the standard deviation over
    seeds, ``rel_margin`` x the value); ratios and perplexities (positive, multiplicative) on a log
    scale. A seed-independent claim (``claim.seeded`` False) needs two agreeing seeds, not five.
    A value equal to a censoring value (``censored``: a budget + 1, a cap) or a collapse gives no
    bound: a bound must never be a censoring value, and a collapse never passes a ``max``.
    """
    vals = [float(v) for v in values]
    n = len(vals)
    need = min_seeds if claim.seeded else min(2, min_seeds)
    if n < need:
        return DerivedBound(None, f"only {n} seed(s) measured; need {need}")
    if not claim.seeded and len(set(vals)) > 1:
        return DerivedBound(None, f"declared seed-independent but the seeds disagree: {vals}")
    if any(math.isnan(v) for v in vals):
        return DerivedBound(None, f"a seed measured nothing (NaN) among {vals}")
    if any(math.isinf(v) for v in vals) and claim.side != "min":
        return DerivedBound(None, f"a seed collapsed (values {vals}): no finite bound describes it")
    if any(v in censored for v in vals):
        return DerivedBound(None, f"a seed hit a censoring value {sorted(set(censored))}: the statistic is censored")
    if rate_trials is not None:
        hits = round(sum(vals) * rate_trials)
        p = hits / (n * rate_trials)
        p_low, p_high = wilson(hits, n * rate_trials, Z_BOUND)
        # the rate one run of ``rate_trials`` can show: binomial quantiles at the interval's ends
        low = _binomial_quantile(rate_trials, p_low, 1e-3) / rate_trials
        high = _binomial_quantile(rate_trials, p_high, 1 - 1e-3) / rate_trials
        how = (f"Wilson 99.9% of the pooled rate {p:.3f} ({hits}/{n * rate_trials}, {n} seeds), then the 0.1%/99.9% "
               f"binomial quantiles of one run of {rate_trials} trials")
        if claim.side == "within":
            if low <= 0.0 and high >= 1.0:
                how += f"; this spans every rate at {rate_trials} trials: the claim is reported not applicable"
            return DerivedBound((low, high), how)
        bound = low if claim.side == "min" else high
        if (claim.side == "max" and bound >= 1.0) or (claim.side == "min" and bound <= 0.0):
            return DerivedBound(None, f"{how} gives {bound}, which no rate can break: use side 'within'")
        return DerivedBound(bound, how)
    finite = [v for v in vals if math.isfinite(v)]
    if claim.side == "min" and len(finite) < len(vals):
        vals = finite  # a collapse is +inf: it cannot be the worst value of a 'min' statistic
        if len(vals) < need:
            return DerivedBound(None, f"fewer than {need} seeds stayed finite")
    log_scale = all(v > 0 for v in vals) and ("ratio" in claim.statistic or "perplexity" in claim.statistic)
    xs = [math.log(v) for v in vals] if log_scale else vals
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    rel = math.log1p(rel_margin) if log_scale else rel_margin
    low, high = min(xs), max(xs)
    margin = max(sd_margin * sd, rel if log_scale else rel * max(abs(low), abs(high)))
    back = math.exp if log_scale else (lambda x: x)
    scale = "log " if log_scale else ""
    kind = "" if claim.seeded else " (seed-independent)"
    how = (f"{len(vals)} seeds{kind}: range {back(low):.6g}..{back(high):.6g}, "
           f"{scale}sd {sd:.3g}; margin max({sd_margin:g} sd, {rel_margin:g} relative) = {scale}{margin:.3g}")
    if claim.side == "within":
        return DerivedBound((float(f"{back(low - margin):.6g}"), float(f"{back(high + margin):.6g}")), how)
    bound = back(high + margin) if claim.side == "max" else back(low - margin)
    return DerivedBound(float(f"{bound:.6g}"), how)
