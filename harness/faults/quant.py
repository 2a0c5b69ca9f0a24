"""A real int8 weight representation, so bit flips hit two's-complement int8 codes.

``QuantizedLinear`` stores a Linear (or GPT-2 ``Conv1D``) weight as int8 codes with one symmetric
fp32 scale per output channel; its ``weight`` keeps the original parameter name and shape, so fault
sites and ComponentRefs stay valid. ``quantize_int8(model, modules)`` swaps modules in place and
swaps the originals back on restore (the original modules are kept, not copied).

Tied weights are never untied silently: a Linear whose weight is tied to another parameter
(``lm_head`` tied to ``embed_tokens``) is left in float when ``modules`` is None (logged), and
naming it explicitly raises, since an int8 copy would cut the tie (a flip would then hit the head
but no longer the embedding).

``backend="torch"`` swaps in torch's own dynamic quantized Linear instead (CPU only; its weight is
a ``torch.quantize_per_channel`` qint8 tensor and its activations are quantized on the fly too).
Flips on such a weight go through ``int_repr`` and repack the weight (``harness.faults.storage.PackedWeightStore``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from harness.faults.base import Perturbation
from harness.faults.sites import tied_names

log = logging.getLogger(__name__)

QMAX = 127  # symmetric: codes in [-127, 127]; -128 is reachable only by a flip


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


class QuantizedLinear(nn.Module):
    """Linear layer with int8 weight codes and per-output-channel symmetric scales.

    Args:
        codes: int8 weight codes, (out, in) for ``channel_axis=0`` (nn.Linear) or (in, out) for
            ``channel_axis=1`` (GPT-2 Conv1D).
        scale: (out,) fp32 scales; weight = codes * scale along the output channel.
        bias: the original bias parameter (shared, not copied) or None.
        channel_axis: the weight axis of the output channels.
    """

    def __init__(
        self, codes: torch.Tensor, scale: torch.Tensor, bias: nn.Parameter | None, channel_axis: int = 0
    ) -> None:
        super().__init__()
        if codes.dtype != torch.int8:
            raise HarnessError(f"QuantizedLinear codes must be torch.int8, got {codes.dtype}")
        self.channel_axis = channel_axis
        self.weight = nn.Parameter(codes, requires_grad=False)
        self.register_buffer("scale", scale.to(torch.float32))
        self.bias = bias
        self.out_features = codes.shape[channel_axis]
        self.in_features = codes.shape[1 - channel_axis]

    @classmethod
    def from_module(cls, module: nn.Module) -> QuantizedLinear:
        """Quantize an ``nn.Linear`` or ``Conv1D``: scale = max|w| / 127 per output channel."""
        if isinstance(module, nn.Linear):
            axis = 0
        elif _is_conv1d(module):
            axis = 1
        else:
            raise HarnessError(f"can quantize nn.Linear or Conv1D modules, not {type(module).__name__}")
        w = module.weight.detach().float()
        amax = w.abs().amax(dim=1 - axis)  # (out,)
        scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
        codes = torch.round(w / _along(scale, axis)).clamp_(-QMAX, QMAX).to(torch.int8)
        return cls(codes, scale, module.bias, axis)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as floats, codes * scale, in the codes' orientation."""
        return (self.weight.float() * _along(self.scale, self.channel_axis)).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantize(x.dtype)
        if self.channel_axis == 0:
            return F.linear(x, w, self.bias)
        out = x @ w  # Conv1D: (..., in) @ (in, out)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def _along(scale: torch.Tensor, axis: int) -> torch.Tensor:
    return scale[:, None] if axis == 0 else scale[None, :]


def _torch_dynamic_linear(module: nn.Module) -> nn.Module:
    import torch.ao.nn.quantized.dynamic as nnqd

    if not isinstance(module, nn.Linear):
        raise HarnessError(f"backend 'torch' quantizes nn.Linear only, not {type(module).__name__}")
    if module.weight.device.type != "cpu":
        raise HarnessError("backend 'torch' (torch quantized tensors) runs on CPU only; use backend 'int8'")
    q = QuantizedLinear.from_module(module)
    zero = torch.zeros(q.out_features, dtype=torch.long)
    weight = torch._make_per_channel_quantized_tensor(q.weight.detach(), q.scale.double(), zero, 0)
    out = nnqd.Linear(module.in_features, module.out_features, bias_=module.bias is not None, dtype=torch.qint8)
    out.set_weight_bias(weight, None if module.bias is None else module.bias.detach().float())
    return out


BACKENDS = ("int8", "torch")


class Int8Quantization(Perturbation):
    """Swap Linear/Conv1D modules for int8 versions; restore puts the original modules back.

    Args:
        model: the model to edit in place.
        modules: None (every nn.Linear/Conv1D whose weight is not tied, lm_head included when
            untied), module names, module objects, or ComponentRefs (their ``param``'s module;
            refs to norms are skipped).
        backend: ``"int8"`` (``QuantizedLinear``, any device) or ``"torch"`` (torch's dynamic
            quantized Linear with a per-channel qint8 weight; CPU only).

    Raises:
        HarnessError: unknown module, a module that is not Linear/Conv1D, a module whose weight is
            tied to another parameter, or an unknown backend.
    """

    kind = "int8"

    def __init__(self, model: nn.Module, modules: Any = None, *, backend: str = "int8") -> None:
        super().__init__(model)
        if backend not in BACKENDS:
            raise HarnessError(f"unknown quantization backend {backend!r}; allowed: {', '.join(BACKENDS)}")
        self.backend = backend
        self.names = _module_names(model, modules)
        self.quantized: dict[str, nn.Module] = {}

    def _apply(self) -> None:
        build = QuantizedLinear.from_module if self.backend == "int8" else _torch_dynamic_linear
        for name in self.names:
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            original = getattr(parent, child)
            quantized = build(original)
            setattr(parent, child, quantized)
            self._push(lambda p=parent, c=child, o=original: setattr(p, c, o))
            self.quantized[name] = quantized

    def restore(self) -> None:
        try:
            super().restore()
        finally:
            self.quantized = {}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "backend": self.backend, "modules": len(self.names)}


def quantize_int8(model: nn.Module, modules: Any = None, *, backend: str = "int8") -> Int8Quantization:
    """Build an int8 swap of ``modules`` (see ``Int8Quantization``); apply with ``with`` or ``.apply()``."""
    return Int8Quantization(model, modules, backend=backend)


def _refuse_offloaded(model: nn.Module, name: str) -> None:
    if model.get_submodule(name).weight.is_meta:
        raise HarnessError(f"cannot quantize {name}: a device map offloaded it (its weight is moved in by an "
                           "accelerate hook at each forward, which a swapped module would not have); "
                           "give the model memory with --max-memory or quantize modules held on a device")


def _module_names(model: nn.Module, modules: Any) -> list[str]:
    quantizable = lambda m: isinstance(m, nn.Linear) or _is_conv1d(m)  # noqa: E731
    if modules is None:
        names = [n for n, m in model.named_modules() if n and quantizable(m)]
        for n in names:
            _refuse_offloaded(model, n)
        tied = [n for n in names if len(tied_names(model, f"{n}.weight")) > 1]
        if tied:
            log.info("int8: leaving %s in float: its weight is tied to %s (an int8 copy would untie it)",
                     ", ".join(tied), ", ".join(t for n in tied for t in tied_names(model, f"{n}.weight")
                                                if t != f"{n}.weight"))
        names = [n for n in names if n not in tied]
        if not names:
            raise HarnessError(f"{type(model).__name__} has no untied nn.Linear or Conv1D modules to quantize")
        return names
    if isinstance(modules, (str, nn.Module)) or hasattr(modules, "param"):
        modules = [modules]
    by_id = {id(m): n for n, m in model.named_modules()}
    names: list[str] = []
    for item in modules:
        if isinstance(item, str):
            name = item
        elif isinstance(item, nn.Module):
            if id(item) not in by_id:
                raise HarnessError(f"{type(item).__name__} module is not part of {type(model).__name__}")
            name = by_id[id(item)]
        elif hasattr(item, "param"):  # a ComponentRef; a selection's norms are skipped, not refused
            name = item.param.rpartition(".")[0]
            if not quantizable(model.get_submodule(name)):
                continue
        else:
            raise HarnessError(f"cannot quantize {item!r}; pass module names, modules or ComponentRefs")
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise HarnessError(f"unknown module {name!r} in {type(model).__name__}") from None
        if not quantizable(module):
            raise HarnessError(f"{name} is {type(module).__name__}; only nn.Linear and Conv1D can be quantized")
        _refuse_offloaded(model, name)
        ties = tied_names(model, f"{name}.weight")
        if len(ties) > 1:
            raise HarnessError(f"{name}.weight is tied ({', '.join(ties)}): an int8 copy would untie it; "
                               "quantize untied modules only")
        if name not in names:
            names.append(name)
    if not names:
        raise HarnessError("nothing to quantize: no nn.Linear or Conv1D among the given modules")
    return names

