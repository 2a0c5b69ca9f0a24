"""Claim declarations: a suite's :class:`ClaimSet` of relations, effect guards and regression bounds, and the four
outcomes of checking one (:class:`Outcome`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from harness.errors import HarnessError

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
        null: the value the statistic takes when the perturbation does nothing (a ratio of 1, a delta of
            0), for a bound whose claim is that the perturbation acts. A bound that admits it is
            vacuous: refused at export (:func:`derive_bound`) and unverified when judged.
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
    null: float | None = None

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
              pretrained_only: bool = False, margin: str = "", seeded: bool = True,
              null: float | None = None) -> Claim:
        """Declare a regression bound (its number per model lives in ``suites/bounds/<suite>.toml``);
        ``null``: what a perturbation that does nothing measures, when the claim is that it acts."""
        if side not in ("max", "min", "within"):
            raise HarnessError(f"claim {self.suite}.{name}: side must be 'max', 'min' or 'within', got {side!r}")
        return self._add(Claim(self.suite, name, statement, "bound", statistic, side, pretrained_only, margin,
                               seeded, null))

    def effect(self, cell: str, what: str, *, pretrained_only: bool = False) -> Claim:
        """Declare the effect guard ``<cell>_has_effect``: the perturbation ``what`` changed the output in
        at least one trial (judged by :func:`has_effect`). It applies to random-weight models too, unless
        ``pretrained_only`` (a single flip can be rounded away in a tiny random model's small activations)."""
        return self.relation(f"{cell}_has_effect", f"{what} changes the model's output in at least one trial "
                             "(not masked: perplexity ratio != 1 or KL > 0)", statistic="trials with an effect",
                             pretrained_only=pretrained_only, margin="at least one trial of the cell")

    def __iter__(self) -> Iterator[Claim]:
        return iter(self.claims.values())


def declared(suite: str | None = None) -> dict[str, Claim]:
    """Declared claims by key (``suite.name``), of one suite or of every suite imported so far."""
    return {c.key: c for s, claims in _DECLARED.items() if suite in (None, s) for c in claims.values()}
