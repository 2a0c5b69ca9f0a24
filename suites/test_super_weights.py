"""Super weights (Yu et al. 2024): the model's detected super weights, and what zeroing them does.

The super weights are the session's shared detection (fixture ``super_weights``,
:mod:`harness.scoring.superweights`, written to ``<results-dir>/<model>/super_weights.json`` and named
by every record as ``perturbation.detection``). smollm2-135m: layers 11 (``[507, 1229]``, W = 5.876,
the paper's), 28 and 29; gemma3-270m: none (the negative control: its strongest block at 17x); the
random-weight tiny models: none.

Claims: ``zero_super_weights_vs_random``: zeroing the super weights raises perplexity at least
``MIN_EFFECT`` (2x) times as much as zeroing as many seeded random weights of the same matrices (the
super weights excluded), in every draw. Regression bounds (``suites/bounds/super_weights.toml``,
seed-independent): ``zero_super_weights_ppl_ratio``, ``zero_top_super_weight_ppl_ratio``,
``row_mean_super_weights_ppl_ratio`` (min; Sun et al. 2024's zero-versus-mean control),
``zero_largest_others_ppl_ratio`` (max; Yu et al.: the 7,000 largest other weights barely matter).
Not applicable, with the reason, where nothing is detected; zeroing the strongest candidate is then
still recorded (target ``candidate``; gemma3-270m x1.117). ``super_weight_detected`` and
``known_super_weights_found``: super weights on record (``harness.scoring.known``) are detected.

Measured on smollm2-135m (quick, seed 0, 2026-12-01; bounds file): random draws x0.99999 to x1.00004;
the top super weight alone x4.964 is more than all 3 (layers 28/29 undo part of the super activation).

Ablations: recipes of ``harness.recipes`` measured by ``harness.super_weights.cells``. Records:
``super_weight_score`` per site, ``seconds`` per scorer (``--method``); ``ppl_ratio`` (+ ``kl``) per ablation,
method = target, perturbation ``{kind, target, count, detection, ...}``, ``extra.draw`` for the random control.
"""

from __future__ import annotations

import math

import pytest

from harness.claims import ClaimSet, paired_greater
from harness.recipes import OTHERS
from harness.scoring.options import DEFAULT_METHOD
from harness.session import Grid
from harness.super_weights.cells import (
    DETECTOR,
    MIN_EFFECT,
    SuperWeightCells,
    detection_rows,
    known_check,
    known_columns,
    top_scores,
)

CLAIMS = ClaimSet("super_weights")
ZERO_VS_RANDOM = CLAIMS.relation(
    "zero_super_weights_vs_random", "Zeroing the detected super weights raises perplexity more than zeroing as many "
    "random weights", statistic="ppl_ratio", margin=f"every seeded draw: super-weight ratio >= {MIN_EFFECT:g} x the "
    "draw's random ratio")
ZERO = CLAIMS.bound("zero_super_weights_ppl_ratio", "Zeroing the detected super weights raises perplexity "
                    "at least to its measured level", side="min", statistic="ppl_ratio", null=1.0)
ZERO_TOP = CLAIMS.bound("zero_top_super_weight_ppl_ratio", "Zeroing the strongest super weight alone raises "
                        "perplexity at least to its measured level", side="min", statistic="ppl_ratio", null=1.0)
OTHERS_MAX = CLAIMS.bound("zero_largest_others_ppl_ratio", f"Zeroing the {OTHERS:,} largest other weights of "
                          "the top super weight's matrix raises perplexity at most to its measured level",
                          side="max", statistic="ppl_ratio")
ROW_MEAN = CLAIMS.bound("row_mean_super_weights_ppl_ratio", "Setting the super weights to their row mean raises "
                        "perplexity at least to its measured level", side="min", statistic="ppl_ratio", null=1.0)
DETECTED = CLAIMS.relation(
    "super_weight_detected", "A model with super weights on record (harness.scoring.known) has one detected",
    statistic="detected super weights", seeded=False, margin="at least one site reaches the detector's factor")
KNOWN_FOUND = CLAIMS.relation(
    "known_super_weights_found", "The detection finds every super weight on record for the model",
    statistic="known_found_fraction", seeded=False, margin="every recorded (layer, row, col) is among the sites")


GRIDS = (Grid("method", lambda o: o.scoring.method or DEFAULT_METHOD),)


@pytest.fixture
def cells(esa, lm) -> SuperWeightCells:
    return SuperWeightCells.of(esa, lm)


def test_find_super_weights(lm, calib_windows, esa, recorder, method, super_weights):
    if method == DETECTOR:  # the shared detection itself
        from harness.scoring.artifacts import read_detection

        assert read_detection(esa.options.results_dir, lm.name) == super_weights, "super_weights.json differs"
        assert all(float(lm.model.get_parameter(s.param)[s.row, s.col]) == s.value for s in super_weights.sites)
        recorder.rows(detection_rows(super_weights), method=method)
        return
    found = top_scores(lm, method, calib_windows, esa.options.preset)
    recorder.rows(found.rows(), method=method)
    assert found.best_first(), "top_k is not best first"


def test_zero_super_weights(clean, cells, recorder, super_weights):
    assert math.isfinite(clean.result.perplexity)
    if super_weights or super_weights.candidate is not None:  # the strongest candidate where none is detected
        zero = cells.measure("zero_super_weights")
        recorder.rows(zero.rows())
    if not super_weights:
        for claim in (ZERO_VS_RANDOM, ZERO, ZERO_TOP):
            recorder.not_applicable(claim, super_weights.none_reason())
        return
    top, randoms = cells.measure("zero_top_super_weight"), cells.random_control()
    recorder.rows([row for ablated in (top, *randoms) for row in ablated.rows()])
    evidence = paired_greater([zero.ratio] * len(randoms), [r.ratio for r in randoms], factor=MIN_EFFECT)
    recorder.claim(ZERO_VS_RANDOM, evidence, **zero.claim_columns())
    recorder.claim(ZERO, zero.ratio, **zero.claim_columns())
    recorder.claim(ZERO_TOP, top.ratio, **top.claim_columns())


def _control(cells, recorder, super_weights, recipe: str, claim) -> None:
    if not super_weights:
        recorder.not_applicable(claim, super_weights.none_reason())
        return
    measured = cells.measure(recipe)
    recorder.rows(measured.rows())
    recorder.claim(claim, measured.ratio, **measured.claim_columns())


def test_zero_largest_others(cells, recorder, super_weights):
    _control(cells, recorder, super_weights, "zero_largest_others", OTHERS_MAX)


def test_row_mean_control(cells, recorder, super_weights):
    _control(cells, recorder, super_weights, "row_mean_super_weights", ROW_MEAN)


def test_restore_exact(clean, cells, recorder):
    check = cells.restore_check()  # the candidate where none is detected
    assert check.changed, "zeroing the super weights changed nothing"
    assert check.restored, "the super weights were not restored bit-exactly"
    assert check.perplexity == clean.result.perplexity, "perplexity after restore differs from the clean model's"
    recorder.rows(check.rows())


def test_known_super_weights(lm, recorder, super_weights):
    known = known_check(lm, super_weights)
    if known is None:
        for claim in (DETECTED, KNOWN_FOUND):
            recorder.not_applicable(claim, f"no super weight on record for {lm.name} (harness.scoring.known): none is "
                                    "expected", **known_columns(super_weights))
        return
    recorder.rows(known.rows())
    recorder.claim(DETECTED, known.detected(), extra=known.extra(), **known.columns())
    recorder.claim(KNOWN_FOUND, known.all_found(), extra=known.extra(), **known.columns())
