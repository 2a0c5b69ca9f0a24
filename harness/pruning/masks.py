"""Prune masks from importance scores: which elements of one matrix to remove.

A mask is a bool tensor of the scores' shape, True where an element is pruned. A lower score means
less important, so it goes first. Selections take an exact count (``round(fraction * n)``) with
``torch.topk``, which also settles ties, so a model with many equal scores (dequantized weights have
few distinct values) still reaches the asked sparsity. Protected elements are given the score ``+inf`` by the caller and
masked back out at the end, so they are never pruned.

Granularities (:func:`parse_granularity`):

- ``matrix``: the lowest fraction of each matrix.
- ``row``: the lowest fraction of each output row (Wanda's comparison group).
- ``global``: one threshold over every selected matrix (:class:`GlobalSelection`, two passes over
  the scores, one matrix held at a time).
- ``N:M`` (``2:4``, ``4:8``): keep N of every M consecutive weights along the input dimension of each
  row; the sparsity is ``1 - N/M``.
- ``head`` / ``neuron``: structured. Whole attention heads (query rows and attention-output columns of
  a head; key/value rows of a key/value head) or whole MLP neurons (up and gate rows, down column).
  A unit's score is the sum of its elements' scores over the selected matrices of its layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.errors import HarnessError
from harness.option_values import bounded_float

GRANULARITIES = ("matrix", "row", "global", "N:M", "head", "neuron")
# Structured units: component -> (unit kind, dim of the matrix that indexes the units).
UNIT_AXIS = {
    "query": ("head", 0), "attn_out": ("head", 1), "key": ("kv_head", 0), "value": ("kv_head", 0),
    "mlp_up": ("neuron", 0), "mlp_gate": ("neuron", 0), "mlp_down": ("neuron", 1),
}


@dataclass(frozen=True)
class Granularity:
    """A parsed granularity: ``kind`` is matrix, row, global, nm, head or neuron; ``n``/``m`` for N:M."""

    kind: str
    n: int = 0
    m: int = 0

    @property
    def name(self) -> str:
        return f"{self.n}:{self.m}" if self.kind == "nm" else self.kind

    @property
    def structured(self) -> bool:
        return self.kind in ("head", "neuron")

    @property
    def fixed_sparsity(self) -> float | None:
        """``1 - N/M`` for N:M, else None (the caller's sparsity applies)."""
        return 1 - self.n / self.m if self.kind == "nm" else None

    def __str__(self) -> str:
        return self.name


def parse_granularity(spec: str | Granularity) -> Granularity:
    """``"row"``, ``"2:4"``, ... -> :class:`Granularity`.

    Raises:
        HarnessError: an unknown name, or N:M with N >= M or N < 1.
    """
    if isinstance(spec, Granularity):
        return spec
    text = str(spec).strip().lower()
    if ":" in text:
        left, _, right = text.partition(":")
        if not (left.isdigit() and right.isdigit()):
            raise HarnessError(f"bad N:M granularity {spec!r}: write it like 2:4 or 4:8")
        n, m = int(left), int(right)
        if not 1 <= n < m:
            raise HarnessError(f"N:M granularity {spec!r} needs 1 <= N < M (keep N of every M weights), e.g. 2:4")
        return Granularity("nm", n, m)
    if text in ("heads", "neurons"):
        text = text[:-1]
    if text not in GRANULARITIES:
        raise HarnessError(f"unknown granularity {spec!r}: use one of {', '.join(GRANULARITIES)} (N:M as 2:4, 4:8)")
    return Granularity(text)


def check_fraction(value: float, what: str = "sparsity", allow_one: bool = False) -> float:
    """``value`` as a float in [0, 1) (or [0, 1] with ``allow_one``).

    Raises:
        HarnessError: outside the range or not a number.
    """
    return bounded_float(value, what, 0, 1, high_open=not allow_one)


def count_of(fraction: float, n: int) -> int:
    """Elements to prune out of ``n`` (round half up)."""
    return min(n, math.floor(fraction * n + 0.5))


def lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` lowest entries of ``scores`` (any shape); ties at the k-th value are broken
    by ``torch.topk`` (deterministic for the same input on the same device)."""
    flat = scores.reshape(-1)
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= flat.numel():
        return torch.ones_like(scores, dtype=torch.bool)
    chosen = flat.topk(k, largest=False, sorted=False).indices
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(0, chosen, True).view(scores.shape)


def lowest_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` lowest entries of each row of ``scores`` (R, C) (ties as in :func:`lowest`)."""
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= scores.shape[1]:
        return torch.ones_like(scores, dtype=torch.bool)
    chosen = scores.topk(k, dim=1, largest=False, sorted=False).indices  # (R, k)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, chosen, True)


def n_of_m(scores: torch.Tensor, n: int, m: int, name: str = "matrix") -> torch.Tensor:
    """Mask pruning the ``m - n`` lowest of every ``m`` consecutive entries of each row of (R, C).

    Raises:
        HarnessError: when C is not divisible by ``m``.
    """
    rows, cols = scores.shape
    if cols % m:
        raise HarnessError(f"{n}:{m} sparsity needs a width divisible by {m}; {name} has {cols} columns")
    groups = scores.reshape(rows, cols // m, m)
    order = groups.topk(m - n, dim=-1, largest=False, sorted=False).indices  # (R, C/m, m-n) lowest per group
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True)
    return mask.view(rows, cols)


def below_threshold(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mask of entries whose score, divided by the largest finite ``|score|`` of the tensor, is below
    ``threshold`` (so a threshold in [0, 1] means the same for every scorer)."""
    finite = scores[torch.isfinite(scores)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    if scale == 0.0:
        return torch.isfinite(scores) & (threshold > 0)
    return scores / scale < threshold


# -- global -------------------------------------------------------------------------------------

_SHIFT = 16  # histogram bins: the top 16 bits of an order-preserving int32 key of the float32 score
_NBINS = 1 << (32 - _SHIFT)


def _keys(scores: torch.Tensor) -> torch.Tensor:
    """Order-preserving int32 keys of float32 scores (negative floats have their magnitude bits flipped)."""
    bits = scores.detach().float().contiguous().view(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _bins(scores: torch.Tensor) -> torch.Tensor:
    return (_keys(scores) >> _SHIFT).to(torch.int64) + (1 << (31 - _SHIFT))  # 0 .. 65535


class GlobalSelection:
    """The ``k`` lowest scores over many matrices, holding one matrix of scores at a time.

    Pass 1 (:meth:`add`) counts each matrix's scores in 65,536 bins of the top 16 bits of their
    float32 pattern (a relative width of 2^-7). :meth:`finish` finds the bin holding the k-th lowest
    score. Pass 2 (:meth:`mask`) prunes everything below that bin and, inside it, a quota per matrix
    (largest remainder of its share of the bin), lowest first. The count is exact; only the order
    across matrices of scores within 2^-7 (relative) of the threshold is approximate.
    Memory: the occupied bins of each matrix (a few thousand integers), not the scores.
    """

    def __init__(self) -> None:
        self._hist: list[tuple[torch.Tensor, torch.Tensor]] = []  # per matrix: (bins, counts)
        self.numel = 0
        self._bin = -1
        self._below: list[int] = []
        self._quota: list[int] = []

    def add(self, scores: torch.Tensor) -> None:
        hist = torch.bincount(_bins(scores).reshape(-1), minlength=_NBINS)  # (65536,)
        bins = hist.nonzero().squeeze(1)
        self._hist.append((bins.cpu(), hist[bins].cpu()))
        self.numel += scores.numel()

    def finish(self, fraction: float) -> int:
        """Fix the threshold for pruning ``fraction`` of all added scores; returns the count."""
        k = count_of(fraction, self.numel)
        if k == 0 or not self._hist:
            self._bin = -1
            self._quota = [0] * len(self._hist)
            self._below = [0] * len(self._hist)
            return 0
        total = torch.zeros(_NBINS, dtype=torch.int64)
        for bins, counts in self._hist:
            total.index_add_(0, bins, counts)
        cum = total.cumsum(0)
        b = int(torch.searchsorted(cum, torch.tensor(k)))  # first bin whose cumulative count reaches k
        remaining = k - (int(cum[b - 1]) if b > 0 else 0)
        in_bin = [int(c[bins == b].sum()) for bins, c in self._hist]
        self._below = [int(c[bins < b].sum()) for bins, c in self._hist]
        self._quota = _largest_remainder(remaining, in_bin)
        self._bin = b
        return k

    def mask(self, index: int, scores: torch.Tensor) -> torch.Tensor:
        """Mask of matrix ``index`` (in :meth:`add` order) given its scores again."""
        if self._bin < 0:
            return torch.zeros_like(scores, dtype=torch.bool)
        bins = _bins(scores)
        mask = bins < self._bin
        quota = self._quota[index]
        if quota:
            at = (bins == self._bin).reshape(-1).nonzero().squeeze(1)  # positions inside the threshold bin
            chosen = at[scores.reshape(-1)[at].float().topk(quota, largest=False, sorted=False).indices]
            mask.view(-1)[chosen] = True
        return mask


def _largest_remainder(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` over ``weights`` proportionally, in integers summing to ``total``."""
    whole = sum(weights)
    if whole == 0 or total == 0:
        return [0] * len(weights)
    shares = [total * w / whole for w in weights]
    out = [min(w, math.floor(s)) for s, w in zip(shares, weights, strict=True)]
    order = sorted(range(len(weights)), key=lambda i: (out[i] - shares[i], i))
    left = total - sum(out)
    for i in order:
        if left == 0:
            break
        if out[i] < weights[i]:
            out[i] += 1
            left -= 1
    return out


# -- structured ---------------------------------------------------------------------------------


def unit_sums(scores: torch.Tensor, dim: int, width: int) -> torch.Tensor:
    """Sum of scores per unit: units are consecutive blocks of ``width`` along ``dim`` of (R, C).

    Returns:
        (n_units,) float64 (sums of up to millions of scores stay exact enough to rank).
    """
    size = scores.shape[dim]
    if size % width:
        raise HarnessError(f"cannot cut {size} {'rows' if dim == 0 else 'columns'} into units of {width}")
    moved = scores if dim == 0 else scores.t()
    inf = torch.isinf(moved) & (moved > 0)  # protected: the unit must never be chosen
    sums = moved.double().masked_fill(inf, 0).reshape(size // width, -1).sum(1)
    return sums.masked_fill(inf.reshape(size // width, -1).any(1), math.inf)


def unit_mask(shape: tuple[int, int], dim: int, width: int, units: torch.Tensor) -> torch.Tensor:
    """Mask of (R, C) pruning the blocks of ``width`` along ``dim`` whose unit index is in ``units``."""
    pruned = torch.zeros(shape[dim] // width, dtype=torch.bool, device=units.device)
    pruned[units] = True
    line = pruned.repeat_interleave(width)  # (shape[dim],)
    return line[:, None].expand(shape) if dim == 0 else line[None, :].expand(shape)
