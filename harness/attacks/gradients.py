"""Loss and weight gradients for the attacks, on float and int8 (``QuantizedLinear``) weights alike.

No parameter gets ``requires_grad``: the input embeddings do, so the backward pass runs through the
activations, and a hook on each target module turns its output gradient and saved input into the
weight gradient ``g^T x`` (for int8 codes, times the per-channel scale: the gradient with respect to
the codes). Each module's gradient is handed to a callback as soon as it exists and dropped after,
so beyond the activations of one pass only one matrix's gradient is alive.

Loss convention: mean next-token NLL over all predicted tokens of the windows
(:func:`harness.metrics.next_token_nll`, as :mod:`harness.metrics.perplexity` scores them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from harness.faults.quant import QuantizedLinear
from harness.metrics.perplexity import next_token_nll
from harness.models.device import input_device


@torch.no_grad()
def loss_of(model: nn.Module, windows: torch.Tensor) -> float:
    """Mean next-token NLL of ``windows`` (nan or inf when the model's output is non-finite)."""
    device = input_device(model)
    return float(next_token_nll(model(input_ids=windows.to(device), use_cache=False).logits, windows))


def _weight_grad(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """dL/d(stored weight) of a linear-like module from its input ``x`` (..., in) and output grad ``g``."""
    x2 = x.reshape(-1, x.shape[-1]).float()  # (N, in)
    g2 = g.reshape(-1, g.shape[-1]).float()  # (N, out)
    if isinstance(module, QuantizedLinear):
        if module.channel_axis == 0:
            return (g2.T @ x2) * module.scale[:, None]  # (out, in) per code
        return (x2.T @ g2) * module.scale[None, :]  # (in, out)
    if isinstance(module, nn.Linear):
        return g2.T @ x2  # (out, in)
    return x2.T @ g2  # GPT-2 Conv1D stores (in, out)


def weight_gradients(model: nn.Module, modules: Sequence[tuple[str, str]], windows: torch.Tensor,
                     on_grad: Callable[[str, torch.Tensor], None]) -> float:
    """One forward and backward pass; ``on_grad(param, grad)`` per target module, grad in float32.

    Args:
        model: a causal LM whose target modules are ``nn.Linear``, ``Conv1D`` or ``QuantizedLinear``.
        modules: ``(module path, parameter name)`` of each target weight.
        windows: (B, T) token ids; the loss is their mean next-token NLL.
        on_grad: called once per module with the gradient in the stored weight's shape.

    Returns:
        The loss (nan/inf when the output is non-finite).

    Cost: one forward and one backward pass over ``windows``.
    """
    device = input_device(model)
    ids = windows.to(device)
    handles = []

    def hook(param: str):
        def fwd(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if isinstance(output, torch.Tensor) and output.requires_grad:
                x = args[0].detach()
                output.register_hook(lambda g: on_grad(param, _weight_grad(module, x, g)))
        return fwd

    try:
        for path, param in modules:
            handles.append(model.get_submodule(path).register_forward_hook(hook(param)))
        with torch.enable_grad():
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            loss = next_token_nll(model(inputs_embeds=embeds, use_cache=False).logits, ids)
            if torch.isfinite(loss):
                loss.backward()
    finally:
        for h in handles:
            h.remove()
    return float(loss.detach())
