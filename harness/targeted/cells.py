"""Cells of the targeted-perturbation suite: a scorer's top-ranked weights, or as many seeded random ones, perturbed
by one action at each fraction of the decoder blocks' linear weights.

A cell is (method, action) (:class:`TargetedCell`): ``method`` a scorer of ``harness.scoring`` or ``random`` (the
control, drawn uniformly over the same matrices), ``action`` an ``action`` recipe of :mod:`harness.recipes`
(``zero``, ``noise``, ``exponent_lsb``). Its :class:`Curve` holds, per fraction ``x``, the trials perturbing
``n = max(1, round(x * N))`` weights (N: the linear weights' count): one for a ranked method (its sites are fixed,
noise is seeded), the preset's seeded trials for ``random``; its records are :meth:`Curve.rows`.
:class:`TargetedCells` memoizes one model's curves and scorings; :meth:`TargetedCells.ranked_vs_random` is the
statistic of the claim.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from harness.option_values import pick_preset
from harness.recipes import RECIPES, Subject, prepare
from harness.records.row import Row, trial_rows
from harness.scoring.options import FULL_FRACTIONS, FULL_TARGETED, QUICK_FRACTIONS, QUICK_TARGETED
from harness.stats import trial_seed

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel
    from harness.session import Session

RANDOM = "random"  # the control's method name
ACTIONS = tuple(RECIPES.names(tag="action"))  # zero, noise, exponent_lsb
MIN_EFFECT = 1.05  # ranked ratio >= 1.05 x the worst random trial: 5% more perplexity, beyond noise


@dataclass(frozen=True)
class Preset:
    """Grid and sizes of one depth preset.

    Attributes:
        methods: the ranked methods (the random control is added to them).
        fractions: shares of the linear weights perturbed, ascending.
        random_trials: the random control's seeded trials per fraction (``--trials`` overrides; one on a
            random-weight model).
        eval_windows: the first eval windows evaluated (None: all).
        calib_windows: the first calibration windows the scorers read (None: all).
    """

    methods: tuple[str, ...]
    fractions: tuple[float, ...]
    random_trials: int
    eval_windows: int | None
    calib_windows: int | None


PRESETS = {"quick": Preset(QUICK_TARGETED, QUICK_FRACTIONS, random_trials=2, eval_windows=2, calib_windows=2),
           "full": Preset(FULL_TARGETED, FULL_FRACTIONS, random_trials=5, eval_windows=None, calib_windows=None)}


def preset(name: str, methods: tuple[str, ...] | None = None, fractions: tuple[float, ...] | None = None) -> Preset:
    """Preset ``name`` with the ``--targeted-methods`` and ``--fractions`` given (None: the preset's)."""
    p = pick_preset(PRESETS, name)
    return replace(p, methods=methods or p.methods, fractions=fractions or p.fractions)


@dataclass(frozen=True)
class TargetedCell:
    """One (method, action) cell."""

    method: str
    action: str

    @property
    def id(self) -> str:
        return f"{self.method}-{self.action}"


def grid(methods: tuple[str, ...]) -> list[TargetedCell]:
    """Every cell of (methods, then ``random``) x actions, method-major."""
    return [TargetedCell(m, a) for m in (*methods, RANDOM) for a in ACTIONS]


@dataclass(frozen=True)
class TrialPoint:
    """One trial of a cell at one fraction."""

    ratio: float
    kl: float | None
    collapsed: bool
    count: int  # weights perturbed
    trial: int
    trial_seed: int


@dataclass(frozen=True)
class Curve:
    """A cell's trials per fraction (ascending), the scoring seconds of a ranked method (None for random) and the
    clean perplexity the ratios are against."""

    cell: TargetedCell
    points: dict[float, list[TrialPoint]]
    seconds: float | None = None
    clean_perplexity: float | None = None

    def description(self, fraction: float, point: TrialPoint) -> dict[str, Any]:
        """The record's perturbation of one trial."""
        return {"kind": "targeted", "fraction": fraction, "action": self.cell.action, "count": point.count}

    def rows(self) -> list[Row]:
        """Per trial its ``ppl_ratio`` (against the clean perplexity) and ``kl`` (trial and seed in extra); a ranked
        method's ``seconds`` of scoring on its first action's curve only (one scoring per method). Method: the
        cell's."""
        method = {"method": self.cell.method}
        out = []
        for fraction, points in self.points.items():
            for p in points:
                pert, extra = self.description(fraction, p), {"trial": p.trial, "trial_seed": p.trial_seed}
                columns = {**method, "collapsed": p.collapsed}
                out += trial_rows(p.ratio, p.kl, pert, extra, self.clean_perplexity, columns)
        if self.seconds is not None and self.cell.action == ACTIONS[0]:
            out.append(Row("seconds", self.seconds, {"kind": "score"}, columns=method))
        return out


@dataclass(frozen=True)
class RankedVsRandom:
    """A ranked method's ratio and the random control's largest ratio at every fraction (the claim compares the
    largest fraction's)."""

    fractions: list[float]
    ranked: list[float]
    worst_random: list[float]
    random_trials: int


@dataclass
class TargetedCells:
    """The measured cells of one model (memoized).

    Attributes:
        loaded: the ``LoadedModel`` (perturbed in place and restored after each trial).
        windows: the evaluation windows (count, length).
        clean: the campaign's clean baseline on ``windows`` (``harness.campaign.clean_baseline``).
        calib_windows: the scorers' calibration windows (count, length).
        seed: ``--seed``; trial ``t`` draws from ``trial_seed(seed, t)``.
        methods: the ranked methods compared with the random control.
        fractions: ascending shares of the linear weights.
        random_trials: the random control's trials per fraction.
    """

    loaded: LoadedModel
    windows: torch.Tensor
    clean: Any
    calib_windows: torch.Tensor
    seed: int
    methods: tuple[str, ...]
    fractions: tuple[float, ...]
    random_trials: int
    _curves: dict[TargetedCell, Curve] = field(default_factory=dict)
    _ranked: dict[str, tuple[list[Any], float]] = field(default_factory=dict)
    _refs: tuple[list[Any], int] | None = None

    @classmethod
    def of(cls, esa: Session, loaded: LoadedModel) -> TargetedCells:
        """``loaded``'s cells in the pytest session ``esa`` (made once per model, on the session's windows; the
        clean baseline is the session's, ``esa.clean``)."""
        eval_windows, calib_windows = esa.windows(loaded, "eval"), esa.windows(loaded, "calib")
        o = esa.options
        p = preset(o.preset, o.scoring.targeted_methods, o.scoring.fractions)
        windows = eval_windows[: p.eval_windows]

        def make() -> TargetedCells:
            trials = esa.trials(loaded.name, p.random_trials)
            return cls(loaded, windows, esa.clean(loaded.name, loaded.model, windows),
                       calib_windows[: p.calib_windows], o.seed, p.methods, p.fractions, trials)

        key = (loaded.name, "targeted-cells", tuple(windows.shape), o.corpus, p.methods, p.fractions, o.seed)
        return esa.cached(key, make)

    def _linear(self) -> tuple[list[Any], int]:
        """(the decoder blocks' linear ComponentRefs, their weight count)."""
        if self._refs is None:
            from harness.faults.sites import as_regions, region_size
            from harness.models.archmap import select

            model = self.loaded.model
            refs = select(model, components="linear")
            self._refs = refs, sum(region_size(model, r) for r in as_regions(model, refs))
        return self._refs

    def count(self, fraction: float) -> int:
        """Weights perturbed at ``fraction``: ``max(1, round(fraction * N))``, at most N."""
        total = self._linear()[1]
        return max(1, min(total, round(fraction * total)))

    def ranked_sites(self, method: str) -> tuple[list[Any], float]:
        """(the top sites of ``method`` for the largest fraction, best first; seconds of scoring and ranking)."""
        if method not in self._ranked:
            from harness.faults import FaultSite
            from harness.scoring import score

            start = time.perf_counter()
            found = score(self.loaded, method, windows=self.calib_windows)
            top = found.top_k(min(self.count(max(self.fractions)), found.numel()))
            self._ranked[method] = [FaultSite(s.site.param, s.site.index) for s in top], time.perf_counter() - start
        return self._ranked[method]

    def curve(self, cell: TargetedCell) -> Curve:
        """The cell's trials at every fraction (measured once)."""
        if cell not in self._curves:
            self._curves[cell] = self._run(cell)
        return self._curves[cell]

    def _run(self, cell: TargetedCell) -> Curve:
        from harness.campaign import Campaign
        from harness.faults import FaultSite, uniform_sites

        model = self.loaded.model
        refs, _ = self._linear()
        sites, seconds = self.ranked_sites(cell.method) if cell.method != RANDOM else ([], None)
        campaign = Campaign(model, self.windows, self.clean)
        points: dict[float, list[TrialPoint]] = {}
        for fraction in self.fractions:
            n = self.count(fraction)
            points[fraction] = []
            for trial in range(self.random_trials if cell.method == RANDOM else 1):
                seed = trial_seed(self.seed, trial)
                g = torch.Generator().manual_seed(seed)  # the random sites first, then the noise
                picks = ([FaultSite(s.param, s.index) for s in uniform_sites(model, refs, n, generator=g)]
                         if cell.method == RANDOM else sites[:n])
                t = campaign.trial(prepare(cell.action, Subject(model, sites=picks, generator=g)).perturbation)
                points[fraction].append(TrialPoint(t.ratio, t.result.kl, t.collapsed, len(picks), trial, seed))
        return Curve(cell, points, seconds, self.clean.result.perplexity)

    def ranked_vs_random(self, method: str, action: str) -> RankedVsRandom:
        """``method``'s ratio (its one trial) and the largest ratio of the random control's trials, per fraction."""
        ranked, control = self.curve(TargetedCell(method, action)), self.curve(TargetedCell(RANDOM, action))
        fractions = sorted(control.points)
        return RankedVsRandom(fractions, [ranked.points[f][0].ratio for f in fractions],
                              [max(p.ratio for p in control.points[f]) for f in fractions],
                              len(control.points[fractions[0]]))
