"""Cells of the finetune suite: a base model against its own full fine-tunes, one per hardening variant.

A cell is a :class:`Variant` of full fine-tuning (``harness.finetune``) on the corpus's calibration documents,
never its evaluation documents, with the same budget, learning rate, schedule and seed for each:

- ``plain``: no hardening;
- ``noise``: relative weight noise ``w * (1 + TRAIN_NOISE eps)`` on the decoder's linear weights, re-drawn
  every step;
- ``clip`` (full preset): weight clipping to each matrix's pre-fine-tuning max |w| (``CLIP``; Stutz et al.
  2021, see :mod:`harness.finetune.hardening`).

Budget: ``--finetune-tokens`` (quick 2048 = 4 steps of 2 x 256 tokens, full 8192), ``--finetune-lr`` (default
5e-5, AdamW), ``--finetune-schedule`` (cosine). Each fine-tuned model is saved under ``<results-dir>/finetuned/``
and reused by a later run with the same settings (hash key).

Before (the base model) and after each variant, on the same evaluation windows (:class:`Preset`
``eval_windows``), :func:`harness.finetune.compare.measure`: held-out perplexity; the super weights (the
strongest candidate stands in where none is detected, as on the random tiny models) and the perplexity ratio
with them zeroed; the collapse rate of one uniform exp-MSB flip in the linear weights (``flip_trials``); the
perplexity ratio under relative noise at ``noise_sigmas`` (``noise_trials``, paired across models by trial
seed). After against before: :func:`harness.finetune.compare.super_weight_shift`. Training did what it is for
when the perplexity of the windows trained on fell (:class:`TrainingPerplexity`).

:class:`FinetuneCells` memoizes one base model's measures, fine-tunes and their measures for the session;
:meth:`FinetuneCells.noise_aware_vs_plain` is the statistic of the non-inferiority claim. The rows a suite
records come from :func:`measure_rows`, :meth:`After.rows`, :meth:`FinetuneCells.train_rows` and
:meth:`TrainingPerplexity.rows` (:class:`Row`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from harness.claims import Comparison
from harness.finetune.compare import Measures, SuperWeightShift, measure, super_weight_shift, training_perplexity
from harness.finetune.config import FinetuneConfig
from harness.finetune.run import Finetuned
from harness.option_values import pick_preset
from harness.records.row import Row
from harness.stats import wilson

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel
    from harness.session import Session

TRAIN_NOISE = 0.1  # relative sigma of the noise variant's training noise (and of the non-inferiority claim's noise)
CLIP = 1.0  # clip variant: each matrix stays within its pre-fine-tuning max |w|
NOISE_SIGMAS = (0.1, 0.2)  # relative noise levels measured before and after
TRAIN_EFFECT = 1.05  # training must lower its own windows' perplexity by more than 5% (measured: 2-3x lower)
NON_INFERIORITY = 1.05  # noise-aware may be at most 5% above plain in every pair
EXP_MSB = {"kind": "bitflip", "bit_class": "exp_msb", "target": "uniform"}  # the exp-MSB flip's description


@dataclass(frozen=True)
class Variant:
    """One fine-tuning variant: its name (the records' method) and its hardening.

    Attributes:
        name: ``plain``, ``noise`` or ``clip``.
        noise: relative sigma of the training noise (0: off).
        clip: weight clipping factor (None: off).
    """

    name: str
    noise: float = 0.0
    clip: float | None = None


VARIANTS = {v.name: v for v in (Variant("plain"), Variant("noise", noise=TRAIN_NOISE), Variant("clip", clip=CLIP))}


@dataclass(frozen=True)
class Preset:
    """Grid and sizes of one depth preset.

    Attributes:
        variants: the fine-tuning variants (names of ``VARIANTS``).
        eval_windows: the first eval windows measured (None: all).
        flip_trials: trials of one uniform exp-MSB flip (``--trials`` overrides; one on a random-weight model).
        noise_trials: trials per noise level (as ``flip_trials``).
        noise_sigmas: relative noise levels.
    """

    variants: tuple[str, ...]
    eval_windows: int | None
    flip_trials: int
    noise_trials: int
    noise_sigmas: tuple[float, ...] = NOISE_SIGMAS


PRESETS = {"quick": Preset(("plain", "noise"), eval_windows=2, flip_trials=5, noise_trials=2),
           "full": Preset(("plain", "noise", "clip"), eval_windows=None, flip_trials=20, noise_trials=5)}


def grid(preset: str) -> list[Variant]:
    """The variants of preset ``preset``."""
    return [VARIANTS[name] for name in pick_preset(PRESETS, preset).variants]


def measure_rows(m: Measures, clean: float | None = None) -> list[Row]:
    """The rows of one model's measures: held-out perplexity (``clean``: the base model's, after fine-tuning),
    the ratio with the super weights zeroed, the exp-MSB collapse rate (Wilson 95%), the ratio per noise level."""
    low, high = wilson(m.exp_msb_collapses, m.exp_msb_trials)
    return [
        Row("perplexity", m.perplexity, {"kind": "none"}, clean_value=clean),
        Row("ppl_ratio", m.zeroed_ratio, {"kind": "zero", "target": "super_weights", "count": len(m.super_weights),
                                          "target_source": m.sw_source, **m.detection}),
        Row("collapse_rate", m.exp_msb_rate, {**EXP_MSB, "n_flips": 1},
            {"ci_low": low, "ci_high": high, "trials": m.exp_msb_trials, "collapses": m.exp_msb_collapses}),
        *(Row("ppl_ratio", m.noise_ratio(sigma), {"kind": "noise", "noise": "gaussian", "scale": "relative",
                                                  "level": sigma, "target": "linear"}, {"trials": ratios})
          for sigma, ratios in m.noise_ratios.items()),
    ]


def shift_rows(base: Measures, after: Measures, shift: SuperWeightShift) -> list[Row]:
    """The rows of the super weights' shift: Jaccard, top kept, and each base super weight's drift."""
    sw = {"kind": "super_weights"}
    return [
        Row("jaccard", shift.jaccard, {**sw, "before": base.sw_source, "after": after.sw_source},
            {"before": [s[:3] for s in base.super_weights], "after": [s[:3] for s in after.super_weights]}),
        Row("top_super_weight_kept", float(shift.top_kept), sw),
        *(Row("super_weight_drift", drift, sw, {"layer": layer, "row": row, "col": col, "before": before,
                                                "after": now})
          for layer, row, col, before, now, drift in shift.drift),
    ]


@dataclass(frozen=True)
class TrainingPerplexity:
    """Perplexity on the windows a fine-tune trained on: the base model's and the fine-tuned model's.

    Attributes:
        before, after: the base model's and the fine-tuned model's perplexity on those windows.
        perturbation: the fine-tune, as its records describe it.
        windows: the training budget the windows come from (``windows``, ``window``, ``corpus``).
    """

    before: float
    after: float
    perturbation: dict[str, Any]
    windows: dict[str, Any]

    def rows(self) -> list[Row]:
        """``training_perplexity``: after, against before (the budget in extra)."""
        return [Row("training_perplexity", self.after, self.perturbation, self.windows, self.before)]


@dataclass(frozen=True)
class After:
    """A fine-tuned model's measures and how its super weights moved from the base model's."""

    variant: str
    config: FinetuneConfig
    measures: Measures
    shift: SuperWeightShift

    def rows(self, base: Measures) -> list[Row]:
        """The measures' rows (the base model's perplexity as the held-out one's clean value), then the shift's."""
        return [*measure_rows(self.measures, base.perplexity), *shift_rows(base, self.measures, self.shift)]


@dataclass(frozen=True)
class NoiseAwareVsPlain:
    """The plain and the noise-aware fine-tune's measures, paired by trial seed."""

    plain: Measures
    noise: Measures

    def ratios(self, sigma: float) -> tuple[list[float], list[float]]:
        """(plain's, noise-aware's) per-trial ratios at relative noise ``sigma``."""
        return self.plain.noise_ratios[sigma], self.noise.noise_ratios[sigma]

    def rows(self) -> list[Row]:
        """Plain minus noise-aware: the mean noise ratio per level, the exp-MSB collapse rate."""
        return [*(Row("noise_ratio_difference", self.plain.noise_ratio(s) - self.noise.noise_ratio(s),
                      {"kind": "noise", "scale": "relative", "level": s},
                      {"plain": self.plain.noise_ratios[s], "noise": self.noise.noise_ratios[s]})
                  for s in self.plain.noise_ratios),
                Row("collapse_rate_difference", self.plain.exp_msb_rate - self.noise.exp_msb_rate, EXP_MSB,
                    {"plain": self.plain.exp_msb_collapses, "noise": self.noise.exp_msb_collapses,
                     "trials": self.plain.exp_msb_trials})]


@dataclass
class FinetuneCells:
    """One base model, its fine-tunes and their measures (memoized for the session).

    Attributes:
        loaded: the base ``LoadedModel`` (measured in place, left bit-identical).
        windows: the evaluation windows (count, length), the same before and after.
        detection: called once, on first need: the base model's super-weight detection.
        configs: the fine-tuning run of each variant of the preset.
        seed: ``--seed``; trial ``t`` draws from ``trial_seed(seed, t)`` in every model.
        flip_trials, noise_trials: trials of the exp-MSB flip, and per noise level.
        noise_sigmas: relative noise levels.
        results_dir: where fine-tuned models are saved (``<results_dir>/finetuned/``).
        device, dtype: where and how fine-tuned models are loaded to be measured.
    """

    loaded: LoadedModel
    windows: torch.Tensor
    detection: Callable[[], Any]
    configs: dict[str, FinetuneConfig]
    seed: int
    flip_trials: int
    noise_trials: int
    noise_sigmas: tuple[float, ...]
    results_dir: str | os.PathLike[str]
    device: str
    dtype: str
    _base: Measures | None = None
    _done: dict[str, Finetuned] = field(default_factory=dict)
    _training_before: dict[tuple, float] = field(default_factory=dict)
    _training: dict[str, TrainingPerplexity] = field(default_factory=dict)
    _after: dict[str, After] = field(default_factory=dict)

    @classmethod
    def of(cls, esa: Session, loaded: LoadedModel) -> FinetuneCells:
        """``loaded``'s cells in the pytest session ``esa`` (made once per model, on the session's evaluation
        windows; the detection is the session's, ``esa.detection``)."""
        from harness.finetune.options import config_from_options

        o, p = esa.options, esa.preset(PRESETS)
        windows = esa.windows(loaded, "eval")[: p.eval_windows]

        def make() -> FinetuneCells:
            configs = {v: config_from_options(o, method="full", noise=VARIANTS[v].noise, clip=VARIANTS[v].clip)
                       for v in p.variants}
            return cls(loaded, windows, lambda: esa.detection(loaded), configs, o.seed,
                       esa.trials(loaded.name, p.flip_trials), esa.trials(loaded.name, p.noise_trials),
                       p.noise_sigmas, o.results_dir, o.device, o.dtype)

        return esa.cached((loaded.name, "finetune-cells", tuple(windows.shape), o.corpus, o.seed), make)

    @staticmethod
    def refused(esa: Session) -> str | None:
        """Why the session cannot run these cells (its models are fine-tunes themselves: ``--finetune``), else
        None."""
        if esa.options.finetune.method != "none":
            return "the finetune suite compares the base model with its own fine-tunes: run it without --finetune"
        return None

    def _measure(self, loaded: LoadedModel, detection: Any = None) -> Measures:
        return measure(loaded, self.windows, seed=self.seed, flip_trials=self.flip_trials,
                       noise_sigmas=self.noise_sigmas, noise_trials=self.noise_trials, detection=detection)

    def _load(self, done: Finetuned) -> Any:
        from harness.models import load_model

        return load_model(done.path, device=self.device, dtype=self.dtype)

    def base(self) -> Measures:
        """The base model's measures (with the session's detection)."""
        if self._base is None:
            self._base = self._measure(self.loaded, self.detection())
        return self._base

    def finetuned(self, variant: str) -> Finetuned:
        """``variant``'s fine-tuned model: read from the results directory, or trained and saved."""
        if variant not in self._done:
            from harness.finetune.run import ensure_finetuned

            self._done[variant] = ensure_finetuned(self.loaded.name, self.configs[variant],
                                                   results_dir=self.results_dir, device=self.device)
        return self._done[variant]

    def description(self, variant: str) -> dict[str, Any]:
        """The perturbation a fine-tune's records carry."""
        c = self.configs[variant]
        return {"kind": "finetune", "method": c.method, "variant": variant, "tokens": c.tokens, "lr": c.learning_rate,
                "schedule": c.schedule, "noise": c.noise, "clip": c.clip, "key": c.key(self.loaded.name)}

    def train_rows(self, variant: str) -> list[Row]:
        """The rows of ``variant``'s fine-tuning run: the loss of every step, and the seconds of training."""
        done, perturbation = self.finetuned(variant), self.description(variant)
        log = done.log
        return [*(Row("train_loss", point["loss"], perturbation, point) for point in log.points),
                Row("seconds", log.seconds, perturbation,
                    {"tokens": log.tokens, "steps": len(log.points), "reused": done.reused})]

    def trained(self, variant: str) -> bool:
        """The fine-tune ran every step with a finite loss."""
        done = self.finetuned(variant)
        return len(done.log.points) == self.configs[variant].steps and all(map(math.isfinite, done.log.losses))

    def training_perplexity(self, variant: str) -> TrainingPerplexity:
        """The perplexity of the windows ``variant`` trained on, before (the base model's, shared by every variant
        of one budget) and after."""
        if variant not in self._training:
            c = self.configs[variant]
            budget = (c.corpus, c.windows, c.window)
            if budget not in self._training_before:
                self._training_before[budget] = training_perplexity(self.loaded, c)
            after = training_perplexity(self._load(self.finetuned(variant)), c)
            self._training[variant] = TrainingPerplexity(self._training_before[budget], after,
                                                         self.description(variant),
                                                         {"windows": c.windows, "window": c.window, "corpus": c.corpus})
        return self._training[variant]

    def after(self, variant: str) -> After:
        """``variant``'s fine-tuned model measured on the same windows, and its super weights' shift."""
        if variant not in self._after:
            base = self.base()
            loaded = self._load(self.finetuned(variant))
            measures = self._measure(loaded)
            self._after[variant] = After(variant, self.configs[variant], measures,
                                         super_weight_shift(base, measures, loaded.model))
        return self._after[variant]

    def top_kept(self, variant: str) -> Comparison:
        """The relation "the top super weight keeps its coordinates" for ``variant`` (only meaningful when the base
        model has detected super weights: ``base().none_reason`` empty)."""
        base, after = self.base(), self.after(variant)
        now = after.measures.super_weights
        return Comparison(after.shift.top_kept, float(after.shift.top_kept), 1.0,
                          {"before": base.super_weights[0][:3], "after": now[0][:3] if now else None})

    def noise_aware_vs_plain(self) -> NoiseAwareVsPlain:
        """The plain and the noise-aware fine-tune's measures side by side."""
        return NoiseAwareVsPlain(self.after("plain").measures, self.after("noise").measures)
