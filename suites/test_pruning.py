"""Pruning suite: each model pruned by each scorer at each sparsity and granularity, perplexity per cell.

A cell is (scorer, sparsity, granularity); the grid per preset and its measuring live in
``harness.pruning.cells`` (options ``--prune-scorers``, ``--sparsities``, ``--granularity``,
``--prune-method``). ``NAME+protect`` is the same scorer with the model's super weights kept (the
session's one detection, ``esa.detection``). The pruned model is restored bit-exactly after
each cell (checked by the ``lm`` guard).

Records (suite ``pruning``), per cell: ``perplexity``, ``ppl_ratio``, ``kl``, ``top1`` and ``seconds``
(of pruning), with ``method`` = the scorer as named in the cell, ``perturbation`` =
``{kind: prune, scorer, sparsity, granularity, method, protected}`` and ``extra`` = the sparsity
reached (overall, smallest and largest per matrix), weights pruned, protected sites, backup bytes and
``super_weights_pruned`` (how many of the model's super weights the cell pruned); and the claims below.
"""

from __future__ import annotations

import math

import pytest

from harness.claims import ClaimSet, greater
from harness.pruning.cells import PruneCell, PruningCells, preset_grid, rounding
from harness.session import Grid

CLAIMS = ClaimSet("pruning")
WANDA_FACTOR = 2.0  # Sun et al. (Wanda, LLaMA-7B, 50% unstructured): magnitude 17.29 vs Wanda 7.26, x2.4
COMPARED = {"row": "row", "2:4": "2of4"}  # granularity -> claim-name tag; both at 50% sparsity
WANDA_BEATS_MAGNITUDE = {
    g: CLAIMS.relation(f"wanda_beats_magnitude_{tag}",
                       f"At 50% sparsity ({g}), magnitude pruning's perplexity is at least {WANDA_FACTOR:g}x "
                       "Wanda's (a collapsed magnitude model counts as +inf)",
                       statistic="perplexity", margin=f"stated minimum effect x{WANDA_FACTOR:g} (Sun et al.: x2.4)")
    for g, tag in COMPARED.items()}
PROTECTION_HELPS = {
    g: CLAIMS.relation(f"protection_no_worse_{tag}",
                       f"Where 50% magnitude pruning ({g}) removes some of the detected super weights, keeping them "
                       "gives a lower perplexity than removing them",
                       statistic="perplexity", margin="strict: protected < unprotected; a tie fails")
    for g, tag in COMPARED.items()}
KEEPS_COVERED = CLAIMS.relation(
    "protection_keeps_covered_super_weights", "Where the pruning mask covers every super weight (the largest weights "
    "of their rows pruned, as many as it takes), protection keeps each one at its exact stored value",
    statistic="super weights kept", margin="all of them, bit-identical; one changed fails")
COVERED_HELPS = CLAIMS.relation(
    "protection_helps_when_covered", "Where the pruning mask covers every super weight, protecting them gives a "
    "lower perplexity than pruning them", statistic="perplexity", margin="strict: protected < unprotected")
WANDA_PPL_RATIO = {
    g: CLAIMS.bound(f"wanda_{tag}_ppl_ratio", f"Perplexity after 50% Wanda pruning ({g}) over clean stays at its "
                    "measured level", side="max", statistic="ppl_ratio", seeded=False)
    for g, tag in COMPARED.items()}

EFFECT = CLAIMS.effect("pruned_cell", "Pruning the cell's weights at its sparsity")


GRIDS = (Grid("cell", lambda o: preset_grid(o.preset, o.pruning.scorers, o.pruning.sparsities,
                                               o.pruning.granularities)),)


@pytest.fixture
def cells(esa, lm) -> PruningCells:
    """This model's measured cells, shared by the session (the claim tests reuse the grid's cells)."""
    return PruningCells.of(esa, lm)


def test_pruning_cell(lm, cells, recorder, cell):
    measured = cells.measure(cell)
    result, summary = measured.result, measured.summary
    recorder.rows(measured.rows())
    effect = measured.effect()
    if isinstance(effect, str):
        recorder.not_applicable(EFFECT, effect, method=cell.scorer, perturbation=measured.perturbation)
    else:
        recorder.claim(EFFECT, effect, method=cell.scorer, perturbation=measured.perturbation)
    # the sparsity asked for is reached in every matrix, up to rounding to whole elements of each group
    if cell.granularity not in ("head", "neuron"):
        assert summary["sparsity"] == pytest.approx(cell.sparsity, abs=rounding(lm, cell.granularity))
    if cell.granularity != "global":
        assert summary["max_matrix_sparsity"] - summary["min_matrix_sparsity"] <= 2 * rounding(lm, cell.granularity)
    if cell.protected:
        assert measured.super_weights_pruned == 0, "a protected super weight was pruned"
    assert not math.isnan(result.perplexity)


@pytest.mark.parametrize("granularity", list(COMPARED))
def test_wanda_beats_magnitude(cells, recorder, granularity):
    wanda, magnitude = (cells.measure(PruneCell(s, 0.5, granularity)) for s in ("wanda", "magnitude"))
    extra = {"wanda_ppl": wanda.perplexity, "magnitude_ppl": magnitude.perplexity, "clean_ppl": wanda.clean.perplexity}
    recorder.claim(WANDA_BEATS_MAGNITUDE[granularity],
                   greater(magnitude.perplexity, wanda.perplexity, factor=WANDA_FACTOR),
                   method="wanda", perturbation=wanda.perturbation, extra=extra)
    recorder.claim(WANDA_PPL_RATIO[granularity], wanda.ratio, method="wanda",
                   perturbation=wanda.perturbation, extra=extra)


@pytest.mark.parametrize("granularity", list(COMPARED))
def test_protecting_super_weights(cells, recorder, granularity):
    plain = cells.measure(PruneCell("magnitude", 0.5, granularity))
    kept = cells.measure(PruneCell("magnitude+protect", 0.5, granularity))
    claim = PROTECTION_HELPS[granularity]
    extra = {"protected_ppl": kept.perplexity, "unprotected_ppl": plain.perplexity,
             "super_weights": len(cells.super_weight_sites()), "super_weights_pruned": plain.super_weights_pruned}
    columns = {"method": "magnitude+protect", "perturbation": kept.perturbation, "extra": extra}
    assert kept.super_weights_pruned == 0, "a protected super weight was pruned"
    if not cells.super_weight_sites():
        recorder.not_applicable(claim, cells.detected().none_reason(), **columns)
    elif plain.super_weights_pruned == 0:
        recorder.not_applicable(claim, "magnitude pruning removed none of the super weights: nothing to protect",
                                **columns)
    else:
        recorder.claim(claim, greater(plain.perplexity, kept.perplexity), **columns)


def test_protecting_super_weights_the_mask_covers(lm, eval_windows, clean, cells, recorder):
    from harness.claims import Comparison
    from harness.pruning.covered import covered_protection

    sites = cells.super_weight_sites()
    if not sites:
        for claim in (KEEPS_COVERED, COVERED_HELPS):
            recorder.not_applicable(claim, cells.detected().none_reason())
        return
    covered = covered_protection(lm, sites, eval_windows, clean.reference)
    columns = {"method": "magnitude+protect", "extra": covered.extra()}
    recorder.claim(KEEPS_COVERED, Comparison(covered.covered == covered.sites and covered.kept == covered.sites,
                                             covered.kept, covered.sites, {"covered": covered.covered}), **columns)
    recorder.claim(COVERED_HELPS, greater(covered.unprotected.perplexity, covered.protected.perplexity), **columns)


def test_saved_pruned_model_reloads_with_the_same_perplexity(cells, recorder, tmp_path):
    """Saved inside the pruning context (the shared model is restored after), reloaded twice."""
    saved = cells.save_and_reload(PruneCell("wanda", 0.5, "row"), tmp_path / "pruned")
    assert not [name for name in saved.files if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
    recorder.rows(saved.rows())
    assert saved.via_from_pretrained == saved.before_saving and saved.via_zoo == saved.before_saving
