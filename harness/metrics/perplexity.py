"""Token perplexity, KL divergence from the clean model and top-1 agreement, from one forward pass.

Convention (document it wherever a number is reported): the evaluation text is one token stream
(documents joined by a blank line, no special tokens) cut into ``count`` non-overlapping windows of
``length`` tokens (:func:`harness.data.corpus.token_windows`), each scored on its own with no context
from the previous window, **in the model's own convention**: where the tokenizer adds a BOS token
(Gemma, Llama-2, OPT), the window's first position holds that BOS instead of its first stream token,
so the model sees ``[BOS] + (length-1)`` tokens, as HF and lm-eval feed it; where it adds none
(SmolLM2, GPT-NeoX, the tiny models) the window is ``length`` stream tokens. Every position but the
first is predicted, so both conventions predict the *same* stream tokens, ``count * (length-1)`` of
them, and ``bos`` in the records (:func:`harness.data.corpus.window_metadata`) says which one was used.
Perplexity is ``exp(sum of NLL / number of predicted tokens)`` over all windows, which for
equal-length windows equals the mean of transformers' ``labels=input_ids`` loss, exponentiated.

KL is ``KL(clean || perturbed)`` of the next-token distributions, averaged over the predicted
positions; top-1 agreement is the share of those positions whose argmax token equals the clean
model's. Non-finite logits (a flipped exponent bit makes them) are a *collapse*: perplexity and KL
are ``inf`` and ``collapsed`` is True; nothing raises.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from harness.metrics.reduce import EvalResult, Reference, combine, reduce_batch
from harness.models.device import input_device

log = logging.getLogger(__name__)

# The clean log-probabilities and probabilities kept for KL are capped at this many bytes together;
# beyond it, positions are subsampled with a fixed stride (stated in Reference.stride).
REFERENCE_BYTES = 512 * 2**20


def _batches(windows: torch.Tensor, batch_size: int):
    for start in range(0, windows.shape[0], batch_size):
        yield start, windows[start:start + batch_size]


def _device_of(model: torch.nn.Module) -> torch.device:
    return input_device(model)


def default_batch_size(windows: torch.Tensor, tokens_per_batch: int = 2048) -> int:
    """Windows per forward pass so a batch holds about ``tokens_per_batch`` tokens."""
    return max(1, tokens_per_batch // windows.shape[1])


@torch.no_grad()
def _logprobs(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch.to(_device_of(model)), use_cache=False).logits  # (B, T, V)
    return F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V) predicts tokens 1..T-1


@torch.no_grad()
def make_reference(model: torch.nn.Module, windows: torch.Tensor, batch_size: int | None = None) -> Reference:
    """Run the clean model once and keep what KL and top-1 agreement need.

    Cost: one forward pass over ``windows``.
    """
    batch_size = batch_size or default_batch_size(windows)
    count, length = windows.shape
    vocab = model.get_output_embeddings().weight.shape[0]
    per_position = 2 * 4 * vocab  # float32 log-probabilities and probabilities
    stride = max(1, math.ceil(count * (length - 1) * per_position / REFERENCE_BYTES))
    if stride > 1:
        log.info("KL reference subsamples every %d-th position to stay under %d MiB", stride, REFERENCE_BYTES >> 20)
    logprobs, top1 = [], []
    for _, batch in _batches(windows, batch_size):
        lp = _logprobs(model, batch)
        logprobs.append(lp[:, ::stride].cpu() if lp.device.type != "cpu" else lp[:, ::stride].clone())
        top1.append(lp.argmax(-1).cpu())
    ref = torch.cat(logprobs)
    return Reference(ref, ref.exp(), torch.cat(top1), stride)


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: torch.Tensor, reference: Reference | None = None,
             batch_size: int | None = None,
             look: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> EvalResult:
    """Perplexity of ``model`` on ``windows`` (and KL / top-1 against ``reference``).

    Args:
        model: a causal LM returning ``.logits``.
        windows: LongTensor (count, length) from :func:`harness.data.corpus.token_windows` (BOS, if any,
            already in place: positions 1..length-1 of each window are predicted).
        reference: the clean model's :class:`Reference` on the same windows, for KL and top-1.
        batch_size: windows per forward pass (default: about 2048 tokens per batch).
        look: called with each batch's logits (B, T, V) and windows (B, T) before they are dropped (the
            model-health measures, ``harness.health``: one pass, nothing kept).

    Returns:
        EvalResult; on non-finite logits ``perplexity = kl = inf`` and ``collapsed = True``.

    Cost: one forward pass over ``windows``; the reduction is :func:`harness.metrics.reduce.reduce_batch`
    and :func:`~harness.metrics.reduce.combine`, the campaign engine's.
    """
    batch_size = batch_size or default_batch_size(windows)
    device = _device_of(model)
    stats = []
    for start, batch in _batches(windows, batch_size):
        logits = model(input_ids=batch.to(device), use_cache=False).logits  # (B, T, V)
        stats.append(reduce_batch(logits, batch, reference, start))
        if look is not None:
            look(logits, batch)
        del logits
    return combine(stats, windows.shape[0] * (windows.shape[1] - 1), reference)


def next_token_nll(logits: torch.Tensor, windows: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Next-token NLL of ``windows`` (B, T) under ``logits`` (B, T, V), in float32 and differentiable: the
    loss of the gradient scorers and of the bit-flip attacks (the same tokens :func:`evaluate` predicts).

    Args:
        reduction: ``mean`` over the B * (T - 1) predicted tokens, or ``sum``.

    Raises:
        ValueError: another ``reduction``.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    # targets shifted left, the last position ignored: no copy of the logits (as transformers does)
    targets = F.pad(windows[:, 1:], (0, 1), value=-100).reshape(-1).to(logits.device)  # (B*T,)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets, ignore_index=-100,
                           reduction=reduction)
