"""Weight ablation: replace a layer, a component, rows, columns, or single elements.

Replacement values:

- ``zero``: 0.
- ``mean``: the mean of the whole parameter the elements belong to.
- ``row_mean``: the mean of the element's own row (output channel) of a matrix; the zero-versus-mean
  control of Sun et al. 2024 for a super weight.
- ``random``: draws from N(mean, std) of that parameter (needs a generator).
- ``scale``: ``factor`` × the element's own value (one rounding in the parameter's dtype);
  integrated-gradients scoring walks its path from 0 to W with it.

The statistics and the values scaled are taken once, before this ablation edits anything, so
overlapping targets are replaced once, not twice.

Integer (int8-code) parameters get the values rounded and clamped to their range. Only the
replaced elements are saved (a whole component costs a copy of that component).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from harness.errors import HarnessError
from harness.faults.base import PERTURBATIONS, Perturbation, save_block
from harness.faults.sites import (
    FaultSite,
    Region,
    Target,
    as_regions,
    elements_index,
    find_tensor,
    region_index,
    sites_by_param,
)

MODES = ("zero", "mean", "random", "scale", "row_mean")


@PERTURBATIONS.register("ablation")
class Ablation(Perturbation):
    """Replace the targets' weights in place; restore writes the saved elements back.

    Args:
        model: the model to edit in place.
        targets: parameter names, Regions (rows/cols), ComponentRefs (fused rows respected),
            FaultSites (single elements; their bits are ignored), or a sequence mixing these.
        mode: ``"zero"``, ``"mean"``, ``"random"``, ``"scale"`` or ``"row_mean"``.
        generator: the seeded source for ``"random"``.
        factor: the multiplier of ``"scale"`` (finite).

    Raises:
        HarnessError: unknown mode, ``random`` without a generator, ``scale`` without a finite
            factor (or a factor with another mode), ``row_mean`` of a parameter that is not a matrix,
            no targets, bad targets.
    """

    kind = "ablation"

    def __init__(
        self,
        model: nn.Module,
        targets: Target | FaultSite | Sequence[Target | FaultSite],
        mode: str = "zero",
        *,
        generator: torch.Generator | None = None,
        factor: float | None = None,
    ) -> None:
        super().__init__(model)
        if mode not in MODES:
            raise HarnessError(f"unknown ablation mode {mode!r}; allowed: {', '.join(MODES)}")
        if mode == "random" and generator is None:
            raise HarnessError("ablation mode 'random' needs a generator")
        if (mode == "scale") != (factor is not None):
            raise HarnessError("ablation takes a factor with mode 'scale' and only then")
        if factor is not None and not math.isfinite(factor):
            raise HarnessError(f"ablation mode 'scale' needs a finite factor, got {factor}")
        if targets is None:
            raise HarnessError("ablation needs targets: parameter names, Regions, ComponentRefs or FaultSites")
        if isinstance(targets, (str, Region, FaultSite)) or hasattr(targets, "param"):
            targets = [targets]
        sites = [t for t in targets if isinstance(t, FaultSite)]
        others = [t for t in targets if not isinstance(t, FaultSite)]
        self.regions = as_regions(model, others) if others else []
        self.elements: dict[str, list[tuple[int, ...]]] = {
            param: [sites[i].index for i in which] for param, which in sites_by_param(model, sites).items()}
        if not self.regions and not self.elements:
            raise HarnessError("ablation needs at least one target")
        self.mode, self.generator, self.factor = mode, generator, factor

    def _blocks(self) -> list[tuple[torch.Tensor, tuple]]:
        blocks = []
        for region in self.regions:
            t = find_tensor(self.model, region.param)
            blocks.append((t, region_index(region, t.device)))
        for param, indices in self.elements.items():
            t = find_tensor(self.model, param)
            blocks.append((t, elements_index(indices, t)))
        return blocks

    def _stats(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = t.detach().float()  # (temporary float copy of one parameter)
        std = w.std(correction=0) if w.numel() > 1 else torch.zeros((), device=t.device)
        return w.mean(), std

    def _row_means(self, t: torch.Tensor, index: tuple) -> torch.Tensor:
        """The mean of each element's row of ``t[index]``, in the block's shape (float)."""
        if t.dim() != 2:
            raise HarnessError(f"ablation mode 'row_mean' needs matrices, got a parameter of shape {tuple(t.shape)}")
        rows = torch.arange(t.shape[0], device=t.device)[:, None].expand(t.shape)[index]  # each element's row
        touched, which = torch.unique(rows, return_inverse=True)
        means = t.detach()[touched].float().mean(dim=1)  # (touched rows,): only the rows the block touches
        return means[which]

    def _values(self, t: torch.Tensor, old: torch.Tensor, stats: Any) -> torch.Tensor:
        shape = old.shape
        if self.mode == "zero":
            return torch.zeros(shape, dtype=t.dtype, device=t.device)
        if self.mode == "scale":
            if t.dtype.is_floating_point:
                return old * self.factor
            new = old.float() * self.factor
        elif self.mode == "mean":
            new = stats[0].expand(shape)
        elif self.mode == "row_mean":
            new = stats
        else:
            mean, std = stats
            g = self.generator
            new = torch.randn(shape, generator=g, device=g.device).to(t.device) * std + mean
        if not t.dtype.is_floating_point:
            info = torch.iinfo(t.dtype)
            new = new.round().clamp(info.min, info.max)
        return new.to(t.dtype)

    def _apply(self) -> None:
        blocks = self._blocks()
        stats: list[Any] = [None] * len(blocks)  # per block, taken before this ablation edits anything
        per_param: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, (t, index) in enumerate(blocks):
            if self.mode == "row_mean":
                stats[i] = self._row_means(t, index)
            elif self.mode in ("mean", "random"):
                if id(t) not in per_param:
                    per_param[id(t)] = self._stats(t)
                stats[i] = per_param[id(t)]
        olds = []  # every block saved before any is written: overlapping targets are replaced once
        for t, index in blocks:
            old, undo = save_block(t, index)
            self._push(undo)
            olds.append(old)
        for (t, index), old, block_stats in zip(blocks, olds, stats, strict=True):
            t.detach()[index] = self._values(t, old, block_stats)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "mode": self.mode}
        if self.factor is not None:
            d["factor"] = self.factor
        d["targets"] = [r.to_dict() for r in self.regions] if len(self.regions) <= 16 else len(self.regions)
        d["elements"] = sum(len(v) for v in self.elements.values())
        return d


def ablate(
    model: nn.Module,
    targets: Target | FaultSite | Sequence[Target | FaultSite],
    mode: str = "zero",
    *,
    generator: torch.Generator | None = None,
    factor: float | None = None,
) -> Ablation:
    """Weight ablation as a context manager (see ``Ablation``)."""
    return Ablation(model, targets, mode, generator=generator, factor=factor)


def ablate_layer(
    model: nn.Module,
    layers: Any,
    components: Any = None,
    mode: str = "zero",
    *,
    generator: torch.Generator | None = None,
) -> Ablation:
    """Ablate whole layers or some of their components, found by the architecture map.

    Args:
        layers: as ``harness.models.archmap.select`` takes them (``3``, ``"0-5"``, ``[3, 4]``).
        components: canonical component names or groups (None: every component of the layers).

    Raises:
        HarnessError: unknown layer or component (from the architecture map).
    """
    from harness.models.archmap import select

    if isinstance(layers, int):
        layers = [layers]
    return Ablation(model, select(model, layers=layers, components=components), mode, generator=generator)
