"""Cells of the compare-sensitivity suite: each scoring method run once per model, and every pair compared.

The grid: the methods (``--methods``; default every registered scorer in both presets,
:func:`harness.scoring.options.compare_methods`), each scored once (:meth:`CompareCells.scored`), and
every pair of them (:meth:`CompareCells.agreements`). The preset (:data:`PRESETS`) sets the sizes: the
top-``k`` set each method keeps (quick 100, full 1000), the common seeded sample of weights the
Spearman correlation is taken over (quick 20 000, full 200 000, drawn per matrix in proportion to its
size, ``--seed``), the calibration windows the calibration scorers read (quick the first 2, full all)
and the costly scorers' options (``integrated`` steps quick 2 / full 8, ``hessian`` probes 2 / 16).

Scored weights: the decoder blocks' linear matrices (``harness.scoring.agreement.scored``);
``activation`` scores only ``mlp_down`` and ranks only the few weights its spike scan finds, so its
top-``k`` set is small (its Jaccard with dense methods is near 0 by construction) and it has no
Spearman sample (its scores are 0 almost everywhere). Signed methods (``integrated``, ``hessian``) are
ranked by |score|, as ``ScoreSet.top_k`` ranks them.

A method's cell is :class:`Scoring` (:meth:`CompareCells.measure`: its cost); a pair's, :class:`Agreement`. Each
carries its records (``rows()``).

The statistics: :class:`Agreement` (Jaccard of the top-k sets, Spearman on the common sample, the
random-ranking references), and the relations a pair that should agree is held to,
:func:`top_k_overlap` (a random overlap as large has probability below ``p_random``) and
:func:`ranks_agree` (rho above a random ranking's 99.9% limit).

Memory beyond the model: one method's full scores at a time (:func:`harness.scoring.agreement.scored`
keeps only its top-``k`` keys and its ``sample`` floats and drops the ScoreSet before the next method
is scored), so the peak is the heaviest scorer's own (``hessian``, :mod:`harness.scoring.hessian`).
Measured (peak RSS, smollm2-135m, quick preset, seed 0, one thread): 8.52 GB in issue 36, 6.13 GB with
checkpointed scorers, 2.66 GB with the Hessian's segmented double backward.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from harness.claims import Comparison
from harness.records.row import Row
from harness.scoring.agreement import Scored, overlap_pvalue, random_jaccard, random_spearman_limit
from harness.stats import jaccard, spearman

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel
    from harness.session import Session


@dataclass(frozen=True)
class Preset:
    """Sizes of one depth preset.

    Attributes:
        k: the top-``k`` weights each method keeps for the Jaccard comparison.
        sample: weights in the common seeded sample the Spearman correlation is taken over.
        calib_windows: the first calibration windows the calibration scorers read (None: all).
        integrated_steps: ``integrated`` scorer's steps.
        hessian_probes: ``hessian`` scorer's probes.
    """

    k: int
    sample: int
    calib_windows: int | None
    integrated_steps: int
    hessian_probes: int

    def options(self, method: str) -> dict[str, Any]:
        """Scorer options of ``method`` in this preset (empty for most methods)."""
        return {"integrated": {"steps": self.integrated_steps},
                "hessian": {"probes": self.hessian_probes}}.get(method, {})


PRESETS = {"quick": Preset(k=100, sample=20_000, calib_windows=2, integrated_steps=2, hessian_probes=2),
           "full": Preset(k=1000, sample=200_000, calib_windows=None, integrated_steps=8, hessian_probes=16)}


def score_perturbation(k: int) -> dict[str, Any]:
    """The records' perturbation of a scoring kept to its top ``k``: ``{kind: score, k}``."""
    return {"kind": "score", "k": k}


@dataclass(frozen=True)
class Scoring:
    """One method's scoring (its cost) and the top-``k`` it was asked for.

    Attributes:
        scored: the method's top-k, sampled scores, seconds and cost.
        k: the top-``k`` asked for.
    """

    scored: Scored
    k: int

    @property
    def method(self) -> str:
        return self.scored.method

    @property
    def found(self) -> int:
        """Weights in its top-k set (fewer than ``k`` for ``activation``)."""
        return len(self.scored.top)

    @property
    def perturbation(self) -> dict[str, Any]:
        return score_perturbation(self.k)

    def rows(self) -> list[Row]:
        """The ``seconds`` of scoring plus the top-k pass (forward / backward passes, tokens, weights found and the
        scorer options in extra); method: the scorer."""
        c = self.scored.cost
        extra = {"forward": c.forward, "backward": c.backward, "tokens": c.tokens, "found": self.found,
                 **self.scored.options}
        return [Row("seconds", self.scored.seconds, self.perturbation, extra, columns={"method": self.method})]


def methods(preset: str, chosen: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The methods compared: ``chosen`` (``--methods``) or every registered scorer, in either preset.

    Raises:
        UnknownNameError: a preset other than those of :data:`PRESETS`.
    """
    from harness.option_values import pick_preset
    from harness.scoring.options import compare_methods

    pick_preset(PRESETS, preset)
    return tuple(chosen) if chosen else compare_methods()


@dataclass(frozen=True)
class Agreement:
    """How two methods' scorings agree.

    Attributes:
        a, b: the methods, ``a < b``.
        k: the top-``k`` asked for.
        size_a, size_b: sizes of their top-k sets (``activation``'s may be smaller than ``k``).
        common: weights in both top-k sets.
        numel: weights scored.
        jaccard: Jaccard similarity of the top-k sets.
        rho: Spearman's rho of their |scores| on the common sample (None when a side has no sample).
        sample: the common sample's size (None with ``rho``).
    """

    a: str
    b: str
    k: int
    size_a: int
    size_b: int
    common: int
    numel: int
    jaccard: float
    rho: float | None = None
    sample: int | None = None

    @property
    def method(self) -> str:
        """The pair as its records name it: ``a|b``."""
        return f"{self.a}|{self.b}"

    @property
    def perturbation(self) -> dict[str, Any]:
        return score_perturbation(self.k)

    @property
    def random_overlap(self) -> float:
        """Expected overlap of two random sets of the same sizes: ``size_a size_b / numel``."""
        return self.size_a * self.size_b / self.numel

    @property
    def random_overlap_p(self) -> float:
        """Probability that two random sets of the same sizes share at least ``common`` weights."""
        return overlap_pvalue(self.common, self.size_a, self.size_b, self.numel)

    @property
    def random_limit(self) -> float | None:
        """Spearman's rho a random ranking of the sample stays below (99.9%); None without a sample."""
        return None if self.sample is None else random_spearman_limit(self.sample)

    def jaccard_extra(self) -> dict[str, Any]:
        """What the ``jaccard`` record carries: methods, sizes, overlap and the random references."""
        return {"method_a": self.a, "method_b": self.b, "k": self.k, "size_a": self.size_a, "size_b": self.size_b,
                "common": self.common, "random_jaccard": random_jaccard(self.size_a, self.size_b, self.numel),
                "random_overlap_p": self.random_overlap_p}

    def spearman_extra(self) -> dict[str, Any]:
        """What the ``spearman`` record carries: methods, sample size and the random limit."""
        return {"method_a": self.a, "method_b": self.b, "sample": self.sample, "over": "common_sample",
                "random_limit": self.random_limit}

    def rows(self) -> list[Row]:
        """``jaccard`` (:meth:`jaccard_extra`) and, where both have a sample, ``spearman`` (:meth:`spearman_extra`);
        method: the pair (``a|b``)."""
        columns = {"method": self.method}
        out = [Row("jaccard", self.jaccard, self.perturbation, self.jaccard_extra(), columns=columns)]
        if self.rho is not None:
            out.append(Row("spearman", self.rho, self.perturbation, self.spearman_extra(), columns=columns))
        return out


def agreement(a: Scored, b: Scored, k: int) -> Agreement:
    """Compare two scorings of the same model (``a.method < b.method``)."""
    rho = sample = None
    if a.sampled is not None and b.sampled is not None:
        rho, sample = spearman(a.sampled, b.sampled), int(a.sampled.numel())
    return Agreement(a.method, b.method, k, len(a.top), len(b.top), len(a.top & b.top), a.numel,
                     jaccard(a.top, b.top), rho, sample)


def top_k_overlap(found: Agreement, p_random: float) -> Comparison:
    """The top-k sets share more weights than two random sets would with probability ``p_random``."""
    return Comparison(found.random_overlap_p < p_random, found.common, found.random_overlap,
                      {"test": "random_overlap", **found.jaccard_extra()})


def ranks_agree(found: Agreement) -> Comparison:
    """Spearman's rho is above a random ranking's 99.9% limit.

    Raises:
        ValueError: the pair has no common sample (``activation``).
    """
    if found.rho is None or found.random_limit is None:
        raise ValueError(f"{found.method} has no Spearman sample to compare")
    return Comparison(found.rho > found.random_limit, found.rho, found.random_limit,
                      {"test": "random_ranking", "sample": found.sample})


@dataclass
class CompareCells:
    """The scorings of one model (memoized per method) and their pairwise agreement.

    Attributes:
        loaded: the ``LoadedModel`` scored.
        calib_windows: the calibration windows the calibration scorers read (the preset's first ones).
        preset: the sizes.
        seed: seeds the common Spearman sample.
    """

    loaded: LoadedModel
    calib_windows: torch.Tensor
    preset: Preset
    seed: int
    _positions: list[torch.Tensor] | None = None
    _scored: dict[str, Scored] = field(default_factory=dict)

    @classmethod
    def of(cls, esa: Session, loaded: LoadedModel) -> CompareCells:
        """``loaded``'s scorings in the pytest session ``esa`` (made once per model, preset, seed and windows), on
        the session's calibration windows."""
        calib_windows = esa.windows(loaded, "calib")
        o, p = esa.options, esa.preset(PRESETS)
        key = (loaded.name, "compare-cells", o.preset, o.seed, tuple(calib_windows.shape), o.corpus)
        return esa.cached(key, lambda: cls(loaded, calib_windows[: p.calib_windows], p, o.seed))

    def positions(self) -> list[torch.Tensor]:
        """The common sample: per linear matrix, flat indices (``harness.scoring.agreement.sample_positions``)."""
        from harness.scoring.agreement import sample_positions

        if self._positions is None:
            self._positions = sample_positions(self.loaded.model, self.preset.sample,
                                               torch.Generator().manual_seed(self.seed))
        return self._positions

    def scored(self, method: str) -> Scored:
        """``method``'s top-k and sampled |scores| (scored once, timed)."""
        from harness.scoring.agreement import scored

        if method not in self._scored:
            positions = self.positions()
            self._scored[method] = scored(self.loaded, method, self.calib_windows, self.preset.k, positions,
                                          **self.preset.options(method))
        return self._scored[method]

    def measure(self, method: str) -> Scoring:
        """``method``'s scoring (:meth:`scored`) with the top-``k`` asked for."""
        return Scoring(self.scored(method), self.preset.k)

    def agreements(self, methods: tuple[str, ...]) -> list[Agreement]:
        """Every pair of ``methods`` (sorted), scoring each method not yet scored in the given order first."""
        found = {m: self.scored(m) for m in methods}
        return [agreement(found[a], found[b], self.preset.k) for a, b in itertools.combinations(sorted(methods), 2)]
