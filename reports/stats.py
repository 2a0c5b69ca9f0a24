"""Small statistics used by the tables and figures (the Wilson interval is harness.stats')."""

from __future__ import annotations

from harness.stats import Z95
from harness.stats import wilson as _wilson


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default), as :func:`harness.stats.wilson`.

    Returns:
        (low, high); (0.0, 1.0) when ``n`` is 0 (no trial says nothing).
    """
    if n <= 0:
        return 0.0, 1.0
    return _wilson(int(successes), int(n), z)
