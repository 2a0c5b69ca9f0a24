"""Small statistics shared by claims, campaigns and reports (one definition each)."""

from __future__ import annotations

import math

from harness.errors import HarnessError

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
