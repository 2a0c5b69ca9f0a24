"""Activation faults (neuron injection): a forward hook edits a module's output.

The hook is registered on apply and removed in ``finally`` (restore), even when the body raises.
The output is cloned before it is edited, so a module that returns (a view of) its input does not
corrupt the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from harness.errors import HarnessError
from harness.faults.base import PERTURBATIONS, Perturbation
from harness.faults.bits import check_bits, layout

OPS = ("set", "add", "scale", "bitflip")


@PERTURBATIONS.register("activation")
class ActivationFault(Perturbation):
    """Edit ``module``'s output on every forward pass while applied.

    Args:
        model: the model holding the module.
        module: the module's name in ``model`` (or the module itself).
        op: ``"set"`` (out[index] = value), ``"add"`` (+= value), ``"scale"`` (*= value), or
            ``"bitflip"`` (XOR ``bits`` into the stored bits of out[index]).
        value: the number for set/add/scale.
        index: any tensor index into the output (ints, slices, lists, Ellipsis), e.g.
            ``(0, 5, 17)`` for batch 0, token 5, neuron 17. None: the whole output.
        channels: shorthand for ``index=(..., channels)`` (neurons of the last dim).
        bits: bit positions for ``bitflip``.
        output_index: which element to edit when the module returns a tuple/list (default 0).

    Raises:
        HarnessError: unknown module or op, both index and channels, bitflip without bits, or a bit
            outside the output dtype's width (raised from the forward pass when only known there).
    """

    kind = "activation"

    def __init__(
        self,
        model: nn.Module,
        module: str | nn.Module,
        op: str = "set",
        value: float = 0.0,
        *,
        index: Any = None,
        channels: Sequence[int] | int | None = None,
        bits: Sequence[int] | int = (),
        output_index: int = 0,
    ) -> None:
        super().__init__(model)
        if op not in OPS:
            raise HarnessError(f"unknown activation op {op!r}; allowed: {', '.join(OPS)}")
        if isinstance(module, str):
            try:
                self.module = model.get_submodule(module)
            except AttributeError:
                raise HarnessError(f"unknown module {module!r} in {type(model).__name__}") from None
            self.module_name = module
        else:
            self.module = module
            self.module_name = next((n for n, m in model.named_modules() if m is module), type(module).__name__)
        if index is not None and channels is not None:
            raise HarnessError("pass index or channels, not both")
        if channels is not None:
            index = (Ellipsis, [channels] if isinstance(channels, int) else list(channels))
        self.index = (Ellipsis,) if index is None else (index if isinstance(index, tuple) else (index,))
        self.bits = (bits,) if isinstance(bits, int) else tuple(int(b) for b in bits)
        if op == "bitflip":
            if not self.bits:
                raise HarnessError("activation op 'bitflip' needs bits")
            params = list(self.module.parameters())
            if params and params[0].is_floating_point():
                check_bits(self.bits, params[0].dtype)
        self.op, self.value, self.output_index = op, float(value), output_index
        self.calls = 0  # forward passes the hook edited

    def _edit(self, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        if self.op == "set":
            out[self.index] = self.value
        elif self.op == "add":
            out[self.index] += self.value
        elif self.op == "scale":
            out[self.index] *= self.value
        else:
            lay = layout(out.dtype)
            check_bits(self.bits, out.dtype)
            mask = sum(1 << b for b in self.bits)
            mask = mask - (1 << lay.width) if mask >= 1 << (lay.width - 1) else mask
            codes = out.view(lay.int_dtype)  # shares out's storage
            codes[self.index] ^= torch.tensor(mask, dtype=lay.int_dtype, device=out.device)
        self.calls += 1
        return out

    def _hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return self._edit(output)
        if isinstance(output, (tuple, list)):
            items = list(output)
            items[self.output_index] = self._edit(items[self.output_index])
            return type(output)(items) if isinstance(output, list) else tuple(items)
        raise HarnessError(f"cannot edit the output of {self.module_name}: {type(output).__name__}")

    def _apply(self) -> None:
        handle = self.module.register_forward_hook(self._hook)
        self._push(handle.remove)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "module": self.module_name, "op": self.op, "value": self.value,
                "index": repr(self.index), "bits": list(self.bits)}


def activation_fault(
    model: nn.Module, module: str | nn.Module, op: str = "set", value: float = 0.0, **kw: Any
) -> ActivationFault:
    """An activation fault as a context manager (see ``ActivationFault``)."""
    return ActivationFault(model, module, op, value, **kw)
