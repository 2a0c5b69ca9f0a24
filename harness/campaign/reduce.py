"""The evaluation reduction (perplexity, KL, top-1) over the vocabulary, chunked, with the values of
:func:`harness.metrics.evaluate` bit for bit.

``evaluate`` takes a log-softmax of the whole batch's logits (through a non-contiguous ``[:, :-1]`` view)
and then walks that (B, T-1, V) tensor six more times (target gather, ``aminmax``, ``argmax``, KL's
subtract, multiply and sum). Here each window's predicted positions are processed in chunks of at most
``CHUNK_BYTES`` of log-probabilities: the log-softmax of a contiguous row block is written into one buffer
and the gather, the finiteness check, the argmax and KL's elementwise part run on that chunk; only KL's
final sum walks the whole buffer, as one reduction over the same tensor geometry as ``evaluate``'s, so
every sum adds the same numbers in the same order and the results are identical (tests/test_campaign.py
checks equality with ``evaluate``).

Chunk size, measured on a 2-core CPU (smollm2's 49,152-token vocabulary, 4 x 255 positions): cache-sized
chunks (4 MiB) made the reduction 4x *slower* (each small op pays the thread-pool start-up), whole windows
(the default) 0.76-0.84x of ``evaluate``'s reduction.

:class:`BatchStats` is one window batch's contribution; :func:`combine` adds them up in batch order
exactly as ``evaluate`` does, so a batch whose logits are known to be the clean ones (a masked trial)
can contribute its stored clean stats instead of being recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from harness.metrics import EvalResult, Reference
from harness.metrics.perplexity import finish

CHUNK_BYTES = 256 * 2**20  # log-probabilities per chunk (float32): whole windows of a 49k vocabulary


@dataclass(frozen=True)
class BatchStats:
    """One window batch's contribution to an evaluation (the terms ``evaluate`` accumulates)."""

    nll: float  # sum of the batch's NLL (inf/NaN when non-finite)
    finite: bool
    agree: int = 0  # positions whose argmax equals the clean one
    kl_term: float = 0.0  # sum of p_ref * (lp - ref) over the KL positions (finite batches only)
    kl_n: int = 0  # KL positions


def _chunk_rows(vocab: int, stride: int) -> int:
    rows = max(1, CHUNK_BYTES // (4 * vocab))
    return max(stride, rows // stride * stride)  # a multiple of the KL stride: chunks start on KL positions


@torch.no_grad()
def reduce_batch(logits: torch.Tensor, batch: torch.Tensor, reference: Reference | None = None,
                 start: int = 0, *, kl: bool = True) -> BatchStats:
    """The contribution of one window batch, equal to what ``evaluate`` adds for it.

    Args:
        logits: (B, T, V) the model's logits on ``batch``.
        batch: (B, T) the token windows (positions 1..T-1 are predicted).
        reference: the clean reference (top-1 and, with ``kl``, KL); None for perplexity only.
        start: index of ``batch``'s first window among the reference's windows.
        kl: compute KL (when False, ``kl_term`` is 0 and ``kl_n`` 0).

    Returns:
        The batch's :class:`BatchStats`.
    """
    n_win, length, vocab = logits.shape
    reference = reference.on(logits.device) if reference is not None else None
    stride = reference.stride if reference is not None else 1
    rows = _chunk_rows(vocab, stride)
    lp = torch.empty((n_win, length - 1, vocab), dtype=torch.float32, device=logits.device)  # (B, T-1, V)
    picked = torch.empty((n_win, length - 1, 1), dtype=torch.float32, device=logits.device)  # target log-probs
    targets = batch[:, 1:].to(logits.device)
    finite = True
    agree = 0
    with_kl = kl and reference is not None
    for b in range(n_win):
        ref_top1 = reference.top1[start + b].to(logits.device) if reference is not None else None
        for s in range(0, length - 1, rows):
            e = min(s + rows, length - 1)
            chunk = lp[b, s:e]  # (rows, V), a view of the buffer
            torch._log_softmax(logits[b, s:e].float(), -1, False, out=chunk)
            torch.gather(chunk, -1, targets[b, s:e, None], out=picked[b, s:e])
            chunk_finite = all(map(math.isfinite, map(float, torch.aminmax(chunk))))
            finite &= chunk_finite
            if ref_top1 is not None:
                top1 = chunk.argmax(-1) if chunk_finite else torch.nan_to_num(chunk, nan=-math.inf).argmax(-1)
                agree += int((top1 == ref_top1[s:e]).sum())
            if with_kl and finite:  # lp of this chunk is not needed any more: p * (lp - ref), in place
                r0 = start + b
                sub = chunk[::stride]
                k0 = s // stride
                ref = reference.logprobs[r0, k0:k0 + sub.shape[0]].to(logits.device)
                p = reference.probs[r0, k0:k0 + sub.shape[0]].to(logits.device)
                sub.sub_(ref).mul_(p)
    nll = -picked.sum().item()
    finite = finite and math.isfinite(nll)
    if not (with_kl and finite):
        return BatchStats(nll, finite, agree)
    sub = lp[:, ::stride]
    return BatchStats(nll, True, agree, float(sub.sum()), sub.shape[0] * sub.shape[1])


def combine(stats: Sequence[BatchStats], n_tokens: int, reference: Reference | None, *, kl: bool = True) -> EvalResult:
    """Add per-batch stats up in order into the :class:`EvalResult` ``evaluate`` returns for them.

    Args:
        stats: every window batch's stats, in batch order.
        n_tokens: predicted tokens of all windows (``count * (length - 1)``).
        reference: the reference the stats were computed with (None: no KL / top-1).
        kl: whether KL was computed (when False the result's ``kl`` is None).
    """
    nll_sum, kl_sum, kl_n, agree, collapsed = 0.0, 0.0, 0, 0, False
    for st in stats:
        collapsed |= not st.finite
        nll_sum += st.nll
        agree += st.agree
        if st.finite:
            kl_sum -= st.kl_term
            kl_n += st.kl_n
    with_ref = reference is not None
    top1 = agree / n_tokens if with_ref else None
    return finish(nll_sum, n_tokens, collapsed=collapsed, kl=(kl_sum, kl_n) if with_ref and kl else None, top1=top1)
