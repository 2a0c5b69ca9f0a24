"""Noise robustness: a degradation curve per model, noise kind and component, over noise levels.

Noise (``harness.faults.add_noise``, scale ``std``): every weight of the targeted matrices gets
``level * std(matrix) * eps`` with eps ~ N(0, 1) (``gaussian``) or U(-1, 1) (``uniform``, full
preset only). Trial t draws from a generator seeded from (``--seed``, t), so all levels of a trial
scale the same unit noise and the curve is smooth.

- components: quick preset the groups ``attention``, ``mlp`` and ``linear`` (both) of every layer;
  full preset also each canonical component and ``norms`` (a component the family lacks is skipped).
- levels: quick ``QUICK_LEVELS``, full ``FULL_LEVELS``; both start at ``LOW`` and end at ``HIGH``.
- trials per level: quick 1 (noise on millions of weights averages itself), full 3; ``--trials``
  overrides both.
- evaluation: quick preset the first ``QUICK_WINDOWS`` eval windows (512 tokens at ``--window
  256``), full all; ratio and KL against the clean model on the same windows.

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

from harness.campaign import Campaign, trial_specs
from harness.claims import ClaimSet, has_effect, paired_greater, trial_changed
from harness.errors import HarnessError
from harness.faults import add_noise
from harness.models.archmap import COMPONENTS, select

LOW, HIGH = 0.001, 0.5
FLOOR = 0.1  # levels from here on are compared by the damage_grows relation
QUICK_LEVELS = (LOW, 0.01, 0.03, 0.1, 0.2, HIGH)
FULL_LEVELS = (LOW, 0.003, 0.01, 0.03, 0.05, 0.1, 0.2, 0.3, HIGH)
QUICK_WINDOWS = 2
TRIALS = {"quick": 1, "full": 3}
SCALE = "std"
KINDS = ("gaussian", "uniform")
GROUPS = ("attention", "mlp", "linear")

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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "noise_kind" not in metafunc.fixturenames:
        return
    full = metafunc.config.getoption("esa_preset") == "full"
    kinds = KINDS if full else KINDS[:1]
    components = (*GROUPS, *((*COMPONENTS, "norms") if full else ()))
    cells = [(k, c) for k in kinds for c in components]
    metafunc.parametrize(("noise_kind", "component"), cells, ids=[f"{k}-{c}" for k, c in cells])


def test_noise_robustness(lm, eval_windows, esa, recorder, timer, noise_kind, component):
    model = lm.model
    try:
        refs = select(model, components=component)
    except HarnessError as err:
        pytest.skip(f"{lm.family}: {err}")
    windows = eval_windows[: esa.pick(quick=QUICK_WINDOWS, full=None)]
    clean = esa.clean(lm.name, model, windows)
    levels = esa.pick(quick=QUICK_LEVELS, full=FULL_LEVELS)
    trials = esa.options.trials or esa.pick(**TRIALS)

    ratios: dict[float, list[float]] = {level: [] for level in levels}
    changes: list[bool] = []
    def perturb(spec, g):
        return add_noise(model, refs, spec.values["level"], kind=noise_kind, scale=SCALE, generator=g)

    campaign = Campaign(model, windows, clean)
    specs = trial_specs(esa.options.seed, trials, level=levels)  # trial-major: every level of trial 0 first
    with timer() as t:
        for rec in campaign.run(specs, perturb, cell=f"{lm.name} {noise_kind}-{component}"):
            result, level = rec.trial, rec.spec.values["level"]
            ratios[level].append(result.ratio)
            changes.append(trial_changed(result.ratio, result.result.kl, result.masked))
            columns = dict(method=noise_kind, collapsed=result.collapsed,
                           perturbation={"kind": "noise", "noise": noise_kind, "scale": SCALE, "level": level,
                                         "target": component},
                           extra={"trial": rec.spec.trial, "trial_seed": rec.spec.seed, "component": component})
            recorder.record("ppl_ratio", result.ratio, clean_value=clean.result.perplexity, **columns)
            recorder.record("perplexity", result.result.perplexity, clean_value=clean.result.perplexity, **columns)
            recorder.record("kl", result.result.kl, **columns)
    pert = {"kind": "noise", "noise": noise_kind, "scale": SCALE, "target": component}
    recorder.record("seconds", t.seconds, method=noise_kind, perturbation=pert,
                    extra={"trials": trials, "levels": len(levels)})

    recorder.claim(EFFECT[noise_kind, component], has_effect(changes), method=noise_kind, perturbation=pert,
                   extra={"trials": trials, "levels": len(levels)})
    above = [level for level in levels if level >= FLOOR]
    # each level's smallest trial ratio against the previous level's largest
    grows = paired_greater([min(ratios[b]) for b in above[1:]], [max(ratios[a]) for a in above[:-1]])
    recorder.claim(GROWS[noise_kind, component], grows, method=noise_kind, perturbation=pert,
                   extra={"trials": trials, "levels": above})
    recorder.claim(LOW_BOUND[noise_kind, component], max(ratios[LOW]), method=noise_kind,
                   perturbation={**pert, "level": LOW}, extra={"trials": trials})
    recorder.claim(HIGH_BOUND[noise_kind, component], min(ratios[HIGH]), method=noise_kind,
                   perturbation={**pert, "level": HIGH}, extra={"trials": trials})
