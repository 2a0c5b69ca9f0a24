"""``integrated``: integrated gradients over the weights, along the straight path from 0 to W.

IG(w) = w · ∫₀¹ ∂L/∂w(αW) dα, approximated by the midpoint rule with ``steps`` points
α = (s + ½)/steps. Completeness: the attributions of the selected weights sum to about
L(W) − L(W with the selected weights zeroed). The path is walked in place, one step at a time, by a
``scale`` ablation (``harness.faults.Ablation``): it saves the selected rows, writes α·W, and puts
the saved bits back when the step ends, also on error; the model is never copied.

Memory beyond the model (P selected weights, T tokens per batch, L blocks of width d, vocabulary V):
2P (the fp32 gradient sums and the ablation's saved copy of the selected rows) + checkpointed activations
of one batch (L·T·d block inputs, one block's activations, a few T·V logits copies); at the end the
attributions (P) replace the sums. Measured (peak RSS, smollm2-135m, 2 x 256 tokens, steps 2, one thread;
0.47 GB with the model loaded): 2.85 GB before checkpointing, 2.35 GB after (same bits).
"""

from __future__ import annotations

import torch

from harness.faults.ablation import Ablation
from harness.models.archmap import ComponentRef
from harness.scoring.base import Context, Cost, ScoreSet, ref_weight, scorer
from harness.scoring.grads import (
    GradSums,
    at_least_one,
    batch_nll,
    checkpointed,
    grad_on,
    predicted_tokens,
    unique_params,
)
from harness.scoring.hessian import MAX_BLOCK, blocks

STEPS = 8


@scorer("integrated", needs_windows=True, signed=True)
def integrated(ctx: Context, *, steps: int = STEPS, max_block: int = MAX_BLOCK) -> ScoreSet:
    """Integrated gradients of the mean calibration NLL from W = 0 to W (signed; ranked by |·|).

    Options:
        steps: points on the path (midpoint rule; default 8).
        max_block: weights walked along the path together (default 2**28); each step also keeps a
            saved copy of the block's selected rows.

    Cost: per block, ``steps`` × (one forward and one backward pass over the calibration windows).
    """
    at_least_one("integrated", steps=steps, max_block=max_block)
    denominator = predicted_tokens(ctx.windows)
    attributions: dict[ComponentRef, torch.Tensor] = {}
    cost = Cost()
    groups = blocks(ctx.model, ctx.refs, max_block)
    for group in groups:
        params = unique_params(ctx.model, group)
        # each (param, rows) once: fused q/k/v refs of one matrix may overlap
        parts = list({(ref.param, ref.rows): ref for ref in group}.values())
        with grad_on(ctx.model, list(params.values())), checkpointed(ctx.model), GradSums(ctx.model, group) as sums:
            for s in range(steps):
                with Ablation(ctx.model, parts, "scale", factor=(s + 0.5) / steps):
                    for batch in ctx.batches():
                        batch_nll(ctx.model, batch, denominator).backward()
                        cost += Cost(forward=1, backward=1, tokens=batch.numel())
        for ref in group:
            attributions[ref] = ref_weight(ctx.model, ref).float() * sums.sums[ref] / steps
    return ScoreSet("integrated", ctx.refs, cost, ctx.model, lambda ref: attributions[ref], signed=True,
                    details={"steps": steps, "blocks": len(groups)})

