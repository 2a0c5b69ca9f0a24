"""The injector: apply fault sites (stored-bit flips) in place and restore them bit-exactly.

Memory is O(sites): only the stored codes of the touched elements are saved. Sites are grouped per
parameter and applied with one indexed XOR per parameter, on the parameter's own device.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from harness.errors import HarnessError
from harness.faults.base import PERTURBATIONS, Perturbation
from harness.faults.bits import check_bits, xor_masks
from harness.faults.sites import FaultSite
from harness.faults.storage import stored_bits


def _as_site(site: Any) -> FaultSite:
    if isinstance(site, FaultSite):
        return site
    if isinstance(site, dict):
        return FaultSite.from_dict(site)
    raise HarnessError(f"expected a FaultSite or its dict, got {type(site).__name__}")


def _flat_indices(store: Any, sites: list[FaultSite]) -> list[int]:
    """Row-major flat indices of the sites' elements, checked against the shape."""
    shape = tuple(store.shape)
    strides = [math.prod(shape[d + 1:]) for d in range(len(shape))]
    flat = []
    for site in sites:
        if len(site.index) != len(shape) or any(not 0 <= i < n for i, n in zip(site.index, shape, strict=False)):
            raise HarnessError(f"index {site.index} out of range for {site.param} of shape {shape}")
        flat.append(sum(i * st for i, st in zip(site.index, strides, strict=True)))
    return flat


@PERTURBATIONS.register("bitflip")
class BitFlip(Perturbation):
    """Flip the stored bits of the given sites; restore writes the saved codes back.

    Args:
        model: the model to edit in place.
        sites: fault sites (or their dicts); each needs at least one bit. Several sites may share an
            element; a bit listed twice at one element cancels.
        allow_empty: accept an empty site list (a no-op; used by the bit-error-rate mode).

    Raises:
        HarnessError: unknown parameter, index out of range, a bit outside the dtype's width, a
            site without bits, or no sites.
    """

    kind = "bitflip"

    def __init__(self, model: nn.Module, sites: Iterable[FaultSite | dict], *, allow_empty: bool = False) -> None:
        super().__init__(model)
        self.sites = tuple(_as_site(s) for s in sites)
        if not self.sites and not allow_empty:
            raise HarnessError("no fault sites given; a bit flip needs at least one site")
        groups: dict[str, list[FaultSite]] = {}
        for site in self.sites:
            if not site.bits:
                raise HarnessError(f"fault site {site.param}{list(site.index)} has no bits to flip")
            groups.setdefault(site.param, []).append(site)
        self._plan = []  # (store, elems (m,), masks (m,)) per parameter, on CPU until applied
        for param, group in groups.items():  # on Python ints: a trial's few flips cost microseconds
            store = stored_bits(model, param)
            pairs = [(e, b) for e, site in zip(_flat_indices(store, group), group, strict=True) for b in site.bits]
            check_bits([b for _, b in pairs], store.dtype)
            elems, masks = xor_masks(pairs, store.layout.width)
            int_dtype = store.layout.int_dtype  # masks are in its signed range
            self._plan.append((store, torch.tensor(elems, dtype=torch.int64), torch.tensor(masks, dtype=int_dtype)))
        self._saved: list[tuple[Any, torch.Tensor, torch.Tensor]] = []

    def _apply(self) -> None:
        for store, cpu_elems, cpu_masks in self._plan:
            elems = cpu_elems.to(store.device)
            masks = cpu_masks.to(store.device)
            old = store.read(elems)  # (m,) int codes
            self._push(lambda s=store, e=elems, o=old: s.write(e, o))
            self._saved.append((store, elems, old))
            store.write(elems, old ^ masks)

    def restore(self) -> None:
        try:
            super().restore()
        finally:
            self._saved = []

    def value_changes(self) -> list[dict[str, Any]]:
        """Per changed element: param, flat index, value before and after (while applied).

        Values are floats for float params and integer codes for int8 params. Reads only the
        touched elements (one small host copy per parameter).
        """
        out = []
        for store, elems, old in self._saved:
            new = store.read(elems)
            as_values = store.dtype.is_floating_point
            before = (old.view(store.dtype).float() if as_values else old).tolist()
            after = (new.view(store.dtype).float() if as_values else new).tolist()
            for e, b, a in zip(elems.tolist(), before, after, strict=True):
                out.append({"param": store.name, "flat_index": e, "before": b, "after": a})
        return out

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "n_sites": len(self.sites)}
        d["params"] = sorted({s.param for s in self.sites})
        if len(self.sites) <= 16:
            d["sites"] = [s.to_dict() for s in self.sites]
        return d


def flip_bits(model: nn.Module, sites: Iterable[FaultSite | dict]) -> BitFlip:
    """Flip stored bits at ``sites``: ``with flip_bits(model, sites): ...`` restores on exit.

    See ``BitFlip`` for arguments and errors.
    """
    return BitFlip(model, sites)
