"""Cells of the weight-attack suite: one model in one dtype under one defense, attacked by name.

The grid is data: :func:`grid` gives the (attack, dtype, defense) cells of a preset and :data:`SIZES`
the preset's budget, windows and trial counts (:func:`attack_sizes` applies ``--flip-budget`` and
``--trials``). :class:`AttackCells` holds what one model's cells share for the session (the runs, the
guided attack's starting sites, :class:`GuidedStart`, a second copy of the model in another dtype) and
measures a cell (:meth:`AttackCells.measure`: the attack, the random baseline over its seeds and, under a
defense, the same runs without it). :class:`AttackCell` runs :func:`harness.attacks.run_attack` on its model
and memoizes each run, so that the random baseline is run once per cell and shared by the attack cells
comparing with it. :func:`flips_or_inf` reads a run's flips to collapse with a run that never
collapsed as +inf (censored: "did not collapse within the budget"), never as a number.

An :class:`AttackMeasurement` gives the cell's records (:meth:`~AttackMeasurement.rows`) and names the claims
that apply to it (:meth:`~AttackMeasurement.claims`, :class:`ClaimCheck`), by its kind: a ``random`` cell (the
baseline, under any defense) is recorded only; an ``undefended`` search (:data:`SEARCHES`) checks its flips
bound and, on int8 weights, that it beats every random run; a ``defended`` attack on floating-point weights
checks the defense's gain on the undefended run's flips replayed. The statistics: :func:`fewer_flips`,
:func:`defended_gain` and :meth:`AttackMeasurement.ratio_to_random`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from harness.attacks.base import attack_targets, run_attack
from harness.attacks.defenses import make_defense, sensitive_sites
from harness.attacks.options import ATTACK_DTYPES, SIZES, AttackSizes, defense_names, floating_point, weight_attacks
from harness.attacks.result import AttackResult, flips_or_inf
from harness.claims import Comparison, greater
from harness.option_values import pick_preset
from harness.recipes import super_weight_sites
from harness.records.row import Row
from harness.stats import trial_seed

if TYPE_CHECKING:
    from harness.models.copies import DtypeCopy
    from harness.models.loading import LoadedModel
    from harness.session import Session


# the dtypes each preset measures under a defense when neither --attack-dtypes nor --defenses is given (bf16 runs
# about 6x slower than fp32 on a CPU; quick measures it undefended only)
DEFENDED_DTYPES = {"quick": ("fp32", "int8"), "full": ATTACK_DTYPES}
RANDOM = "random"  # the random-flip baseline every attack is compared with
RANDOM_STREAM = "attack.random"  # trial_seed stream of the random baseline's seeds
SEARCHES = ("progressive", "guided")  # the attacks whose own flips are claimed (a bound, and beating random on int8)


def attack_sizes(options: Any) -> AttackSizes:
    """The preset's sizes (``options.preset``) with ``--flip-budget`` (``options.attack.flip_budget``) and
    ``--trials`` (``options.trials``) applied when given."""
    sizes = pick_preset(SIZES, options.preset)
    return replace(sizes, budget=options.attack.flip_budget or sizes.budget,
                   trials=options.trials or sizes.trials)


def grid(preset: str, attacks: Sequence[str] | None = None, dtypes: Sequence[str] | None = None,
         defenses: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """The (attack, dtype, defense) cells: the product of the lists given (default: every registered attack and
    defense, :data:`~harness.attacks.options.ATTACK_DTYPES`), dtype-major; without ``dtypes`` or ``defenses`` a
    defense is measured only on the preset's :data:`DEFENDED_DTYPES`."""
    defended = ATTACK_DTYPES if dtypes or defenses else DEFENDED_DTYPES[preset]
    return [(attack, dtype, defense)
            for dtype in dtypes or ATTACK_DTYPES
            for defense in defenses or defense_names()
            if defense == "none" or dtype in defended
            for attack in attacks or weight_attacks()]


@dataclass(frozen=True)
class GuidedStart:
    """Where the guided attack starts.

    Attributes:
        sites: FaultSites, strongest first.
        source: ``activation`` (the detected super weights) or ``candidate`` (where none was detected: the
            detector's strongest candidate, ``harness.recipes.super_weight_sites``).
        detection: the super-weight ``Detection`` the sites come from (falsy when it holds no site).
    """

    sites: list[Any]
    source: str
    detection: Any

    @property
    def detected(self) -> bool:
        """The sites are detected super weights (not the candidate standing in)."""
        return bool(self.detection)

    def stand_in_reason(self) -> str:
        """Why a claim about the guided attack does not apply when it started from stand-in sites."""
        return f"{self.detection.none_reason()}: the guided attack started from the {self.source} sites instead"


@dataclass
class AttackCell:
    """What every run of one attack cell shares.

    Attributes:
        name: the model's name (key of the memo).
        model: the model in the cell's dtype (attacked in place and restored bit-exactly).
        dtype: ``fp32``, ``bf16`` or ``int8``.
        defense: ``none``, ``checksum`` or ``clamp``.
        eval_windows: windows the damage curve is measured on (count, length).
        attack_windows: windows for gradients and trial losses (count, length).
        guided: where the guided attack starts (its ``sites``).
        budget: most flips per run.
        max_trials: progressive attack: most trials per flip (None: its default).
        protected: checksum defense: how many sensitive weights it protects.
        memo: runs by key, kept by the caller for the session.
    """

    name: str
    model: torch.nn.Module
    dtype: str
    defense: str
    eval_windows: torch.Tensor
    attack_windows: torch.Tensor
    guided: GuidedStart
    budget: int
    max_trials: int | None = None
    protected: int = 1024
    memo: dict[tuple, Any] = field(default_factory=dict)

    def _cached(self, key: tuple, make):
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def make_defense(self):
        if self.defense != "checksum":
            return make_defense(self.defense)
        k = self.protected
        sites = self._cached((self.name, "protected", self.dtype, k),
                             lambda: sensitive_sites(self.model, attack_targets(self.model), self.attack_windows, k))
        return make_defense("checksum", sites=sites, k=k)

    def clean_perplexity(self) -> float:
        from harness.metrics import evaluate

        return self._cached((self.name, "clean", self.dtype, tuple(self.eval_windows.shape)),
                            lambda: evaluate(self.model, self.eval_windows).perplexity)

    def run(self, attack_name: str, seed: int | None = None) -> AttackResult:
        """One attack run (``seed``: the random baseline's), memoized per (model, attack, dtype, defense, seed)."""
        options: dict[str, Any] = {}
        if attack_name == RANDOM:
            options.update(generator=torch.Generator().manual_seed(seed), curve=False)
        elif attack_name == "guided":
            options["super_weights"] = self.guided.sites
        elif attack_name == "progressive" and self.max_trials is not None:
            options["max_trials"] = self.max_trials
        key = (self.name, "run", attack_name, self.dtype, self.defense, self.budget, seed)
        return self._cached(key, lambda: run_attack(
            self.model, attack_name, eval_windows=self.eval_windows, attack_windows=self.attack_windows,
            budget=self.budget, defense=self.make_defense(), clean_perplexity=self.clean_perplexity(), **options))

    def replay(self, result: AttackResult) -> AttackResult:
        """``result``'s flips replayed, in order, on this cell's model under its defense (memoized like a run)."""
        sites = list(result.flips)
        key = (self.name, "replay", self.dtype, self.defense, self.budget, tuple(sites))
        return self._cached(key, lambda: run_attack(
            self.model, "replay", eval_windows=self.eval_windows, attack_windows=self.attack_windows,
            budget=self.budget, defense=self.make_defense(), clean_perplexity=self.clean_perplexity(), sites=sites))


def guided_start(detection: Any) -> GuidedStart:
    """Where the guided attack starts: the super weights of ``detection`` (source ``activation``), or where none was
    detected the detector's strongest candidate (source ``candidate``; ``harness.recipes.super_weight_sites``, the
    one no-super-weight fallback)."""
    sites, found = super_weight_sites(detection)
    return GuidedStart(sites, "activation" if found == "super_weights" else found, detection)


@dataclass(frozen=True)
class ClaimCheck:
    """One claim a cell checks, named by ``key`` (the suite declares the claim of each key).

    Attributes:
        key: ``("flips", attack, dtype)``: an undefended search's flips to collapse (a bound);
            ``("beats_random", attack)``: it needs fewer flips than every random run (int8 weights);
            ``("defense_gain", defense)``: the undefended search's flips, replayed under the defense, need more
            (floating-point weights).
        evidence: the bound's number or the relation's ``Comparison`` (None where the claim does not apply).
        extra: the claim row's ``extra`` (None: none).
        not_applicable: why the claim does not apply to this model ("": it applies).
    """

    key: tuple[str, ...]
    evidence: float | Comparison | None = None
    extra: dict[str, Any] | None = None
    not_applicable: str = ""


@dataclass(frozen=True)
class AttackMeasurement:
    """What one cell measured: the attack's runs, and the random baseline's in the same cell.

    Attributes:
        attack: the attack's name.
        budget: most flips per run.
        seeds: the random baseline's seeds.
        random_flips: the random baseline's flips to collapse per seed, in this cell (+inf: censored).
        runs: (seed, run) of the attack: one per seed for ``random``, else one (the session's seed).
        undefended: under a defense, the same runs without it (empty in an undefended cell).
        replayed: under a defense, a search's undefended run's flips replayed in order with the defense.
        dtype: the attacked weights' dtype (:data:`~harness.attacks.options.ATTACK_DTYPES`).
        defense: the defense's name (``none`` without one).
        guided: where the guided attack started (None for another attack).
    """

    attack: str
    budget: int
    seeds: list[int]
    random_flips: list[float]
    runs: list[tuple[int, AttackResult]]
    undefended: list[AttackResult] = field(default_factory=list)
    replayed: AttackResult | None = None
    dtype: str = "fp32"
    defense: str = "none"
    guided: GuidedStart | None = None

    @property
    def flips(self) -> list[float]:
        """The attack's flips to collapse per run (+inf: censored)."""
        return [flips_or_inf(r) for _, r in self.runs]

    @property
    def undefended_flips(self) -> list[float]:
        return [flips_or_inf(r) for r in self.undefended]

    @property
    def median_flips(self) -> float:
        """The median of :attr:`flips` (+inf counted as larger than any number)."""
        return statistics.median(self.flips)

    def ratio_to_random(self) -> tuple[float, float]:
        """(the attack's flips / the random baseline's median, that median), a censored run counted as budget + 1
        (in this statistic only, so that it stays a number)."""
        censored = self.budget + 1
        median = statistics.median(min(f, censored) for f in self.random_flips)
        return min(self.flips[0], censored) / median, median

    @property
    def kind(self) -> str:
        """``random`` (the baseline, under any defense), ``undefended`` or ``defended`` (another attack)."""
        return RANDOM if self.attack == RANDOM else "undefended" if self.defense == "none" else "defended"

    @property
    def perturbation(self) -> dict[str, Any]:
        """The records' ``perturbation``: {kind, attack, dtype, defense, budget} and, for the guided attack, the
        source of its sites (``super_weights``)."""
        return {"kind": "bitflip_attack", "attack": self.attack, "dtype": self.dtype, "defense": self.defense,
                "budget": self.budget, **({"super_weights": self.guided.source} if self.guided is not None else {})}

    def rows(self) -> list[Row]:
        """The cell's records: each run's (:meth:`AttackResult.rows`); an attack's ``flips_ratio_to_random`` (not the
        baseline's own); under a defense ``flips_vs_undefended`` (the random baseline's: its median)."""
        p = self.perturbation
        rows = [row for seed, result in self.runs for row in result.rows(p, seed)]
        if self.kind != RANDOM:
            ratio, median = self.ratio_to_random()
            rows.append(Row("flips_ratio_to_random", ratio, p,
                            {"random_median": median, "seeds": self.seeds, "censored_as": self.budget + 1}))
        if self.defense != "none":
            rows.append(self._vs_undefended(p))
        return rows

    def _vs_undefended(self, p: dict[str, Any]) -> Row:
        if self.kind == RANDOM:
            return Row("flips_vs_undefended", self.median_flips, p,
                       {"undefended": self.undefended_flips, "defended": self.flips, "seeds": self.seeds})
        return Row("flips_vs_undefended", self.flips[0], p,
                   {"undefended": self.undefended_flips[0], "replayed_under_defense": flips_or_inf(self.replayed)})

    def claims(self) -> list[ClaimCheck]:
        """The claims that apply to this cell, by :attr:`kind`: none in a ``random`` cell (recorded only). An
        ``undefended`` search (:data:`SEARCHES`): on int8 weights fewer flips than every random run, and its flips
        bound; both not applicable to the guided attack where it started from stand-in sites. A ``defended`` attack
        on floating-point weights: the defense's gain on the undefended run's flips replayed (not on int8: a
        flipped code stays inside the matrix's code range, which clamping cannot repair)."""
        if self.kind == "undefended":
            return self._search_claims()
        return self._defense_claims() if self.kind == "defended" else []

    def _search_claims(self) -> list[ClaimCheck]:
        if self.attack not in SEARCHES:
            return []
        flips = ("flips", self.attack, self.dtype)
        beats = [] if floating_point(self.dtype) else [("beats_random", self.attack)]
        if self.guided is not None and not self.guided.detected:  # e.g. gemma3-270m: its strongest candidate is mild
            return [ClaimCheck(key, not_applicable=self.guided.stand_in_reason()) for key in (flips, *beats)]
        return [*(ClaimCheck(key, fewer_flips(self.flips[0], self.random_flips), {"seeds": self.seeds})
                  for key in beats),
                ClaimCheck(flips, self.flips[0])]

    def _defense_claims(self) -> list[ClaimCheck]:
        if not floating_point(self.dtype):
            return []
        gain = defended_gain(flips_or_inf(self.replayed), self.undefended_flips[0])
        return [ClaimCheck(("defense_gain", self.defense), gain,
                           {"undefended_flips": [s.to_dict() for s in self.undefended[0].flips]})]


class AttackCells:
    """What the weight-attack cells of one model share for the session, and the measuring of a cell.

    Args:
        loaded: the session's ``LoadedModel``.
        options: the session's options (``preset``, ``seed``, ``trials``, ``device``, ``attack``).
        eval_windows: the evaluation windows; a cell measures the damage on the first ``sizes.eval_windows``.
        calib_windows: the calibration windows; gradients and trial losses use the first ``sizes.attack_tokens``
            tokens of the first.
        copies: the session's second copy of a model in another dtype (default: one of these cells' own).
    """

    def __init__(self, loaded: LoadedModel, options: Any, eval_windows: torch.Tensor, calib_windows: torch.Tensor,
                 copies: DtypeCopy | None = None) -> None:
        self.loaded = loaded
        self.sizes = s = attack_sizes(options)
        self.eval_windows = eval_windows if s.eval_windows is None else eval_windows[: s.eval_windows]
        self.attack_tokens = calib_windows[:1] if s.attack_tokens is None else calib_windows[:1, : s.attack_tokens]
        self.seed: int = options.seed
        self._memo: dict[tuple, Any] = {}  # the runs of every cell (AttackCell.memo)
        if copies is None:
            from harness.models.copies import DtypeCopy

            copies = DtypeCopy(options.device)
        self.copies = copies  # the model in another float dtype
        self._guided: dict[str, GuidedStart] = {}  # by detection id

    @classmethod
    def of(cls, esa: Session, loaded: LoadedModel) -> AttackCells:
        """The cells of ``loaded`` kept by ``esa`` (forgotten with the model when the session drops it), on the
        session's evaluation and calibration windows."""
        return esa.cached((loaded.name, "attack-cells"), lambda: cls(
            loaded, esa.options, esa.windows(loaded, "eval"), esa.windows(loaded, "calib"),
            esa.copies))

    def seeds(self) -> list[int]:
        """The random baseline's seeds (``trial_seed(seed, i, stream="attack.random")``)."""
        return [trial_seed(self.seed, i, stream=RANDOM_STREAM) for i in range(self.sizes.trials)]

    def guided(self, detection: Any) -> GuidedStart:
        """:func:`guided_start` of a super-weight ``Detection`` on the session model (once per detection)."""
        if detection.id not in self._guided:
            self._guided[detection.id] = guided_start(detection)
        return self._guided[detection.id]

    @contextmanager
    def model_in(self, dtype: str) -> Iterator[torch.nn.Module]:
        """The model to attack in ``dtype``: the session model when it has that dtype; for ``int8`` the session
        model with every attack target swapped for per-channel int8 codes for the body; another float dtype a
        second copy loaded once, checked unchanged after the body.

        Raises:
            HarnessError: the body left the copy changed (the copy is forgotten, and loaded again next time).
        """
        model = self.loaded.model
        if dtype == "int8":
            from harness.faults import quantize_int8

            with quantize_int8(model, [t.module for t in attack_targets(model)]):
                yield model
            return
        with self.copies.use(self.loaded, dtype, what="attack") as other:
            yield other.model

    def cell(self, model: torch.nn.Module, dtype: str, defense: str, guided: GuidedStart) -> AttackCell:
        """The cell of ``model`` (from :meth:`model_in`) in ``dtype`` under ``defense``, on the cells' windows."""
        s = self.sizes
        return AttackCell(self.loaded.name, model, dtype, defense, self.eval_windows, self.attack_tokens, guided,
                          s.budget, max_trials=s.max_trials, protected=s.protected, memo=self._memo)

    def measure(self, cell: AttackCell, attack: str) -> AttackMeasurement:
        """Run ``attack`` and the random baseline in ``cell`` and, under a defense, the same runs without it (each
        run once per session: the runs are memoized)."""
        seeds = self.seeds()
        baseline = [cell.run(RANDOM, seed) for seed in seeds]
        runs = list(zip(seeds, baseline, strict=True)) if attack == RANDOM else [(self.seed, cell.run(attack))]
        undefended, replayed = [], None
        if cell.defense != "none":
            plain = replace(cell, defense="none")
            undefended = [plain.run(attack, seed if attack == RANDOM else None) for seed, _ in runs]
            if attack != RANDOM:
                replayed = cell.replay(undefended[0])
        return AttackMeasurement(attack, cell.budget, seeds, [flips_or_inf(r) for r in baseline], runs,
                                 undefended, replayed, cell.dtype, cell.defense,
                                 cell.guided if attack == "guided" else None)


def fewer_flips(attack: float, random: list[float]) -> Comparison:
    """The attack needs fewer flips than every random run (+inf: no collapse within the budget).

    Recorded sides: the fewest random flips (value) and the attack's flips (other).
    """
    holds = math.isfinite(attack) and all(r > attack for r in random)
    return Comparison(holds, min(random), attack, {"test": "paired_strict", "pairs": len(random),
                                                   "pairs_holding": sum(r > attack for r in random),
                                                   "random": random, "attack": attack})


def defended_gain(defended: float, undefended: float) -> Comparison:
    """Strictly more flips with the defense (+inf: held off); undecidable when the undefended run did not collapse
    within the budget (nothing to defend against at this budget)."""
    if not math.isfinite(undefended):
        return Comparison(False, defended, undefended, {"undefended": undefended},
                          undecidable="the undefended run did not collapse within the budget: raise --flip-budget")
    return greater(defended, undefended)
