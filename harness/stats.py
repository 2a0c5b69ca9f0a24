"""Small statistics shared by claims, campaigns and reports (one definition each)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from harness.errors import HarnessError

if TYPE_CHECKING:
    import torch

SEED_STRIDE = 100_003  # trial seeds of --seed s and --seed s+1 never meet below this many trials

Z95 = 1.959964  # two-sided 95% normal quantile


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default).

    Raises:
        HarnessError: ``n < 1`` or ``successes`` outside ``0..n``.
    """
    if n < 1 or not 0 <= successes <= n:
        raise HarnessError(f"a Wilson interval needs n >= 1 and 0 <= successes <= n, got {successes}/{n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def trial_seed(seed: int, trial: int, *, stream: str = "") -> int:
    """The one seed policy: the generator seed of trial ``trial`` of a run with ``--seed seed``.

    Cells that compare paired trials share the default stream, so trial t draws alike in each (a paired
    design); ``stream`` (a cell or analysis name) gives an independent sequence. Different ``--seed``
    values never share a trial seed below ``SEED_STRIDE`` trials (no ``seed + i``, which makes seed 0's
    trial 1 seed 1's trial 0).
    """
    if trial < 0 or trial >= SEED_STRIDE:
        raise HarnessError(f"trial index must be in 0..{SEED_STRIDE - 1}, got {trial}")
    offset = zlib.crc32(stream.encode()) * SEED_STRIDE * 1_000_003 if stream else 0
    return (offset + seed * SEED_STRIDE + trial) % (2**63 - 1)


def jaccard(a: Iterable, b: Iterable) -> float:
    """Jaccard index ``|a & b| / |a | b|`` of two collections, as sets.

    Two empty collections are the same set: 1.0 (the super weights of two models that have none agree;
    a top-k set is never empty, so the rule decides nothing there).
    """
    a, b = set(a), set(b)
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of a 1-D tensor, ties sharing their mean rank (float64)."""
    import torch

    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.double()
    mean_rank = counts.cumsum(0) - counts + (counts - 1) / 2
    return mean_rank[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two equal-length tensors (flattened; ties get their mean rank), in float64.

    Returns:
        rho in [-1, 1]; NaN when either side is constant or holds a non-finite value.

    Raises:
        HarnessError: different lengths or fewer than two elements.
    """
    import torch

    a, b = a.detach().double().reshape(-1).cpu(), b.detach().double().reshape(-1).cpu()
    if a.numel() != b.numel() or a.numel() < 2:
        raise HarnessError(f"Spearman needs two vectors of one length >= 2, got {a.numel()} and {b.numel()}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.nan
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom > 0 else math.nan
