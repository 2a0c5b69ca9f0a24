"""Deriving a regression bound from a model's runs at several seeds: the one margin rule (:func:`widen`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from harness.claims.declarations import Z_BOUND, Claim
from harness.claims.judging import vacuous_reason
from harness.stats import wilson


@dataclass(frozen=True)
class DerivedBound:
    """A regression bound derived from the values of several seeds, and how."""

    value: float | tuple[float, float] | None  # None: no honest bound (censored, collapsed, too few seeds)
    how: str


PREDICTIVE_K = 3.0  # the predictive half-width in standard deviations of the seeds
MAX_LOOSENESS = 10.0  # a ratio bound is never more than 10x looser than the worst seed (log scale)
REL_MARGIN = 0.05  # the least margin: 5% of the worst seed's value


def widen(claim: Claim, worst: float, sd: float, n: int, *, log_scale: bool) -> tuple[float, str]:
    """The one derivation of a non-rate bound: a predictive interval for the next run, from the worst of
    ``n`` seeds (on the log scale for ratios and perplexities, ``worst`` and ``sd`` already logged).

    Margin: ``PREDICTIVE_K`` x ``sd`` x sqrt(1 + 1/n) (the spread of one more run around seeds that
    scatter by ``sd``), at least ``REL_MARGIN`` of the worst value and, on the log scale, at most a
    factor ``MAX_LOOSENESS``. Returns the bound on the statistic's own scale and how it was chosen.
    """
    predictive = PREDICTIVE_K * sd * math.sqrt(1 + 1 / n)
    rel = math.log1p(REL_MARGIN) if log_scale else REL_MARGIN * abs(worst)
    margin = max(predictive, rel)
    capped = log_scale and margin > math.log(MAX_LOOSENESS)
    if capped:
        margin = math.log(MAX_LOOSENESS)
    x = worst + margin if claim.side == "max" else worst - margin
    bound = math.exp(x) if log_scale else x
    scale = "log " if log_scale else ""
    how = (f"margin max({PREDICTIVE_K:g} sd x sqrt(1+1/{n}), {REL_MARGIN:g} relative) = {scale}{margin:.3g} beyond "
           f"the worst seed" + (f", capped at {MAX_LOOSENESS:g}x" if capped else ""))
    return float(f"{bound:.6g}"), how


def rate_interval(hits: int, total: int) -> tuple[float, float]:
    """A rate bound: the Wilson 99.9% interval of the pooled collapse rate, rounded outward (one interval)."""
    low, high = wilson(hits, total, Z_BOUND)
    return math.floor(low * 1e4) / 1e4, math.ceil(high * 1e4) / 1e4


def derive_bound(claim: Claim, values: Sequence[float], *, rate_trials: int | None = None,
                 min_seeds: int = 5, censored: Sequence[float] = ()) -> DerivedBound:
    """A bound for ``claim`` from its values at several seeds.

    Rates (``rate_trials`` given): the pooled rate's Wilson 99.9% interval (:func:`rate_interval`), an
    interval on the rate itself; a run is judged by whether its own interval meets it
    (:func:`judge_bound`). Other statistics: :func:`widen` from the worst seed; ratios and perplexities
    (positive, multiplicative) on a log scale. A seed-independent claim (``claim.seeded`` False) needs
    two agreeing seeds, not five. No bound when a value equals a censoring value (``censored``: a budget
    + 1, a cap), when a seed collapsed under a ``max``, or when the result is vacuous
    (:func:`vacuous_reason`: it would pass a no-op).
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
        total = n * rate_trials
        bound: float | tuple[float, float] = rate_interval(hits, total)
        how = (f"Wilson 99.9% of the pooled rate {hits / total:.3f} ({hits}/{total}, {n} seeds): an interval on the "
               "rate; a run passes when its Wilson 95% interval meets it")
        if claim.side != "within":
            bound = bound[0] if claim.side == "min" else bound[1]
    else:
        finite = [v for v in vals if math.isfinite(v)]
        if claim.side == "min" and len(finite) < len(vals):
            vals = finite  # a collapse is +inf: it cannot be the worst value of a 'min' statistic
            if len(vals) < need:
                return DerivedBound(None, f"fewer than {need} seeds stayed finite")
        log_scale = all(v > 0 for v in vals) and ("ratio" in claim.statistic or "perplexity" in claim.statistic)
        xs = [math.log(v) for v in vals] if log_scale else vals
        mean = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        back = math.exp if log_scale else (lambda x: x)
        kind = "" if claim.seeded else " (seed-independent)"
        head = (f"{len(vals)} seeds{kind}: range {back(min(xs)):.6g}..{back(max(xs)):.6g}, "
                f"{'log ' if log_scale else ''}sd {sd:.3g}; ")
        if claim.side == "within":
            low, how_low = widen(replace(claim, side="min"), min(xs), sd, len(xs), log_scale=log_scale)
            high, _ = widen(replace(claim, side="max"), max(xs), sd, len(xs), log_scale=log_scale)
            bound, how = (low, high), head + how_low
        else:
            worst = max(xs) if claim.side == "max" else min(xs)
            bound, how = widen(claim, worst, sd, len(xs), log_scale=log_scale)
            how = head + how
    vacuous = vacuous_reason(claim, bound)
    if vacuous:
        return DerivedBound(None, f"{how}: {vacuous}")
    return DerivedBound(bound, how)
