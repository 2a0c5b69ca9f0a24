"""Selective pruning: the research framework's knobs as one library call.

``selective_prune(lm, method="gradient", component="value", layers="3,4", percentile=80,
threshold=0.3, prune_method="zero", windows=calib)`` scores the chosen layers and components with a
registered scorer and returns a :class:`~harness.pruning.prune.Pruning`: enter it (``with ... as
report:``) to prune and restore, or ``commit()`` it to keep the edit.

Meaning of the knobs (lower score = less important):

- ``percentile`` p in [0, 100]: prune the weights below the p-th percentile of scores of each group
  (the granularity's: a matrix by default), so p% of each matrix. 100 prunes the whole selection.
- ``threshold`` t in [0, 1]: prune the weights whose score divided by the matrix's largest score is
  below t. With both, a weight is pruned when both hold (the percentile caps the share; the
  threshold keeps every weight that matters in absolute terms).
- ``target="most"`` reverses the order: the research framework's tool removed the *most* sensitive
  weights (its top-percentile selection); the default, ``least``, is pruning proper.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.errors import HarnessError
from harness.option_values import bounded_float
from harness.pruning.masks import check_fraction, parse_granularity
from harness.pruning.methods import PRUNE_METHODS
from harness.pruning.prune import Pruning


class _Selected:
    """The selected matrices of a larger ``ScoreSet`` (same method, scores computed by it)."""

    def __init__(self, scores: Any, model: Any, layers: Any, component: Any) -> None:
        from harness.models.archmap import select

        self.refs = select(model, layers, component)
        have = set(scores.refs)
        missing = [ref.param for ref in self.refs if ref not in have]
        if missing:
            raise HarnessError(f"the given scores do not cover {missing[0]} (and {len(missing) - 1} more); "
                               "score these components or pass scores=None")
        self.method = scores.method
        self.signed = getattr(scores, "signed", False)
        self._scores = scores

    def __iter__(self):
        for ref in self.refs:
            yield ref, self._scores.scores(ref)

    def __len__(self) -> int:
        return len(self.refs)


def check_percentile(percentile: float) -> float:
    """``percentile`` as a float in [0, 100].

    Raises:
        HarnessError: outside [0, 100] or not a number.
    """
    return bounded_float(percentile, "percentile", 0, 100)


def selective_prune(
    model: Any,
    *,
    method: str = "magnitude",
    component: Any = "linear",
    layers: Any = None,
    percentile: float | None = None,
    threshold: float | None = None,
    prune_method: str = "zero",
    granularity: str = "matrix",
    target: str = "least",
    windows: torch.Tensor | None = None,
    protect: Any = None,
    generator: torch.Generator | None = None,
    scores: Any = None,
    **scorer_kw: Any,
) -> Pruning:
    """Prune chosen layers and components by a scorer's ranking.

    Args:
        model: a ``LoadedModel`` or a transformers model.
        method: a scorer of ``harness.scoring.SCORERS`` (``magnitude``, ``wanda``, ``gradient``, ``taylor``...).
        component: canonical component(s) or group (``value``, ``mlp``, ``attention``, ``linear``...).
        layers: ``None``/``"all"``, ``"3,4"``, ``"0-5"``, ``[3, 4]`` or block paths (``model.layers.3``).
        percentile: prune scores below this percentile of each group, in [0, 100].
        threshold: prune scores below this share of the matrix's largest score, in [0, 1].
        prune_method: ``zero``, ``mean`` or ``noise``.
        granularity: group of the percentile (``matrix``, ``row``, ``global``, ``head``, ``neuron``).
        target: ``least`` (prune the unimportant) or ``most`` (remove the most important).
        windows: calibration windows for scorers that need them (default: the scorer's default text).
        protect: sites never pruned (e.g. super weights).
        generator: seeds the scorer and the noise method.
        scores: a precomputed ``ScoreSet`` covering the selection (e.g. every linear matrix, reused
            across selections); only the selected layers and components are pruned.

    Returns:
        A :class:`Pruning` (context manager, or ``commit()``); its report says what was pruned.

    Raises:
        HarnessError: percentile outside [0, 100], threshold outside [0, 1], neither given, an unknown
            scorer, prune method, layer or component.
    """
    if percentile is None and threshold is None:
        raise HarnessError("selective pruning needs a percentile in [0, 100] and/or a threshold in [0, 1]")
    fraction = None if percentile is None else check_percentile(percentile) / 100
    PRUNE_METHODS.get(prune_method)  # fail before scoring, which may take a while
    parse_granularity(granularity)
    if threshold is not None:
        check_fraction(threshold, "threshold", allow_one=True)
    if scores is not None:
        scores = _Selected(scores, model, layers, component)
    else:
        from harness.scoring import score

        scores = score(model, method, layers=layers, components=component, windows=windows,
                                generator=generator, **scorer_kw)
    return Pruning(model, scores, sparsity=fraction, granularity=granularity, method=prune_method,
                   threshold=threshold, protect=protect, generator=generator, target=target, allow_full=True)
