"""Seeded samplers that choose fault sites; the injector (``flip_bits``) applies them.

Every random draw goes through the ``torch.Generator`` passed in, in a fixed order, so the same
seed gives the same sites. Bits: a class name (``"exp_msb"``, ``"exponent"``...) draws
``bits_per_site`` distinct bits of that class per site; an int or a list of ints flips exactly those
bits at every site.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from harness.errors import HarnessError
from harness.faults.bits import BitSpec, resolve_bits
from harness.faults.quant import QuantizedLinear
from harness.faults.sites import (
    FaultSite,
    Region,
    Target,
    as_regions,
    region_indices,
    region_shape,
    region_size,
)
from harness.faults.storage import PackedWeightStore, stored_bits

RANDPERM_MAX = 1 << 24  # randperm only up to this many candidates...
RANDPERM_MIN_FRACTION = 0.25  # ...and only when drawing at least this fraction of them
CHUNK = 1 << 22  # elements per block when scanning magnitudes
FEW = 1024  # distinct positions up to this many are kept distinct on Python ints


def check_count(n: Any, what: str = "n") -> int:
    """Raise unless ``n`` is an integer >= 1."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise HarnessError(f"{what} must be an integer >= 1, got {n!r}")
    return n


def distinct_positions(total: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct positions drawn uniformly from ``range(total)``, in draw order.

    Drawing a large fraction of a small range uses ``randperm``; otherwise random int64s are drawn
    and repeats dropped (rejection, O(k) work), so no tensor of size ``total`` is built.

    Returns:
        (k,) int64 CPU tensor.

    Raises:
        HarnessError: ``k > total``.
    """
    if k > total:
        raise HarnessError(f"cannot draw {k} distinct positions from {total}")
    if k == 0:
        return torch.zeros(0, dtype=torch.int64)
    dev = generator.device
    if total <= RANDPERM_MAX and k >= RANDPERM_MIN_FRACTION * total:
        return torch.randperm(total, generator=generator, device=dev)[:k].cpu()
    if k <= FEW:  # the same draws, kept distinct on Python ints (a trial's few sites: no tensor operations)
        few: list[int] = []
        while True:
            need = k - len(few)
            new = torch.randint(0, total, (need + need // 8 + 16,), generator=generator, device=dev, dtype=torch.int64)
            few = list(dict.fromkeys([*few, *new.tolist()]))  # distinct, in order of first draw
            if len(few) >= k:
                return torch.tensor(few[:k], dtype=torch.int64)
    drawn = torch.zeros(0, dtype=torch.int64)
    while True:
        need = k - len(drawn)
        new = torch.randint(0, total, (need + need // 8 + 16,), generator=generator, device=dev, dtype=torch.int64)
        drawn = torch.cat([drawn, new.cpu()])
        uniq, inverse = torch.unique(drawn, return_inverse=True)
        first = torch.full((len(uniq),), len(drawn), dtype=torch.int64)
        first.scatter_reduce_(0, inverse, torch.arange(len(drawn)), reduce="amin")
        drawn = drawn[first.sort().values]  # distinct, in order of first draw
        if len(drawn) >= k:
            return drawn[:k]


def draw_bits(
    spec: BitSpec, dtype: torch.dtype, k: int, generator: torch.Generator | None, bits_per_site: int = 1
) -> list[tuple[int, ...]]:
    """Bits for ``k`` sites of ``dtype``: drawn from a class, or the given bits at every site.

    Raises:
        HarnessError: bad bit/class for the dtype, ``bits_per_site`` outside 1..class size, or a
            class with a choice to make and no generator.
    """
    bitset = resolve_bits(spec, dtype)
    if not isinstance(spec, str):
        return [bitset] * k
    check_count(bits_per_site, "bits_per_site")
    if bits_per_site > len(bitset):
        raise HarnessError(
            f"bits_per_site={bits_per_site} but bit class {spec!r} has {len(bitset)} bits for {dtype}"
        )
    if bits_per_site == len(bitset):
        return [bitset] * k
    if generator is None:
        raise HarnessError(f"bit class {spec!r} has {len(bitset)} bits for {dtype}; pass a generator to choose")
    table = torch.tensor(bitset, dtype=torch.int64)
    if bits_per_site == 1:
        pick = torch.randint(0, len(bitset), (k, 1), generator=generator, device=generator.device).cpu()
    else:
        scores = torch.rand(k, len(bitset), generator=generator, device=generator.device).cpu()
        pick = scores.argsort(dim=1)[:, :bits_per_site].sort(dim=1).values
    return [tuple(row) for row in table[pick].tolist()]


def _sites(
    model: nn.Module,
    regions: list[Region],
    region_of: torch.Tensor,
    local: torch.Tensor,
    *,
    bits: BitSpec,
    generator: torch.Generator | None,
    bits_per_site: int,
    shapes: Sequence[tuple[int, ...]] | None = None,
) -> list[FaultSite]:
    """Sites for (region number, region-local offset) pairs, in the given order.

    Bits are drawn region by region in region order, for the regions hit only; ``shapes``: the regions'
    ``region_shape`` when the caller holds them.
    """
    hits: dict[int, list[int]] = {}  # region number -> positions in the draw
    for w, r in enumerate(region_of.tolist()):
        hits.setdefault(r, []).append(w)
    offsets = local.tolist()
    out: list[FaultSite | None] = [None] * len(offsets)
    for r in sorted(hits):
        region, where = regions[r], hits[r]
        shape = region_shape(model, region) if shapes is None else shapes[r]
        mine = [offsets[w] for w in where]
        index = region_indices(region, mine, shape) if shape else [[] for _ in mine]
        dtype = stored_bits(model, region.param).dtype
        site_bits = draw_bits(bits, dtype, len(where), generator, bits_per_site)
        for w, i, b in zip(where, index, site_bits, strict=True):
            out[w] = FaultSite(region.param, tuple(i), b)
    return out  # type: ignore[return-value]


class UniformSampler:
    """Uniform draws of distinct elements over fixed target regions, each region hit in proportion to its size.

    The regions, their sizes and cumulative ends are computed once, here; a draw is then a few small tensor
    operations plus the hit regions' lookups, whatever the number of regions (smollm2-135m's 210 linear
    weights). Draws equal :func:`uniform_sites`'s for the same generator state. The parameter shapes must
    not change while the sampler is used (perturbations edit values in place, never shapes); the stored
    dtype, which picks the bits, is read at every draw. The model is held weakly, so that a cache of
    samplers keyed by model (``harness.campaign.bitflip.uniform_sampler``) never keeps one alive.

    Args:
        model: the model the targets name.
        targets: None (every parameter), names, Regions or ComponentRefs (fused rows respected).

    Raises:
        HarnessError: bad targets (see :func:`~harness.faults.sites.as_regions`).
    """

    def __init__(self, model: nn.Module, targets: Target | Sequence[Target] | None = None) -> None:
        self._model = weakref.ref(model)
        self.regions = as_regions(model, targets)
        self.shapes = [region_shape(model, r) for r in self.regions]
        sizes = torch.tensor([math.prod(shape) for shape in self.shapes], dtype=torch.int64)
        self.ends = sizes.cumsum(0)  # (regions,)
        self.starts = self.ends - sizes
        self.total = int(self.ends[-1])

    def draw(self, n: int = 1, *, generator: torch.Generator, bits: BitSpec = "any",
             bits_per_site: int = 1) -> list[FaultSite]:
        """``n`` distinct elements, with bits per site (see :func:`uniform_sites`).

        Returns:
            ``n`` FaultSites in draw order.

        Raises:
            HarnessError: n < 1, n above the number of weights, bad bits, the model is gone.
        """
        check_count(n)
        model = self._model()
        if model is None:
            raise HarnessError("the model of this UniformSampler was freed; make a sampler of the model in use")
        pos = distinct_positions(self.total, n, generator)
        region_of = torch.searchsorted(self.ends, pos, right=True)
        local = pos - self.starts[region_of]
        return _sites(model, self.regions, region_of, local, bits=bits, generator=generator,
                      bits_per_site=bits_per_site, shapes=self.shapes)


def uniform_sites(
    model: nn.Module,
    targets: Target | Sequence[Target] | None = None,
    n: int = 1,
    *,
    generator: torch.Generator,
    bits: BitSpec = "any",
    bits_per_site: int = 1,
) -> list[FaultSite]:
    """``n`` distinct elements drawn uniformly over all weights of the targets (so each parameter
    is hit in proportion to its size), with bits per site.

    Args:
        model: the model the targets name.
        targets: None (every parameter), names, Regions or ComponentRefs (fused rows respected).
        n: number of sites, >= 1.
        generator: the seeded source of every draw.
        bits: a bit class name, a bit, or a list of bits (see module doc).
        bits_per_site: distinct bits drawn from a class per site.

    Returns:
        ``n`` FaultSites in draw order.

    Raises:
        HarnessError: n < 1, n above the number of weights, bad targets or bits.

    A caller drawing many times over the same targets holds a :class:`UniformSampler` instead (the same
    draws, the region sizes computed once).
    """
    check_count(n)
    return UniformSampler(model, targets).draw(n, generator=generator, bits=bits, bits_per_site=bits_per_site)


def grouped_sites(
    model: nn.Module,
    refs: Sequence[Any],
    n: int,
    *,
    generator: torch.Generator,
    by: str = "layer",
    bits: BitSpec = "any",
    bits_per_site: int = 1,
) -> dict[Hashable, list[FaultSite]]:
    """``n`` uniform sites per group of ComponentRefs.

    Args:
        refs: ComponentRefs (``.layer``, ``.component``, ``.param``, ``.rows``).
        by: ``"layer"`` (key: layer index), ``"component"`` (key: component name, across layers),
            or ``"layer_component"`` (key: (layer, component)).

    Returns:
        Group key -> sites, in the order groups first appear in ``refs``.
    """
    keys = {"layer": lambda r: r.layer, "component": lambda r: r.component,
            "layer_component": lambda r: (r.layer, r.component)}
    if by not in keys:
        raise HarnessError(f"cannot group sites by {by!r}; allowed: {', '.join(keys)}")
    check_count(n)
    groups: dict[Hashable, list[Any]] = {}
    for ref in refs:
        groups.setdefault(keys[by](ref), []).append(ref)
    if not groups:
        raise HarnessError("no ComponentRefs given to group")
    return {
        key: uniform_sites(model, group, n, generator=generator, bits=bits, bits_per_site=bits_per_site)
        for key, group in groups.items()
    }


def per_layer_sites(model: nn.Module, refs: Sequence[Any], n: int, **kw: Any) -> dict[Hashable, list[FaultSite]]:
    """``n`` uniform sites in each layer's components (``grouped_sites(by="layer")``)."""
    return grouped_sites(model, refs, n, by="layer", **kw)


def per_component_sites(model: nn.Module, refs: Sequence[Any], n: int, **kw: Any) -> dict[Hashable, list[FaultSite]]:
    """``n`` uniform sites in each component kind across layers (``grouped_sites(by="component")``)."""
    return grouped_sites(model, refs, n, by="component", **kw)


def _magnitude_block(model: nn.Module, region: Region, r0: int, r1: int) -> torch.Tensor:
    """|weight| of the region's dim-0 positions r0:r1 as float32 (int8: |code| * scale)."""
    store = stored_bits(model, region.param)
    if isinstance(store, PackedWeightStore):
        t = store.dequantized()
    else:
        t = store.tensor.detach()
    if t.dim() == 0:
        return t.reshape(1).float().abs()
    rows = (torch.arange(r0, r1) if region.rows is None else torch.tensor(region.rows[r0:r1])).to(t.device)
    block = t.index_select(0, rows).float()  # (r1 - r0, ...)
    owner = model.get_submodule(region.param.rpartition(".")[0]) if "." in region.param else model
    if isinstance(owner, QuantizedLinear) and region.param.endswith(".weight"):
        block = block * (owner.scale[rows][:, None] if owner.channel_axis == 0 else owner.scale[None, :])
    if region.cols is not None:
        block = block[:, torch.tensor(region.cols, device=t.device)]
    return block.abs()


def top_magnitude_sites(
    model: nn.Module,
    targets: Target | Sequence[Target] | None = None,
    n: int = 1,
    *,
    bits: BitSpec = "sign",
    generator: torch.Generator | None = None,
    bits_per_site: int = 1,
) -> list[FaultSite]:
    """The ``n`` largest-magnitude weights of the targets (int8 weights: |code * scale|).

    Scans each region in row blocks of about ``CHUNK`` elements, so the extra memory is one block.
    Ties go to the earlier region and offset.

    Args:
        generator: needed only when a bit class leaves a choice of bits.

    Returns:
        ``n`` sites, largest magnitude first.
    """
    check_count(n)
    regions = as_regions(model, targets)
    cand: list[tuple[float, int, int]] = []  # (-|w|, region number, region-local offset)
    for r, region in enumerate(regions):
        shape = region_shape(model, region)
        n0 = shape[0] if shape else 1
        row_size = max(1, region_size(model, region) // max(n0, 1))
        step = max(1, CHUNK // row_size)
        for r0 in range(0, n0, step):
            r1 = min(n0, r0 + step)
            mag = _magnitude_block(model, region, r0, r1).reshape(-1)
            vals, offs = mag.topk(min(n, len(mag)))
            base = r0 * row_size
            cand.extend((-v, r, base + o) for v, o in zip(vals.tolist(), offs.tolist(), strict=True))
        cand = sorted(cand)[:n]
    if len(cand) < n:
        raise HarnessError(f"asked for {n} sites but the targets hold {len(cand)} weights")
    region_of = torch.tensor([c[1] for c in cand], dtype=torch.int64)
    local = torch.tensor([c[2] for c in cand], dtype=torch.int64)
    return _sites(model, regions, region_of, local, bits=bits, generator=generator, bits_per_site=bits_per_site)


def target_sites(
    model: nn.Module,
    targets: Iterable[FaultSite | dict | tuple],
    *,
    bits: BitSpec | None = None,
    generator: torch.Generator | None = None,
    bits_per_site: int = 1,
) -> list[FaultSite]:
    """Sites at an explicit list of elements (e.g. known super-weight coordinates).

    Args:
        targets: FaultSites, their dicts, or ``(param, index)`` pairs.
        bits: bits to put at every site; None keeps each target's own bits.

    Raises:
        HarnessError: an empty list, unknown parameter, or index out of range.
    """
    sites = []
    for t in targets:
        if isinstance(t, FaultSite):
            site = t
        elif isinstance(t, dict):
            site = FaultSite.from_dict(t)
        else:
            param, index = t
            site = FaultSite(param, tuple(index))
        shape = tuple(stored_bits(model, site.param).shape)
        if len(site.index) != len(shape) or any(not 0 <= i < s for i, s in zip(site.index, shape, strict=False)):
            raise HarnessError(f"index {site.index} out of range for {site.param} of shape {shape}")
        if bits is not None:
            dtype = stored_bits(model, site.param).dtype
            site = site.with_bits(draw_bits(bits, dtype, 1, generator, bits_per_site)[0])
        sites.append(site)
    if not sites:
        raise HarnessError("no target sites given")
    return sites
