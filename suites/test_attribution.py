"""LLM attribution (Captum): how weight perturbations change which prompt tokens a continuation depends on.

Cells (``harness.attribution.cells``): per shipped prompt the clean model's greedy continuation is the fixed
target; feature ablation attributes its log-probability to each prompt token on the clean model and under each
perturbation (``zero_super_weights``, its random control ``zero_random``, ``exp_msb_flip``, ``wanda_50``; restored
bit-exactly). Integrated gradients attributes the same targets on the clean model.

Records per prompt and perturbation (``harness.attribution.measures``): ``target_logprob_change``,
``attr_spearman``, ``attr_shift`` (1 - Spearman; inf on a collapse), ``attr_rel_change`` (relative L1 change),
``attr_topk_jaccard`` (top ``TOP_K``), ``attr_sign_flip_share``. Records of metric ``target_logprob`` carry the
attribution itself in ``extra`` (``condition``, ``prompt``, tokens, ``seq_attr``, ``token_attr``) for the
report's heatmaps (``reports.attribution``).

Claims:

- ``zero_super_weights_vs_random`` (relation): on every prompt zeroing the super weights changes the
  attributions at least ``SHIFT_FACTOR`` times as much (``attr_rel_change``) as zeroing as many random
  weights of the same matrices. Not on the rank shift: zeroing a few random weights leaves the ranking
  exactly as it was (``attr_shift`` 0 on every prompt of smollm2-135m), and ``x >= 2 x 0`` cannot fail.
  Pretrained models only; not applicable when no super weight is detected.
- ``deterministic`` (relation): feature ablation and integrated gradients computed twice give the
  same numbers bit for bit (largest |difference| = 0).
- ``method_agreement`` (bound, ``min``): mean over prompts of the Spearman correlation of feature
  ablation and integrated gradients on the clean model. A bound, not a relation: how well two attribution
  methods agree is a property of the model and the prompts with no natural control to compare against; the
  number per model is the measured mean less 5% (``claims.derive_bound``'s relative margin; both methods are
  deterministic, so seeds do not scatter it), in ``suites/bounds/attribution.toml``.
"""

from __future__ import annotations

import pytest

from harness.attribution.cells import PERTURBATIONS, SHIFT_FACTOR, AttributionCells
from harness.claims import ClaimSet

CLAIMS = ClaimSet("attribution")
ZERO_VS_RANDOM = CLAIMS.relation(
    "zero_super_weights_vs_random",
    "Zeroing the super weights moves per-token attributions more than zeroing as many random weights",
    statistic="attr_rel_change",
    margin=f"every prompt: attr_rel_change(super weights) >= {SHIFT_FACTOR:g} x attr_rel_change(random weights)",
)
DETERMINISTIC = CLAIMS.relation(
    "deterministic", "An attribution computed twice is the same, bit for bit",
    statistic="attr_repeat_max_abs_diff", pretrained_only=False, margin="largest |difference| must be 0",
)
AGREEMENT = CLAIMS.bound(
    "method_agreement", "Feature ablation and integrated gradients rank the prompt tokens alike on the clean model",
    side="min", statistic="attr_method_spearman", pretrained_only=True, seeded=False,
    margin="measured mean Spearman over the prompts less 5% (deterministic methods: no seed scatter)",
)


@pytest.fixture
def cells(esa, lm) -> AttributionCells:
    return AttributionCells.of(esa, lm)


def test_attribution_clean(cells, recorder):
    recorder.rows(cells.clean_rows())


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_attribution_perturbed(cells, recorder, super_weights, perturbation):
    if why := cells.unavailable(perturbation, super_weights):
        pytest.skip(why)
    recorder.rows(cells.perturbed(perturbation, super_weights).rows())


def test_attribution_zero_super_weights_vs_random(cells, recorder, super_weights):
    if not super_weights:
        recorder.not_applicable(ZERO_VS_RANDOM, super_weights.none_reason())
        return
    pairs = cells.super_vs_random(super_weights)
    recorder.claim(ZERO_VS_RANDOM, pairs.comparison(), extra=pairs.extra())


def test_attribution_deterministic(cells, recorder):
    repeat = cells.repeat()
    recorder.rows(repeat.rows())
    recorder.claim(DETERMINISTIC, repeat.comparison())


def test_attribution_method_agreement(cells, recorder):
    agreement = cells.method_agreement()
    recorder.rows(agreement.rows())
    recorder.claim(AGREEMENT, agreement.mean)
