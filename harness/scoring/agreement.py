"""Agreement of two scoring methods: top-k overlap (Jaccard) and rank correlation (Spearman) on a sample.

:func:`scored` scores a model with one method and keeps what the comparison needs (its top-k keys,
its |scores| at a common seeded sample of weights, the cost); :func:`harness.stats.jaccard` and
:func:`harness.stats.spearman` compare them, against the random-ranking references :func:`random_jaccard` and
:func:`random_spearman_limit`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from harness.models.archmap import select
from harness.scoring.base import ref_shape

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel


@dataclass
class Scored:
    """One method's scores, reduced to what the comparison needs.

    Attributes:
        method: the scorer.
        seconds: scoring plus the top-k pass (the data-free scorers compute lazily).
        cost: the ScoreSet's cost (forward, backward, tokens).
        options: the scorer options used.
        top: keys ``(param, index)`` of its top-k weights (fewer for ``activation``).
        sampled: (sample,) float32 |scores| at the common sample, or None (``activation``: 0 almost everywhere).
        numel: weights scored.
    """

    method: str
    seconds: float
    cost: Any
    options: dict[str, Any]
    top: set[tuple[str, tuple[int, ...]]]
    sampled: torch.Tensor | None
    numel: int


def sample_positions(model: torch.nn.Module, n: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Per linear matrix of every block, flat indices into its scores: ``n`` in all, in proportion to size."""
    refs = select(model, components="linear")
    sizes = [math.prod(ref_shape(model, ref)) for ref in refs]
    total = sum(sizes)
    return [torch.randint(0, size, (max(1, round(n * size / total)),), generator=generator) for size in sizes]


def scored(loaded: LoadedModel, method: str, windows: torch.Tensor, k: int, positions: list[torch.Tensor],
           **options: Any) -> Scored:
    """Score every linear matrix of ``loaded`` with ``method`` and keep its top ``k`` and sampled |scores|."""
    from harness.scoring import score

    refs = select(loaded.model, components="linear")
    start = time.perf_counter()
    found = score(loaded, method, windows=windows, **options)
    top = found.top_k(min(k, found.numel()))  # lazy scorers (magnitude, z_score) compute here
    seconds = time.perf_counter() - start
    sampled = None
    if method != "activation":
        if [r.param for r in found.refs] != [r.param for r in refs]:
            raise ValueError(f"scorer {method} scored other matrices than every block's linear weights")
        sampled = torch.cat([scores.reshape(-1)[pos.to(scores.device)].abs().float().cpu()
                             for (_, scores), pos in zip(found, positions, strict=True)])
    return Scored(method, seconds, found.cost, dict(options), {(s.site.param, s.site.index) for s in top},
                  sampled, found.numel())


def random_jaccard(k_a: int, k_b: int, n: int) -> float:
    """Expected Jaccard of two uniformly random subsets of sizes ``k_a``, ``k_b`` of ``n`` items
    (expected intersection k_a k_b / n over the expected union)."""
    inter = k_a * k_b / n
    return inter / (k_a + k_b - inter)


def random_spearman_limit(n: int, z: float = 3.290527) -> float:
    """Upper limit of Spearman's rho of a random ranking of ``n`` items (z / sqrt(n - 1); 99.9% by default)."""
    return z / math.sqrt(n - 1)


def overlap_pvalue(common: int, k_a: int, k_b: int, n: int) -> float:
    """P(two uniformly random subsets of sizes ``k_a``, ``k_b`` of ``n`` items share >= ``common`` items),
    Poisson approximation with mean k_a k_b / n (close for k_a k_b << n)."""
    lam = k_a * k_b / n
    below = sum(_poisson_pmf(i, lam) for i in range(common))
    return max(0.0, 1.0 - below)


def _poisson_pmf(i: int, lam: float) -> float:
    """P(X = i), X ~ Poisson(lam); in log space where ``lam**i`` or ``i!`` exceed a float (i > 170: the full
    preset's k = 1000 overlaps)."""
    try:
        return math.exp(-lam) * lam**i / math.factorial(i)
    except OverflowError:
        return 0.0 if lam == 0 else math.exp(i * math.log(lam) - lam - math.lgamma(i + 1))
