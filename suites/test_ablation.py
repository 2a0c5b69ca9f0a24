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
``collapsed`` marks non-finite output or ratio >= 10; ``seconds`` per cell.

Claims (the map does not depend on ``--seed``):
- relation ``<mode>_all_layers_differ``: the most damaging block's removal raises perplexity at
  least ``LAYER_CONTRAST`` times as much as the most benign block's (trained models use their
  blocks unequally; the first block usually carries far more than the middle ones);
- bounds ``<mode>_<component>_max_layer_ppl_ratio`` (min) and ``<mode>_<component>_min_layer_ppl_ratio``
  (max): the most damaging and the most benign layer's ratio.
"""

from __future__ import annotations

import math

import pytest

from harness.campaign import Campaign
from harness.claims import ClaimSet, greater
from harness.errors import HarnessError
from harness.faults import ablate_layer
from harness.models.archmap import COMPONENTS, num_layers, parse_components

QUICK_WINDOWS = 1
QUICK_COMPONENTS = ("all", "attention", "mlp_down", "query")
SUITE = "ablation"
MODES = ("zero", "mean")
LAYER_CONTRAST = 2.0

CLAIMS = ClaimSet(SUITE)
LAYERS_DIFFER = {
    m: CLAIMS.relation(f"{m}_all_layers_differ", f"Removing ({m}) the most damaging decoder block hurts at least "
                       f"{LAYER_CONTRAST:g}x as much as removing the most benign one", statistic="ppl_ratio",
                       seeded=False, margin=f"max layer ratio >= {LAYER_CONTRAST:g} x min layer ratio")
    for m in MODES}
WORST, MILDEST = {}, {}
for _m in MODES:
    for _c in ("all", "attention", "mlp", *COMPONENTS):
        WORST[_m, _c] = CLAIMS.bound(f"{_m}_{_c}_max_layer_ppl_ratio",
                                     f"Removing ({_m}) {_c} of the most damaging layer stays as damaging as measured",
                                     side="min", statistic="ppl_ratio", seeded=False, null=1.0)
        MILDEST[_m, _c] = CLAIMS.bound(f"{_m}_{_c}_min_layer_ppl_ratio",
                                       f"Removing ({_m}) {_c} of the most benign layer stays as mild as measured",
                                       side="max", statistic="ppl_ratio", seeded=False)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "mode" not in metafunc.fixturenames:
        return
    full = metafunc.config.getoption("esa_preset") == "full"
    modes = MODES if full else MODES[:1]
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
    clean = esa.clean(lm.name, model, windows)
    components = None if component == "all" else component

    ratios = []
    campaign = Campaign(model, windows, clean)  # a trial starts at the ablated block, on its kept clean input
    with timer() as t:
        for layer in range(num_layers(model)):
            result = campaign.trial(ablate_layer(model, layer, components, mode))
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
    columns = dict(method=mode, perturbation={"kind": "ablation", "mode": mode, "component": component},
                   extra={"worst_layer": worst, "mildest_layer": min(range(len(ratios)), key=lambda i: ratios[i]),
                          "layers": len(ratios), "finite": all(math.isfinite(r) for r in ratios)})
    recorder.record("worst_layer", worst, **columns)
    recorder.claim(WORST[mode, component], ratios[worst], **columns)
    recorder.claim(MILDEST[mode, component], min(ratios), **columns)
    if component == "all":
        recorder.claim(LAYERS_DIFFER[mode], greater(ratios[worst], min(ratios), factor=LAYER_CONTRAST), **columns)
