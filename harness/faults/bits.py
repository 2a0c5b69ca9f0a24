"""Named bit classes and XOR flips on integer views of stored tensors.

Every flip works on the bits a tensor actually stores: a float32 tensor is viewed as int32, float16
and bfloat16 as int16, int8 codes as themselves, and the requested bits are XORed in. Bit 0 is the
least significant bit. Flipping the same bit twice restores the element exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from harness.errors import HarnessError
from harness.faults.storage import (
    BitLayout,
    layout,
    requantize,
    stored_bits,  # noqa: F401 - re-exported for harness.faults.ber
)
from harness.registry import Registry

# ---------------------------------------------------------------------------------------------
# Named bit classes

BIT_CLASSES: Registry[Callable[[BitLayout], tuple[int, ...]]] = Registry("bit class")
# classes the bit-flip campaign runs (``BIT_CLASSES.names(tag="campaign")``); the widest, ``mantissa`` and
# ``any``, stay out of its grid
CAMPAIGN = ("campaign",)


def _need(bits: tuple[int, ...], what: str, lay: BitLayout) -> tuple[int, ...]:
    if not bits:
        raise HarnessError(f"{lay.dtype} has no {what} bits")
    return bits


@BIT_CLASSES.register("sign", tags=CAMPAIGN)
def _sign(lay: BitLayout) -> tuple[int, ...]:
    return _need(() if lay.sign is None else (lay.sign,), "sign", lay)


@BIT_CLASSES.register("exp_msb", tags=CAMPAIGN)
def _exp_msb(lay: BitLayout) -> tuple[int, ...]:
    return _need(lay.exponent, "exponent", lay)[-1:]


@BIT_CLASSES.register("exponent", tags=CAMPAIGN)
def _exponent(lay: BitLayout) -> tuple[int, ...]:
    return _need(lay.exponent, "exponent", lay)


@BIT_CLASSES.register("mantissa_msb", tags=CAMPAIGN)
def _mantissa_msb(lay: BitLayout) -> tuple[int, ...]:
    return _need(lay.mantissa, "mantissa", lay)[-1:]


@BIT_CLASSES.register("mantissa_lsb", tags=CAMPAIGN)
def _mantissa_lsb(lay: BitLayout) -> tuple[int, ...]:
    return _need(lay.mantissa, "mantissa", lay)[:1]


@BIT_CLASSES.register("mantissa")
def _mantissa(lay: BitLayout) -> tuple[int, ...]:
    return _need(lay.mantissa, "mantissa", lay)


@BIT_CLASSES.register("any")
def _any(lay: BitLayout) -> tuple[int, ...]:
    return tuple(range(lay.width))


def bit_class(name: str, dtype: torch.dtype) -> tuple[int, ...]:
    """Bit positions of the named class for ``dtype`` (int8: ``mantissa`` = the 7 value bits).

    Raises:
        UnknownNameError: unknown class name.
        HarnessError: a class the dtype does not have (``exponent`` of int8).
    """
    fn = BIT_CLASSES.get(name)
    lay = layout(dtype)
    try:
        return fn(lay)
    except HarnessError:
        defined = [n for n, f in BIT_CLASSES.items() if _defined(f, lay)]
        raise HarnessError(
            f"bit class {name!r} is not defined for {lay.dtype}; defined: {', '.join(defined)}"
        ) from None


def _defined(fn: Callable[[BitLayout], tuple[int, ...]], lay: BitLayout) -> bool:
    try:
        fn(lay)
    except HarnessError:
        return False
    return True


BitSpec = str | int | Sequence[int]


def resolve_bits(spec: BitSpec, dtype: torch.dtype) -> tuple[int, ...]:
    """Bit positions for a class name, one bit, or a list of bits, checked against ``dtype``."""
    if isinstance(spec, str):
        return bit_class(spec, dtype)
    bits = (int(spec),) if isinstance(spec, int) else tuple(int(b) for b in spec)
    if not bits:
        raise HarnessError("no bits given; pass a bit class name, a bit position or a list of them")
    check_bits(bits, dtype)
    return bits


def check_bits(bits: Sequence[int] | torch.Tensor, dtype: torch.dtype) -> None:
    """Raise unless every bit is a valid position for ``dtype``.

    Raises:
        HarnessError: ``bit 40 out of range for torch.float16 (0-15)``.
    """
    lay = layout(dtype)
    if isinstance(bits, torch.Tensor):
        bad = bits[(bits < 0) | (bits >= lay.width)]
        bad_bits = bad[:1].tolist()
    else:
        bad_bits = [b for b in bits if not 0 <= b < lay.width][:1]
    if bad_bits:
        raise HarnessError(f"bit {bad_bits[0]} out of range for {dtype} (0-{lay.width - 1})")


# ---------------------------------------------------------------------------------------------
# XOR masks


def xor_masks(pairs: Iterable[tuple[int, int]], width: int) -> tuple[list[int], list[int]]:
    """Merge (element, bit) flips into one XOR mask per element, on Python ints (a trial's few flips cost
    microseconds here, against a dozen tensor operations).

    A flip listed twice cancels (XOR semantics); elements whose flips all cancel are dropped.

    Args:
        pairs: (flat element index, bit position) flips, each bit in [0, width).
        width: bits per element.

    Returns:
        (elems, masks): sorted unique element indices and their masks, in the signed range of a
        ``width``-bit integer (bit width-1 gives a negative mask).
    """
    merged: dict[int, int] = {}
    for elem, bit in pairs:
        merged[elem] = merged.get(elem, 0) ^ (1 << bit)
    elems = sorted(e for e, m in merged.items() if m)
    top, wrap = 1 << (width - 1), 1 << width
    return elems, [m - wrap if m >= top else m for m in (merged[e] for e in elems)]


def combine_flips(flat: torch.Tensor, bits: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`xor_masks` of tensors.

    Args:
        flat: (k,) int64 flat element indices.
        bits: (k,) int64 bit positions, each in [0, width).
        width: bits per element.

    Returns:
        (elems, masks): (m,) sorted unique element indices and (m,) int64 masks (see :func:`xor_masks`).
    """
    elems, masks = xor_masks(zip(flat.tolist(), bits.tolist(), strict=True), width)
    return (torch.tensor(elems, dtype=torch.int64, device=flat.device),
            torch.tensor(masks, dtype=torch.int64, device=flat.device))


def _pairs(numel: int, flat_indices: Any, bits: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(element, bit) pairs from flat indices and per-index bits (int, ints, or tuples of ints)."""
    flat = torch.as_tensor(flat_indices, dtype=torch.int64).reshape(-1).cpu()
    if isinstance(bits, int):
        per = [(bits,)] * len(flat)
    else:
        bits = list(bits.tolist() if isinstance(bits, torch.Tensor) else bits)
        if len(bits) != len(flat):
            raise HarnessError(
                f"got {len(bits)} bit entries for {len(flat)} indices; pass one int for all "
                "indices or one int/tuple per index"
            )
        per = [(b,) if isinstance(b, int) else tuple(b) for b in bits]
    bad = flat[(flat < 0) | (flat >= numel)]
    if len(bad):
        raise HarnessError(f"flat index {int(bad[0])} out of range for a tensor of {numel} elements")
    counts = torch.tensor([len(p) for p in per], dtype=torch.int64)
    flat = flat.repeat_interleave(counts)
    bit = torch.tensor([b for p in per for b in p], dtype=torch.int64)
    return flat, bit


def flip_tensor_bits(t: torch.Tensor, flat_indices: Any, bits: Any) -> torch.Tensor:
    """Return a copy of ``t`` with stored bits flipped; ``t`` itself is not changed.

    Args:
        t: a float, integer, or torch-quantized (qint8/quint8) tensor.
        flat_indices: int or sequence of flat (row-major) element indices; repeats allowed.
        bits: one bit for every index, or one int/tuple of ints per index. Each (index, bit) is
            flipped in turn, so a pair listed twice cancels.

    Returns:
        A new tensor of the same dtype and shape (a new quantized tensor with the same
        quantization parameters for a quantized ``t``).

    Raises:
        HarnessError: a bit outside the dtype's width or an index out of range.
    """
    if t.is_quantized:
        codes = flip_tensor_bits(t.int_repr(), flat_indices, bits)
        return requantize(t, codes)
    lay = layout(t.dtype)
    flat, bit = _pairs(t.numel(), flat_indices, bits)
    check_bits(bit, t.dtype)
    elems, masks = combine_flips(flat, bit, lay.width)
    out = t.clone(memory_format=torch.contiguous_format)
    codes = out.view(lay.int_dtype).view(-1)  # (numel,), shares out's storage
    dev = t.device
    elems, masks = elems.to(dev), masks.to(device=dev, dtype=lay.int_dtype)
    codes[elems] = codes[elems] ^ masks
    return out
