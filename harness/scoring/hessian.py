"""``hessian``: the Hessian diagonal of the calibration loss by Hutchinson's estimator.

diag(H) = E[z ⊙ Hz] for Rademacher z (entries ±1 with probability ½). Each probe draws z from the
seeded generator, and Hz comes from a Hessian-vector product by double backward: g = ∂L/∂w with
``create_graph=True``, then Hz = ∂(g·z)/∂w. The selected matrices are processed in blocks of at most
``max_block`` weights with z zero outside the block; the block's diagonal is the diagonal of the
Hessian restricted to it, so blocking changes memory and cost, not what is estimated.

Memory beyond the model (P selected weights, T tokens per batch, L blocks of width d, vocabulary V):
2P (z and the running sums, fp32) + the double-backward graph of one batch + one matrix's transient
gradient and Hz (each is consumed as it arrives, :func:`_probe_into`; a probe's graph is freed before the
next probe's forward). The graph is what the first backward keeps for the second: with
:func:`~harness.scoring.grads.checkpointed` blocks, the forward keeps only L·T·d block inputs, but the
first backward (``create_graph``) keeps every block's recomputed activations and its own intermediates,
about 3x the first-order activations of T tokens, plus a few T·V logits copies (saved tensors at T = 512 on
smollm2-135m: 0.9 GB of activations + 1.5 GB of backward intermediates).
Measured (peak RSS, smollm2-135m, 2 x 256 tokens in one batch, 2 probes, one thread; 0.47 GB with the
model loaded): 8.75 GB before (the last probe's whole graph, gradients and Hz were alive while the next
probe's were built), 6.05 GB after freeing them, 5.47 GB with checkpointed blocks; the scores are the
same bits throughout. Going further means differentiating block by block (each block's backward kept
as its input and recomputed in the second backward), which sums Hz in another order: not done here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.errors import HarnessError
from harness.models.archmap import ComponentRef
from harness.scoring.base import Context, Cost, ScoreSet, ref_rows, scorer
from harness.scoring.grads import batch_nll, checkpointed, grad_on, predicted_tokens, unique_params

PROBES = 16
MAX_BLOCK = 2**28  # weights differentiated together: 1 GiB per fp32 buffer (z, sum)


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
        zs.extend(rademacher(s, generator).to(t.device, t.dtype) for s, (t, _) in zip(shapes, targets, strict=True))
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
    present = [t for t in terms if t is not None]
    if not present or not any(t.requires_grad for t in present):  # the loss does not depend on any target
        return 1
    dot = present[0]
    for t in present[1:]:
        dot = dot + t
    with _grad_hooks(params, add_hz):
        torch.autograd.backward(dot, inputs=params)
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
    if probes < 1:
        raise HarnessError(f"hessian needs probes >= 1, got {probes}")
    if max_block < 1:
        raise HarnessError(f"hessian needs max_block >= 1, got {max_block}")
    denominator = predicted_tokens(ctx.windows)
    estimates: dict[ComponentRef, torch.Tensor] = {}
    cost = Cost()
    groups = blocks(ctx.model, ctx.refs, max_block)

    def losses():
        nonlocal cost
        for batch in ctx.batches():
            cost += Cost(forward=1, tokens=batch.numel())
            yield batch_nll(ctx.model, batch, denominator)

    # flash / memory-efficient attention kernels have no double backward; the math kernel does
    with sdpa_kernel([SDPBackend.MATH]):
        for group in groups:
            params = unique_params(ctx.model, group)
            with grad_on(ctx.model, list(params.values())), checkpointed(ctx.model):
                targets = [(params[ref.param], ref_rows(ref, params[ref.param].device)) for ref in group]
                diag, backward = hutchinson_diagonal(losses, targets, probes, ctx.generator)
            cost += Cost(backward=backward)
            estimates.update(zip(group, diag, strict=True))
    return ScoreSet("hessian", ctx.refs, cost, ctx.model, lambda ref: estimates[ref], signed=True,
                    details={"probes": probes, "blocks": len(groups)})
