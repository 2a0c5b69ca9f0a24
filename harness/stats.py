"""Small statistics shared by claims, campaigns and reports (one definition each)."""

from __future__ import annotations

import math
import zlib

from harness.errors import HarnessError

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
