"""What a pruned weight becomes: one registered function per prune method.

Each method gets the region being pruned (the selected rows of one parameter, in its dtype) and the
mask, and returns what the masked elements become: one number for all of them, or a 1-D tensor of
values in the mask's row-major order. Statistics are
taken from the region's original values, before any element is replaced, as the research framework
did (``param.mean()``, ``0.01 * param.std()``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from harness.registry import Registry

PruneMethod = Callable[[torch.Tensor, torch.Tensor, torch.Generator | None], float | torch.Tensor]
PRUNE_METHODS: Registry[PruneMethod] = Registry("prune method")

NOISE_SCALE = 0.01  # "small noise": N(0, (NOISE_SCALE * std of the matrix)^2)


@PRUNE_METHODS.register("zero")
def zero(region: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> float:
    """Pruned weights become 0 (classic pruning)."""
    return 0.0


@PRUNE_METHODS.register("mean")
def mean(region: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> float:
    """Pruned weights become the mean of the matrix (the control for zeroing: no shift of the mean)."""
    return float(region.float().mean())


@PRUNE_METHODS.register("noise")
def noise(region: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pruned weights become small Gaussian noise, ``N(0, (0.01 * std of the matrix)^2)``, drawn on the
    CPU from ``generator`` so the same seed gives the same values on every device."""
    std = NOISE_SCALE * float(region.float().std()) if region.numel() > 1 else 0.0
    values = torch.randn(int(torch.count_nonzero(mask)), generator=generator, dtype=torch.float32) * std
    return values.to(device=region.device, dtype=region.dtype)


PRUNE_METHODS.register("small_noise", noise)  # the research framework's name
