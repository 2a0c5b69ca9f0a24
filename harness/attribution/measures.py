"""How far a perturbation moves an attribution: clean versus perturbed, per prompt.

All measures compare ``seq_attr`` vectors over the same prompt tokens (the target is fixed):

- ``target_logprob_change``: log p(target | prompt) perturbed minus clean (nats; below 0 = the
  perturbed model finds the clean continuation less likely).
- ``attr_spearman``: Spearman rank correlation of the two vectors (ties get their mean rank; NaN
  when one side is constant or not finite).
- ``attr_shift``: ``1 - attr_spearman`` (0 = same ranking, 2 = reversed); +inf when the perturbed
  attribution is not finite (a collapsed model), so a collapse counts as the largest move.
- ``attr_rel_change``: ``sum |perturbed - clean| / sum |clean|`` (relative L1 change of the values; it
  sees changes too small to reorder the tokens, which leave ``attr_shift`` at exactly 0); +inf when the
  perturbed attribution is not finite.
- ``attr_topk_jaccard``: Jaccard index of the ``k`` tokens with the largest ``|attribution|``.
- ``attr_sign_flip_share``: share of the tokens with a nonzero clean attribution whose sign is
  reversed (a zero perturbed attribution is not a flip).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from harness.attribution.llm import TokenAttribution
from harness.errors import HarnessError
from harness.stats import jaccard, spearman


def relative_change(clean: torch.Tensor, perturbed: torch.Tensor) -> float:
    """``sum |perturbed - clean| / sum |clean|``: +inf when ``perturbed`` is not finite, NaN when ``clean`` is
    not finite or all zero."""
    c, p = clean.detach().double().reshape(-1).cpu(), perturbed.detach().double().reshape(-1).cpu()
    if c.numel() != p.numel():
        raise HarnessError(f"a relative change needs equal lengths, got {c.numel()} and {p.numel()}")
    scale = float(c.abs().sum())
    if not math.isfinite(scale) or scale == 0:
        return math.nan
    if not torch.isfinite(p).all():
        return math.inf
    return float((p - c).abs().sum()) / scale


def top_k_jaccard(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Jaccard index of the ``k`` largest-``|value|`` positions of ``a`` and of ``b`` (ties: lower index first).

    Raises:
        HarnessError: different lengths, or ``k`` outside ``1..len``.
    """
    a, b = a.detach().reshape(-1).cpu(), b.detach().reshape(-1).cpu()
    if a.numel() != b.numel() or not 1 <= k <= a.numel():
        raise HarnessError(f"top-k Jaccard needs equal lengths and 1 <= k <= length, got k={k}, "
                           f"lengths {a.numel()} and {b.numel()}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.nan
    return jaccard(torch.sort(a.abs(), descending=True, stable=True).indices[:k].tolist(),
                   torch.sort(b.abs(), descending=True, stable=True).indices[:k].tolist())


def sign_flip_share(clean: torch.Tensor, perturbed: torch.Tensor) -> float:
    """Share of the nonzero clean attributions whose perturbed sign is the opposite one (NaN if none or not finite)."""
    c, p = clean.detach().reshape(-1).cpu(), perturbed.detach().reshape(-1).cpu()
    if c.numel() != p.numel():
        raise HarnessError(f"sign flips need equal lengths, got {c.numel()} and {p.numel()}")
    if not (torch.isfinite(c).all() and torch.isfinite(p).all()):
        return math.nan
    nonzero = c != 0
    if not nonzero.any():
        return math.nan
    return float((torch.sign(c[nonzero]) * torch.sign(p[nonzero]) < 0).double().mean())


@dataclass(frozen=True)
class AttributionChange:
    """Clean versus perturbed attribution of one prompt (see the module docstring)."""

    target_logprob_change: float
    attr_spearman: float
    attr_shift: float
    attr_rel_change: float
    attr_topk_jaccard: float
    attr_sign_flip_share: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def compare(clean: TokenAttribution, perturbed: TokenAttribution, k: int = 3) -> AttributionChange:
    """The measures of the module docstring for one prompt; ``k`` is cut to the number of prompt tokens.

    Raises:
        HarnessError: the two attributions are over different prompt tokens.
    """
    if clean.input_tokens != perturbed.input_tokens or clean.target_tokens != perturbed.target_tokens:
        raise HarnessError("compare needs two attributions of the same prompt and target")
    rho = spearman(clean.seq_attr, perturbed.seq_attr) if clean.seq_attr.numel() >= 2 else math.nan
    shift = math.inf if not perturbed.finite else 1.0 - rho
    k = min(k, clean.seq_attr.numel())
    change = perturbed.target_logprob - clean.target_logprob
    return AttributionChange(
        target_logprob_change=change if math.isfinite(change) else -math.inf,
        attr_spearman=rho, attr_shift=shift, attr_rel_change=relative_change(clean.seq_attr, perturbed.seq_attr),
        attr_topk_jaccard=top_k_jaccard(clean.seq_attr, perturbed.seq_attr, k),
        attr_sign_flip_share=sign_flip_share(clean.seq_attr, perturbed.seq_attr),
    )
