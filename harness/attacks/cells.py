"""Cells of the weight-attack suite: one model in one dtype under one defense, attacked by name.

:class:`AttackCell` runs :func:`harness.attacks.run_attack` on its model and memoizes each run in a
dict the caller keeps (one per session), so that the random baseline is run once per cell and shared
by the attack cells comparing with it. :func:`flips_or_inf` reads a run's flips to collapse with a run
that never collapsed as +inf (censored: "did not collapse within the budget"), never as a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.attacks.base import attack_targets, run_attack
from harness.attacks.defenses import make_defense, sensitive_sites
from harness.attacks.result import AttackResult


def flips_or_inf(result: AttackResult) -> float:
    """Flips to collapse; +inf when the budget ran out first (censored)."""
    n = result.flips_to_collapse
    return math.inf if n is None else float(n)


@dataclass
class AttackCell:
    """What every run of one attack cell shares.

    Attributes:
        name: the model's name (key of the memo).
        model: the model in the cell's dtype (attacked in place and restored bit-exactly).
        dtype: ``fp32``, ``bf16`` or ``int8``.
        defense: ``none``, ``checksum`` or ``clamp``.
        eval_windows: windows the damage curve is measured on (count, length).
        attack_windows: windows for gradients and trial losses (count, length).
        super_weights: FaultSites the guided attack starts from.
        budget: most flips per run.
        max_trials: progressive attack: most trials per flip (None: its default).
        protected: checksum defense: how many sensitive weights it protects.
        memo: runs by key, kept by the caller for the session.
    """

    name: str
    model: torch.nn.Module
    dtype: str
    defense: str
    eval_windows: torch.Tensor
    attack_windows: torch.Tensor
    super_weights: list[Any]
    budget: int
    max_trials: int | None = None
    protected: int = 1024
    memo: dict[tuple, Any] = field(default_factory=dict)

    def _cached(self, key: tuple, make):
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def make_defense(self):
        if self.defense != "checksum":
            return make_defense(self.defense)
        k = self.protected
        sites = self._cached((self.name, "protected", self.dtype, k),
                             lambda: sensitive_sites(self.model, attack_targets(self.model), self.attack_windows, k))
        return make_defense("checksum", sites=sites, k=k)

    def clean_perplexity(self) -> float:
        from harness.metrics import evaluate

        return self._cached((self.name, "clean", self.dtype, tuple(self.eval_windows.shape)),
                            lambda: evaluate(self.model, self.eval_windows).perplexity)

    def run(self, attack_name: str, seed: int | None = None) -> AttackResult:
        """One attack run (``seed``: the random baseline's), memoized per (model, attack, dtype, defense, seed)."""
        options: dict[str, Any] = {}
        if attack_name == "random":
            options.update(generator=torch.Generator().manual_seed(seed), curve=False)
        elif attack_name == "guided":
            options["super_weights"] = self.super_weights
        elif attack_name == "progressive" and self.max_trials is not None:
            options["max_trials"] = self.max_trials
        key = (self.name, "run", attack_name, self.dtype, self.defense, self.budget, seed)
        return self._cached(key, lambda: run_attack(
            self.model, attack_name, eval_windows=self.eval_windows, attack_windows=self.attack_windows,
            budget=self.budget, defense=self.make_defense(), clean_perplexity=self.clean_perplexity(), **options))

    def replay(self, result: AttackResult) -> AttackResult:
        """``result``'s flips replayed, in order, on this cell's model under its defense (memoized like a run)."""
        sites = list(result.flips)
        key = (self.name, "replay", self.dtype, self.defense, self.budget, tuple(sites))
        return self._cached(key, lambda: run_attack(
            self.model, "replay", eval_windows=self.eval_windows, attack_windows=self.attack_windows,
            budget=self.budget, defense=self.make_defense(), clean_perplexity=self.clean_perplexity(), sites=sites))


def guided_sites(model: torch.nn.Module, detected: list[Any], count: int = 4) -> tuple[list[Any], str]:
    """(sites, source) the guided attack starts from: the detected super weights (source ``activation``),
    or where none was detected (random-weight models) the ``count`` largest-magnitude down-projection
    weights (source ``magnitude``), the usual super-weight candidates."""
    from harness.faults import top_magnitude_sites
    from harness.models.archmap import select

    if detected:
        return list(detected), "activation"
    refs = select(model, components="mlp_down")
    return [s.with_bits(()) for s in top_magnitude_sites(model, refs, count)], "magnitude"
