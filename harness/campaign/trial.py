"""One measured fault trial and its clean baseline: the per-trial path every engine result is checked against.

A trial applies a perturbation (any context manager from ``harness.faults``), evaluates the model on the
given windows against the clean model on the same windows, and restores the model on the way out, also
when the evaluation raises.

Collapse: :func:`harness.metrics.is_collapse` (the output went non-finite, or perplexity grew by at least
``COLLAPSE_RATIO``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from harness.metrics import EvalResult, Reference, evaluate, make_reference
from harness.metrics.reduce import is_collapse


@dataclass(frozen=True)
class Clean:
    """The unperturbed model on a set of windows: what trials are compared with.

    Attributes:
        result: the clean evaluation.
        reference: the clean log-probabilities for KL / top-1.
        prefix: the kept block outputs and per-batch clean results (:class:`harness.campaign.prefix.Prefix`),
            present when built with ``keep_blocks=True``; the engine reuses them.
        batch_size: windows per forward pass of the clean run (None: ``evaluate``'s default); trials use
            the same batches, so that their sums add in the same order.
    """

    result: EvalResult
    reference: Reference
    prefix: Any = None
    batch_size: int | None = None


@dataclass(frozen=True)
class Trial:
    """One perturbed evaluation.

    Attributes:
        result: the perturbed model's evaluation (KL / top-1 against the clean reference; ``top1`` is None
            when the trial stopped early at a non-finite block output).
        ratio: perplexity / clean perplexity (inf when the output went non-finite).
        collapsed: non-finite output or ``ratio >= COLLAPSE_RATIO``.
        stopped_at: the block whose output went non-finite when the trial stopped there, else None.
        masked: the faulted blocks' output was bit-identical to the clean one, so the result is the clean
            result (in every window batch).
        start_block: the first block the trial ran (0: the whole model).
    """

    result: EvalResult
    ratio: float
    collapsed: bool
    stopped_at: int | None = None
    masked: bool = False
    start_block: int = 0

    @classmethod
    def against(cls, result: EvalResult, clean: EvalResult, **kwargs: Any) -> Trial:
        """The trial of ``result`` against the clean evaluation: its ratio and the collapse rule
        (:func:`harness.metrics.is_collapse`); ``kwargs``: the other fields."""
        ratio = result.ratio_to(clean)
        return cls(result, ratio, result.collapsed or is_collapse(ratio), **kwargs)


def clean_baseline(model: torch.nn.Module, windows: torch.Tensor, *, keep_blocks: bool = False,
                   batch_size: int | None = None) -> Clean:
    """Evaluate the unperturbed model on ``windows`` and keep the KL reference.

    Args:
        model: the clean model.
        windows: (count, length) token windows.
        keep_blocks: also keep every decoder block's output per window batch (``n_layers * tokens * d``
            values) and the per-batch clean results, so that :class:`harness.campaign.Campaign` can start a
            trial at its first faulted block and stop masked trials early. Needs an architecture-mapped model.
        batch_size: windows per forward pass (default: ``evaluate``'s); trials use the same batches.

    Cost: two forward passes over ``windows``.
    """
    reference = make_reference(model, windows)
    if keep_blocks:
        from harness.campaign.prefix import capture

        prefix = capture(model, windows, reference, batch_size)
        return Clean(prefix.result, reference, prefix, batch_size)
    return Clean(evaluate(model, windows, reference, batch_size), reference, batch_size=batch_size)


def run_trial(model: torch.nn.Module, windows: torch.Tensor, clean: Clean,
              perturbation: AbstractContextManager) -> Trial:
    """Apply ``perturbation``, evaluate ``model`` on ``windows`` (full forward), restore (in ``finally``).

    Args:
        model: the model ``perturbation`` edits in place.
        windows: (count, length) token windows, the ones ``clean`` was measured on.
        clean: :func:`clean_baseline` of the same model on the same windows.
        perturbation: a perturbation from ``harness.faults`` (not yet applied).

    Returns:
        The :class:`Trial`; a non-finite output is a measured collapse, never an error.
    """
    with perturbation:
        result = evaluate(model, windows, clean.reference, clean.batch_size)
    return Trial.against(result, clean.result)
