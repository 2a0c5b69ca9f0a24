"""The stored bits of a model's tensors: bit layouts per dtype and read/write access to stored codes.

The one place that knows how a tensor is stored: :class:`BitLayout` (where sign, exponent and mantissa
bits sit), :func:`find_tensor` (a parameter or buffer by name; for a parameter a device map offloaded,
the value its accelerate hook keeps in CPU memory), and :func:`stored_bits`, which returns a
store whose ``read``/``write`` move integer codes bit for bit: :class:`TensorStore` for a parameter or
buffer (viewed as the same-width integer type), :class:`PackedWeightStore` for the packed weight of a
torch quantized Linear (``int_repr``, then repack). Bits, sites, the injector, quantization and the
perturbation base all build on this module; it imports none of them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from harness.errors import HarnessError


@dataclass(frozen=True)
class BitLayout:
    """Where the sign, exponent and mantissa bits of one dtype sit (bit 0 = LSB).

    For integer dtypes ``mantissa`` holds the value bits below the sign bit (all bits if unsigned)
    and ``exponent`` is empty.
    """

    dtype: torch.dtype
    int_dtype: torch.dtype  # same-width integer type the stored bits are viewed as
    width: int
    sign: int | None
    exponent: tuple[int, ...]  # LSB..MSB
    mantissa: tuple[int, ...]  # LSB..MSB


def _float(dtype: torch.dtype, int_dtype: torch.dtype, width: int, n_exp: int) -> BitLayout:
    n_mant = width - 1 - n_exp
    return BitLayout(
        dtype, int_dtype, width, width - 1, tuple(range(n_mant, width - 1)), tuple(range(n_mant))
    )


def _int(dtype: torch.dtype, width: int, signed: bool) -> BitLayout:
    value_bits = width - 1 if signed else width
    return BitLayout(dtype, dtype, width, width - 1 if signed else None, (), tuple(range(value_bits)))


LAYOUTS: dict[torch.dtype, BitLayout] = {
    torch.float32: _float(torch.float32, torch.int32, 32, 8),
    torch.float16: _float(torch.float16, torch.int16, 16, 5),
    torch.bfloat16: _float(torch.bfloat16, torch.int16, 16, 8),
    torch.float64: _float(torch.float64, torch.int64, 64, 11),
    torch.int8: _int(torch.int8, 8, True),
    torch.uint8: _int(torch.uint8, 8, False),
    torch.int16: _int(torch.int16, 16, True),
    torch.int32: _int(torch.int32, 32, True),
    torch.int64: _int(torch.int64, 64, True),
}
for _name, _n_exp in (("float8_e4m3fn", 4), ("float8_e5m2", 5)):
    if hasattr(torch, _name):
        LAYOUTS[getattr(torch, _name)] = _float(getattr(torch, _name), torch.int8, 8, _n_exp)

# torch's quantized dtypes store their integer codes (int_repr) with these layouts
_QUANTIZED_CODES = {torch.qint8: torch.int8, torch.quint8: torch.uint8, torch.qint32: torch.int32}


def layout(dtype: torch.dtype) -> BitLayout:
    """The bit layout of ``dtype`` (torch quantized dtypes: the layout of their integer codes).

    Raises:
        HarnessError: for a dtype without a supported layout.
    """
    dtype = _QUANTIZED_CODES.get(dtype, dtype)
    try:
        return LAYOUTS[dtype]
    except KeyError:
        known = ", ".join(str(d) for d in LAYOUTS)
        raise HarnessError(f"no bit layout for {dtype}; supported: {known}") from None


def find_tensor(model: nn.Module, name: str) -> torch.Tensor:
    """The stored tensor of the parameter or buffer called ``name``: the one the forward pass reads.

    Every edit and read of weights in the harness resolves names here. A parameter that a device
    map offloaded is a ``meta`` placeholder; its value is the tensor in CPU memory that the module's
    accelerate hook moves in at every forward, and that tensor is returned, so an edit of it is what
    the next forward computes with.

    Raises:
        HarnessError: no such parameter or buffer (naming the closest one), or a parameter offloaded
            to disk (read from a file at every forward: nothing in memory to edit).
    """
    tensor = _named_tensor(model, name)
    if not tensor.is_meta:
        return tensor
    value = offloaded_value(model, name)
    if value is None:
        raise HarnessError(f"{name} is offloaded to disk by the device map, where the harness cannot edit it "
                           "(it is read from a file at every forward): give it memory with --max-memory "
                           "(cpu=...) or target parameters held in memory")
    return value


def _named_tensor(model: nn.Module, name: str) -> torch.Tensor:
    try:
        return model.get_parameter(name)
    except AttributeError:
        pass
    try:
        return model.get_buffer(name)
    except AttributeError:
        pass
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise HarnessError(f"unknown parameter {name!r} in {type(model).__name__}{hint}")


def offloaded_value(model: nn.Module, name: str) -> torch.Tensor | None:
    """The value of the offloaded (``meta``) parameter or buffer ``name``: the tensor in CPU memory that
    an accelerate offload hook moves to the execution device at every forward, or None when the hook
    reads it from disk instead.

    The hook is looked for on the owning module, then on its parents (a hook on a block serves the
    block's submodules), as transformers does.

    Raises:
        HarnessError: ``name`` is on ``meta`` but no offload hook holds its value.
    """
    from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset

    parts = name.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        hook = getattr(model.get_submodule(".".join(parts[:cut])), "_hf_hook", None)
        for h in getattr(hook, "hooks", [hook]):  # accelerate's SequentialHook holds several
            weights, key = getattr(h, "weights_map", None), ".".join(parts[cut:])
            if not getattr(h, "offload", False) or weights is None:
                continue
            while isinstance(weights, PrefixedDataset):  # one per module, over the model's loader
                weights, key = weights.dataset, weights.prefix + key
            if isinstance(weights, OffloadedWeightsLoader):  # state_dict: in CPU memory; index: on disk
                if key in weights.state_dict:
                    return weights.state_dict[key]
                if key in weights.index:
                    return None
            elif key in weights:  # a plain mapping (accelerate's cpu_offload)
                return weights[key]
    raise HarnessError(f"{name} is on the meta device and no offload hook holds its value: "
                       "the model was not loaded with its weights")


# ---------------------------------------------------------------------------------------------
# Stored tensors a flip can address


class TensorStore:
    """The stored bits of one parameter or buffer, read and written through its integer view."""

    def __init__(self, name: str, tensor: torch.Tensor) -> None:
        self.name = name
        self.tensor = tensor
        self.layout = layout(tensor.dtype)

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.tensor.dtype

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def _locate(self, elems: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        codes = self.tensor.detach().view(self.layout.int_dtype)  # shares the tensor's storage
        if codes.is_contiguous():
            return codes.view(-1), (elems,)
        return codes, torch.unravel_index(elems, tuple(self.shape))

    def read(self, elems: torch.Tensor) -> torch.Tensor:
        """Stored codes (int view) of the given flat elements, a copy. ``elems`` on ``device``."""
        codes, index = self._locate(elems)
        return codes[index].clone()

    def write(self, elems: torch.Tensor, values: torch.Tensor) -> None:
        """Store integer codes at the given flat elements (distinct), bit for bit."""
        codes, index = self._locate(elems)
        codes[index] = values


def is_packed_quantized(module: nn.Module) -> bool:
    """True for torch's quantized Linear modules, whose ``weight()`` is a method."""
    weight = getattr(module, "weight", None)
    return hasattr(module, "set_weight_bias") and callable(weight) and not isinstance(weight, torch.Tensor)


def requantize(q: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """A quantized tensor with ``q``'s quantization parameters and the given integer codes."""
    if q.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        return torch._make_per_channel_quantized_tensor(
            codes, q.q_per_channel_scales(), q.q_per_channel_zero_points(), q.q_per_channel_axis()
        )
    if q.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return torch._make_per_tensor_quantized_tensor(codes, q.q_scale(), q.q_zero_point())
    raise HarnessError(f"unsupported quantization scheme {q.qscheme()}")


class PackedWeightStore:
    """The int8 codes of a torch quantized Linear's packed weight (``int_repr``, then repack).

    Reads and writes cost a repack of the whole weight (time O(weight)); the injector still saves
    only the touched codes.
    """

    def __init__(self, name: str, module: nn.Module) -> None:
        self.name = name
        self.module = module
        self.layout = layout(module.weight().dtype)

    @property
    def shape(self) -> torch.Size:
        return self.module.weight().shape

    @property
    def dtype(self) -> torch.dtype:
        return self.module.weight().dtype

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def read(self, elems: torch.Tensor) -> torch.Tensor:
        return self.module.weight().int_repr().reshape(-1)[elems].clone()

    def write(self, elems: torch.Tensor, values: torch.Tensor) -> None:
        w = self.module.weight()
        codes = w.int_repr().contiguous()
        codes.view(-1)[elems] = values
        self.module.set_weight_bias(requantize(w, codes), self.module.bias())

    def dequantized(self) -> torch.Tensor:
        return self.module.weight().dequantize()


def stored_bits(model: nn.Module, name: str) -> TensorStore | PackedWeightStore:
    """The stored tensor called ``name``: a parameter or buffer, or the packed weight of a torch
    quantized Linear (``<module>.weight``).

    Raises:
        HarnessError: unknown name or a dtype without a bit layout.
    """
    prefix, _, attr = name.rpartition(".")
    if attr == "weight":
        try:
            module = model.get_submodule(prefix) if prefix else model
        except AttributeError:
            module = None
        if module is not None and is_packed_quantized(module):
            return PackedWeightStore(name, module)
    return TensorStore(name, find_tensor(model, name))
