"""``wanda``: |W_ij| · ‖X_j‖₂ (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs").

‖X_j‖₂ is the L2 norm of input feature j of the linear layer over every calibration token, gathered
by forward pre-hooks as a running sum of squares (one vector per module).

Memory beyond the model: one fp32 vector per module (its input width) and a no-grad forward of one batch
(T tokens: its T·V logits); the scores are computed one matrix at a time.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import HarnessError
from harness.scoring.base import Context, Cost, ScoreSet, ref_weight, scorer


@scorer("wanda", needs_windows=True)
def wanda(ctx: Context) -> ScoreSet:
    """|W_ij| · ‖X_j‖₂ over the calibration tokens (linear components only).

    Cost: one forward pass over the calibration windows (no backward).
    """
    model = ctx.model
    modules = {ref.module: model.get_submodule(ref.module) for ref in ctx.refs}
    for ref in ctx.refs:
        if model.get_parameter(ref.param).dim() != 2:
            raise HarnessError(f"wanda scores weight matrices of linear layers; {ref.component} "
                               f"({ref.param}) is not one: use components='linear' or a subset of it")
    sumsq = {name: torch.zeros(m.weight.shape[1], dtype=torch.float32, device=m.weight.device)
             for name, m in modules.items()}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach()  # (..., in_features)
            sumsq[name].add_(x.reshape(-1, x.shape[-1]).float().pow(2).sum(0))

        return hook

    handles = [m.register_forward_pre_hook(hook_for(name)) for name, m in modules.items()]
    cost = Cost()
    try:
        with torch.no_grad():
            for batch in ctx.batches():
                model(input_ids=batch, use_cache=False)
                cost += Cost(forward=1, tokens=batch.numel())
    finally:
        for handle in handles:
            handle.remove()
    norms = {name: s.sqrt() for name, s in sumsq.items()}
    return ScoreSet("wanda", ctx.refs, cost, model,
                    lambda ref: ref_weight(model, ref).float().abs() * norms[ref.module][None, :])
