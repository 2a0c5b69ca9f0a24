"""Cells of the selective-pruning suite: one scorer x one selection (layers, component, percentile or
threshold), measured once per model.

The grid: each scorer (``--prune-scorers``, default :data:`SCORERS`: magnitude, wanda) x the preset's
built-in :data:`SELECTIONS` (quick: the first two; full: all four), or, when any of
``--prune-layers``, ``--prune-component``, ``--percentile``, ``--threshold`` is given, the one
selection they name (id ``cli``; missing knobs default to all layers, ``linear``, percentile 50):
:func:`grid`. The preset (:data:`PRESETS`) also sets the greedy generations compared: quick 4 corpus
prompts x 24 new tokens, full 8 x 48.

A cell prunes the live model with :func:`harness.pruning.selective_prune`, evaluates it, generates
greedily from the corpus prompts (clean generations are made once per model), optionally saves the
pruned model (``--save-pruned``), and restores it. :class:`SelectiveCells` memoizes the cells of one
model (:meth:`SelectiveCells.of`) so that the claim tests comparing cells reuse them, and writes the
side-by-side generations (:meth:`SelectiveCells.write_comparison`). Statistics:
:meth:`SelectiveResult.divergences`, :attr:`SelectiveResult.identical_share`, :func:`excess_perplexity`; a cell's
records: :meth:`SelectiveResult.rows`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.option_values import pick_preset
from harness.pruning.cells import AgainstClean, ScoreSlot
from harness.pruning.compare import Divergence, divergence
from harness.records.row import Row

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel
    from harness.session import Session


@dataclass(frozen=True)
class Selection:
    """What a selective cell prunes.

    Attributes:
        id: short name (``value-L3,4-p80``); ``cli`` for the one given by options.
        component: component(s) or group (``value``, ``mlp``, ``attention``, ``linear``).
        layers: ``all`` or a layer list as ``harness.models.archmap.parse_layers`` takes it.
        percentile: prune scores below this percentile of each matrix (or None).
        threshold: prune scores below this share of the matrix's largest score (or None).
        target: ``least`` (prune the unimportant) or ``most``.
    """

    id: str
    component: str
    layers: str
    percentile: float | None
    threshold: float | None
    target: str = "least"

    def max_layer(self) -> int | None:
        """The highest layer index a comma list of layers names (None for ``all`` or ranges)."""
        if self.layers == "all" or not re.fullmatch(r"\d+(,\d+)*", self.layers):
            return None
        return max(int(x) for x in self.layers.split(","))


SELECTIONS = (  # the built-in selections; quick runs the first two
    Selection("value-L3,4-p80", "value", "3,4", 80.0, None),
    Selection("mlp-all-p30", "mlp", "all", 30.0, None),
    Selection("attention-all-t0.05", "attention", "all", None, 0.05),
    Selection("value-L3,4-top1pct", "value", "3,4", 1.0, None, "most"),  # the research tool's direction
)
SCORERS = ("magnitude", "wanda")  # default scorers (--prune-scorers)
CLI = "cli"  # id of the selection the options name


@dataclass(frozen=True)
class Preset:
    """The selective grid and generation sizes of one depth preset.

    Attributes:
        selections: the built-in selections measured for each scorer.
        prompts: corpus prompts generated from (clean and pruned).
        new_tokens: greedy tokens generated per prompt.
    """

    selections: tuple[Selection, ...]
    prompts: int
    new_tokens: int


PRESETS = {"quick": Preset(SELECTIONS[:2], prompts=4, new_tokens=24),
           "full": Preset(SELECTIONS, prompts=8, new_tokens=48)}


def grid(preset: str, scorers: tuple[str, ...] | None = None, layers: str | None = None,
         component: str | None = None, percentile: float | None = None,
         threshold: float | None = None) -> list[tuple[str, Selection]]:
    """(scorer, selection) cells, scorer-major: the preset's selections, or the one the options name when any
    of ``layers``, ``component``, ``percentile``, ``threshold`` is given (see the module docstring)."""
    if any(v is not None for v in (layers, component, percentile, threshold)):
        percentile = 50.0 if percentile is None and threshold is None else percentile
        selections: tuple[Selection, ...] = (Selection(CLI, component or "linear", layers or "all", percentile,
                                                       threshold),)
    else:
        selections = pick_preset(PRESETS, preset).selections
    return [(scorer, s) for scorer in scorers or SCORERS for s in selections]


def missing_layers(loaded: LoadedModel, selection: Selection) -> str:
    """Why a built-in ``selection`` cannot apply to ``loaded`` (it names layers the model lacks), or ""."""
    from harness.models import num_layers

    top, have = selection.max_layer(), num_layers(loaded)
    if selection.id != CLI and top is not None and top >= have:
        return f"selection {selection.id} names layers {selection.layers}; {loaded.name} has {have} layers"
    return ""


def excess_perplexity(result: Any, clean: Any) -> float:
    """Perplexity lost to pruning: ``result`` over ``clean`` (EvalResults) minus 1."""
    return result.ratio_to(clean) - 1


def claim_tag(scorer: str, selection_id: str) -> str:
    """``magnitude`` + ``value-L3,4-p80`` -> ``magnitude_value_L3_4_p80`` (a bare TOML key)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{scorer}_{selection_id}").strip("_")


@dataclass
class SelectiveResult(AgainstClean):
    """What one selective cell measured.

    Attributes:
        scorer: the scorer (the records' method).
        selection: what was pruned.
        result: the pruned model's ``harness.metrics.EvalResult``.
        summary: ``SparsityReport.to_dict(per_matrix=False)``.
        clean_text, pruned_text: greedy generations (token ids) per prompt, of the clean and the pruned model.
        perturbation: the records' perturbation.
        clean: the clean model's EvalResult on the same windows.
        prompts: the prompts generated from.
        new_tokens: greedy tokens generated per prompt.
        example: the first prompt with its clean and pruned generations as text (``prompt``, ``clean_output``,
            ``perturbed_output``).
    """

    scorer: str
    selection: Selection
    result: Any
    summary: dict[str, Any]
    clean_text: list[list[int]]
    pruned_text: list[list[int]]
    perturbation: dict[str, Any]
    clean: Any
    prompts: list[str]
    new_tokens: int
    example: dict[str, str]

    @property
    def excess(self) -> float:
        """Perplexity lost to pruning (:func:`excess_perplexity`)."""
        return excess_perplexity(self.result, self.clean)

    @property
    def extra(self) -> dict[str, Any]:
        """What the cell's records carry: the selection's id, the sparsity reached (of the selection and of the
        model), weights pruned and matrices."""
        s = self.summary
        return {"cell": self.selection.id, "sparsity": s["sparsity"], "model_sparsity": s["model_sparsity"],
                "pruned": s["pruned"], "matrices": s["matrices"]}

    def divergences(self) -> list[Divergence]:
        """Per prompt, how the pruned generation differs from the clean one."""
        return [divergence(c, p) for c, p in zip(self.clean_text, self.pruned_text, strict=True)]

    @property
    def identical_share(self) -> float:
        """Share of prompts whose pruned generation equals the clean one."""
        found = self.divergences()
        return sum(d.identical for d in found) / len(found)

    def rows(self) -> list[Row]:
        """``perplexity`` and ``ppl_ratio`` (against the clean perplexity; the ratio's extra has the
        :attr:`example`), ``kl``, ``top1``; per prompt (a trial) ``first_diff_token`` (the generation length when
        nothing differs) and ``token_edit_distance``; ``identical_generations``. Method: the scorer."""
        r, pert, extra, columns = self.result, self.perturbation, self.extra, {"method": self.scorer}
        clean = self.clean.perplexity
        rows = [Row("perplexity", r.perplexity, pert, extra, clean, columns),
                Row("ppl_ratio", self.ratio, pert, {**extra, **self.example}, clean, columns),
                Row("kl", r.kl, pert, extra, columns=columns),
                Row("top1", r.top1, pert, extra, columns=columns)]
        for i, (prompt, d) in enumerate(zip(self.prompts, self.divergences(), strict=True)):
            rows += [Row("first_diff_token", float(d.length if d.first is None else d.first), pert,
                         {"trial": i, "prompt": prompt, "identical": d.identical}, columns=columns),
                     Row("token_edit_distance", float(d.distance), pert, {"trial": i, "prompt": prompt,
                                                                         "length": d.length}, columns=columns)]
        rows.append(Row("identical_generations", self.identical_share, pert,
                        {"prompts": len(self.prompts), "tokens": self.new_tokens}, columns=columns))
        return rows


@dataclass
class SelectiveCells:
    """The measured selective cells of one model (memoized).

    Attributes:
        loaded: the ``LoadedModel`` pruned in place and restored after each cell.
        eval_windows, calib_windows: evaluation and calibration windows (count, length).
        reference: the clean model's KL / top-1 reference.
        clean: the clean model's EvalResult on ``eval_windows`` (the cells' ratios and clean values).
        prompts, new_tokens: greedy generation prompts and length.
        scores: the score slot (shared with the pruning suite).
        prune_method: what pruned weights become.
        save_dir: when set, each pruned model is saved to ``save_dir/<scorer>-<selection id>``.
        overwrite: replace existing saved models.
        tag: what else the scores depend on (the corpus name).
        results_dir: where :meth:`write_comparison` writes (None: not written).
    """

    loaded: LoadedModel
    eval_windows: torch.Tensor
    calib_windows: torch.Tensor
    reference: Any
    clean: Any
    prompts: list[str]
    new_tokens: int
    scores: ScoreSlot = field(default_factory=ScoreSlot)
    prune_method: str = "zero"
    save_dir: Path | None = None
    overwrite: bool = False
    tag: Any = None
    results_dir: Path | None = None
    _clean_text: list[list[int]] | None = None
    _done: dict[tuple[str, Selection], SelectiveResult] = field(default_factory=dict)

    @classmethod
    def of(cls, esa: Session, loaded: LoadedModel) -> SelectiveCells:
        """``loaded``'s cells in the pytest session ``esa`` (made once per model, prune method, window sets and
        corpus), on the session's windows and the preset's prompts of the session's corpus, pruning with the
        session's shared :class:`~harness.pruning.cells.ScoreSlot`; the clean baseline's ``reference`` and result are
        kept."""
        eval_windows, calib_windows = esa.windows(loaded, "eval"), esa.windows(loaded, "calib")
        clean = esa.clean(loaded.name, loaded.model, eval_windows)
        from harness.data import generation_prompts
        from harness.scoring.artifacts import model_dir_name

        o, p = esa.options, esa.preset(PRESETS)
        save, method = o.pruning.save_dir, o.pruning.method or "zero"

        def make() -> SelectiveCells:
            return cls(loaded, eval_windows, calib_windows, clean.reference, clean.result,
                       generation_prompts(esa.corpus(), p.prompts), p.new_tokens, scores=ScoreSlot.of(esa, loaded),
                       prune_method=method, save_dir=None if save is None else Path(save) / model_dir_name(loaded.name),
                       overwrite=o.pruning.overwrite, tag=o.corpus, results_dir=o.results_dir)

        key = (loaded.name, "selective-cells", method, tuple(eval_windows.shape), tuple(calib_windows.shape), o.corpus)
        return esa.cached(key, make)

    def _example(self, clean_text: list[list[int]], pruned_text: list[list[int]]) -> dict[str, str]:
        """The first prompt with its clean and pruned generations as text."""
        decode = self.loaded.tokenizer.decode
        return {"prompt": self.prompts[0], "clean_output": decode(clean_text[0], skip_special_tokens=True),
                "perturbed_output": decode(pruned_text[0], skip_special_tokens=True)}

    def write_comparison(self, measured: SelectiveResult) -> Path | None:
        """Write ``measured``'s generations beside the clean ones into ``<results_dir>/<model>/output_comparison.txt``
        (``harness.pruning.compare``); None when the cells have no ``results_dir``."""
        from harness.pruning.compare import format_section, write_comparison

        if self.results_dir is None:
            return None
        s, summary, before = measured.selection, measured.summary, measured.clean.perplexity
        notes = (f"scorer={measured.scorer} component={s.component} layers={s.layers} percentile={s.percentile} "
                 f"threshold={s.threshold} method={self.prune_method} target={s.target}: pruned "
                 f"{summary['pruned']:,} of {summary['numel']:,} weights ({100 * summary['sparsity']:.2f}%) in "
                 f"{summary['matrices']} matrices; perplexity {before:.3f} -> {measured.perplexity:.3f}; "
                 f"greedy, {self.new_tokens} new tokens")
        title = f"{self.loaded.name} {measured.scorer} {s.id}"
        section = format_section(title, self.loaded.tokenizer, self.prompts, measured.clean_text, measured.pruned_text,
                                 notes=notes)
        return write_comparison(self.results_dir, self.loaded.name, title, section)

    def clean_text(self) -> list[list[int]]:
        from harness.pruning.compare import greedy

        if self._clean_text is None:
            self._clean_text = greedy(self.loaded.model, self.loaded.tokenizer, self.prompts, self.new_tokens)
        return self._clean_text

    def measure(self, scorer: str, selection: Selection) -> SelectiveResult:
        """Prune ``selection`` by ``scorer``, evaluate, generate, restore; measured once per cell."""
        key = (scorer, selection)
        if key not in self._done:
            self._done[key] = self._run(scorer, selection)
        return self._done[key]

    def _run(self, scorer: str, s: Selection) -> SelectiveResult:
        from harness.metrics import evaluate
        from harness.pruning import save_model, selective_prune
        from harness.pruning.compare import greedy

        clean_text = self.clean_text()
        pruning = selective_prune(self.loaded, method=scorer, component=s.component,
                                  layers=None if s.layers == "all" else s.layers, percentile=s.percentile,
                                  threshold=s.threshold, prune_method=self.prune_method, target=s.target,
                                  scores=self.scores.get(self.loaded, scorer, self.calib_windows, tag=self.tag))
        with pruning as report:
            result = evaluate(self.loaded.model, self.eval_windows, self.reference)
            pruned_text = greedy(self.loaded.model, self.loaded.tokenizer, self.prompts, self.new_tokens)
            if self.save_dir is not None:
                save_model(self.loaded, Path(self.save_dir) / f"{scorer}-{s.id}", report=report,
                           overwrite=self.overwrite, metadata={"source_model": self.loaded.name, "selection": s.id})
        summary = report.to_dict(per_matrix=False)
        perturbation = {"kind": "selective_prune", "sparsity": round(summary["sparsity"], 4), "layers": s.layers,
                        "component": s.component, "percentile": s.percentile, "threshold": s.threshold,
                        "prune_method": self.prune_method, "target": s.target}
        return SelectiveResult(scorer, s, result, summary, clean_text, pruned_text, perturbation, self.clean,
                               list(self.prompts), self.new_tokens, self._example(clean_text, pruned_text))
