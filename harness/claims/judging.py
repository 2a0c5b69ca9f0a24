"""Judging one claim on one model: the :class:`Verdict` of a bound against its number, or of a relation from its
:class:`~harness.claims.comparisons.Comparison`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from harness.claims.comparisons import Comparison, compared
from harness.claims.declarations import Claim, Outcome
from harness.errors import HarnessError
from harness.stats import wilson


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
        if self.reason.startswith("undecided"):
            return f"claim {c.key} {self.outcome} ({c.statement}): {self.reason}"
        verb = "holds" if self.outcome is Outcome.PASSED else "failed"
        return f"claim {c.key} {verb} ({c.statement}): {self.value:.6g} vs {self.other:.6g} {self.detail}"


VACUOUS_RATE = ("the bound [0, 1] admits every rate: no run can break it; measure the cell at five seeds and "
                "export the bound again (`make bounds`)")


def vacuous_reason(claim: Claim, bound: float | tuple[float, float]) -> str:
    """Why ``bound`` cannot fail the way its claim needs, or "" when it can.

    A rate interval of [0, 1] admits every rate; a bound that admits the claim's ``null`` (what a
    perturbation that does nothing measures) would pass a no-op although the claim is that it acts.
    """
    if claim.side == "within" and bound[0] <= 0.0 and bound[1] >= 1.0 and "rate" in claim.statistic:
        return VACUOUS_RATE
    if claim.null is not None and _passes(claim, claim.null, bound):
        return (f"vacuous: a perturbation that does nothing (value {claim.null:g}) would pass the bound {bound}; "
                "derive it again from five seeds (`make bounds`) or state the claim as a relation")
    return ""


def _passes(claim: Claim, value: float, bound: float | tuple[float, float]) -> bool:
    if math.isnan(value):
        return False
    if claim.side == "within":
        return bound[0] <= value <= bound[1]
    return value <= bound if claim.side == "max" else value >= bound


def judge_bound(claim: Claim, value: float, bound: float | tuple[float, float] | None, *,
                trials: int | None = None) -> Verdict:
    """Check a regression bound.

    No number for the model -> unverified; a vacuous bound (:func:`vacuous_reason`) -> unverified with
    the reason. A rate bound (``side="within"``, a collapse-rate statistic) is an interval on the rate
    itself (:func:`derive_bound`); with ``trials`` given the run passes when its own Wilson 95% interval
    (``value * trials`` hits) meets that interval, and fails when the two lie apart.
    """
    if claim.kind != "bound":
        raise HarnessError(f"claim {claim.key} is a relation: pass a Comparison, not a number")
    v = compared(value)
    if bound is None:
        return Verdict(claim, Outcome.UNVERIFIED, v, None,
                       f"no number for this model in suites/bounds/{claim.suite}.toml")
    shown = tuple(bound) if isinstance(bound, tuple) else float(bound)
    vacuous = vacuous_reason(claim, bound)
    if vacuous:
        return Verdict(claim, Outcome.UNVERIFIED, v, shown, vacuous)
    detail: dict = {}
    if claim.side == "within" and trials and not math.isnan(v) and "rate" in claim.statistic:
        hits = round(v * trials)
        low, high = wilson(hits, trials)
        ok = low <= bound[1] and high >= bound[0]
        detail = {"test": "wilson_overlap", "ci": [low, high], "hits": hits, "trials": trials}
    else:
        ok = _passes(claim, v, bound)
    return Verdict(claim, Outcome.PASSED if ok else Outcome.FAILED, v, shown, detail=detail)


def judge_relation(claim: Claim, comparison: Comparison) -> Verdict:
    """Check a relation from its :class:`Comparison`."""
    if claim.kind != "relation":
        raise HarnessError(f"claim {claim.key} is a bound: pass its measured number, not a Comparison")
    outcome = Outcome.PASSED if comparison.holds else Outcome.FAILED
    return Verdict(claim, outcome, comparison.value, comparison.other, claim.statement, dict(comparison.detail))


def undecided(claim: Claim, comparison: Comparison, *, strict: bool) -> Verdict:
    """A relation the measurement could not decide (too few trials, nothing to compare at this budget).

    It is never passed and never "not applicable" (that is for structural reasons): unverified with
    the reason, and failed under ``--strict-claims``.
    """
    outcome = Outcome.FAILED if strict else Outcome.UNVERIFIED
    reason = f"undecided: {comparison.undecidable}"
    return Verdict(claim, outcome, comparison.value, comparison.other, reason, dict(comparison.detail))


def not_applicable(claim: Claim, reason: str) -> Verdict:
    if not reason:
        raise HarnessError(f"claim {claim.key}: not applicable needs a reason")
    return Verdict(claim, Outcome.NOT_APPLICABLE, None, None, reason)
