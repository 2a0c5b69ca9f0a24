"""One measured fault trial and what a campaign of them reports: collapse and its Wilson interval.

A trial applies a perturbation (any context manager from ``harness.faults``), evaluates the model on
the given windows against the clean model on the same windows, and restores the model on the way
out, also when the evaluation raises. The suites (bitflip, robustness, ablation) and the benchmarks
share this, so the benchmark times exactly what a suite trial does.

Collapse: the output went non-finite, or perplexity grew by at least ``COLLAPSE_RATIO``.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from harness.metrics import EvalResult, Reference, evaluate, make_reference
from harness.stats import Z95, wilson  # noqa: F401  (re-exported: the campaign statistics)

COLLAPSE_RATIO = 10.0  # a trial whose perplexity ratio reaches this counts as a collapse


@dataclass(frozen=True)
class Clean:
    """The unperturbed model on a set of windows: what trials are compared with."""

    result: EvalResult
    reference: Reference


@dataclass(frozen=True)
class Trial:
    """One perturbed evaluation.

    Attributes:
        result: the perturbed model's evaluation (KL / top-1 against the clean reference).
        ratio: perplexity / clean perplexity (inf when the output went non-finite).
        collapsed: non-finite output or ``ratio >= COLLAPSE_RATIO``.
    """

    result: EvalResult
    ratio: float
    collapsed: bool


def clean_baseline(model: torch.nn.Module, windows: torch.Tensor) -> Clean:
    """Evaluate the unperturbed model on ``windows`` and keep the KL reference.

    Cost: two forward passes over ``windows``.
    """
    reference = make_reference(model, windows)
    return Clean(evaluate(model, windows, reference), reference)


def is_collapse(result: EvalResult, ratio: float) -> bool:
    return result.collapsed or not math.isfinite(ratio) or ratio >= COLLAPSE_RATIO


def run_trial(model: torch.nn.Module, windows: torch.Tensor, clean: Clean,
              perturbation: AbstractContextManager) -> Trial:
    """Apply ``perturbation``, evaluate ``model`` on ``windows``, restore (in ``finally``).

    Args:
        model: the model ``perturbation`` edits in place.
        windows: (count, length) token windows, the ones ``clean`` was measured on.
        clean: :func:`clean_baseline` of the same model on the same windows.
        perturbation: a perturbation from ``harness.faults`` (not yet applied).

    Returns:
        The :class:`Trial`; a non-finite output is a measured collapse, never an error.
    """
    with perturbation:
        result = evaluate(model, windows, clean.reference)
    ratio = result.ratio_to(clean.result)
    return Trial(result, ratio, is_collapse(result, ratio))
