"""Selective pruning suite: chosen layers and components pruned at a percentile and/or threshold.

The research framework's knobs (``harness.pruning.selective_prune``): scorer, component, layers,
percentile, threshold, prune method. Without selective options the suite runs its built-in
selections for each scorer of ``--prune-scorers`` (default magnitude, wanda); with any of
``--prune-layers``, ``--prune-component``, ``--percentile``, ``--threshold`` it runs that one
selection. The grid and the measuring live in ``harness.pruning.selective_cells``.

Records (suite ``selective_pruning``, see docs/RECORDS.md), per cell: ``perplexity``, ``ppl_ratio``
(its ``extra`` holds the first prompt's ``clean_output`` and ``perturbed_output``), ``kl``, ``top1``,
with ``method`` = scorer and ``perturbation`` = ``{kind: selective_prune, sparsity (reached), layers,
component, percentile, threshold, prune_method, target}``; and from greedy generations of the corpus
prompts, clean versus pruned (also written side by side to ``<results-dir>/<model>/output_comparison.txt``):
``first_diff_token`` and ``token_edit_distance`` per prompt (``extra.trial``, ``extra.prompt``; the
generation length when nothing differs), and ``identical_generations`` (share of prompts unchanged).
With ``--save-pruned DIR`` each pruned model is also saved to ``DIR/<model>/<cell>`` (safetensors).
"""

from __future__ import annotations

import math

import pytest

from harness.claims import ClaimSet, greater
from harness.pruning.selective_cells import (
    SCORERS,
    SELECTIONS,
    SelectiveCells,
    claim_tag,
    grid,
    missing_layers,
)
from harness.session import Grid

CLAIMS = ClaimSet("selective_pruning")
WANDA_FACTOR = 2.0
COMPARED = SELECTIONS[1]  # mlp-all-p30: the built-in selection that costs perplexity
WANDA_BEATS_MAGNITUDE = CLAIMS.relation(
    "wanda_beats_magnitude_mlp",
    f"Pruning every MLP matrix at the 30th percentile, magnitude scores lose at least {WANDA_FACTOR:g}x the "
    "perplexity Wanda scores lose (excess perplexity: pruned / clean - 1)",
    statistic="ppl_ratio - 1", margin=f"stated minimum effect x{WANDA_FACTOR:g}, as in the pruning suite")
PPL_RATIO = {(scorer, s.id): CLAIMS.bound(f"{claim_tag(scorer, s.id)}_ppl_ratio",
                                          f"Perplexity after {scorer} selection {s.id} over clean stays at its "
                                          "measured level", side="max", statistic="ppl_ratio", seeded=False)
             for scorer in SCORERS for s in SELECTIONS}


GRIDS = (Grid(("scorer", "selection"), lambda o: grid(o.preset, o.pruning.scorers, o.pruning.layers,
                                                    o.pruning.component, o.pruning.percentile,
                                                    o.pruning.threshold)),)


@pytest.fixture
def cells(esa, lm) -> SelectiveCells:
    """This model's measured selective cells, shared by the session."""
    return SelectiveCells.of(esa, lm)


def test_selective_pruning(lm, cells, recorder, scorer, selection):
    missing = missing_layers(lm, selection)
    if missing:  # structural: the claim cannot apply to this model
        if (scorer, selection.id) in PPL_RATIO:
            recorder.not_applicable(PPL_RATIO[scorer, selection.id], missing, method=scorer)
            return
        pytest.skip(missing)
    measured = cells.measure(scorer, selection)
    recorder.rows(measured.rows())
    cells.write_comparison(measured)

    if selection.percentile is not None and selection.threshold is None:
        assert measured.summary["sparsity"] == pytest.approx(selection.percentile / 100, abs=2e-3)
    assert not math.isnan(measured.perplexity)
    bound = PPL_RATIO.get((scorer, selection.id))
    if bound is not None:
        recorder.claim(bound, measured.ratio, extra=measured.extra, method=scorer, perturbation=measured.perturbation)


def test_wanda_beats_magnitude(lm, cells, recorder):
    missing = missing_layers(lm, COMPARED)
    if missing:
        recorder.not_applicable(WANDA_BEATS_MAGNITUDE, missing, method="wanda")
        return
    wanda, magnitude = (cells.measure(s, COMPARED) for s in ("wanda", "magnitude"))
    recorder.claim(WANDA_BEATS_MAGNITUDE, greater(magnitude.excess, wanda.excess, factor=WANDA_FACTOR),
                   method="wanda", perturbation=wanda.perturbation,
                   extra={"wanda_ppl": wanda.perplexity, "magnitude_ppl": magnitude.perplexity,
                          "clean_ppl": wanda.clean.perplexity, "cell": COMPARED.id})
