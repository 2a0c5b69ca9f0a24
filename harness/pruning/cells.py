"""Cells of the pruning suites: one (scorer, sparsity, granularity) pruning measured once per model.

The grid per depth preset is :data:`PRESETS` (quick: magnitude, wanda, gradient, magnitude+protect x
10/30/50/60% x row, and 2:4; full adds taylor and wanda+protect, 10-60% in steps of 10 and every
granularity); :func:`preset_grid` applies ``--prune-scorers``, ``--sparsities`` and ``--granularity``.
A cell prunes the live model with one scorer's scores, evaluates it and restores it bit-exactly;
:class:`PruningCells` memoizes the measured cells of one model (:meth:`PruningCells.of`), so that the
claim tests comparing cells reuse them. :class:`ScoreSlot` keeps the scores of one scorer at a time
(the cells of one scorer run together; two scorers' scores of a large model need not fit in memory
at once), one slot per model for the session (:meth:`ScoreSlot.of`, shared with the selective suite).

Memory beyond the model (P pruned weights, the linear matrices of the blocks; T tokens per batch, V the
vocabulary): the slot's scores (``gradient``: P fp32 sums; ``wanda``: one vector per matrix; ``magnitude``:
none, computed per matrix), and while a cell runs the pruning's backup (at most P elements: the pruned ones
with their positions, or the whole matrix where smaller, :mod:`harness.pruning.prune`), its packed masks
(P bits) and the evaluation forward (T·V logits); while scoring, the scorer's own peak
(:mod:`harness.scoring.gradient`: P + checkpointed activations of T = 1024 tokens).
:meth:`PruningCells.save_and_reload` loads one more model at a time. Measured (peak RSS, smollm2-135m, quick
preset, seed 0, one thread): 4.06 GB before the gradient scorer checkpointed its blocks, 2.91 GB after.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness import heap
from harness.claims import Comparison, has_effect, trial_changed
from harness.option_values import pick_preset
from harness.pruning.options import (
    FULL_GRANULARITIES,
    FULL_SCORERS,
    FULL_SPARSITIES,
    QUICK_GRANULARITIES,
    QUICK_SPARSITIES,
    SUITE_SCORERS,
)
from harness.records.row import Row

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel
    from harness.session import Session

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


@dataclass(frozen=True)
class Preset:
    """The pruning grid of one depth preset.

    Attributes:
        scorers: scorer names, ``NAME+protect`` to keep the super weights (``--prune-scorers``).
        sparsities: sparsities of the unstructured granularities (``--sparsities``).
        granularities: granularities; an N:M one has its own sparsity (``--granularity``).
    """

    scorers: tuple[str, ...]
    sparsities: tuple[float, ...]
    granularities: tuple[str, ...]


PRESETS = {"quick": Preset(SUITE_SCORERS, QUICK_SPARSITIES, QUICK_GRANULARITIES),
           "full": Preset(FULL_SCORERS, FULL_SPARSITIES, FULL_GRANULARITIES)}


def preset_grid(preset: str, scorers: Sequence[str] | None = None, sparsities: Sequence[float] | None = None,
                granularities: Sequence[str] | None = None) -> list[PruneCell]:
    """The :func:`grid` of preset ``preset``, each part replaced by the one given (None or empty: the preset's)."""
    p = pick_preset(PRESETS, preset)
    return grid(scorers or p.scorers, sparsities or p.sparsities, granularities or p.granularities)


class ScoreSlot:
    """The ScoreSet of the last calibrated scorer asked for (one slot: a new one replaces the old scores; a scorer
    that reads only the weights, such as magnitude, is computed each time and leaves the slot alone)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._scores: Any = None

    @classmethod
    def of(cls, esa: Session, loaded: LoadedModel) -> ScoreSlot:
        """The slot of ``loaded`` in the pytest session ``esa`` (one per model, shared by the pruning suites)."""
        return esa.cached((loaded.name, "pruning-scores"), cls)

    def get(self, loaded: LoadedModel, scorer: str, windows: torch.Tensor, *, tag: Any = None) -> Any:
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
            heap.trim()
            self._scores = score(loaded, scorer, windows=windows)
            self._key = key
        return self._scores


class AgainstClean:
    """A pruned model's evaluation read against the clean model's: the dataclass that mixes it in holds both
    ``EvalResult`` s, as ``result`` and ``clean``."""

    @property
    def perplexity(self) -> float:
        """The pruned model's perplexity."""
        return self.result.perplexity  # type: ignore[attr-defined]

    @property
    def ratio(self) -> float:
        """Perplexity over the clean model's (inf on collapse)."""
        return self.result.ratio_to(self.clean)  # type: ignore[attr-defined]


@dataclass
class CellResult(AgainstClean):
    """What one pruned cell measured."""

    cell: PruneCell
    result: Any  # harness.metrics.EvalResult
    seconds: float  # of pruning
    summary: dict[str, Any]  # SparsityReport.to_dict(per_matrix=False)
    super_weights_pruned: int  # how many of the model's super weights the cell pruned
    perturbation: dict[str, Any] = field(default_factory=dict)
    clean: Any = None  # the clean model's EvalResult on the same windows

    def effect(self) -> Comparison | str:
        """The effect claim's evidence: did the pruned model's output move; or why it does not apply (the cell
        pruned no weight: its fraction of a few whole groups, heads or neurons of a tiny model, rounds to none)."""
        if self.summary["pruned"] == 0:
            return (f"{self.cell.sparsity:g} of the {self.cell.granularity} groups rounds to none: the cell prunes no "
                    "weight")
        return has_effect([trial_changed(self.ratio, self.result.kl)])

    @property
    def extra(self) -> dict[str, Any]:
        """What a cell's records carry beside the metric: the sparsity reached (overall, smallest and largest per
        matrix), weights pruned, protected sites, backup bytes, matrices and the super weights pruned."""
        kept = {k: self.summary[k] for k in SUMMARY}
        return {**kept, "super_weights_pruned": self.super_weights_pruned}

    def rows(self) -> list[Row]:
        """``perplexity`` (against the clean perplexity), ``ppl_ratio``, ``kl``, ``top1`` and the ``seconds`` of
        pruning, each with the cell's perturbation and :attr:`extra`; method: the scorer as named in the cell."""
        r, pert, extra, columns = self.result, self.perturbation, self.extra, {"method": self.cell.scorer}
        return [Row("perplexity", r.perplexity, pert, extra, self.clean.perplexity, columns),
                Row("ppl_ratio", self.ratio, pert, extra, columns=columns),
                Row("kl", r.kl, pert, extra, columns=columns),
                Row("top1", r.top1, pert, extra, columns=columns),
                Row("seconds", self.seconds, pert, extra, columns=columns)]


SUMMARY = ("sparsity", "model_sparsity", "min_matrix_sparsity", "max_matrix_sparsity", "pruned", "numel", "protected",
           "backup_bytes", "matrices")  # SparsityReport.to_dict keys a cell's records carry


@dataclass(frozen=True)
class Reloaded:
    """A pruned model saved (inside the pruning context) and loaded back.

    Attributes:
        before_saving: perplexity of the pruned live model on the evaluation windows.
        via_from_pretrained: the same, loaded back with ``AutoModelForCausalLM.from_pretrained``.
        via_zoo: the same, loaded back with ``harness.models.load_model``.
        files: names of the files written.
        perturbation: the pruning, as the cells' records describe it.
        method: the scorer as named in the cell (the records' method).
        clean_perplexity: the clean model's perplexity on the same windows.
    """

    before_saving: float
    via_from_pretrained: float
    via_zoo: float
    files: list[str]
    perturbation: dict[str, Any]
    method: str
    clean_perplexity: float

    def rows(self) -> list[Row]:
        """The reloaded model's ``perplexity`` (via the zoo; against the clean perplexity), the other two in extra."""
        extra = {"reloaded": True, "measured_before_saving": self.before_saving,
                 "via_from_pretrained": self.via_from_pretrained}
        return [Row("perplexity", self.via_zoo, self.perturbation, extra, self.clean_perplexity,
                    {"method": self.method})]


@dataclass
class PruningCells:
    """The measured pruning cells of one model (memoized).

    Attributes:
        loaded: the ``LoadedModel`` pruned in place and restored after each cell.
        eval_windows, calib_windows: evaluation and calibration windows (count, length).
        reference: the clean model's KL / top-1 reference (``harness.metrics.make_reference``).
        clean: the clean model's EvalResult on ``eval_windows`` (the cells' ratios and clean values).
        detection: called once, on first need: the model's super-weight ``Detection``; its sites are kept
            by ``+protect`` cells and counted in every cell.
        scores: the score slot (share one with other suites of the session).
        method: what pruned weights become (``zero``, ``mean``, ``noise``).
        tag: what else the scores depend on (the corpus name).
    """

    loaded: LoadedModel
    eval_windows: torch.Tensor
    calib_windows: torch.Tensor
    reference: Any
    clean: Any
    detection: Callable[[], Any]
    scores: ScoreSlot = field(default_factory=ScoreSlot)
    method: str = "zero"
    tag: Any = None
    _done: dict[PruneCell, CellResult] = field(default_factory=dict)
    _detected: Any = None

    @classmethod
    def of(cls, esa: Session, loaded: LoadedModel) -> PruningCells:
        """``loaded``'s cells in the pytest session ``esa`` (made once per model, prune method, window sets and
        corpus), on the session's windows, pruning with the session's shared :class:`ScoreSlot` and keeping the
        session's super weights and its clean baseline (``reference`` and result)."""
        eval_windows, calib_windows = esa.windows(loaded, "eval"), esa.windows(loaded, "calib")
        clean = esa.clean(loaded.name, loaded.model, eval_windows)
        o = esa.options
        method = o.pruning.method or "zero"
        key = (loaded.name, "pruning-cells", method, tuple(eval_windows.shape), tuple(calib_windows.shape), o.corpus)
        return esa.cached(key, lambda: cls(loaded, eval_windows, calib_windows, clean.reference, clean.result,
                                           lambda: esa.detection(loaded), scores=ScoreSlot.of(esa, loaded),
                                           method=method, tag=o.corpus))

    def detected(self) -> Any:
        """The model's super-weight ``Detection`` (asked for once)."""
        if self._detected is None:
            self._detected = self.detection()
        return self._detected

    def super_weight_sites(self) -> list[Any]:
        """The detected super weights (FaultSites; empty when none was found)."""
        return list(self.detected().fault_sites())

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
                          self.perturbation(cell), self.clean)

    def perturbation(self, cell: PruneCell) -> dict[str, Any]:
        """``{kind: prune, scorer, sparsity, granularity, method, protected}`` of ``cell``."""
        return {"kind": "prune", "scorer": cell.base, "sparsity": cell.sparsity, "granularity": cell.granularity,
                "method": self.method, "protected": cell.protected}

    def save_and_reload(self, cell: PruneCell, path: str | Path) -> Reloaded:
        """Prune ``cell`` (unprotected), save the pruned model to ``path`` inside the pruning context (the live
        model is restored after), load it back twice and evaluate each copy on the evaluation windows."""
        import gc

        from transformers import AutoModelForCausalLM

        from harness.metrics import evaluate
        from harness.models import load_model
        from harness.pruning import prune, save_model

        lm = self.loaded
        scores = self.scores.get(lm, cell.base, self.calib_windows, tag=self.tag)
        with prune(lm, scores, cell.sparsity, granularity=cell.granularity, method=self.method) as report:
            before = evaluate(lm.model, self.eval_windows).perplexity
            path = save_model(lm, path, report=report, metadata={"source_model": lm.name})
        heap.trim()  # the saving's transient copies, before a second model is loaded
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=lm.dtype).eval()
        via_hf = evaluate(hf, self.eval_windows).perplexity
        del hf
        gc.collect()
        heap.trim()
        zoo = load_model(str(path), dtype=lm.dtype)
        via_zoo = evaluate(zoo.model, self.eval_windows).perplexity
        return Reloaded(before, via_hf, via_zoo, sorted(p.name for p in path.iterdir()), self.perturbation(cell),
                        cell.scorer, self.clean.perplexity)


def count_zero(model: torch.nn.Module, sites: Iterable[Any]) -> int:
    """How many of ``sites`` (FaultSites) hold zero in ``model``."""
    from harness.faults.sites import find_tensor

    return sum(int(find_tensor(model, s.param)[s.index] == 0) for s in sites)


def rounding(loaded: LoadedModel, granularity: str) -> float:
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
