"""Cells of the noise-robustness suite: a degradation curve per noise kind and component, over noise levels.

Noise (:func:`harness.faults.add_noise`, scale ``std``): every weight of the targeted matrices gets
``level * std(matrix) * eps`` with eps ~ N(0, 1) (``gaussian``) or U(-1, 1) (``uniform``). Trial t draws from a
generator seeded from (seed, t), so all levels of a trial scale the same unit noise and the curve is smooth.
The grid of each depth preset is :data:`PRESETS`; :meth:`NoiseCells.measure` runs one cell's levels x trials through
:class:`harness.campaign.Campaign` and returns a :class:`NoiseCurve`. It records nothing: the suite does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.campaign.cells import ComponentCell, SessionSweep
from harness.campaign.engine import Campaign, trial_specs
from harness.claims import trial_changed
from harness.faults import add_noise
from harness.models.archmap import COMPONENTS, select
from harness.records.row import Row

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel
    from harness.session import Session

LOW, HIGH = 0.001, 0.5  # the first and last level of every preset (the bounds' levels)
FLOOR = 0.1  # levels from here on are compared by the damage-grows relation; below it ratios scatter around 1
SCALE = "std"
KINDS = ("gaussian", "uniform")
GROUPS = ("attention", "mlp", "linear")


@dataclass(frozen=True)
class NoisePreset:
    """The noise grid and sizes of one depth preset.

    Attributes:
        kinds: noise kinds.
        components: component groups or names (``harness.models.archmap``; one a family lacks is skipped).
        levels: noise levels, from ``LOW`` to ``HIGH``.
        windows: the first this many eval windows (None: all).
        trials: trials per level (the session's trial rule applies: ``--trials``, or one on a random-weight model).
    """

    kinds: tuple[str, ...]
    components: tuple[str, ...]
    levels: tuple[float, ...]
    windows: int | None
    trials: int


PRESETS = {
    "quick": NoisePreset(kinds=KINDS[:1], components=GROUPS, levels=(LOW, 0.01, 0.03, 0.1, 0.2, HIGH), windows=2,
                         trials=1),  # noise on millions of weights averages itself
    "full": NoisePreset(kinds=KINDS, components=(*GROUPS, *COMPONENTS, "norms"),
                        levels=(LOW, 0.003, 0.01, 0.03, 0.05, 0.1, 0.2, 0.3, HIGH), windows=None, trials=3),
}


class NoiseCell(ComponentCell):
    """One noise cell: ``kind`` noise on ``component`` of every layer."""

    @property
    def kind(self) -> str:
        return self.variant

    @property
    def perturbation(self) -> dict[str, Any]:
        return {"kind": "noise", "noise": self.kind, "scale": SCALE, "target": self.component}


def grid(preset: str) -> list[NoiseCell]:
    """Every cell of ``preset``: noise kind x component."""
    return NoiseCell.grid(PRESETS, preset, "kinds")


@dataclass(frozen=True)
class NoiseTrial:
    """One trial at one level."""

    level: float
    trial: int
    trial_seed: int
    ratio: float  # perplexity / clean perplexity (inf: non-finite output)
    perplexity: float
    kl: float
    collapsed: bool
    changed: bool  # harness.claims.trial_changed: the output moved


@dataclass(frozen=True)
class NoiseCurve:
    """What one cell measured: every (level, trial), trial-major."""

    cell: NoiseCell
    levels: tuple[float, ...]
    n_trials: int  # trials per level
    trials: tuple[NoiseTrial, ...]
    clean_perplexity: float

    def ratios(self, level: float) -> list[float]:
        return [t.ratio for t in self.trials if t.level == level]

    @property
    def changed(self) -> list[bool]:
        return [t.changed for t in self.trials]

    @property
    def above_floor(self) -> list[float]:
        return [level for level in self.levels if level >= FLOOR]

    def growth(self) -> tuple[list[float], list[float]]:
        """(each level's smallest ratio, the previous level's largest) over the levels from ``FLOOR`` on: the
        damage grows when every first exceeds its second."""
        above = self.above_floor
        return [min(self.ratios(b)) for b in above[1:]], [max(self.ratios(a)) for a in above[:-1]]

    def trial_perturbation(self, trial: NoiseTrial) -> dict[str, Any]:
        return {"kind": "noise", "noise": self.cell.kind, "scale": SCALE, "level": trial.level,
                "target": self.cell.component}

    def rows(self) -> list[Row]:
        """Per trial its ``ppl_ratio`` and ``perplexity`` (against the clean perplexity) and ``kl``."""
        out = []
        for t in self.trials:
            pert, columns = self.trial_perturbation(t), {"method": self.cell.kind, "collapsed": t.collapsed}
            extra = {"trial": t.trial, "trial_seed": t.trial_seed, "component": self.cell.component}
            out += [Row("ppl_ratio", t.ratio, pert, extra, self.clean_perplexity, columns),
                    Row("perplexity", t.perplexity, pert, extra, self.clean_perplexity, columns),
                    Row("kl", t.kl, pert, extra, columns=columns)]
        return out


class NoiseCells:
    """The noise cells of a session's model (:meth:`of`): :meth:`measure` runs one cell's levels x trials.

    Args:
        sweep: the model, the preset's first evaluation windows, their clean baseline, the seed and the trials
            per level.
        preset: the noise preset (levels).
    """

    def __init__(self, sweep: SessionSweep, preset: NoisePreset) -> None:
        self.sweep, self.preset = sweep, preset

    @classmethod
    def of(cls, esa: Session, loaded: LoadedModel) -> NoiseCells:
        """``loaded``'s cells in the session ``esa``: the preset's windows, ``esa.trials`` on its trials."""
        p = esa.preset(PRESETS)
        return cls(SessionSweep.of(esa, loaded, p.windows, p.trials), p)

    def measure(self, cell: NoiseCell) -> NoiseCurve:
        """Every level x trial of ``cell`` (the model noised in place and restored after each trial; check
        :meth:`NoiseCell.skip_reason` first)."""
        s, p = self.sweep, self.preset
        model = s.loaded.model
        refs = select(model, components=cell.component)

        def perturb(spec, g):
            return add_noise(model, refs, spec.values["level"], kind=cell.kind, scale=SCALE, generator=g)

        specs = trial_specs(s.seed, s.trials, level=p.levels)  # trial-major: every level of trial 0 first
        rows = []
        for rec in Campaign(model, s.windows, s.clean).run(specs, perturb, cell=f"{s.loaded.name} {cell.id}"):
            t = rec.trial
            rows.append(NoiseTrial(rec.spec.values["level"], rec.spec.trial, rec.spec.seed, t.ratio,
                                   t.result.perplexity, t.result.kl, t.collapsed,
                                   trial_changed(t.ratio, t.result.kl, t.masked)))
        return NoiseCurve(cell, p.levels, s.trials, tuple(rows), s.clean.result.perplexity)
