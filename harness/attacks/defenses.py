"""Defenses against bit-flip attacks, measured by how many flips the attacker then needs.

A defense is active while an attack runs. ``defense.guard(model, targets)`` records what it needs
from the clean model when entered; after every flip (committed or tried) the attack session calls
``guard.scrub(params)`` with the parameters just touched, and the guard repairs in place. A repair is
itself a restorable perturbation (:class:`Repair`) pushed on the session's undo stack with the
flips, so unwinding last-first leaves the model bit-identical to before.

- ``checksum``: protect the top-k most sensitive weights (``|g * w|`` from the gradient of the
  calibration loss; for int8 codes ``|g|``). A per-matrix checksum of the protected codes detects a
  change; the changed codes are restored from the saved golden copy.
- ``clamp``: clamp every weight to its matrix's observed [min, max] (values for float weights,
  codes for int8); a NaN becomes 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from harness.attacks.gradients import weight_gradients
from harness.errors import HarnessError
from harness.faults import FaultSite, stored_bits
from harness.faults.base import Perturbation
from harness.registry import Registry

log = logging.getLogger(__name__)

DEFAULT_PROTECTED = 1024


class Repair(Perturbation):
    """Write stored codes at given elements; restore writes the saved codes back.

    Args:
        model: the model.
        writes: ``(param, flat elements (m,), codes (m,))`` per parameter; codes in the int view.
    """

    kind = "repair"

    def __init__(self, model: nn.Module, writes: list[tuple[str, torch.Tensor, torch.Tensor]]) -> None:
        super().__init__(model)
        self.writes = writes
        self.n_repaired = sum(len(e) for _, e, _ in writes)

    def _apply(self) -> None:
        for param, elems, codes in self.writes:
            store = stored_bits(self.model, param)
            old = store.read(elems)
            self._push(lambda s=store, e=elems, o=old: s.write(e, o))
            store.write(elems, codes)


class Defense:
    """Base class: ``guard(model, targets)`` is a context manager yielding an object with ``scrub``."""

    name = "defense"

    def guard(self, model: nn.Module, targets: list[Any]):
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"defense": self.name}


DEFENSES: Registry[Callable[..., Defense]] = Registry("defense")


def make_defense(name: str, **options: Any) -> Defense | None:
    """The defense registered as ``name`` (``none`` gives None), built with ``options``."""
    return DEFENSES.get(name)(**options)


DEFENSES.register("none", lambda **_: None)


def _codes(model: nn.Module, param: str) -> torch.Tensor:
    """The stored codes (integer view) of a parameter, flat, sharing storage."""
    store = stored_bits(model, param)
    return store.tensor.detach().reshape(-1).view(store.layout.int_dtype)


def _checksum(codes: torch.Tensor) -> int:
    """Position-weighted sum of codes: any single changed code changes it."""
    weights = torch.arange(1, len(codes) + 1, dtype=torch.int64, device=codes.device)
    return int((codes.to(torch.int64) * weights).sum())


# -- checksum ------------------------------------------------------------------------------------


def sensitive_sites(model: nn.Module, targets: list[Any], windows: torch.Tensor, k: int) -> list[FaultSite]:
    """The ``k`` weights of ``targets`` with the largest first-order flip sensitivity.

    The score is ``|g * w|`` for float weights (the loss change of scaling a weight, which is what
    sign and exponent flips do) and ``|g|`` for int8 codes (a code flip moves by a fixed step).

    Cost: one forward and one backward pass over ``windows``.
    """
    best: list[tuple[float, str, int]] = []

    def on_grad(param: str, grad: torch.Tensor) -> None:
        w = model.get_parameter(param).detach()
        s = grad.abs() if w.dtype == torch.int8 else (grad * w.float()).abs()
        s = torch.nan_to_num(s.reshape(-1), nan=0.0)
        top = s.topk(min(k, s.numel()))
        best.extend(zip(top.values.tolist(), [param] * len(top.values), top.indices.tolist(), strict=True))
        best.sort(key=lambda t: -t[0])
        del best[k:]

    weight_gradients(model, [(t.module, t.param) for t in targets], windows, on_grad)
    out = []
    for _, param, flat in best:
        shape = model.get_parameter(param).shape
        out.append(FaultSite(param, tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), shape))))
    return out


class ChecksumDefense(Defense):
    """Protect the top-k sensitive weights: detect a change by checksum, restore the golden codes.

    Args:
        k: number of protected weights (default 1024).
        windows: calibration windows to rank sensitivity on (needed unless ``sites`` is given).
        sites: explicit weights to protect instead (e.g. ``harness.scoring`` top-k sites).

    Raises:
        HarnessError: k < 1, or neither windows nor sites.
    """

    name = "checksum"

    def __init__(self, k: int = DEFAULT_PROTECTED, windows: torch.Tensor | None = None,
                 sites: Iterable[FaultSite] | None = None) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise HarnessError(f"checksum defense needs k >= 1 protected weights, got {k!r}")
        if windows is None and sites is None:
            raise HarnessError("checksum defense needs windows= (to rank sensitivity) or sites= to protect")
        self.k = k
        self.windows = windows
        self.sites = None if sites is None else list(sites)

    def describe(self) -> dict[str, Any]:
        return {"defense": self.name, "k": self.k if self.sites is None else len(self.sites)}

    @contextmanager
    def guard(self, model: nn.Module, targets: list[Any]):
        sites = self.sites if self.sites is not None else sensitive_sites(model, targets, self.windows, self.k)
        yield _ChecksumGuard(model, sites)


class _ChecksumGuard:
    def __init__(self, model: nn.Module, sites: list[FaultSite]) -> None:
        self.model = model
        by_param: dict[str, list[int]] = {}
        for s in sites:
            shape = model.get_parameter(s.param).shape
            flat = sum(i * math.prod(shape[d + 1:]) for d, i in enumerate(s.index))
            by_param.setdefault(s.param, []).append(flat)
        self.golden: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}
        for param, flats in by_param.items():
            codes = _codes(model, param)
            elems = torch.tensor(sorted(set(flats)), dtype=torch.int64, device=codes.device)
            saved = codes[elems].clone()
            self.golden[param] = (elems, saved, _checksum(saved))
        self.protected = sum(len(e) for e, _, _ in self.golden.values())

    def scrub(self, params: Iterable[str]) -> Repair:
        writes = []
        for param in params:
            if param not in self.golden:
                continue
            elems, saved, checksum = self.golden[param]
            current = _codes(self.model, param)[elems]
            if _checksum(current) == checksum:
                continue
            bad = (current != saved).nonzero().reshape(-1)
            writes.append((param, elems[bad], saved[bad]))
        return Repair(self.model, writes)


DEFENSES.register("checksum", ChecksumDefense)


# -- clamp ---------------------------------------------------------------------------------------


class ClampDefense(Defense):
    """Clamp each weight matrix to the [min, max] it had when the guard was entered."""

    name = "clamp"

    @contextmanager
    def guard(self, model: nn.Module, targets: list[Any]):
        yield _ClampGuard(model, [t.param for t in targets])


class _ClampGuard:
    def __init__(self, model: nn.Module, params: list[str]) -> None:
        self.model = model
        self.ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for param in params:
            w = model.get_parameter(param).detach()
            self.ranges[param] = (w.min(), w.max())
        self._bounds = {p: (lo.item(), hi.item()) for p, (lo, hi) in self.ranges.items()}

    def bounds(self) -> dict[str, tuple[float, float]]:
        """(lo, hi) per parameter, as Python numbers."""
        return self._bounds

    def scrub(self, params: Iterable[str]) -> Repair:
        writes = []
        for param in params:
            if param not in self.ranges:
                continue
            lo, hi = self.ranges[param]
            w = self.model.get_parameter(param).detach().reshape(-1)
            bad = (w < lo) | (w > hi)
            if w.dtype.is_floating_point:
                bad |= torch.isnan(w)
            elems = bad.nonzero().reshape(-1)
            if not len(elems):
                continue
            values = w[elems]
            if values.dtype.is_floating_point:
                values = torch.nan_to_num(values, nan=0.0)
            values = torch.maximum(torch.minimum(values, hi), lo)
            int_dtype = stored_bits(self.model, param).layout.int_dtype
            writes.append((param, elems, values.view(int_dtype)))
        return Repair(self.model, writes)


DEFENSES.register("clamp", ClampDefense)
