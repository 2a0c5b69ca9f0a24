"""Before versus after fine-tuning, on the same windows: what the finetune suite measures.

:func:`measure` takes one model (base or fine-tuned) and the evaluation windows and returns
:class:`Measures`: held-out perplexity; the detected super weights (``harness.scoring.superweights``;
where none reaches the detector's factor, e.g. a random-weight tiny model, the strongest candidate
stands in so the same code runs, ``sw_source`` says which) and the perplexity ratio with them zeroed
(the ``zero_super_weights`` recipe of :mod:`harness.recipes`);
the uniform exp-MSB bit-flip collapse rate over the decoder's linear weights; and the perplexity
ratio under relative weight noise ``w * (1 + sigma * eps)`` at each sigma, per seeded trial. Trial
``t`` draws from a generator seeded ``seed * 100_003 + t`` in every model, so two models' trials are
paired (the same sites and the same unit noise where the shapes agree).

:func:`super_weight_shift` compares two detections: same top coordinates, Jaccard of the coordinate
sets, and the value drift of each base super weight (its weight in the fine-tuned model at the same
coordinates, relative to its value before).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from harness.campaign import clean_baseline, run_trial
from harness.faults import add_noise, flip_bits, uniform_sites
from harness.finetune.run import linear_weights, training_windows
from harness.recipes import Subject, prepare
from harness.stats import jaccard, trial_seed

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel


@dataclass
class Measures:
    """What :func:`measure` found on one model.

    Attributes:
        perplexity: held-out perplexity on the windows.
        super_weights: ``(layer, row, col, value)`` of the super weights (or the stand-in), strongest first.
        none_reason: why super-weight claims do not apply (``Detection.none_reason``) when nothing
            reached the detector's factor; empty when super weights were detected.
        detection: the detection's ``describe()``.
        zeroed_ratio: perplexity ratio with those weights zeroed.
        exp_msb_collapses: collapsed trials of one uniform exp-MSB flip; ``exp_msb_trials`` trials.
        noise_ratios: sigma -> per-trial perplexity ratios under relative noise.
    """

    perplexity: float
    super_weights: list[tuple[int, int, int, float]]
    none_reason: str
    detection: dict
    zeroed_ratio: float
    exp_msb_collapses: int
    exp_msb_trials: int
    noise_ratios: dict[float, list[float]] = field(default_factory=dict)

    @property
    def sw_source(self) -> str:
        """``detected``, or ``candidate`` (nothing reached the detector's factor; the strongest candidate stands in)."""
        return "candidate" if self.none_reason else "detected"

    @property
    def exp_msb_rate(self) -> float:
        return self.exp_msb_collapses / self.exp_msb_trials

    def noise_ratio(self, sigma: float) -> float:
        """Mean ratio over the trials at ``sigma`` (inf when a trial collapsed)."""
        values = self.noise_ratios[sigma]
        return sum(values) / len(values) if all(map(math.isfinite, values)) else math.inf


def training_perplexity(loaded: LoadedModel, config: Any) -> float:
    """Perplexity of ``loaded`` on the windows a fine-tuning run with ``config`` trains on
    (:func:`harness.finetune.run.training_windows` of ``config.corpus``); one forward pass over them."""
    from harness.data import load_corpus
    from harness.metrics import evaluate

    return evaluate(loaded.model, training_windows(loaded.tokenizer, load_corpus(config.corpus), config)).perplexity


def measure(loaded: LoadedModel, windows: torch.Tensor, *, seed: int, flip_trials: int, noise_sigmas: Sequence[float],
            noise_trials: int, detection: Any = None) -> Measures:
    """Measure ``loaded`` (a ``LoadedModel``) on ``windows``; the model is left bit-identical.

    Args:
        loaded: the model.
        windows: (count, length) evaluation windows, the same for every model compared.
        seed: ``--seed``; trial ``t`` uses ``trial_seed(seed, t)``.
        flip_trials: trials of one uniform exp-MSB flip.
        noise_sigmas: relative noise levels.
        noise_trials: trials per level.
        detection: a ready detection of ``loaded`` (e.g. the session's), else one is made.

    Cost: 2 + 1 + flip_trials + len(noise_sigmas) * noise_trials forward passes over ``windows``.
    """
    model = loaded.model
    clean = clean_baseline(model, windows)
    if detection is None:
        from harness.scoring.superweights import detect

        detection = detect(loaded)
    sites = list(detection.sites) or ([detection.candidate] if detection.candidate is not None else [])
    zeroed = math.nan
    if sites:
        zeroed = run_trial(model, windows, clean,
                           prepare("zero_super_weights", Subject(model, detection=detection)).perturbation).ratio
    linear = linear_weights(model)
    collapses = 0
    for t in range(flip_trials):
        g = torch.Generator().manual_seed(trial_seed(seed, t))
        collapses += run_trial(model, windows, clean,
                               flip_bits(model, uniform_sites(model, linear, 1, generator=g, bits="exp_msb"))).collapsed
    noise: dict[float, list[float]] = {}
    for sigma in noise_sigmas:
        noise[sigma] = []
        for t in range(noise_trials):
            g = torch.Generator().manual_seed(trial_seed(seed, t))
            noisy = add_noise(model, linear, sigma, kind="gaussian", scale="relative", generator=g)
            noise[sigma].append(run_trial(model, windows, clean, noisy).ratio)
    return Measures(
        perplexity=clean.result.perplexity,
        super_weights=[(s.layer, s.row, s.col, s.value) for s in sites],
        none_reason="" if detection.sites else detection.none_reason(),
        detection=detection.describe(), zeroed_ratio=zeroed, exp_msb_collapses=collapses,
        exp_msb_trials=flip_trials, noise_ratios=noise,
    )


@dataclass(frozen=True)
class SuperWeightShift:
    """How the super weights moved between two models.

    Attributes:
        top_kept: the strongest super weight has the same (layer, row, col) in both.
        jaccard: |before & after| / |before | after| of the coordinate sets (1.0 when both are empty).
        drift: per base super weight ``(layer, row, col, before, after, (after - before) / |before|)``,
            ``after`` read from the fine-tuned model at the same coordinates.
    """

    top_kept: bool
    jaccard: float
    drift: list[tuple[int, int, int, float, float, float]]


def super_weight_shift(before: Measures, after: Measures, after_model: torch.nn.Module) -> SuperWeightShift:
    """Compare the super weights of ``before`` and ``after`` (``after_model``: the fine-tuned model)."""
    from harness.models.archmap import select

    down = {ref.layer: ref.param for ref in select(after_model, components="mlp_down")}
    a = {sw[:3] for sw in before.super_weights}
    b = {sw[:3] for sw in after.super_weights}
    top_kept = bool(before.super_weights and after.super_weights
                    and before.super_weights[0][:3] == after.super_weights[0][:3])
    drift = []
    for layer, row, col, value in before.super_weights:
        now = float(after_model.get_parameter(down[layer])[row, col])
        drift.append((layer, row, col, value, now, (now - value) / abs(value) if value else math.inf))
    return SuperWeightShift(top_kept, jaccard(a, b), drift)
