"""Cells of the attribution suite: one model's clean attributions and the same attributions under each named
weight perturbation.

For each prompt of the preset (``harness/attribution/prompts.json``, :func:`~harness.attribution.prompts.
select_prompts`) the clean model's greedy continuation (``Preset.target_tokens`` tokens) is the fixed target.
Feature ablation (Captum ``FeatureAblation`` through ``LLMAttribution``, batched
:data:`~harness.attribution.llm.DEFAULT_PERTURBATIONS_PER_EVAL` ablated prompts per call) attributes the target's
log-probability to each prompt token, on the clean model and under each perturbation of :data:`PERTURBATIONS`
(context managers, restored bit-exactly):

- ``zero_super_weights``: the session's detected super weights zeroed (recipe ``zero_super_weights`` of
  :mod:`harness.recipes`; where none is detected the detector's strongest candidate stands in, so the code path
  runs, and the record's ``source`` says so);
- ``zero_random``: as many seeded random weights of the same matrices zeroed (recipe ``zero_random``, the control);
- ``exp_msb_flip``: the exponent MSB of one seeded random weight of the linear layers flipped (recipe
  ``exp_msb_flip``);
- ``wanda_50``: Wanda pruning at 50% per row (calibration: the first ``Preset.calib_windows`` windows; no recipe,
  pruning lives here).

Every perturbation draws from ``torch.Generator().manual_seed(--seed)``. Measures per prompt and perturbation:
:func:`harness.attribution.measures.compare` with the top :data:`TOP_K` tokens. Integrated gradients
(``Preset.ig_steps`` steps on the embeddings) attributes the same targets on the clean model, for the agreement
of the two methods. A random-weight tiny model, whose numbers mean nothing and which only runs the code paths,
gets :func:`preset_for`'s sizes: the first :data:`TINY_PROMPT_CHARS` characters of one prompt (its byte
tokenizer makes every character a feature), 2 target tokens and 4 IG steps.

:class:`AttributionCells` memoizes one model's attributions for the session; its statistics:
:meth:`~AttributionCells.super_vs_random`, :meth:`~AttributionCells.repeat` and
:meth:`~AttributionCells.method_agreement`. Each result carries its records as :class:`~harness.records.row.Row`
(``rows()``; :meth:`~AttributionCells.clean_rows` for the clean attributions), committed by the suite with
``recorder.rows``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from harness.attribution.llm import Target, TokenAttribution, attribute, greedy_target
from harness.attribution.measures import AttributionChange, compare
from harness.attribution.prompts import select_prompts
from harness.claims import Comparison, paired_greater
from harness.errors import HarnessError
from harness.option_values import pick_preset
from harness.recipes import Subject, prepare
from harness.records.row import Row
from harness.stats import spearman

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel
    from harness.session import Session

PERTURBATIONS = ("zero_super_weights", "zero_random", "exp_msb_flip", "wanda_50")
NEEDS_DETECTION = ("zero_super_weights", "zero_random")  # the perturbations built from the super-weight detection
TOP_K = 3  # tokens of attr_topk_jaccard
SHIFT_FACTOR = 2.0  # super weights' attr_rel_change >= SHIFT_FACTOR x the random control's, on every prompt
TINY_PROMPT_CHARS = 24
WANDA_SPARSITY = 0.5
# the record's "source" of zero_super_weights, by the recipe's target (harness.recipes.super_weight_sites)
SOURCES = {"super_weights": "detected", "candidate": "candidate below the detector's factor"}
CLEAN = {"kind": "none"}  # the records' perturbation of a clean attribution
AGREEMENT_METHOD = "feature_ablation|integrated_gradients"  # the method of the agreement's records


@dataclass(frozen=True)
class Preset:
    """Sizes of one depth preset.

    Attributes:
        prompts: the first prompts of the prompt file attributed (None: all).
        target_tokens: tokens of each prompt's greedy continuation (the fixed target).
        ig_steps: integrated-gradients steps.
        calib_windows: the first calibration windows Wanda's scores read (None: all).
        prompt_chars: each prompt cut to its first characters (None: whole).
    """

    prompts: int | None
    target_tokens: int
    ig_steps: int
    calib_windows: int | None
    prompt_chars: int | None = None


PRESETS = {"quick": Preset(prompts=4, target_tokens=4, ig_steps=16, calib_windows=2),
           "full": Preset(prompts=None, target_tokens=8, ig_steps=32, calib_windows=8)}


def preset_for(name: str, random_weights: bool) -> Preset:
    """Preset ``name``; on a random-weight model one prompt cut to :data:`TINY_PROMPT_CHARS` characters, 2 target
    tokens and 4 IG steps (the calibration windows stay the preset's)."""
    p = pick_preset(PRESETS, name)
    return replace(p, prompts=1, prompt_chars=TINY_PROMPT_CHARS, target_tokens=2, ig_steps=4) if random_weights else p


def attribution_row(attr: TokenAttribution, prompt: str, condition: str, perturbation: dict[str, Any]) -> Row:
    """The ``target_logprob`` record of one attribution, the attribution itself in ``extra`` (``condition``:
    ``clean`` or the perturbation's name) for the report's heatmaps."""
    return Row("target_logprob", attr.target_logprob, perturbation,
               {"condition": condition, "prompt": prompt, **attr.to_dict()},
               columns={"method": attr.method, "seconds": attr.seconds})


@dataclass(frozen=True)
class CleanAttribution:
    """One prompt's fixed target and its clean feature-ablation attribution."""

    target: Target
    attribution: TokenAttribution


@dataclass(frozen=True)
class Perturbed:
    """Every prompt's feature-ablation attribution under one perturbation and its change from the clean one.

    Attributes:
        name: the perturbation (one of :data:`PERTURBATIONS`).
        description: the records' ``perturbation`` column (``kind`` and what was perturbed).
        by_prompt: per prompt id, (perturbed attribution, measures).
    """

    name: str
    description: dict[str, Any]
    by_prompt: dict[str, tuple[TokenAttribution, AttributionChange]]

    def rows(self) -> list[Row]:
        """Per prompt, the perturbed attribution's ``target_logprob`` and each measure (top :data:`TOP_K`)."""
        out = []
        for pid, (attr, change) in self.by_prompt.items():
            out.append(attribution_row(attr, pid, self.name, self.description))
            out.extend(Row(metric, value, self.description, {"prompt": pid, "top_k": TOP_K},
                           columns={"method": "feature_ablation"}) for metric, value in change.to_dict().items())
        return out


@dataclass(frozen=True)
class SuperVsRandom:
    """Per prompt, the attribution change of zeroing the super weights and of the random control."""

    prompts: list[str]
    rel_change: list[float]
    rel_change_random: list[float]
    shift: list[float]
    shift_random: list[float]

    def comparison(self) -> Comparison:
        """Every prompt: ``attr_rel_change`` >= :data:`SHIFT_FACTOR` x the random control's."""
        return paired_greater(self.rel_change, self.rel_change_random, factor=SHIFT_FACTOR)

    def extra(self) -> dict[str, Any]:
        """The claim's ``extra``: the prompts and both rank shifts."""
        return {"prompts": self.prompts, "attr_shift": self.shift, "attr_shift_random": self.shift_random}


@dataclass(frozen=True)
class Repeat:
    """Largest |difference| of an attribution computed twice: feature ablation per prompt, then integrated
    gradients on the first prompt."""

    diffs: list[float]

    @property
    def worst(self) -> float:
        return max(self.diffs)

    def comparison(self) -> Comparison:
        """The relation "0 >= largest difference": holds exactly when every repeat is bit-identical."""
        return Comparison(self.worst == 0.0, 0.0, self.worst, {"test": "exact", "max_abs_diff": self.worst})

    def rows(self) -> list[Row]:
        """The largest difference (``extra``: each repeat's); no perturbation column."""
        return [Row("attr_repeat_max_abs_diff", self.worst, None, {"per_run": self.diffs})]


@dataclass(frozen=True)
class AgreementRow:
    """One prompt's clean attributions by both methods and their Spearman correlation."""

    prompt: str
    ablation: TokenAttribution
    ig: TokenAttribution
    rho: float


@dataclass(frozen=True)
class Agreement:
    """Per prompt, how alike feature ablation and integrated gradients rank the prompt tokens on the clean model.

    Attributes:
        per_prompt: each prompt's attributions and Spearman correlation.
        ig_steps: the integrated-gradients steps.
    """

    per_prompt: list[AgreementRow]
    ig_steps: int

    @property
    def mean(self) -> float:
        """Mean Spearman over the prompts (the claim's statistic); NaN when one is not finite."""
        rhos = [r.rho for r in self.per_prompt]
        return statistics.fmean(rhos) if all(math.isfinite(r) for r in rhos) else math.nan

    def rows(self) -> list[Row]:
        """Per prompt, the clean integrated-gradients attribution's ``target_logprob`` and ``attr_method_spearman``."""
        out = []
        for r in self.per_prompt:
            out.append(attribution_row(r.ig, r.prompt, "clean", CLEAN))
            out.append(Row("attr_method_spearman", r.rho, None,
                           {"prompt": r.prompt, "ig_steps": self.ig_steps, "ig_seconds": r.ig.seconds,
                            "ablation_seconds": r.ablation.seconds}, columns={"method": AGREEMENT_METHOD}))
        return out


@dataclass
class AttributionCells:
    """One model's attributions (memoized for the session).

    Attributes:
        loaded: the ``LoadedModel`` (perturbed in place and restored after each perturbation).
        preset: the sizes (:func:`preset_for`).
        seed: ``--seed``; every perturbation draws from a generator seeded with it.
        calib_windows: Wanda's calibration windows (the preset's first ones).
    """

    loaded: LoadedModel
    preset: Preset
    seed: int
    calib_windows: torch.Tensor
    _clean: dict[str, CleanAttribution] | None = None
    _ig: dict[str, TokenAttribution] | None = None
    _perturbed: dict[str, Perturbed] = field(default_factory=dict)
    _wanda: Any = None

    @classmethod
    def of(cls, esa: Session, loaded: LoadedModel) -> AttributionCells:
        """``loaded``'s cells in the pytest session ``esa`` (made once per model), on the session's calibration
        windows."""
        calib_windows = esa.windows(loaded, "calib")
        o = esa.options
        p = preset_for(o.preset, loaded.spec.random_weights)
        return esa.cached((loaded.name, "attribution-cells", o.preset, o.corpus, o.seed),
                          lambda: cls(loaded, p, o.seed, calib_windows[: p.calib_windows]))

    def prompts(self) -> list[tuple[str, str]]:
        """(id, text) of the preset's prompts."""
        return [(p.id, p.text[: self.preset.prompt_chars]) for p in select_prompts(self.preset.prompts)]

    def feature_ablation(self, target: Target) -> TokenAttribution:
        return attribute(self.loaded, target, "feature_ablation")  # batched: llm.DEFAULT_PERTURBATIONS_PER_EVAL

    def integrated_gradients(self, target: Target) -> TokenAttribution:
        return attribute(self.loaded, target, "integrated_gradients", n_steps=self.preset.ig_steps)

    def clean(self) -> dict[str, CleanAttribution]:
        """Per prompt id: the fixed target and the clean feature-ablation attribution."""
        if self._clean is None:
            self._clean = {}
            for pid, text in self.prompts():
                target = greedy_target(self.loaded, text, self.preset.target_tokens)
                self._clean[pid] = CleanAttribution(target, self.feature_ablation(target))
        return self._clean

    def clean_ig(self) -> dict[str, TokenAttribution]:
        """Per prompt id: the clean integrated-gradients attribution of the same target."""
        if self._ig is None:
            self._ig = {pid: self.integrated_gradients(c.target) for pid, c in self.clean().items()}
        return self._ig

    def clean_rows(self) -> list[Row]:
        """Per prompt, the clean feature-ablation attribution's ``target_logprob``."""
        return [attribution_row(c.attribution, pid, "clean", CLEAN) for pid, c in self.clean().items()]

    def unavailable(self, name: str, detection: Any) -> str | None:
        """Why perturbation ``name`` cannot be built (a skip reason): the detector scanned no block; else None."""
        if name in NEEDS_DETECTION and not detection and detection.candidate is None:
            return f"the super-weight detector scanned no block of {self.loaded.name}"
        return None

    def _perturbation(self, name: str, detection: Any) -> tuple[Any, dict[str, Any]]:
        """A fresh context manager for perturbation ``name`` and its description (``kind`` first)."""
        if name == "wanda_50":
            from harness.pruning import prune

            return (prune(self.loaded, self._wanda_scores(), WANDA_SPARSITY, granularity="row"),
                    {"kind": name, "sparsity": WANDA_SPARSITY, "granularity": "row"})
        if name not in PERTURBATIONS:
            raise HarnessError(f"unknown perturbation {name!r}; allowed: {', '.join(PERTURBATIONS)}")
        g = torch.Generator().manual_seed(self.seed)
        made = prepare(name, Subject(self.loaded.model, detection=detection, generator=g))
        if name == "zero_super_weights":
            described = {**detection.describe(), "source": SOURCES[made.description["target"]]}
        elif name == "zero_random":
            described = {"count": len(made.sites), "matrices": "those of the super weights"}
        else:  # exp_msb_flip
            described = {"site": {"param": made.sites[0].param, "index": list(made.sites[0].index)}}
        return made.perturbation, {"kind": name, **described}

    def _wanda_scores(self) -> Any:
        if self._wanda is None:
            from harness.scoring import score

            self._wanda = score(self.loaded, "wanda", windows=self.calib_windows)
        return self._wanda

    def perturbed(self, name: str, detection: Any = None) -> Perturbed:
        """Every prompt's attribution under perturbation ``name`` (measured once; ``detection``, the session's
        super-weight detection, is read by :data:`NEEDS_DETECTION`).

        Raises:
            HarnessError: an unknown name, or a super-weight perturbation without a detection or a candidate.
        """
        if name not in self._perturbed:
            clean = self.clean()
            perturbation, description = self._perturbation(name, detection)
            with perturbation:
                rows = {}
                for pid, c in clean.items():
                    after = self.feature_ablation(c.target)
                    rows[pid] = (after, compare(c.attribution, after, TOP_K))
            self._perturbed[name] = Perturbed(name, description, rows)
        return self._perturbed[name]

    def super_vs_random(self, detection: Any) -> SuperVsRandom:
        """The claim's pairs: zeroing the super weights versus the random control, per prompt."""
        sw = self.perturbed("zero_super_weights", detection).by_prompt
        rand = self.perturbed("zero_random", detection).by_prompt
        ids = list(sw)
        return SuperVsRandom(ids, [sw[i][1].attr_rel_change for i in ids], [rand[i][1].attr_rel_change for i in ids],
                             [sw[i][1].attr_shift for i in ids], [rand[i][1].attr_shift for i in ids])

    def repeat(self) -> Repeat:
        """Every clean feature-ablation attribution and the first prompt's integrated gradients computed again."""
        clean = self.clean()
        diffs = [float((c.attribution.token_attr - self.feature_ablation(c.target).token_attr).abs().max())
                 for c in clean.values()]
        pid, first = next(iter(clean.items()))
        again = self.integrated_gradients(first.target)
        diffs.append(float((self.clean_ig()[pid].token_attr - again.token_attr).abs().max()))
        return Repeat(diffs)

    def method_agreement(self) -> Agreement:
        """Per prompt, Spearman of the clean feature-ablation and integrated-gradients attributions."""
        ig = self.clean_ig()
        return Agreement([AgreementRow(pid, c.attribution, ig[pid], spearman(c.attribution.seq_attr, ig[pid].seq_attr))
                          for pid, c in self.clean().items()], self.preset.ig_steps)
