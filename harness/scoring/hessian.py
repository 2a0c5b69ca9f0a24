"""``hessian``: the Hessian diagonal of the calibration loss by Hutchinson's estimator.

diag(H) = E[z ⊙ Hz] for Rademacher z (entries ±1 with probability ½). Each probe draws z from the
seeded generator, and Hz comes from a Hessian-vector product by double backward: g = ∂L/∂w with
``create_graph=True``, then Hz = ∂(g·z)/∂w. The selected matrices are processed in blocks of at most
``max_block`` weights with z zero outside the block; the block's diagonal is the diagonal of the
Hessian restricted to it, so blocking changes memory and cost, not what is estimated.

Memory beyond the model (P selected weights, T tokens per double backward, L blocks of width d, vocabulary V):
1.25P (z in int8, the running sums in fp32) + the graph of one double backward + one matrix's transient
gradient and Hz (each consumed as it arrives, :func:`_probe_into`; a probe's graph is freed before the next
probe's forward). The graph is cut block by block (:func:`segmented`): the first backward keeps, per block,
its input and incoming gradient (2·L·T·d) and the head's few T·V copies; the second backward recomputes
one block's double-backward graph at a time. T is at most :data:`DOUBLE_BACKWARD_TOKENS` (one window of
256: the double backward's graph is about 3x a first-order one), and the C heap's freed pages go back to
the OS after each backward (:func:`harness.heap.trim`).
Measured (peak RSS, smollm2-135m, 2 windows of 256 tokens, 2 probes, one thread, the model's pages resident
at about 1.0 GB): 8.75 GB at first (every graph, gradient and Hz of the last probe alive while the next was
built); 6.05 GB freeing them; 5.47 GB with checkpointed blocks (the same bits throughout); 2.72 GB with
the segmented double backward, one window per double backward, int8 z and the heap trimmed. The last step
sums Hz in another order: scores within 6.2e-7 of the largest |score| of the all-at-once computation on
every tiny family, Spearman correlations with other methods equal to the 7th digit on smollm2-135m.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness import heap
from harness.models.archmap import ComponentRef
from harness.scoring.base import Context, Cost, ScoreSet, ref_rows, scorer
from harness.scoring.grads import at_least_one, batch_nll, blocks_wrapped, grad_on, predicted_tokens, unique_params

PROBES = 16
MAX_BLOCK = 2**28  # weights differentiated together: 1 GiB per fp32 buffer (z, sum)
DOUBLE_BACKWARD_TOKENS = 256  # tokens per double backward: its graph is about 3x a first-order backward's


def rademacher(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """±1 float32 entries, drawn on the generator's device."""
    return torch.randint(0, 2, tuple(shape), generator=generator, device=generator.device).float().mul_(2).sub_(1)


def hutchinson_diagonal(losses: Callable[[], Iterable[torch.Tensor]],
                        targets: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
                        probes: int, generator: torch.Generator) -> tuple[list[torch.Tensor], int]:
    """Estimate the Hessian diagonal of ``sum(losses())`` over each target.

    Per probe and loss term, one double backward (:func:`_probe_into`): beyond its graph, only z and
    the running sums are held; the gradients and Hz are consumed one matrix at a time as they arrive.

    Args:
        losses: yields the loss terms (one per batch); called once per probe.
        targets: ``(leaf tensor requiring grad, rows or None)``; z is nonzero only on those rows.
        probes: number of Rademacher probes (the estimate's variance falls as 1/probes).
        generator: seeded generator for z.

    Returns:
        (estimates, backward passes): one float32 estimate per target, shaped like its rows.
    """
    params: list[torch.Tensor] = []
    for t, _ in targets:
        if not any(t is p for p in params):
            params.append(t)
    # param position -> [(target position, rows)], in target order
    parts: list[list[tuple[int, torch.Tensor | None]]] = [[] for _ in params]
    for i, (t, rows) in enumerate(targets):
        parts[next(j for j, p in enumerate(params) if p is t)].append((i, rows))
    shapes = [tuple(t.shape) if rows is None else (len(rows), *t.shape[1:]) for t, rows in targets]
    sums = [torch.zeros(s, dtype=torch.float32, device=t.device) for s, (t, _) in zip(shapes, targets, strict=True)]
    zs: list[torch.Tensor] = []
    backward = 0
    for _ in range(probes):
        zs.clear()  # the last probe's z goes before this one's is drawn
        # z = ±1 is exact in int8 (a quarter of fp32's bytes); products with it promote to the gradient's dtype
        zs.extend(rademacher(s, generator).to(t.device, torch.int8) for s, (t, _) in zip(shapes, targets, strict=True))
        for loss in losses():
            backward += _probe_into(sums, loss, params, parts, zs)
            del loss  # its forward graph, before the next batch's forward
    return [acc.div_(probes) for acc in sums], backward


def _probe_into(sums: list[torch.Tensor], loss: torch.Tensor, params: list[torch.Tensor],
                parts: list[list[tuple[int, torch.Tensor | None]]], zs: list[torch.Tensor]) -> int:
    """Add ``z ⊙ Hz`` of one loss term into ``sums``; returns the backward passes run (1 or 2).

    First backward (graph kept): each parameter's gradient g, as it arrives, becomes its terms of
    g·z and is dropped (the product keeps z, not g). Second backward: each parameter's Hz, as it
    arrives, is added into its sums and dropped. Both backwards differentiate the same graph as
    ``torch.autograd.grad`` over every parameter at once, so the estimate is the same bits.
    """
    terms: list[torch.Tensor | None] = [None] * len(zs)

    def dot_terms(j: int) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            g, param.grad = param.grad, None
            for i, rows in parts[j]:
                terms[i] = ((g if rows is None else g[rows]) * zs[i]).sum()

        return hook

    def add_hz(j: int) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            hz, param.grad = param.grad, None
            for i, rows in parts[j]:
                sums[i].addcmul_(zs[i].float(), (hz if rows is None else hz[rows]).float())  # z = ±1: exact product

        return hook

    with _grad_hooks(params, dot_terms), warnings.catch_warnings():
        # the hooks drop every .grad as it arrives, so no parameter keeps a cycle through its gradient
        warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True")
        torch.autograd.backward(loss, inputs=params, create_graph=True)
    heap.trim()  # the first backward's freed transients, before the second builds its own
    present = [t for t in terms if t is not None]
    if not present or not any(t.requires_grad for t in present):  # the loss does not depend on any target
        return 1
    dot = present[0]
    for t in present[1:]:
        dot = dot + t
    with _grad_hooks(params, add_hz):
        torch.autograd.backward(dot, inputs=params)
    del dot, present
    heap.trim()
    return 2


@contextmanager
def _grad_hooks(params: list[torch.Tensor], make: Callable[[int], Callable[[torch.Tensor], None]]) -> Iterator[None]:
    """``make(j)`` as the post-accumulate-grad hook of ``params[j]`` inside the block; each ``.grad`` is None
    inside and put back as it was in ``finally``, with the hooks removed."""
    saved = [p.grad for p in params]
    handles = []
    try:
        for j, p in enumerate(params):
            p.grad = None
            handles.append(p.register_post_accumulate_grad_hook(make(j)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for p, grad in zip(params, saved, strict=True):
            p.grad = grad


def blocks(model: nn.Module, refs: Sequence[ComponentRef], max_block: int) -> list[list[ComponentRef]]:
    """Consecutive refs grouped so each group's distinct parameters hold at most ``max_block`` weights
    (a single larger matrix is a block of its own); refs of one fused matrix stay together."""
    out: list[list[ComponentRef]] = []
    size = 0
    for ref in refs:
        if out and any(r.param == ref.param for r in out[-1]):
            out[-1].append(ref)
            continue
        n = model.get_parameter(ref.param).numel()
        if not out or size + n > max_block:
            out.append([])
            size = 0
        out[-1].append(ref)
        size += n
    return out


class _Block(torch.autograd.Function):
    """One decoder block as a single autograd node: the forward keeps only the block's input; the
    backward is a :class:`_BlockVJP`, itself differentiable (a double backward goes through it)."""

    @staticmethod
    def forward(ctx: Any, call: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor,
                *params: torch.Tensor) -> torch.Tensor:
        ctx.call, ctx.params = call, params
        ctx.save_for_backward(hidden)
        return call(hidden)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        (hidden,) = ctx.saved_tensors
        return (None, *_BlockVJP.apply(ctx.call, hidden, grad_out, *ctx.params))


class _BlockVJP(torch.autograd.Function):
    """The block's vector-Jacobian product (its input's and parameters' gradients) from its kept input and
    the incoming gradient. Its own backward recomputes the block with a graph and differentiates the
    product once more: the block's share of a Hessian-vector product, one block's graph at a time."""

    @staticmethod
    def forward(ctx: Any, call: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor,
                grad_out: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.call, ctx.params = call, params
        ctx.save_for_backward(hidden, grad_out)
        ctx.set_materialize_grads(False)
        with torch.enable_grad():
            h = hidden.detach().requires_grad_()
            grads = torch.autograd.grad(call(h), (h, *params), grad_out, allow_unused=True)
        return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, (hidden, *params), strict=True))

    @staticmethod
    def backward(ctx: Any, *adjoints: torch.Tensor | None) -> tuple[Any, ...]:
        hidden, grad_out = ctx.saved_tensors
        none = (None,) * (3 + len(ctx.params))
        with torch.enable_grad():
            h, d = hidden.detach().requires_grad_(), grad_out.detach().requires_grad_()
            grads = torch.autograd.grad(ctx.call(h), (h, *ctx.params), d, create_graph=True, allow_unused=True)
            pairs = [(g, a) for g, a in zip(grads, adjoints, strict=True)
                     if g is not None and a is not None and g.requires_grad]
            if not pairs:
                return none
            back = torch.autograd.grad([g for g, _ in pairs], (h, d, *ctx.params), [a for _, a in pairs],
                                       allow_unused=True)
        return (None, *back)


def _needs_grad(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.requires_grad
    if isinstance(value, (tuple, list)):
        return any(_needs_grad(v) for v in value)
    if isinstance(value, dict):
        return any(_needs_grad(v) for v in value.values())
    return False


def segmented(model: nn.Module) -> AbstractContextManager[None]:
    """Inside the block, every decoder block is one autograd node that keeps only its input, and whose
    backward is differentiable block by block (:class:`_Block`, :class:`_BlockVJP`).

    A first backward with ``create_graph`` then keeps, per block, its input and incoming gradient (2·T·d)
    instead of every block's recomputed activations and backward intermediates; the double backward
    recomputes one block's graph at a time. The Hessian-vector product is the same quantity, summed in
    another order (equal to rounding). A block whose other inputs need gradients (none of the zoo's
    families) runs as usual. The blocks' ``forward`` is swapped on the instance and put back in ``finally``
    (:func:`~harness.scoring.grads.blocks_wrapped`).
    """
    return blocks_wrapped(model, _segmenting)


def _segmenting(block: nn.Module, inner: Callable[..., Any]) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        positional = bool(args)
        hidden = args[0] if positional else kwargs.pop("hidden_states")
        rest = args[1:]
        params = tuple(p for p in block.parameters() if p.requires_grad)

        def call(h: torch.Tensor) -> Any:
            return inner(h, *rest, **kwargs) if positional else inner(*rest, hidden_states=h, **kwargs)

        if (not torch.is_grad_enabled() or not (params or hidden.requires_grad)
                or _needs_grad(rest) or _needs_grad(kwargs)):
            return call(hidden)
        extra: list[tuple[Any, ...] | None] = [None]  # the block's other outputs, if it returns a tuple

        def first(h: torch.Tensor) -> torch.Tensor:
            out = call(h)
            extra[0] = out[1:] if isinstance(out, tuple) else None
            return out[0] if isinstance(out, tuple) else out

        out = _Block.apply(first, hidden, *params)
        return out if extra[0] is None else (out, *extra[0])

    return forward


@scorer("hessian", needs_windows=True, signed=True)
def hessian(ctx: Context, *, probes: int = PROBES, max_block: int = MAX_BLOCK) -> ScoreSet:
    """Hessian diagonal of the mean calibration NLL by Hutchinson's estimator (signed; ranked by |·|).

    Options:
        probes: Rademacher probes per block (default 16).
        max_block: weights differentiated together (default 2**28); smaller blocks bound memory at
            the price of more passes.

    Cost: per block, ``probes`` × (one forward and two backward passes over the calibration
    windows); the number of blocks is 1 when the selection fits in ``max_block``.
    """
    at_least_one("hessian", probes=probes, max_block=max_block)
    denominator = predicted_tokens(ctx.windows)
    estimates: dict[ComponentRef, torch.Tensor] = {}
    cost = Cost()
    groups = blocks(ctx.model, ctx.refs, max_block)

    per_batch = max(1, min(ctx.batch_size, DOUBLE_BACKWARD_TOKENS // ctx.windows.shape[1]))

    def losses():
        nonlocal cost
        for batch in ctx.windows.split(per_batch):
            cost += Cost(forward=1, tokens=batch.numel())
            yield batch_nll(ctx.model, batch, denominator)

    # flash / memory-efficient attention kernels have no double backward; the math kernel does
    with sdpa_kernel([SDPBackend.MATH]):
        for group in groups:
            params = unique_params(ctx.model, group)
            with grad_on(ctx.model, list(params.values())), segmented(ctx.model):
                targets = [(params[ref.param], ref_rows(ref, params[ref.param].device)) for ref in group]
                diag, backward = hutchinson_diagonal(losses, targets, probes, ctx.generator)
            cost += Cost(backward=backward)
            estimates.update(zip(group, diag, strict=True))
    return ScoreSet("hessian", ctx.refs, cost, ctx.model, lambda ref: estimates[ref], signed=True,
                    details={"probes": probes, "blocks": len(groups)})
