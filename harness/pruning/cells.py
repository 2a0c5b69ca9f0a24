"""Cells of the pruning suites: one (scorer, sparsity, granularity) pruning measured once per model.

A cell prunes the live model with one scorer's scores, evaluates it and restores it bit-exactly;
:class:`PruningCells` memoizes the measured cells of one model, so that the claim tests comparing
cells reuse them. :class:`ScoreSlot` keeps the scores of one scorer at a time (the cells of one
scorer run together; two scorers' scores of a large model need not fit in memory at once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

PROTECT = "+protect"  # suffix of a scorer name: the same scorer with the model's super weights kept


@dataclass(frozen=True)
class PruneCell:
    """One pruning cell.

    Attributes:
        scorer: a scorer name, ``NAME+protect`` to keep the super weights.
        sparsity: share of each group pruned (for N:M, 1 - N/M).
        granularity: ``row``, ``matrix``, ``global``, ``N:M``, ``head``, ``neuron``.
    """

    scorer: str
    sparsity: float
    granularity: str

    @property
    def base(self) -> str:
        """The scorer without ``+protect``."""
        return self.scorer.removesuffix(PROTECT)

    @property
    def protected(self) -> bool:
        return self.scorer.endswith(PROTECT)

    @property
    def id(self) -> str:
        return f"{self.scorer}-{self.sparsity:g}-{self.granularity}"


def grid(scorers: Iterable[str], sparsities: Sequence[float], granularities: Sequence[str]) -> list[PruneCell]:
    """Every cell of scorers x (sparsities per unstructured granularity, or the N:M sparsity), scorer-major.

    One scorer's cells are adjacent, so :class:`ScoreSlot` computes its scores once.
    """
    cells = []
    for scorer in scorers:
        for granularity in granularities:
            if ":" in granularity:
                n, m = map(int, granularity.split(":"))
                cells.append(PruneCell(scorer, round(1 - n / m, 6), granularity))
            else:
                cells.extend(PruneCell(scorer, s, granularity) for s in sparsities)
    return cells


class ScoreSlot:
    """The ScoreSet of the last calibrated scorer asked for (one slot: a new one replaces the old scores; a scorer
    that reads only the weights, such as magnitude, is computed each time and leaves the slot alone)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._scores: Any = None

    def get(self, loaded: Any, scorer: str, windows: torch.Tensor, *, tag: Any = None) -> Any:
        """The ``scorer`` scores of every linear matrix of ``loaded`` on ``windows`` (computed once per slot).

        Args:
            loaded: a ``LoadedModel``.
            scorer: a scorer name of ``harness.scoring.SCORERS``.
            windows: calibration windows (count, length).
            tag: anything else the scores depend on (the corpus name), part of the slot's key.
        """
        from harness.scoring import SCORERS, score

        if not SCORERS.get(scorer).needs_windows:  # from the weights alone (magnitude): cheaper than a slot
            return score(loaded, scorer)
        key = (scorer, tuple(windows.shape), tag)
        if key != self._key:
            self._key, self._scores = None, None  # free the old scores before computing the new ones
            self._scores = score(loaded, scorer, windows=windows)
            self._key = key
        return self._scores


@dataclass
class CellResult:
    """What one pruned cell measured."""

    cell: PruneCell
    result: Any  # harness.metrics.EvalResult
    seconds: float  # of pruning
    summary: dict[str, Any]  # SparsityReport.to_dict(per_matrix=False)
    super_weights_pruned: int  # how many of the model's super weights the cell pruned
    perturbation: dict[str, Any] = field(default_factory=dict)

    @property
    def perplexity(self) -> float:
        return self.result.perplexity


@dataclass
class PruningCells:
    """The measured pruning cells of one model (memoized).

    Attributes:
        loaded: the ``LoadedModel`` pruned in place and restored after each cell.
        eval_windows, calib_windows: evaluation and calibration windows (count, length).
        reference: the clean model's KL / top-1 reference (``harness.metrics.make_reference``).
        super_weights: called once, on first need: the model's super weights (FaultSites), kept by
            ``+protect`` cells and counted in every cell.
        scores: the score slot (share one with other suites of the session).
        method: what pruned weights become (``zero``, ``mean``, ``noise``).
        tag: what else the scores depend on (the corpus name).
    """

    loaded: Any
    eval_windows: torch.Tensor
    calib_windows: torch.Tensor
    reference: Any
    super_weights: Callable[[], list[Any]]
    scores: ScoreSlot = field(default_factory=ScoreSlot)
    method: str = "zero"
    tag: Any = None
    _done: dict[PruneCell, CellResult] = field(default_factory=dict)
    _sites: list[Any] | None = None

    def super_weight_sites(self) -> list[Any]:
        if self._sites is None:
            self._sites = list(self.super_weights())
        return self._sites

    def measure(self, cell: PruneCell) -> CellResult:
        """Prune ``cell``, evaluate, restore; the same cell is measured once."""
        if cell not in self._done:
            self._done[cell] = self._run(cell)
        return self._done[cell]

    def _run(self, cell: PruneCell) -> CellResult:
        from harness.metrics import evaluate
        from harness.pruning import prune

        sites = self.super_weight_sites()
        scores = self.scores.get(self.loaded, cell.base, self.calib_windows, tag=self.tag)
        sparsity = None if ":" in cell.granularity else cell.sparsity
        start = time.perf_counter()
        with prune(self.loaded, scores, sparsity, granularity=cell.granularity, method=self.method,
                   protect=sites if cell.protected else None) as report:
            seconds = time.perf_counter() - start
            result = evaluate(self.loaded.model, self.eval_windows, self.reference)
            pruned_sites = count_zero(self.loaded.model, sites)
        return CellResult(cell, result, seconds, report.to_dict(per_matrix=False), pruned_sites,
                          {"kind": "prune", "scorer": cell.base, "sparsity": cell.sparsity,
                           "granularity": cell.granularity, "method": self.method, "protected": cell.protected})


def count_zero(model: torch.nn.Module, sites: Iterable[Any]) -> int:
    """How many of ``sites`` (FaultSites) hold zero in ``model``."""
    from harness.faults.sites import find_tensor

    return sum(int(find_tensor(model, s.param)[s.index] == 0) for s in sites)


def rounding(loaded: Any, granularity: str) -> float:
    """Largest share a group's pruned count can be off by when rounded to whole elements (or units)."""
    from harness.models import select

    shapes = [loaded.model.get_parameter(ref.param).shape for ref in select(loaded, components="linear")]
    if granularity == "row":
        return 0.5 / min(shape[1] for shape in shapes) + 1e-9
    if granularity in ("head", "neuron"):
        config = loaded.model.config
        heads = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        return 0.5 / (min(heads, kv) if granularity == "head" else config.intermediate_size) + 1e-9
    return 1e-3
