"""Seeded Gaussian or uniform weight noise on chosen parameters (or parts of fused ones).

Noise touches every element of its targets, so it saves a copy of exactly the touched elements
(O(touched), one parameter at a time; for the whole model that is a second copy of the weights).
Re-generating the noise and subtracting it would not restore bit-exactly, so we do not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from harness.errors import HarnessError
from harness.faults.base import PERTURBATIONS, Perturbation, save_block
from harness.faults.sites import Target, as_regions, elements_index, find_tensor, region_index, sites_by_param

if TYPE_CHECKING:
    from harness.faults.sites import FaultSite

KINDS = ("gaussian", "uniform")
SCALES = ("absolute", "relative", "std")


def _check_level(level: object) -> None:
    if not isinstance(level, (int, float)) or not math.isfinite(level) or level < 0:
        raise HarnessError(f"noise level must be a finite number >= 0, got {level!r}")


def _check_floating(model: nn.Module, params: Iterable[str]) -> None:
    for param in params:
        dtype = find_tensor(model, param).dtype
        if not dtype.is_floating_point:
            raise HarnessError(f"noise needs floating-point weights; {param} is {dtype}")


@PERTURBATIONS.register("noise")
class Noise(Perturbation):
    """Add noise eps to the targets' weights in place.

    eps is ``level * N(0, 1)`` (gaussian) or ``U(-level, level)`` (uniform), drawn in float32 and
    applied as

    - ``absolute``: w + eps
    - ``relative``: w * (1 + eps)  (per weight; zeros stay zero)
    - ``std``: w + eps * std(touched weights of the parameter)

    then rounded to the parameter's dtype.

    Args:
        model: the model to edit in place.
        targets: None (every floating-point parameter), names, Regions or ComponentRefs.
        level: noise level, >= 0.
        kind: ``"gaussian"`` or ``"uniform"``.
        scale: ``"absolute"``, ``"relative"`` or ``"std"``.
        generator: the seeded source (its device is where noise is drawn; moved to each
            parameter's device).

    Raises:
        HarnessError: negative or non-finite level, unknown kind/scale, bad targets, or an explicit
            non-floating-point target.
    """

    kind = "noise"

    def __init__(
        self,
        model: nn.Module,
        targets: Target | Sequence[Target] | None = None,
        level: float = 0.0,
        *,
        kind: str = "gaussian",
        scale: str = "absolute",
        generator: torch.Generator,
    ) -> None:
        super().__init__(model)
        _check_level(level)
        if kind not in KINDS:
            raise HarnessError(f"unknown noise kind {kind!r}; allowed: {', '.join(KINDS)}")
        if scale not in SCALES:
            raise HarnessError(f"unknown noise scale {scale!r}; allowed: {', '.join(SCALES)}")
        regions = as_regions(model, targets)
        if targets is None:
            regions = [r for r in regions if find_tensor(model, r.param).is_floating_point()]
        _check_floating(model, [r.param for r in regions])
        self.regions = regions
        self.level, self.noise_kind, self.scale, self.generator = float(level), kind, scale, generator

    def _draw(self, shape: torch.Size) -> torch.Tensor:
        g = self.generator
        if self.noise_kind == "gaussian":
            return torch.randn(shape, generator=g, device=g.device) * self.level
        return (torch.rand(shape, generator=g, device=g.device) * 2 - 1) * self.level

    def _apply(self) -> None:
        for region in self.regions:
            t = find_tensor(self.model, region.param)
            index = region_index(region, t.device)
            old, undo = save_block(t, index)
            self._push(undo)
            w = old.float()
            eps = self._draw(w.shape).to(t.device)
            if self.scale == "absolute":
                new = w + eps
            elif self.scale == "relative":
                new = w * (1 + eps)
            else:
                new = w + eps * w.std(correction=0)
            t.detach()[index] = new.to(t.dtype)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "noise": self.noise_kind, "scale": self.scale, "level": self.level,
                "targets": [r.to_dict() for r in self.regions] if len(self.regions) <= 16 else len(self.regions)}


add_noise = Noise  # weight noise as a context manager: ``with add_noise(model, targets, level, generator=g):``


@PERTURBATIONS.register("site_noise")
class SiteNoise(Perturbation):
    """Relative Gaussian noise at chosen elements: ``w + level * eps * |w|``, eps ~ N(0, 1).

    One eps per site, drawn in site order (float32, on the generator's device); sites of one
    parameter are written together. Only the touched elements are saved.

    Args:
        model: the model to edit in place.
        sites: the elements (``FaultSite``; bits ignored).
        level: noise level, >= 0.
        generator: the seeded source.

    Raises:
        HarnessError: negative or non-finite level, or a site on a non-floating-point tensor.
    """

    kind = "site_noise"

    def __init__(self, model: nn.Module, sites: Sequence[FaultSite], level: float, *,
                 generator: torch.Generator) -> None:
        super().__init__(model)
        _check_level(level)
        self.sites, self.level, self.generator = list(sites), float(level), generator
        self.by_param = sites_by_param(model, self.sites)
        _check_floating(model, self.by_param)

    def _apply(self) -> None:
        g = self.generator
        eps = torch.randn(len(self.sites), generator=g, device=g.device)
        for param, which in self.by_param.items():
            t = find_tensor(self.model, param)
            index = elements_index([self.sites[i].index for i in which], t)
            old, undo = save_block(t, index)
            self._push(undo)
            w = old.float()
            t.detach()[index] = (w + self.level * eps[which].to(t.device, torch.float32) * w.abs()).to(t.dtype)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "level": self.level, "sites": len(self.sites)}
