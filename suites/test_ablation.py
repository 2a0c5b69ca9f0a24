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
  evaluation on the first eval window (256 tokens at ``--window 256``), which on
  smollm2-135m (30 layers) is 120 short evaluations.
- full preset: modes ``zero`` and ``mean`` (the control: each matrix replaced by its own mean, which
  tells the components apart); components ``all``, the groups ``attention`` and ``mlp`` and every
  canonical component the family has; all eval windows.

The grid and the measuring are ``harness.campaign.ablation_cells``; the clean baseline is the
session's (``esa.clean``).

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

import pytest

from harness.campaign.ablation_cells import MODES, AblationCells, grid
from harness.claims import ClaimSet, greater
from harness.models.archmap import COMPONENTS
from harness.session import Grid

SUITE = "ablation"
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


GRIDS = (Grid("cell", lambda o: grid(o.preset)),)


@pytest.fixture
def cells(esa, lm) -> AblationCells:
    return AblationCells.of(esa, lm)


def test_ablation_sensitivity(lm, cells, recorder, timer, cell):
    if reason := cell.skip_reason(lm):
        pytest.skip(reason)
    with timer() as t:
        layers = cells.measure(cell)
    recorder.rows(layers.rows())
    ratios, worst = layers.ratios, layers.worst
    recorder.record("seconds", t.seconds, method=cell.mode, perturbation=cell.perturbation,
                    extra={"layers": len(ratios)})
    columns = layers.summary()
    recorder.claim(WORST[cell.mode, cell.component], ratios[worst], **columns)
    recorder.claim(MILDEST[cell.mode, cell.component], min(ratios), **columns)
    if cell.component == "all":
        recorder.claim(LAYERS_DIFFER[cell.mode], greater(ratios[worst], min(ratios), factor=LAYER_CONTRAST),
                       **columns)
