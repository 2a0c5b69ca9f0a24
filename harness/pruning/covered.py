"""Protection where the pruning mask covers the super weights: does ``protect=`` keep them, exactly?

At 50% magnitude pruning the super weights (the largest weights of their rows) are never in the mask, so the
pruning suite's protected and unprotected cells are the same model and protection is never exercised. Here the
mask is made to cover them: the largest weights of every row of the down projections that hold a super weight
are pruned (magnitude scores, ``target="most"``, row granularity), as many per row as it takes for the mask to
reach every super weight (a super weight need not be its row's largest |w|: smollm2-135m's are 1st, 2nd and
3rd), once without and once with the model's super weights protected. Protection then has something to keep:
every super weight is covered, protected pruning must leave each one's stored value bit-identical, and, since
removing a super weight is what makes it one, the protected model must do better (smollm2-135m: perplexity
119,712 unprotected, 38.2 protected; clean 17.5). Protected pruning moves each row's budget to its next-largest
weights, so the protected model is damaged too: the claim is only that it is damaged less.

Cost: magnitude scores of those matrices, two prunings (each restored bit-exactly) and two evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel


@dataclass(frozen=True)
class CoveredProtection:
    """Both prunings of :func:`covered_protection`.

    Attributes:
        sites: the super weights (their count).
        covered: super weights the unprotected mask pruned (changed from their stored value).
        kept: covered super weights whose stored value the protected pruning left bit-identical.
        unprotected, protected: the evaluations of both prunings (``harness.metrics.EvalResult``).
        layers: the layers whose down projections were pruned.
        sparsity: the share of each row pruned (the worst super weight's rank in its row, over the row length).
    """

    sites: int
    covered: int
    kept: int
    unprotected: Any
    protected: Any
    layers: tuple[int, ...]
    sparsity: float

    def extra(self) -> dict[str, Any]:
        return {"super_weights": self.sites, "covered": self.covered, "kept": self.kept,
                "unprotected_ppl": self.unprotected.perplexity, "protected_ppl": self.protected.perplexity,
                "layers": list(self.layers), "sparsity": self.sparsity, "scorer": "magnitude", "target": "most",
                "granularity": "row"}


def _values(model: torch.nn.Module, sites: list[Any]) -> list[torch.Tensor]:
    from harness.faults.sites import find_tensor

    return [find_tensor(model, s.param)[s.index].detach().clone() for s in sites]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical stored values."""
    return bool(torch.equal(a.reshape(1).view(torch.uint8), b.reshape(1).view(torch.uint8)))


def _rank_in_row(model: torch.nn.Module, site: Any) -> int:
    """1 + how many weights of the site's row have a larger |w| (its place when the row's largest go first)."""
    row = model.get_parameter(site.param)[site.index[0]].detach().abs()
    return int((row > row[site.index[1]]).sum().item()) + 1


def covered_protection(loaded: LoadedModel, sites: list[Any], windows: torch.Tensor,
                       reference: Any = None) -> CoveredProtection:
    """Prune the largest weights of every row of the down projections holding ``sites`` (the model's super
    weights, ``FaultSite``s), enough to cover every site, without and with them protected; evaluate both.

    Raises:
        HarnessError: no site, or a site outside every down projection.
    """
    from harness.metrics import evaluate
    from harness.models import select
    from harness.pruning.prune import prune
    from harness.scoring import score

    if not sites:
        raise HarnessError("covered protection needs at least one super weight")
    downs = {ref.param: ref for ref in select(loaded, components="mlp_down")}
    missing = [s.param for s in sites if s.param not in downs]
    if missing:
        raise HarnessError(f"super weights outside the down projections: {', '.join(sorted(set(missing)))}")
    layers = tuple(sorted({downs[s.param].layer for s in sites}))
    scores = score(loaded, "magnitude", layers=list(layers), components="mlp_down")
    cols = min(loaded.model.get_parameter(s.param).shape[1] for s in sites)
    sparsity = max(_rank_in_row(loaded.model, s) for s in sites) / cols
    before = _values(loaded.model, sites)
    results = {}
    changed: dict[bool, list[bool]] = {}
    for protected in (False, True):
        with prune(loaded, scores, sparsity, granularity="row", target="most",
                   protect=sites if protected else None):
            results[protected] = evaluate(loaded.model, windows, reference)
            changed[protected] = [not _same(a, b) for a, b in zip(before, _values(loaded.model, sites), strict=True)]
    covered = [i for i, c in enumerate(changed[False]) if c]
    kept = sum(not changed[True][i] for i in covered)
    return CoveredProtection(len(sites), len(covered), kept, results[False], results[True], layers, sparsity)
