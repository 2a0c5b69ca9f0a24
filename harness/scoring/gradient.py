"""First-order scorers from calibration gradients: ``gradient``, ``taylor`` and ``fisher``.

All three differentiate the mean next-token NLL of the calibration windows (see
:mod:`harness.scoring.grads`) with respect to the selected weights only, summing into one fp32 buffer
the size of the selected rows.

Memory beyond the model (P selected weights, T tokens per batch, L blocks of width d, vocabulary V):
``gradient``, ``taylor``: P (fp32 sums) + one matrix's gradient + checkpointed activations of T = 1024
tokens (L·T·d block inputs, one block's activations, a few T·V logits copies); the scores are computed
from the sums one matrix at a time. ``fisher``: the same with T = one window (each is its own backward).
Measured (peak RSS, smollm2-135m, one thread; the process with the model loaded holds 0.47 GB):
``gradient`` over 8 x 256 calibration tokens 3.32 GB before checkpointing, 2.43 GB after (same bits).
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
