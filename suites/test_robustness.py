"""Noise robustness: a degradation curve per model, noise kind and component, over noise levels.

Noise (``harness.faults.add_noise``, scale ``std``): every weight of the targeted matrices gets
``level * std(matrix) * eps`` with eps ~ N(0, 1) (``gaussian``) or U(-1, 1) (``uniform``, full
preset only). Trial t draws from a generator seeded from (``--seed``, t), so all levels of a trial
scale the same unit noise and the curve is smooth.

- components: quick preset the groups ``attention``, ``mlp`` and ``linear`` (both) of every layer;
  full preset also each canonical component and ``norms`` (a component the family lacks is skipped).
- levels: quick 6, full 9 (``harness.campaign.noise_cells.PRESETS``); both start at ``LOW`` and end at
  ``HIGH``.
- trials per level: quick 1 (noise on millions of weights averages itself), full 3; the session's
  trial rule applies (``--trials`` overrides both; a random-weight model gets one).
- evaluation: quick preset the first 2 eval windows (512 tokens at ``--window 256``), full all; ratio
  and KL against the clean model on the same windows (``esa.clean``, shared with the other suites).

The grid and the measuring are ``harness.campaign.noise_cells``.

Records (suite ``robustness``, method = noise kind): per (component, level, trial) ``ppl_ratio``,
``perplexity`` and ``kl`` with perturbation ``{kind: noise, noise, scale, level, target}`` and extra
``{trial, trial_seed, component}``; ``collapsed`` marks non-finite output or ratio >= 10.

Claims per (noise kind, component):

- relation ``<kind>_<component>_damage_grows``: above the noise floor (levels >= ``FLOOR``) the
  perplexity ratio grows with the noise level (each level's smallest trial ratio at least the
  previous level's largest; a collapse is +inf). Below ``FLOOR`` ratios scatter around 1.
- bound ``<kind>_<component>_low_noise_ppl_ratio`` (max): the largest ratio at ``LOW``;
- bound ``<kind>_<component>_high_noise_ppl_ratio`` (min): the smallest ratio at ``HIGH``.
"""

from __future__ import annotations

import pytest

from harness.campaign.noise_cells import FLOOR, GROUPS, HIGH, KINDS, LOW, NoiseCells, grid
from harness.claims import ClaimSet, has_effect, paired_greater
from harness.models.archmap import COMPONENTS
from harness.session import Grid

CLAIMS = ClaimSet("robustness")
GROWS, LOW_BOUND, HIGH_BOUND, EFFECT = {}, {}, {}, {}
for _kind in KINDS:
    for _c in (*GROUPS, *COMPONENTS, "norms"):
        GROWS[_kind, _c] = CLAIMS.relation(
            f"{_kind}_{_c}_damage_grows", f"{_kind} noise on {_c} hurts more as its level grows (levels >= {FLOOR})",
            statistic="ppl_ratio", margin="each level's smallest ratio >= the previous level's largest")
        LOW_BOUND[_kind, _c] = CLAIMS.bound(
            f"{_kind}_{_c}_low_noise_ppl_ratio", f"{_kind} noise of {LOW} x std on {_c} stays harmless",
            side="max", statistic="ppl_ratio")
        EFFECT[_kind, _c] = CLAIMS.effect(f"{_kind}_{_c}", f"{_kind} noise on {_c}")
        HIGH_BOUND[_kind, _c] = CLAIMS.bound(
            f"{_kind}_{_c}_high_noise_ppl_ratio", f"{_kind} noise of {HIGH} x std on {_c} stays as damaging",
            side="min", statistic="ppl_ratio", null=1.0)


GRIDS = (Grid("cell", lambda o: grid(o.preset)),)


@pytest.fixture
def cells(esa, lm) -> NoiseCells:
    return NoiseCells.of(esa, lm)


def test_noise_robustness(lm, cells, recorder, timer, cell):
    if reason := cell.skip_reason(lm):
        pytest.skip(reason)
    with timer() as t:
        curve = cells.measure(cell)
    recorder.rows(curve.rows())
    key, pert, trials = (cell.kind, cell.component), cell.perturbation, {"trials": curve.n_trials}
    recorder.record("seconds", t.seconds, method=cell.kind, perturbation=pert,
                    extra={**trials, "levels": len(curve.levels)})
    recorder.claim(EFFECT[key], has_effect(curve.changed), method=cell.kind, perturbation=pert,
                   extra={**trials, "levels": len(curve.levels)})
    recorder.claim(GROWS[key], paired_greater(*curve.growth()), method=cell.kind, perturbation=pert,
                   extra={**trials, "levels": curve.above_floor})
    recorder.claim(LOW_BOUND[key], max(curve.ratios(LOW)), method=cell.kind, perturbation={**pert, "level": LOW},
                   extra=trials)
    recorder.claim(HIGH_BOUND[key], min(curve.ratios(HIGH)), method=cell.kind, perturbation={**pert, "level": HIGH},
                   extra=trials)
