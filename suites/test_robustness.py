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
``{trial, trial_seed, component}``; ``collapsed`` marks non-finite output or ratio >= 10. Claims (when
named in ``suites/bounds/robustness.toml``): ``<kind>_<component>_low_noise_ppl_ratio_max`` (largest
ratio over the trials at ``LOW``) and ``<kind>_<component>_high_noise_ppl_ratio_min`` (smallest ratio
at ``HIGH``; a collapse counts as inf).
"""

from __future__ import annotations

import pytest
import torch

from harness.errors import HarnessError
from harness.faults import add_noise
from harness.faults.campaign import clean_baseline, run_trial
from harness.models.archmap import COMPONENTS, select

LOW, HIGH = 0.001, 0.5
QUICK_LEVELS = (LOW, 0.01, 0.03, 0.1, 0.2, HIGH)
FULL_LEVELS = (LOW, 0.003, 0.01, 0.03, 0.05, 0.1, 0.2, 0.3, HIGH)
QUICK_WINDOWS = 2
TRIALS = {"quick": 1, "full": 3}
SCALE = "std"
SUITE = "robustness"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "noise_kind" not in metafunc.fixturenames:
        return
    full = metafunc.config.getoption("esa_preset") == "full"
    kinds = ("gaussian", "uniform") if full else ("gaussian",)
    components = ("attention", "mlp", "linear", *((*COMPONENTS, "norms") if full else ()))
    cells = [(k, c) for k in kinds for c in components]
    metafunc.parametrize(("noise_kind", "component"), cells, ids=[f"{k}-{c}" for k, c in cells])



def test_noise_robustness(lm, eval_windows, esa, recorder, timer, noise_kind, component):
    model = lm.model
    try:
        refs = select(model, components=component)
    except HarnessError as err:
        pytest.skip(f"{lm.family}: {err}")
    windows = eval_windows[: esa.pick(quick=QUICK_WINDOWS, full=None)]
    clean = esa.cached((lm.name, SUITE, "clean", tuple(windows.shape), esa.options.corpus),
                       lambda: clean_baseline(model, windows))
    levels = esa.pick(quick=QUICK_LEVELS, full=FULL_LEVELS)
    trials = esa.options.trials or esa.pick(**TRIALS)

    ratios: dict[float, list[float]] = {level: [] for level in levels}
    with timer() as t:
        for trial in range(trials):
            trial_seed = esa.options.seed * 100_003 + trial
            for level in levels:
                g = torch.Generator().manual_seed(trial_seed)
                result = run_trial(model, windows, clean, add_noise(model, refs, level, kind=noise_kind, scale=SCALE,
                                                                     generator=g))
                ratios[level].append(result.ratio)
                columns = dict(method=noise_kind, collapsed=result.collapsed,
                               perturbation={"kind": "noise", "noise": noise_kind, "scale": SCALE, "level": level,
                                             "target": component},
                               extra={"trial": trial, "trial_seed": trial_seed, "component": component})
                recorder.record("ppl_ratio", result.ratio, clean_value=clean.result.perplexity, **columns)
                recorder.record("perplexity", result.result.perplexity, clean_value=clean.result.perplexity,
                                **columns)
                recorder.record("kl", result.result.kl, **columns)
    recorder.record("seconds", t.seconds, method=noise_kind,
                    perturbation={"kind": "noise", "noise": noise_kind, "scale": SCALE, "target": component},
                    extra={"trials": trials, "levels": len(levels)})

    stated = recorder.stated()
    for name, level, value in ((f"{noise_kind}_{component}_low_noise_ppl_ratio_max", LOW, max(ratios[LOW])),
                               (f"{noise_kind}_{component}_high_noise_ppl_ratio_min", HIGH, min(ratios[HIGH]))):
        if name in stated:
            recorder.claim(name, value, method=noise_kind, extra={"trials": trials},
                           perturbation={"kind": "noise", "noise": noise_kind, "scale": SCALE, "level": level,
                                         "target": component})
