"""What a weight attack produced: the flips it chose, in order, and the damage after each.

An :class:`AttackResult` is replayable: ``with result.replay(model): ...`` applies its flips (or the
first ``n``) through the injector (:func:`harness.faults.flip_bits`) and restores them on exit. A
replay reproduces the attacked model without the defense's repairs; ``curve`` was measured with the
defense active. :meth:`AttackResult.rows` are a run's records (:class:`~harness.records.row.Row`), its flips to
collapse read by :func:`flips_or_inf` (a run that never collapsed: +inf, censored, never a number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from harness.errors import HarnessError
from harness.faults import BitFlip, FaultSite, flip_bits
from harness.metrics import is_collapse
from harness.records.row import Row

DETAILS = ("trials", "undone_trials", "iterations", "bits", "neighbours", "source")  # AttackResult.extra recorded


@dataclass(frozen=True)
class AttackResult:
    """One attack run.

    Attributes:
        method: attack name (``progressive``, ``guided``, ``random``).
        flips: one single-bit :class:`FaultSite` per flip, in the order applied.
        curve: perplexity on the evaluation windows after 0, 1, ..., ``len(flips)`` flips
            (``curve[0]`` is the clean model's); ``inf`` once the logits go non-finite, NaN where
            the attack did not measure (the random baseline measures only what it needs).
        threshold: collapse = perplexity >= ``threshold`` x clean, or non-finite.
        budget: the most flips the attack was allowed.
        defense: name of the defense active during the attack (``none`` without one).
        dtype: dtype of the attacked weights (``float32``, ``bfloat16``, ``int8``, ...).
        seconds: wall time of the attack.
        forwards: forward passes the attack spent (gradients, trials and evaluations).
        repaired: flips the defense undid or clamped (counted among ``flips``).
        extra: method-specific details (seed, candidates, targets).
    """

    method: str
    flips: tuple[FaultSite, ...]
    curve: tuple[float, ...]
    threshold: float
    budget: int
    defense: str = "none"
    dtype: str = ""
    seconds: float = 0.0
    forwards: int = 0
    repaired: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def clean_perplexity(self) -> float:
        return self.curve[0]

    @property
    def ratios(self) -> tuple[float, ...]:
        """Perplexity / clean perplexity after 0..n flips (the damage curve; NaN = not measured)."""
        return tuple(math.nan if math.isnan(p) else p / self.curve[0] if math.isfinite(p) else math.inf
                     for p in self.curve)

    def _collapse(self, ratio: float) -> bool:
        return not math.isnan(ratio) and is_collapse(ratio, self.threshold)  # NaN: not measured

    @property
    def collapsed(self) -> bool:
        """The last measured point collapsed."""
        measured = [r for r in self.ratios if not math.isnan(r)]
        return self._collapse(measured[-1])

    @property
    def flips_to_collapse(self) -> int | None:
        """Flips until the first measured collapse, or None when the budget ran out first."""
        return next((n for n, r in enumerate(self.ratios) if self._collapse(r)), None)

    def run_extra(self) -> dict[str, Any]:
        """What the run's records carry beside its flips to collapse: flips, forwards, repaired flips, censored, the
        clean perplexity and the method's details kept from :attr:`extra` (:data:`DETAILS`)."""
        details = {k: v for k, v in self.extra.items() if k in DETAILS}
        return {"flips": len(self.flips), "forwards": self.forwards, "repaired": self.repaired,
                "censored": self.flips_to_collapse is None, "clean_perplexity": self.curve[0], **details}

    def rows(self, perturbation: dict[str, Any], seed: int) -> list[Row]:
        """The run's records (method = :attr:`method`, ``seed``): ``flips_to_collapse`` (+inf and collapsed=0 when
        censored), ``ppl_ratio`` after each measured flip (``extra.flips``, ``extra.site``) and ``seconds``."""
        extra = self.run_extra()
        run = {"method": self.method, "seed": seed}
        return [Row("flips_to_collapse", flips_or_inf(self), perturbation, extra,
                    columns={**run, "collapsed": not extra["censored"]}),
                *(Row("ppl_ratio", ratio, perturbation, {"flips": flips, "site": self.flips[flips - 1].to_dict()},
                      clean_value=self.curve[0], columns=run)
                  for flips, ratio in enumerate(self.ratios[1:], 1)
                  if not math.isnan(ratio)),  # NaN: not measured (the random baseline measures only what it needs)
                Row("seconds", self.seconds, perturbation, extra, columns=run)]

    def replay(self, model: nn.Module, n: int | None = None) -> BitFlip:
        """The first ``n`` flips (all by default) as one restorable perturbation: ``with result.replay(m):``.

        Raises:
            HarnessError: ``n`` outside 1..len(flips).
        """
        n = len(self.flips) if n is None else n
        if not 1 <= n <= len(self.flips):
            raise HarnessError(f"can replay 1..{len(self.flips)} flips of this {self.method} attack, not {n}")
        return flip_bits(model, self.flips[:n])

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "flips": [f.to_dict() for f in self.flips], "curve": list(self.curve),
            "threshold": self.threshold, "budget": self.budget, "defense": self.defense, "dtype": self.dtype,
            "seconds": self.seconds, "forwards": self.forwards, "repaired": self.repaired,
            "flips_to_collapse": self.flips_to_collapse, "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackResult:
        try:
            return cls(
                method=data["method"], flips=tuple(FaultSite.from_dict(f) for f in data["flips"]),
                curve=tuple(float(c) for c in data["curve"]), threshold=float(data["threshold"]),
                budget=int(data["budget"]), defense=data.get("defense", "none"), dtype=data.get("dtype", ""),
                seconds=float(data.get("seconds", 0.0)), forwards=int(data.get("forwards", 0)),
                repaired=int(data.get("repaired", 0)), extra=dict(data.get("extra", {})),
            )
        except KeyError as e:
            raise HarnessError(f"an attack result needs method, flips, curve, threshold and budget; "
                               f"missing {e.args[0]!r}") from None


def flips_or_inf(result: AttackResult) -> float:
    """Flips to collapse; +inf when the budget ran out first (censored)."""
    n = result.flips_to_collapse
    return math.inf if n is None else float(n)
