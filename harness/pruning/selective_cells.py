"""Cells of the selective-pruning suite: one scorer x one selection (layers, component, percentile or
threshold), measured once per model.

A cell prunes the live model with :func:`harness.pruning.selective_prune`, evaluates it, generates
greedily from the corpus prompts (clean generations are made once per model), optionally saves the
pruned model, and restores it. :class:`SelectiveCells` memoizes the cells of one model so that the
claim tests comparing cells reuse them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.pruning.cells import ScoreSlot


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


def claim_tag(scorer: str, selection_id: str) -> str:
    """``magnitude`` + ``value-L3,4-p80`` -> ``magnitude_value_L3_4_p80`` (a bare TOML key)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{scorer}_{selection_id}").strip("_")


@dataclass
class SelectiveResult:
    """What one selective cell measured."""

    scorer: str
    selection: Selection
    result: Any  # harness.metrics.EvalResult
    summary: dict[str, Any]  # SparsityReport.to_dict(per_matrix=False)
    clean_text: list[list[int]]  # greedy generations (token ids) of the clean model
    pruned_text: list[list[int]]
    perturbation: dict[str, Any]

    @property
    def perplexity(self) -> float:
        return self.result.perplexity


@dataclass
class SelectiveCells:
    """The measured selective cells of one model (memoized).

    Attributes:
        loaded: the ``LoadedModel`` pruned in place and restored after each cell.
        eval_windows, calib_windows: evaluation and calibration windows (count, length).
        reference: the clean model's KL / top-1 reference.
        prompts, new_tokens: greedy generation prompts and length.
        scores: the score slot (shared with the pruning suite).
        prune_method: what pruned weights become.
        save_dir: when set, each pruned model is saved to ``save_dir/<scorer>-<selection id>``.
        overwrite: replace existing saved models.
        tag: what else the scores depend on (the corpus name).
    """

    loaded: Any
    eval_windows: torch.Tensor
    calib_windows: torch.Tensor
    reference: Any
    prompts: list[str]
    new_tokens: int
    scores: ScoreSlot = field(default_factory=ScoreSlot)
    prune_method: str = "zero"
    save_dir: Path | None = None
    overwrite: bool = False
    tag: Any = None
    _clean_text: list[list[int]] | None = None
    _done: dict[tuple[str, Selection], SelectiveResult] = field(default_factory=dict)

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
        return SelectiveResult(scorer, s, result, summary, clean_text, pruned_text, perturbation)
