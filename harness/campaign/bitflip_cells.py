"""Cells of the bit-flip suite: seeded flips of the stored bits of the weights, target x bit class x dtype x flips.

A cell (:class:`BitflipCell`) runs seeded trials through :class:`harness.campaign.Campaign`: trial t draws its
sites (:func:`harness.campaign.bitflip.sample_sites`) from a generator seeded from (seed, t), flips them in place,
evaluates against the clean model of the same dtype on the same windows and restores. Positions are drawn before
bits, so trial t hits the same weights in every bit class of a target (a paired design). The grid of each depth
preset is :data:`PRESETS`; :class:`BitflipCells` measures a cell once per model and dtype and returns a
:class:`BitflipResult` (its trials as :class:`BitflipTrial`, its records as :meth:`BitflipResult.rows`). It records
nothing: the test that asks does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from harness.campaign.bitflip import TARGETS, sample_sites, site_pool
from harness.campaign.engine import Campaign, trial_specs
from harness.campaign.sizing import Precision, Sizing, sequential
from harness.claims import trial_changed
from harness.errors import HarnessError
from harness.faults import BIT_CLASSES, FaultSite, flip_bits
from harness.models.copies import DtypeCopy
from harness.models.device import DTYPES, dtype_name
from harness.option_values import pick_preset
from harness.recipes import super_weight_sites
from harness.records.row import Row, trial_rows

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel
    from harness.session import Session

CAMPAIGN_BITS = tuple(BIT_CLASSES.names(tag="campaign"))
# A mantissa-LSB flip moves a weight by one unit in the last place and may be rounded away in every output:
# the bit classes whose flips must act (effect guards) are the others.
ACTING_BITS = tuple(b for b in CAMPAIGN_BITS if b != "mantissa_lsb")


@dataclass(frozen=True)
class BitflipPreset:
    """The bit-flip grid and sizes of one depth preset.

    Attributes:
        dtypes: ``native`` (the model's own) and/or ``bf16`` (a second copy of the model).
        flips: flips per trial.
        windows: the first this many eval windows (None: all).
        trials: trials per cell (``--trials`` and random-weight models aside: the session's rule).
        uniform_trials: trials of the ``uniform`` cells (the relation's: Wilson intervals apart at this count).
    """

    dtypes: tuple[str, ...]
    flips: tuple[int, ...]
    windows: int | None
    trials: int
    uniform_trials: int


PRESETS = {
    "quick": BitflipPreset(dtypes=("native",), flips=(1,), windows=2, trials=5, uniform_trials=20),
    "full": BitflipPreset(dtypes=("native", "bf16"), flips=(1, 8), windows=None, trials=20, uniform_trials=40),
}


def short_dtype(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``fp32`` (the first word of ``harness.models.device.DTYPES`` naming it)."""
    return next((word for word, d in DTYPES.items() if d == dtype), dtype_name(dtype))


@dataclass(frozen=True)
class BitflipCell:
    """One bit-flip cell: ``n_flips`` flips of ``bit_class`` bits of ``target`` weights, in ``dtype``."""

    target: str  # one of harness.campaign.bitflip.TARGETS
    bit_class: str  # one of CAMPAIGN_BITS
    dtype: str = "native"  # native or bf16
    n_flips: int = 1

    @property
    def id(self) -> str:
        return f"{self.target}-{self.bit_class}-{self.dtype}-{self.n_flips}flip{'s' if self.n_flips > 1 else ''}"

    def trials_in(self, preset: BitflipPreset) -> int:
        """Trials of this cell in ``preset`` (before the session's trial rule: ``--trials``, random weights)."""
        return preset.uniform_trials if self.target == "uniform" else preset.trials

    def skip_reason(self, loaded: LoadedModel) -> str | None:
        """Why this cell does not apply to ``loaded`` (a bf16 cell of a bf16 model), else None."""
        if self.dtype != "native" and loaded.dtype == torch.bfloat16:
            return "the model already is bf16: the native cell covers it"
        return None


def grid(preset: str) -> list[BitflipCell]:
    """Every cell of ``preset``: target x campaign bit class x dtype x flips."""
    p = pick_preset(PRESETS, preset)
    return [BitflipCell(t, b, d, n) for t in TARGETS for b in CAMPAIGN_BITS for d in p.dtypes for n in p.flips]


@dataclass(frozen=True)
class BitflipTrial:
    """One trial of a cell: its flips and what they did."""

    trial: int
    trial_seed: int
    ratio: float  # perplexity / clean perplexity (inf: non-finite output)
    kl: float  # KL to the clean model as evaluated (not +inf on a collapse: see BitflipResult.kls)
    collapsed: bool
    changed: bool  # harness.claims.trial_changed: the output moved
    sites: tuple[FaultSite, ...]


@dataclass(frozen=True)
class BitflipResult:
    """What one cell measured on one model."""

    cell: BitflipCell
    trials: tuple[BitflipTrial, ...]
    sizing: Sizing  # how many trials, and the collapse rate's interval
    source: str  # where the target's sites come from (uniform_linear, super_weights:<id>, top64_abs_mlp_down ...)
    dtype: str  # fp32, fp16, bf16 (claim names)
    torch_dtype: str  # float32, ... (the records' dtype column)
    clean_perplexity: float
    stand_in: str = ""  # why the list target's sites stand in for super weights ("": they are the super weights)

    @property
    def n(self) -> int:
        return self.sizing.trials

    @property
    def collapses(self) -> int:
        return self.sizing.hits

    @property
    def collapse_rate(self) -> float:
        return self.collapses / self.n

    @property
    def kls(self) -> list[float]:
        """Each trial's KL, a collapse +inf (the relation's statistic)."""
        return [math.inf if t.collapsed else t.kl for t in self.trials]

    @property
    def changed(self) -> list[bool]:
        return [t.changed for t in self.trials]

    @property
    def perturbation(self) -> dict[str, Any]:
        """The cell's perturbation column."""
        return {"kind": "bitflip", "bit_class": self.cell.bit_class, "target": self.cell.target,
                "target_source": self.source, "dtype": self.dtype, "n_flips": self.cell.n_flips}

    def trial_perturbation(self, trial: BitflipTrial) -> dict[str, Any]:
        """One trial's perturbation column: the cell's, with the sites flipped."""
        return {**self.perturbation, "n_flips": len(trial.sites), "sites": [s.to_dict() for s in trial.sites]}

    def rows(self) -> list[Row]:
        """Per trial its ``ppl_ratio`` (against the clean perplexity) and ``kl``, then the cell's ``collapse_rate``
        (its sizing in extra); method: the target."""
        out = []
        for t in self.trials:
            pert, extra = self.trial_perturbation(t), {"trial": t.trial, "trial_seed": t.trial_seed}
            columns = {"method": self.cell.target, "collapsed": t.collapsed}
            out += trial_rows(t.ratio, t.kl, pert, extra, self.clean_perplexity, columns)
        out.append(Row("collapse_rate", self.collapses / self.n, self.perturbation, self.sizing.to_dict(),
                       columns={"method": self.cell.target}))
        return out


class BitflipCells:
    """The measured bit-flip cells of a session's model (a cell is measured once per dtype).

    Args:
        loaded: the session's ``LoadedModel`` (flipped in place and restored; a bf16 cell flips its copy).
        windows: the evaluation windows (count, length); the preset's first ones are used.
        detection: ``detection() -> Detection``, the model's super weights (asked for by the ``list`` target only).
        preset: ``quick`` or ``full`` (windows per cell; the grid is :func:`grid`).
        seed: the campaign seed (trial t draws from ``trial_seed(seed, t)``).
        clean: ``clean(name, model, windows) -> Clean``, the session's shared clean baseline (prefix kept).
        trials: ``trials(model_name, preset_count) -> int``, the session's trial rule.
        copies: the model's bf16 copy (``harness.models.copies.DtypeCopy``; default: these cells' own).
        precision: size rate cells sequentially to this precision (None: the preset's trials only).
    """

    def __init__(self, loaded: LoadedModel, windows: torch.Tensor, detection: Callable[[], Any] | None = None, *,
                 preset: str, seed: int, clean: Callable[..., Any], trials: Callable[..., int],
                 copies: DtypeCopy | None = None, precision: Precision | None = None) -> None:
        self.loaded, self.detection = loaded, detection
        self.preset = pick_preset(PRESETS, preset)
        self.windows = windows[: self.preset.windows]
        self.seed, self.clean, self.trials, self.precision = seed, clean, trials, precision
        self.copies = copies if copies is not None else DtypeCopy()
        self._done: dict[tuple, BitflipResult] = {}
        self._pools: dict[tuple, tuple[list[FaultSite] | None, str]] = {}

    @classmethod
    def of(cls, esa: Session, loaded: LoadedModel) -> BitflipCells:
        """``loaded``'s cells kept by the pytest session ``esa`` (forgotten with the model when the session drops
        it), on the session's evaluation windows and super-weight detection."""
        o = esa.options

        def make() -> BitflipCells:
            return cls(loaded, esa.windows(loaded, "eval"), lambda: esa.detection(loaded), preset=o.preset,
                       seed=o.seed, clean=esa.clean, trials=esa.trials, copies=esa.copies,
                       precision=o.precision)

        return esa.cached((loaded.name, "bitflip-cells"), make)

    def pool(self, target: str, loaded: LoadedModel | None = None) -> tuple[list[FaultSite] | None, str]:
        """(candidate sites, where they come from) of ``target`` on ``loaded`` (default: the cells' model; a bf16
        cell's copy), once per model and dtype; the ``list`` target's sites are the detected super weights."""
        loaded = loaded or self.loaded
        key = (loaded.name, target, str(loaded.dtype))
        if key not in self._pools:
            listed, source = None, target
            if target == "list":
                if self.detection is None:
                    raise HarnessError("the list target needs the model's super-weight detection")
                detection = self.detection()
                listed, found = super_weight_sites(detection)  # the one no-super-weight fallback: the candidate
                source = f"{found}:{detection.id}"
            self._pools[key] = site_pool(loaded.model, target, listed, source)
        return self._pools[key]

    def measure(self, cell: BitflipCell) -> BitflipResult:
        """The cell's trials on the model (or its bf16 copy), measured once; check :meth:`BitflipCell.skip_reason`
        first."""
        dtype = short_dtype(self.loaded.dtype) if cell.dtype == "native" else cell.dtype
        key = (dtype, cell)
        if key not in self._done:
            with self.copies.use(self.loaded, dtype, what=f"bit-flip cell {cell.id}") as flipped:
                self._done[key] = self._run(flipped, cell)
        return self._done[key]

    def _run(self, loaded: LoadedModel, cell: BitflipCell) -> BitflipResult:
        name, model, dtype, windows = self.loaded.name, loaded.model, short_dtype(loaded.dtype), self.windows
        clean = self.clean(loaded.name, model, windows)
        pool, source = self.pool(cell.target, loaded)

        def perturb(spec, g):
            return flip_bits(model, sample_sites(model, cell.target, cell.bit_class, cell.n_flips, generator=g,
                                                 pool=pool))

        campaign = Campaign(model, windows, clean)
        label = f"{name} {cell.target}-{cell.bit_class}-{dtype}-{cell.n_flips}flip"

        def run(first: int, count: int):
            return campaign.run(trial_specs(self.seed, count, first=first), perturb, cell=label)

        rows, sizing = [], None
        for rec in sequential(run, lambda r: r.trial.collapsed, start=self.trials(name, cell.trials_in(self.preset)),
                              precision=self.precision, population=len(pool) if pool else math.inf):
            if isinstance(rec, Sizing):
                sizing = rec
                continue
            t = rec.trial
            rows.append(BitflipTrial(rec.spec.trial, rec.spec.seed, t.ratio, t.result.kl, t.collapsed,
                                     trial_changed(t.ratio, t.result.kl, t.masked), tuple(rec.perturbation.sites)))
        stand_in = ""
        if source.startswith("candidate:"):
            stand_in = (f"{self.detection().none_reason()}: the list target flipped the detector's strongest "
                        "candidate instead")
        return BitflipResult(cell, tuple(rows), sizing, source, dtype, dtype_name(loaded.dtype),
                             clean.result.perplexity, stand_in)
