"""Fault sites and target regions: small frozen, hashable, JSON-serializable records.

A :class:`FaultSite` names one stored element (parameter name + index) and the bits to flip there.
A :class:`Region` names a part of a parameter (all of it, some rows, some columns) that noise,
ablation and the samplers work on. ``as_regions`` turns whatever a caller holds (a parameter name,
a ``ComponentRef`` from the architecture map, a ``Region``) into regions.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.errors import HarnessError
from harness.faults.storage import (  # find_tensor is also re-exported from here
    find_tensor,
    offloaded_value,
    stored_bits,
)


def _int_tuple(values: Any, what: str) -> tuple[int, ...]:
    if isinstance(values, numbers.Integral) or (isinstance(values, torch.Tensor) and values.dim() == 0):
        values = [values]
    elif isinstance(values, torch.Tensor):
        values = values.tolist()
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise HarnessError(f"{what} must be a sequence of integers, got {values!r}") from None
    return out


@dataclass(frozen=True)
class FaultSite:
    """One stored element of a parameter and the bits to flip in it.

    Args:
        param: full parameter name (``model.layers.3.mlp.down_proj.weight``).
        index: the element's index, one int per dimension.
        bits: bit positions to flip (0 = least significant bit of the stored value).
    """

    param: str
    index: tuple[int, ...]
    bits: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.param, str) or not self.param:
            raise HarnessError(f"FaultSite.param must be a non-empty string, got {self.param!r}")
        object.__setattr__(self, "index", _int_tuple(self.index, "FaultSite.index"))
        object.__setattr__(self, "bits", _int_tuple(self.bits, "FaultSite.bits"))

    def with_bits(self, bits: Iterable[int] | int) -> FaultSite:
        """The same element with other bits."""
        return FaultSite(self.param, self.index, _int_tuple(bits, "bits"))

    def to_dict(self) -> dict[str, Any]:
        return {"param": self.param, "index": list(self.index), "bits": list(self.bits)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultSite:
        try:
            return cls(data["param"], tuple(data["index"]), tuple(data.get("bits", ())))
        except KeyError as e:
            raise HarnessError(f"a fault site needs 'param' and 'index'; missing {e.args[0]!r}") from None


@dataclass(frozen=True)
class Region:
    """A part of one parameter: all of it, or the given rows and/or columns.

    Args:
        param: full parameter name.
        rows: indices along dim 0 (e.g. the value rows of a fused qkv matrix), or None for all.
        cols: indices along dim 1, or None for all.
    """

    param: str
    rows: tuple[int, ...] | None = None
    cols: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.param, str) or not self.param:
            raise HarnessError(f"Region.param must be a non-empty string, got {self.param!r}")
        if self.rows is not None:
            object.__setattr__(self, "rows", _int_tuple(self.rows, "Region.rows"))
        if self.cols is not None:
            object.__setattr__(self, "cols", _int_tuple(self.cols, "Region.cols"))

    @property
    def whole(self) -> bool:
        return self.rows is None and self.cols is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "param": self.param,
            "rows": None if self.rows is None else list(self.rows),
            "cols": None if self.cols is None else list(self.cols),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Region:
        rows, cols = data.get("rows"), data.get("cols")
        return cls(data["param"], None if rows is None else tuple(rows), None if cols is None else tuple(cols))


Target = str | Region | Any  # Any: a ComponentRef-like object with .param and .rows


def as_regions(model: nn.Module, targets: Target | Sequence[Target] | None) -> list[Region]:
    """Normalize targets to regions, checking that each parameter exists and each index is in range.

    Args:
        model: the model the names refer to.
        targets: None (every parameter of the model), a parameter name, a ``Region``, a
            ``ComponentRef`` (``.param`` and ``.rows``), or a sequence of these.

    Returns:
        The regions, in the order given.

    Raises:
        HarnessError: unknown parameter, row/column out of range, or an empty target list.
    """
    if targets is None:
        return [Region(name) for name, _ in model.named_parameters()]
    if isinstance(targets, (str, Region)) or hasattr(targets, "param"):
        targets = [targets]
    regions = []
    for target in targets:
        if isinstance(target, Region):
            region = target
        elif isinstance(target, str):
            region = Region(target)
        elif hasattr(target, "param"):
            rows = getattr(target, "rows", None)
            region = Region(target.param, None if rows is None else tuple(rows))
        else:
            raise HarnessError(
                f"cannot target {target!r}; use a parameter name, a Region or a ComponentRef"
            )
        _check_region(model, region)
        regions.append(region)
    if not regions:
        raise HarnessError("no targets given; pass parameter names, Regions or ComponentRefs")
    return regions


def _check_region(model: nn.Module, region: Region) -> None:
    shape = stored_shape(model, region.param)
    for dim, idx in ((0, region.rows), (1, region.cols)):
        if idx is None:
            continue
        if len(shape) <= dim:
            raise HarnessError(f"{region.param} has shape {tuple(shape)}; it has no dim {dim} to select")
        bad = [i for i in idx if not 0 <= i < shape[dim]]
        if bad:
            raise HarnessError(
                f"index {bad[0]} out of range for dim {dim} of {region.param} (0-{shape[dim] - 1})"
            )
        if not idx:
            raise HarnessError(f"empty {'rows' if dim == 0 else 'cols'} selection for {region.param}")


def region_shape(model: nn.Module, region: Region) -> tuple[int, ...]:
    """Shape of the region as a dense block: (len(rows) or n0, len(cols) or n1, *rest)."""
    shape = list(stored_shape(model, region.param))
    if region.rows is not None:
        shape[0] = len(region.rows)
    if region.cols is not None:
        shape[1] = len(region.cols)
    return tuple(shape)


def region_size(model: nn.Module, region: Region) -> int:
    return math.prod(region_shape(model, region))


def region_index(region: Region, device: torch.device | str) -> tuple:
    """An index expression selecting the region's elements as a dense block (for get and set)."""
    rows = None if region.rows is None else torch.tensor(region.rows, dtype=torch.long, device=device)
    cols = None if region.cols is None else torch.tensor(region.cols, dtype=torch.long, device=device)
    if rows is None and cols is None:
        return (Ellipsis,)
    if cols is None:
        return (rows,)
    if rows is None:
        return (slice(None), cols)
    return (rows[:, None], cols[None, :])


def sites_by_param(model: nn.Module, sites: Sequence[FaultSite]) -> dict[str, list[int]]:
    """Positions in ``sites`` per parameter (first-appearance order), each site's index checked in range.

    Raises:
        HarnessError: an unknown parameter, or an index of the wrong length or out of range.
    """
    groups: dict[str, list[int]] = {}
    for i, site in enumerate(sites):
        shape = tuple(find_tensor(model, site.param).shape)
        if len(site.index) != len(shape) or any(not 0 <= j < n for j, n in zip(site.index, shape, strict=False)):
            raise HarnessError(f"index {site.index} out of range for {site.param} of shape {shape}")
        groups.setdefault(site.param, []).append(i)
    return groups


def elements_index(indices: Sequence[tuple[int, ...]], tensor: torch.Tensor) -> tuple:
    """An index expression selecting the elements ``indices`` of ``tensor`` (for get and set)."""
    if not tensor.dim():
        return (Ellipsis,)
    return tuple(torch.tensor(list(indices), dtype=torch.int64, device=tensor.device).unbind(dim=1))


def tied_names(model: nn.Module, param_name: str) -> tuple[str, ...]:
    """Every name under which the parameter ``param_name`` is reachable (``lm_head.weight`` and
    ``model.embed_tokens.weight`` when tied), in ``named_parameters`` order; one name when untied.

    A site on a tied weight edits all of them: record it once, under the first name, with the others named.

    Raises:
        HarnessError: no such parameter.
    """
    target = find_tensor(model, param_name)

    def same(name: str, p: torch.Tensor) -> bool:
        if p.shape != target.shape or p.dtype != target.dtype:
            return False
        if p.is_meta:  # offloaded by a device map: compare the value its hook holds (none on disk)
            p = offloaded_value(model, name)
        return p is not None and (p is target or p.data_ptr() == target.data_ptr())

    names = tuple(n for n, p in model.named_parameters(remove_duplicate=False) if same(n, p))
    return names or (param_name,)


def stored_shape(model: nn.Module, name: str) -> torch.Size:
    """Shape of the stored tensor called ``name`` (torch-quantized module weights included)."""
    return stored_bits(model, name).shape


def region_indices(region: Region, offsets: Sequence[int], shape: tuple[int, ...]) -> list[list[int]]:
    """Parameter indices of region-local flat offsets, on Python ints.

    Args:
        region: the region the offsets are in.
        offsets: offsets into the region's dense block (row-major over ``shape``).
        shape: the region's ``region_shape`` (non-empty).

    Returns:
        One index (a list of ``len(shape)`` ints) per offset.
    """
    strides = [math.prod(shape[d + 1:]) for d in range(len(shape))]
    out = []
    for offset in offsets:
        index = [offset // stride % n for stride, n in zip(strides, shape, strict=True)]
        if region.rows is not None:
            index[0] = region.rows[index[0]]
        if region.cols is not None:
            index[1] = region.cols[index[1]]
        out.append(index)
    return out


def element_index(model: nn.Module, region: Region, local: torch.Tensor) -> torch.Tensor:
    """Parameter indices of region-local flat offsets (:func:`region_indices` as a tensor).

    Args:
        local: (k,) int64 offsets into the region's dense block (row-major over ``region_shape``).

    Returns:
        (k, ndim) int64 indices into the parameter (CPU).
    """
    shape = region_shape(model, region)
    if not shape:
        return torch.zeros(len(local), 0, dtype=torch.int64)
    index = region_indices(region, local.to(torch.int64).cpu().tolist(), shape)
    return torch.tensor(index, dtype=torch.int64).reshape(len(index), len(shape))
