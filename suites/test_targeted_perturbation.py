"""Targeted perturbation: perturb the top x% of weights by a scorer's ranking, against the same number
of seeded random weights.

Tests (per model):

- ``test_targeted[<method>-<action>]`` (``--targeted-methods``, plus ``random``): for each fraction x
  (``--fractions``; quick 1e-6 and 1e-4, full 1e-6 .. 1e-2, i.e. 0.0001% .. 1%) perturb
  n = max(1, round(x · N)) weights, N = the decoder blocks' linear weights, and evaluate. Ranked
  methods run once per fraction (their sites are fixed; noise is seeded); ``random`` runs the preset's
  seeded trials per fraction (quick 2, full 5; ``--trials``; one on a random-weight model), drawn
  uniformly over the same matrices.
- ``test_ranked_beats_random[<action>]``: the relation ``<method>_<action>_beats_random`` per
  method: at the preset's largest fraction (quick 1e-4, full 1e-2), perturbing the method's
  top-ranked weights raises perplexity at least ``MIN_EFFECT`` times the largest ratio of the random
  control's seeded trials (same count, same action); both sides at every fraction are recorded in
  the claim's extra. Pretrained models only: on random weights no ranking is meaningful. Not at
  every fraction: at 1e-6 (about 100 weights) the relation holds on smollm2-135m only because its
  super weight ranks first; gemma3-270m, which has none, moves by at most a few percent there
  (seed 0: wanda zero 1.033 vs random 1.0007, magnitude exponent-LSB 0.997 vs 1.0004), below the
  5% minimum effect, while at 1e-4 every ranked method beats random by 1.10x or more.

Actions (recipes of ``harness.recipes`` tagged ``action``):
  ``zero``     set the weights to 0;
  ``noise``    w + ε·|w| with ε ~ N(0, 1) seeded (relative Gaussian noise, level 1);
  ``exponent_lsb``  flip the lowest exponent bit of each stored weight (|w| doubled or halved); the
               exponent MSB would make every weight huge and collapse ranked and random alike.

The grid, the trials and the statistic live in ``harness.targeted.cells`` (presets: ``PRESETS``).
Scores: calibration scorers use the first 2 calibration windows in quick (all in full). ``activation``
ranks only the few weights its spike scan finds, so it is not a default method (fractions above its
count would have no ranking). Evaluation: the first 2 eval windows in quick (512 tokens at the default
--window), all in full; ratios are against the clean model on the same windows.

Records (suite ``targeted_perturbation``; docs/RECORDS.md): per trial ``ppl_ratio`` (+ ``kl``), method
= scorer or ``random``, perturbation ``{kind: targeted, fraction, action, count}``, extra ``{trial,
trial_seed}``; ``seconds`` of scoring per method.
"""

from __future__ import annotations

import pytest

from harness.claims import Claim, ClaimSet, greater
from harness.session import Grid
from harness.targeted.cells import ACTIONS, MIN_EFFECT, PRESETS, TargetedCells, grid, preset

CLAIMS = ClaimSet("targeted_perturbation")


def beats_random(method: str, action: str) -> Claim:
    """The relation ``<method>_<action>_beats_random`` (declared once per name; any scorer may be asked for)."""
    return CLAIMS.relation(f"{method}_{action}_beats_random",
                           f"Perturbing ({action}) the weights {method} ranks highest hurts more than perturbing as "
                           "many random weights, at the preset's largest fraction", statistic="ppl_ratio",
                           margin=f"ranked >= {MIN_EFFECT} x the largest random trial")


BEATS_RANDOM = [beats_random(m, a) for m in dict.fromkeys(m for p in PRESETS.values() for m in p.methods)
                for a in ACTIONS]  # every preset method's claims, declared at import


GRIDS = (Grid("cell", lambda o: grid(preset(o.preset, o.scoring.targeted_methods).methods)),
         Grid("action", lambda o: ACTIONS))


@pytest.fixture
def cells(esa, lm) -> TargetedCells:
    """This model's measured cells, shared by the session (the claim test reuses the grid's curves)."""
    return TargetedCells.of(esa, lm)


def test_targeted(cells, recorder, cell):
    recorder.rows(cells.curve(cell).rows())


def test_ranked_beats_random(cells, recorder, action):
    for method in cells.methods:
        both = cells.ranked_vs_random(method, action)
        recorder.claim(beats_random(method, action), greater(both.ranked[-1], both.worst_random[-1], factor=MIN_EFFECT),
                       method=method, perturbation={"kind": "targeted", "action": action,
                                                    "fraction": both.fractions[-1]},
                       extra={"random_trials": both.random_trials, "fractions": both.fractions,
                              "ranked": both.ranked, "worst_random": both.worst_random})
