"""First-order scorers from calibration gradients: ``gradient``, ``taylor`` and ``fisher``.

All three differentiate the mean next-token NLL of the calibration windows (see
:mod:`harness.scoring.grads`) with respect to the selected weights only, summing into one fp32 buffer
the size of the selected rows.
"""

from __future__ import annotations

from harness.scoring.base import Context, ScoreSet, ref_weight, scorer
from harness.scoring.grads import gradient_sums


@scorer("gradient", needs_windows=True)
def gradient(ctx: Context) -> ScoreSet:
    """|∂L/∂w|: magnitude of the gradient of the mean calibration NLL.

    Cost: one forward and one backward pass over the calibration windows.
    """
    sums, cost = gradient_sums(ctx.model, ctx.refs, ctx.windows, ctx.batch_size)
    return ScoreSet("gradient", ctx.refs, cost, ctx.model, lambda ref: sums[ref].abs())


@scorer("taylor", needs_windows=True)
def taylor(ctx: Context) -> ScoreSet:
    """|w · ∂L/∂w|: first-order Taylor estimate of the loss change when w is zeroed (gradient × weight).

    Cost: one forward and one backward pass over the calibration windows.
    """
    sums, cost = gradient_sums(ctx.model, ctx.refs, ctx.windows, ctx.batch_size)
    return ScoreSet("taylor", ctx.refs, cost, ctx.model,
                    lambda ref: (sums[ref] * ref_weight(ctx.model, ref).float()).abs())


@scorer("fisher", needs_windows=True)
def fisher(ctx: Context) -> ScoreSet:
    """Empirical Fisher diagonal: mean over calibration windows of the squared per-window gradient.

    Each window is one sample: its gradient is that of its own mean NLL.

    Cost: one forward and one backward pass per window (one pass over the calibration windows, with
    batch size 1).
    """
    count = ctx.windows.shape[0]
    sums, cost = gradient_sums(ctx.model, ctx.refs, ctx.windows, 1, transform=lambda g: g * g, per_window=True)
    return ScoreSet("fisher", ctx.refs, cost, ctx.model, lambda ref: sums[ref] / count)
