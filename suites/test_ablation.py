"""Per-layer sensitivity map: ablate each decoder layer, and each component kind of each layer.

For every layer and every component in the cell (``harness.faults.ablate_layer``): replace the
weights, evaluate, restore; the perplexity change per (layer, component) is the sensitivity map
that reports draw as a heatmap. Component ``all`` is the whole block (every canonical component,
norms included; zeroed, a pre-norm block adds nothing to the residual stream, i.e. it is skipped).

Zeroing any factor of a product silences the whole sublayer: ``value``, ``attn_out`` and the
``attention`` group all remove the attention output, ``mlp_up``, ``mlp_down`` and the ``mlp`` group
the MLP output (up to biases), and a zeroed norm weight silences what follows it. Zeroed ``query``
or ``key`` make the attention uniform instead. So the quick preset takes one of each:

- quick preset: mode ``zero``; components ``all``, ``attention``, ``mlp_down`` and ``query``;
  evaluation on the first ``QUICK_WINDOWS`` eval window (256 tokens at ``--window 256``), which on
  smollm2-135m (30 layers) is 120 short evaluations.
- full preset: modes ``zero`` and ``mean`` (the control: each matrix replaced by its own mean, which
  tells the components apart); components ``all``, the groups ``attention`` and ``mlp`` and every
  canonical component the family has; all eval windows.

Records (suite ``ablation``, method = mode): per (layer, component) ``ppl_ratio`` and ``perplexity``
with perturbation ``{kind: ablation, mode, layer, component}`` and extra ``{layer, component, mode}``;
``collapsed`` marks non-finite output or ratio >= 10; ``seconds`` per cell. Claims (when named in
``suites/bounds/ablation.toml``): ``<mode>_<component>_max_layer_ppl_ratio_min`` (the most damaging
layer's ratio), ``<mode>_<component>_min_layer_ppl_ratio_max`` (the most benign layer's ratio), and
``<mode>_<component>_worst_layer_min`` / ``_max`` (the index of the most damaging layer).
"""

from __future__ import annotations

import math

import pytest

from harness.errors import HarnessError
from harness.faults import ablate_layer
from harness.faults.campaign import clean_baseline, run_trial
from harness.models.archmap import COMPONENTS, num_layers, parse_components

QUICK_WINDOWS = 1
QUICK_COMPONENTS = ("all", "attention", "mlp_down", "query")
SUITE = "ablation"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "mode" not in metafunc.fixturenames:
        return
    full = metafunc.config.getoption("esa_preset") == "full"
    modes = ("zero", "mean") if full else ("zero",)
    components = QUICK_COMPONENTS + (("mlp", *(c for c in COMPONENTS if c not in QUICK_COMPONENTS)) if full else ())
    cells = [(m, c) for m in modes for c in components]
    metafunc.parametrize(("mode", "component"), cells, ids=[f"{m}-{c}" for m, c in cells])



def test_ablation_sensitivity(lm, eval_windows, esa, recorder, timer, mode, component):
    model = lm.model
    try:
        parse_components(component, lm.arch)
    except HarnessError as err:
        pytest.skip(f"{lm.family}: {err}")
    windows = eval_windows[: esa.pick(quick=QUICK_WINDOWS, full=None)]
    clean = esa.cached((lm.name, SUITE, "clean", tuple(windows.shape), esa.options.corpus),
                       lambda: clean_baseline(model, windows))
    components = None if component == "all" else component

    ratios = []
    with timer() as t:
        for layer in range(num_layers(model)):
            result = run_trial(model, windows, clean, ablate_layer(model, layer, components, mode))
            ratios.append(result.ratio)
            where = {"layer": layer, "component": component, "mode": mode}
            columns = dict(method=mode, collapsed=result.collapsed, clean_value=clean.result.perplexity,
                           perturbation={"kind": "ablation", **where}, extra=where)
            recorder.record("ppl_ratio", result.ratio, **columns)
            recorder.record("perplexity", result.result.perplexity, **columns)
    recorder.record("seconds", t.seconds, method=mode, perturbation={"kind": "ablation", "mode": mode,
                                                                     "component": component},
                    extra={"layers": len(ratios)})

    worst = max(range(len(ratios)), key=lambda i: ratios[i])  # a collapse (inf) is the worst
    values = {"max_layer_ppl_ratio_min": ratios[worst], "min_layer_ppl_ratio_max": min(ratios),
              "worst_layer_min": worst, "worst_layer_max": worst}
    stated = recorder.stated()
    for suffix, value in values.items():
        name = f"{mode}_{component}_{suffix}"
        if name in stated:
            recorder.claim(name, value, method=mode,
                           perturbation={"kind": "ablation", "mode": mode, "component": component},
                           extra={"worst_layer": worst, "layers": len(ratios),
                                  "finite": all(math.isfinite(r) for r in ratios)})
