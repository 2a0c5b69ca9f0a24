"""What one evaluation adds up, and how the sums become numbers: the one reduction behind
:func:`harness.metrics.evaluate` and the campaign engine (``harness.campaign``).

:class:`Reference` is the clean model's next-token distribution, :class:`EvalResult` what an evaluation
measured, :func:`is_collapse` the one collapse rule.

Each window's predicted positions are processed in chunks of at most ``CHUNK_BYTES`` of log-probabilities:
the log-softmax of a contiguous row block is written into one (B, T-1, V) buffer and the target gather, the
finiteness check, the argmax and KL's elementwise part run on that chunk; the NLL and KL sums then walk the
whole buffer as one reduction each, so the values do not depend on the chunk size (tests/test_campaign.py
checks them, bit for bit, against a whole-batch log-softmax).

Chunk size, measured on a 2-core CPU (smollm2's 49,152-token vocabulary, 4 x 255 positions): cache-sized
chunks (4 MiB) made the reduction 4x *slower* (each small op pays the thread-pool start-up), whole windows
(the default) 0.76-0.84x of a whole-batch log-softmax.

:class:`BatchStats` is one window batch's contribution; :func:`combine` adds them up in batch order, so a
batch whose logits are known to be the clean ones (a masked trial) can contribute its stored clean stats
instead of being recomputed; :func:`finish` turns the sums into an :class:`EvalResult`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

COLLAPSE_RATIO = 10.0  # a perplexity ratio (perturbed / clean) of at least this is a collapse


def is_collapse(ratio: float, threshold: float = COLLAPSE_RATIO) -> bool:
    """The collapse rule: a perplexity ratio (perturbed / clean) that is not finite (the output went
    non-finite) or is at least ``threshold``."""
    return not math.isfinite(ratio) or ratio >= threshold


@dataclass
class Reference:
    """The clean model's next-token log-probabilities on the evaluation windows.

    Attributes:
        logprobs: (count, P, V) float32 clean log-probabilities at positions ``0, s, 2s, ...`` of
            each window's predicted positions (P = ceil((length-1)/s)).
        probs: ``logprobs.exp()``, kept so that each evaluation does not recompute it.
        top1: (count, length-1) clean argmax tokens at every predicted position.
        stride: s, the position stride used for KL.
    """

    logprobs: torch.Tensor
    probs: torch.Tensor
    top1: torch.Tensor
    stride: int
    _copies: dict = field(default_factory=dict, repr=False, compare=False)

    def on(self, device: torch.device) -> Reference:
        """This reference with its tensors on ``device``: itself where they already are, else a copy made
        once per device and kept (a GPU evaluation would otherwise copy up to ``REFERENCE_BYTES`` from the
        host for every trial)."""
        device = torch.device(device)
        if self.logprobs.device == device:
            return self
        if device not in self._copies:
            self._copies[device] = Reference(self.logprobs.to(device), self.probs.to(device),
                                             self.top1.to(device), self.stride)
        return self._copies[device]


@dataclass(frozen=True)
class EvalResult:
    """What one evaluation measured. ``kl`` and ``top1`` are None without a reference."""

    perplexity: float
    nll: float
    n_tokens: int
    collapsed: bool
    kl: float | None = None
    top1: float | None = None

    def ratio_to(self, clean: EvalResult) -> float:
        """Perplexity relative to ``clean`` (inf on collapse)."""
        return self.perplexity / clean.perplexity if math.isfinite(self.perplexity) else math.inf


CHUNK_BYTES = 256 * 2**20  # log-probabilities per chunk (float32): whole windows of a 49k vocabulary


@dataclass(frozen=True)
class BatchStats:
    """One window batch's contribution to an evaluation."""

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
    """The contribution of one window batch.

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
    """Add per-batch stats up in order into an :class:`EvalResult`.

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


def finish(nll_sum: float, n_tokens: int, *, collapsed: bool, kl: tuple[float, int] | None,
           top1: float | None) -> EvalResult:
    """The :class:`EvalResult` of summed token NLLs (and KL terms, when measured): the one place that
    turns sums into perplexity.

    Args:
        kl: (summed KL terms, their count), or None when KL is not measured.
    """
    if collapsed:
        return EvalResult(math.inf, math.inf, n_tokens, True, math.inf if kl is not None else None, top1)
    nll_mean = nll_sum / n_tokens
    return EvalResult(
        perplexity=math.exp(nll_mean) if nll_mean < 700 else math.inf,
        nll=nll_mean,
        n_tokens=n_tokens,
        collapsed=False,
        kl=max(kl[0] / kl[1], 0.0) if kl is not None else None,
        top1=top1,
    )
