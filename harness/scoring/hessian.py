"""``hessian``: the Hessian diagonal of the calibration loss by Hutchinson's estimator.

diag(H) = E[z ⊙ Hz] for Rademacher z (entries ±1 with probability ½). Each probe draws z from the
seeded generator, and Hz comes from a Hessian-vector product by double backward: g = ∂L/∂w with
``create_graph=True``, then Hz = ∂(g·z)/∂w. The selected matrices are processed in blocks of at most
``max_block`` weights with z zero outside the block; the block's diagonal is the diagonal of the
Hessian restricted to it, so blocking changes memory and cost, not what is estimated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.errors import HarnessError
from harness.models.archmap import ComponentRef
from harness.scoring.base import Context, Cost, ScoreSet, ref_rows, scorer
from harness.scoring.grads import batch_nll, grad_on, predicted_tokens, unique_params

PROBES = 16
MAX_BLOCK = 2**28  # weights differentiated together: 1 GiB per fp32 buffer (g, z, Hz, sum)


def rademacher(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """±1 float32 entries, drawn on the generator's device."""
    return torch.randint(0, 2, tuple(shape), generator=generator, device=generator.device).float().mul_(2).sub_(1)


def hutchinson_diagonal(losses: Callable[[], Iterable[torch.Tensor]],
                        targets: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
                        probes: int, generator: torch.Generator) -> tuple[list[torch.Tensor], int]:
    """Estimate the Hessian diagonal of ``sum(losses())`` over each target.

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
    where = [next(i for i, p in enumerate(params) if p is t) for t, _ in targets]
    shapes = [tuple(t.shape) if rows is None else (len(rows), *t.shape[1:]) for t, rows in targets]
    devices = [t.device for t, _ in targets]
    rows_of = [rows for _, rows in targets]
    sums = [torch.zeros(s, dtype=torch.float32, device=d) for s, d in zip(shapes, devices, strict=True)]
    backward = 0
    for _ in range(probes):
        zs = [rademacher(s, generator).to(t.device, t.dtype) for s, (t, _) in zip(shapes, targets, strict=True)]
        for loss in losses():
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            dot = loss.new_zeros(())
            for rows, z, p in zip(rows_of, zs, where, strict=True):
                g = grads[p]
                if g is not None:
                    dot = dot + ((g if rows is None else g[rows]) * z).sum()
            backward += 1
            if not dot.requires_grad:  # the loss does not depend on any target
                continue
            hvps = torch.autograd.grad(dot, params, allow_unused=True)
            backward += 1
            for rows, z, p, acc in zip(rows_of, zs, where, sums, strict=True):
                hz = hvps[p]
                if hz is not None:
                    acc.add_(z.float() * (hz if rows is None else hz[rows]).float())
    return [acc / probes for acc in sums], backward


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
            with grad_on(ctx.model, list(params.values())):
                targets = [(params[ref.param], ref_rows(ref, params[ref.param].device)) for ref in group]
                diag, backward = hutchinson_diagonal(losses, targets, probes, ctx.generator)
            cost += Cost(backward=backward)
            estimates.update(zip(group, diag, strict=True))
    return ScoreSet("hessian", ctx.refs, cost, ctx.model, lambda ref: estimates[ref], signed=True,
                    details={"probes": probes, "blocks": len(groups)})
