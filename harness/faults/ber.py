"""Bit-error-rate mode: every stored bit of the targets flips independently with probability p.

The flipped positions are sampled directly: the count from Binomial(n_bits, p), then that many
distinct bit positions (``distinct_positions``), so no mask the size of the model is built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from harness.errors import HarnessError
from harness.faults.base import PERTURBATIONS
from harness.faults.bits import BitSpec, resolve_bits, stored_bits
from harness.faults.injector import BitFlip
from harness.faults.samplers import distinct_positions
from harness.faults.sites import FaultSite, Target, as_regions, element_index, region_size

MAX_FLIPS = 10_000_000  # more flips than this in one trial is refused (memory for the sites)


def check_probability(p: Any) -> float:
    """Raise unless ``p`` is a number in [0, 1]."""
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise HarnessError(f"bit error rate p must be a number in [0, 1], got {p!r}") from None
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise HarnessError(f"bit error rate p must be in [0, 1], got {p}")
    return p


def sample_ber_sites(
    model: nn.Module,
    targets: Target | Sequence[Target] | None = None,
    p: float = 0.0,
    *,
    generator: torch.Generator,
    bits: BitSpec | None = None,
) -> list[FaultSite]:
    """Sample the sites of one bit-error-rate trial.

    Args:
        model: the model the targets name.
        targets: None (every parameter), names, Regions or ComponentRefs.
        p: per-bit flip probability, in [0, 1].
        generator: the seeded source of the count and the positions.
        bits: restrict the bit space to a class or list of bits (default: every stored bit).

    Returns:
        One site per element with at least one flipped bit (its flipped bits sorted), ordered by
        target and element.

    Raises:
        HarnessError: p outside [0, 1], bad targets, or more than ``MAX_FLIPS`` flips drawn.
    """
    p = check_probability(p)
    regions = as_regions(model, targets)
    bitsets = [resolve_bits("any" if bits is None else bits, stored_bits(model, r.param).dtype) for r in regions]
    n_per = [region_size(model, r) * len(b) for r, b in zip(regions, bitsets, strict=True)]
    sizes = torch.tensor(n_per, dtype=torch.int64)  # bits per region
    ends = sizes.cumsum(0)
    n_bits = int(ends[-1])
    dev = generator.device
    count = torch.binomial(
        torch.tensor([float(n_bits)], dtype=torch.float64, device=dev),
        torch.tensor([p], dtype=torch.float64, device=dev),
        generator=generator,
    )
    count = min(int(count.item()), n_bits)
    if count > MAX_FLIPS:
        raise HarnessError(
            f"p={p} over {n_bits} bits drew {count} flips; at most {MAX_FLIPS} per trial, lower p or narrow the targets"
        )
    pos = distinct_positions(n_bits, count, generator).sort().values  # (count,)
    region_of = torch.searchsorted(ends, pos, right=True)
    local = pos - (ends - sizes)[region_of]
    sites: list[FaultSite] = []
    for r, (region, bitset) in enumerate(zip(regions, bitsets, strict=True)):
        mine = local[region_of == r]
        if not len(mine):
            continue
        width = len(bitset)
        elem, bit_i = mine // width, mine % width  # sorted by elem, then bit
        table = torch.tensor(bitset, dtype=torch.int64)
        uniq, counts = torch.unique_consecutive(elem, return_counts=True)
        index = element_index(model, region, uniq).tolist()
        bit_groups = table[bit_i].split(counts.tolist())
        sites.extend(
            FaultSite(region.param, tuple(i), tuple(sorted(b.tolist()))) for i, b in zip(index, bit_groups, strict=True)
        )
    return sites


@PERTURBATIONS.register("ber")
class BitErrorRate(BitFlip):
    """A bit-error-rate trial: sites sampled at construction (``.sites``), applied as a ``BitFlip``.

    Args: as ``sample_ber_sites``.
    """

    kind = "ber"

    def __init__(
        self,
        model: nn.Module,
        targets: Target | Sequence[Target] | None = None,
        p: float = 0.0,
        *,
        generator: torch.Generator,
        bits: BitSpec | None = None,
    ) -> None:
        sites = sample_ber_sites(model, targets, p, generator=generator, bits=bits)
        super().__init__(model, sites, allow_empty=True)
        self.p = float(p)
        self.bits = bits
        self.n_flips = sum(len(s.bits) for s in sites)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "p": self.p, "bits": self.bits, "n_flips": self.n_flips,
                "n_sites": len(self.sites)}


def bit_error_rate(
    model: nn.Module,
    targets: Target | Sequence[Target] | None = None,
    p: float = 0.0,
    *,
    generator: torch.Generator,
    bits: BitSpec | None = None,
) -> BitErrorRate:
    """One bit-error-rate trial as a context manager (see ``sample_ber_sites``)."""
    return BitErrorRate(model, targets, p, generator=generator, bits=bits)


def expected_flips(n_bits: int, p: float) -> tuple[float, float]:
    """Mean and standard deviation of the flip count, Binomial(n_bits, p)."""
    return n_bits * p, math.sqrt(n_bits * p * (1 - p))
