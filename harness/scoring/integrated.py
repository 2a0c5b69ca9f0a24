"""``integrated``: integrated gradients over the weights, along the straight path from 0 to W.

IG(w) = w · ∫₀¹ ∂L/∂w(αW) dα, approximated by the midpoint rule with ``steps`` points
α = (s + ½)/steps. Completeness: the attributions of the selected weights sum to about
L(W) − L(W with the selected weights zeroed). The path is walked in place: the selected rows are
saved once (per block), overwritten by α·W for each step, and written back bit-exactly in ``finally``;
the model is never copied.
"""

from __future__ import annotations

import torch

from harness.errors import HarnessError
from harness.models.archmap import ComponentRef
from harness.scoring.base import Context, Cost, ScoreSet, ref_rows, scorer
from harness.scoring.grads import GradSums, batch_nll, grad_on, predicted_tokens, unique_params
from harness.scoring.hessian import MAX_BLOCK, blocks

STEPS = 8


@scorer("integrated", needs_windows=True, signed=True)
def integrated(ctx: Context, *, steps: int = STEPS, max_block: int = MAX_BLOCK) -> ScoreSet:
    """Integrated gradients of the mean calibration NLL from W = 0 to W (signed; ranked by |·|).

    Options:
        steps: points on the path (midpoint rule; default 8).
        max_block: weights walked along the path together (default 2**28); each block also keeps a
            saved copy of its selected rows.

    Cost: per block, ``steps`` × (one forward and one backward pass over the calibration windows).
    """
    if steps < 1:
        raise HarnessError(f"integrated needs steps >= 1, got {steps}")
    if max_block < 1:
        raise HarnessError(f"integrated needs max_block >= 1, got {max_block}")
    denominator = predicted_tokens(ctx.windows)
    attributions: dict[ComponentRef, torch.Tensor] = {}
    cost = Cost()
    groups = blocks(ctx.model, ctx.refs, max_block)
    for group in groups:
        params = unique_params(ctx.model, group)
        # (param, rows) of the block, each once: fused q/k/v refs of one matrix may overlap
        parts = {(ref.param, ref.rows): (params[ref.param], ref_rows(ref, params[ref.param].device)) for ref in group}
        saved = {key: (p.detach().clone() if rows is None else p.detach()[rows].clone())
                 for key, (p, rows) in parts.items()}
        try:
            with grad_on(ctx.model, list(params.values())), GradSums(ctx.model, group) as sums:
                for s in range(steps):
                    alpha = (s + 0.5) / steps
                    _write(parts, saved, alpha)
                    for batch in ctx.batches():
                        batch_nll(ctx.model, batch, denominator).backward()
                        cost += Cost(forward=1, backward=1, tokens=batch.numel())
        finally:
            _write(parts, saved, None)
        for ref in group:
            w = saved[(ref.param, ref.rows)].float()
            attributions[ref] = w * sums.sums[ref] / steps
    return ScoreSet("integrated", ctx.refs, cost, ctx.model, lambda ref: attributions[ref], signed=True,
                    details={"steps": steps, "blocks": len(groups)})


@torch.no_grad()
def _write(parts: dict, saved: dict, alpha: float | None) -> None:
    """Set each part to ``alpha`` × its saved value, or back to the saved bits when ``alpha`` is None."""
    for key, (p, rows) in parts.items():
        if rows is None:
            p.copy_(saved[key])
            if alpha is not None:
                p.mul_(alpha)  # one rounding of saved * alpha, no temporary
        else:
            p.index_copy_(0, rows, saved[key] if alpha is None else saved[key] * alpha)
