"""What the gradient-based scorers share: the calibration loss, turning gradients on for the selected
parameters only (and off again in ``finally``), and per-component fp32 sums of a function of the
gradient that never keep a second gradient-sized buffer.

Loss convention: mean next-token NLL over every predicted token of the calibration windows
(:func:`harness.metrics.next_token_nll`, each window on its own, as :mod:`harness.metrics.perplexity`
scores them). Summed over batches with :func:`batch_nll` (the summed NLL divided by the total token count),
the accumulated gradient is exactly the gradient of that mean.

Memory beyond the model (P selected weights, T tokens per forward/backward batch, L blocks of width d,
vocabulary V): the fp32 sums (P) and one matrix's transient gradient; the activations of one batch are
cut by :func:`checkpointed` to the blocks' inputs (L·T·d) plus one block's activations and the head's
T·V logits (a few float32 copies) at a time, the same gradient bits as keeping them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from harness.errors import HarnessError
from harness.metrics.perplexity import next_token_nll
from harness.models.archmap import ComponentRef, arch_map
from harness.scoring.base import Cost, ref_rows, ref_shape


def batch_nll(model: nn.Module, batch: torch.Tensor, denominator: int) -> torch.Tensor:
    """Sum of next-token NLL over ``batch`` (B, T) divided by ``denominator`` (a 0-d float32 tensor)."""
    return next_token_nll(model(input_ids=batch, use_cache=False).logits, batch, reduction="sum") / denominator


def at_least_one(method: str, **counts: int) -> None:
    """Raise a one-line error naming the first of ``counts`` (a scorer's options) below 1."""
    for name, value in counts.items():
        if value < 1:
            raise HarnessError(f"{method} needs {name} >= 1, got {value}")


def predicted_tokens(windows: torch.Tensor) -> int:
    return windows.shape[0] * (windows.shape[1] - 1)


def unique_params(model: nn.Module, refs: Sequence[ComponentRef]) -> dict[str, nn.Parameter]:
    """Parameter name -> parameter for the refs (a fused matrix appears once)."""
    return {ref.param: model.get_parameter(ref.param) for ref in refs}


@contextmanager
def grad_on(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Gradients for ``params`` only, inside the block.

    Every other parameter gets ``requires_grad=False`` for the duration; on exit (even on error) each
    parameter's ``requires_grad`` and ``.grad`` are put back as they were.
    """
    chosen = {id(p) for p in params}
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        for p, _, _ in saved:
            p.grad = None
            p.requires_grad_(id(p) in chosen)
        with torch.enable_grad():
            yield
    finally:
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad


@contextmanager
def blocks_wrapped(model: nn.Module, wrap: Callable[[nn.Module, Callable[..., Any]], Callable[..., Any]]
                   ) -> Iterator[None]:
    """Inside the block, every decoder block's ``forward`` is ``wrap(block, its forward)``: swapped on the instance
    and put back (or removed) in ``finally``, even on error. What :func:`checkpointed` and the Hessian's
    ``segmented`` blocks share."""
    with ExitStack() as stack:
        for block in model.get_submodule(arch_map(model).blocks):
            stack.enter_context(_forward_swapped(block, wrap(block, block.forward)))
        yield


def checkpointed(model: nn.Module) -> AbstractContextManager[None]:
    """Inside the block, every decoder block keeps only its input for the backward pass and recomputes its
    activations when the backward reaches it (non-reentrant ``torch.utils.checkpoint``).

    The recomputation runs the same operations on the same input, so gradients are the same bits as without
    it; the forward keeps ``layers x tokens x d`` values instead of every block's activations (one block's
    activations exist at a time during the backward). Costs one more forward pass. Without grad mode a block
    runs as usual. The blocks' ``forward`` is swapped on the instance and put back in ``finally``.
    """
    return blocks_wrapped(model, _checkpointing)


def _checkpointing(block: nn.Module, inner: Callable[..., Any]) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return inner(*args, **kwargs)
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    return forward


@contextmanager
def _forward_swapped(module: nn.Module, forward: Callable[..., Any]) -> Iterator[None]:
    """``module.forward`` is ``forward`` inside the block; the instance attribute is put back (or removed) after."""
    had, old = "forward" in vars(module), vars(module).get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if had:
            module.forward = old
        else:
            del module.forward


class GradSums:
    """fp32 sums of ``transform(grad)`` per component, fed by post-accumulate-grad hooks.

    Each hook adds the selected rows of the fresh gradient into the component's sum and drops
    ``param.grad``, so beyond the model only the sums (one buffer the size of the selected rows) and
    one matrix's transient gradient exist at any time.

    Args:
        model: the model.
        refs: the components to sum over (fused rows are cut out of the full gradient).
        transform: applied to each float32 gradient before summing (identity, square, ...).
    """

    def __init__(self, model: nn.Module, refs: Sequence[ComponentRef],
                 transform: Callable[[torch.Tensor], torch.Tensor] = lambda g: g) -> None:
        self.refs = list(refs)
        self.transform = transform
        self.sums: dict[ComponentRef, torch.Tensor] = {}
        self._by_param: dict[str, list[tuple[ComponentRef, torch.Tensor | None]]] = {}
        for ref in self.refs:
            param = model.get_parameter(ref.param)
            self.sums[ref] = torch.zeros(ref_shape(model, ref), dtype=torch.float32, device=param.device)
            self._by_param.setdefault(ref.param, []).append((ref, ref_rows(ref, param.device)))
        self._params = unique_params(model, self.refs)
        self._handles: list = []

    def __enter__(self) -> GradSums:
        for name, param in self._params.items():
            self._handles.append(param.register_post_accumulate_grad_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            grad = param.grad
            param.grad = None
            if grad is None:
                return
            for ref, rows in self._by_param[name]:
                g = grad if rows is None else grad[rows]
                self.sums[ref].add_(self.transform(g.float()))

        return hook


def gradient_sums(model: nn.Module, refs: Sequence[ComponentRef], windows: torch.Tensor, batch_size: int, *,
                  transform: Callable[[torch.Tensor], torch.Tensor] = lambda g: g,
                  per_window: bool = False) -> tuple[dict[ComponentRef, torch.Tensor], Cost]:
    """Sums of ``transform(∂L/∂w)`` over the calibration batches.

    With ``per_window=False`` the batches' gradients add up to the gradient of the mean NLL over all
    windows. With ``per_window=True`` each window is its own backward pass of its own mean NLL and
    ``transform`` is applied per window (the empirical Fisher: sum of squared per-window gradients).

    Cost: one forward and one backward pass over the windows.
    """
    params = list(unique_params(model, refs).values())
    cost = Cost()
    with grad_on(model, params), checkpointed(model), GradSums(model, refs, transform) as sums:
        if per_window:
            batches = [windows[i:i + 1] for i in range(windows.shape[0])]
            denominators = [predicted_tokens(b) for b in batches]
        else:
            batches = [windows[i:i + batch_size] for i in range(0, windows.shape[0], batch_size)]
            denominators = [predicted_tokens(windows)] * len(batches)
        for batch, denominator in zip(batches, denominators, strict=True):
            batch_nll(model, batch, denominator).backward()
            cost += Cost(forward=1, backward=1, tokens=batch.numel())
    return sums.sums, cost
