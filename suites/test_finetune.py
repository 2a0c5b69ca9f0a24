"""Fine-tuning: do super weights and robustness survive it, and does fault-aware fine-tuning harden a model?

Per model, full fine-tuning on the corpus's calibration documents, same budget, learning rate, schedule and
seed for each variant: ``plain``, ``noise`` (relative weight noise sigma=0.1 during training), ``clip`` (full
preset). Before (``base``) and after each, on the same evaluation windows: held-out perplexity, the super
weights and the ratio with them zeroed, one uniform exp-MSB flip's collapse rate, the ratio under relative
noise (trials paired across models by seed). Grid, trials and budgets: ``harness.finetune.cells``.

Records (suite ``finetune``, method = ``base`` or the variant): ``train_loss`` per step, ``seconds``,
``training_perplexity`` (the base model's as ``clean_value``), ``perplexity``, ``ppl_ratio``
(``{kind: zero, target: super_weights}`` or ``{kind: noise, level}``), ``collapse_rate`` (Wilson 95% in extra),
``jaccard``, ``top_super_weight_kept``, ``super_weight_drift``; ``noise_ratio_difference`` and
``collapse_rate_difference`` (method ``plain-noise``). ``reports.finetune`` draws them.

Claims (relations; not applicable to the random-weight tiny models): fine-tuning lowers the perplexity of the
windows it trained on (each variant); the top super weight keeps its coordinates (each variant); noise-aware
fine-tuning is non-inferior to plain under sigma=0.1 noise (every paired trial: at most 1.05 x plain's). That
it *lowers* the ratio, and held-out perplexity, are recorded, not claimed: gemma3-270m (below) showed the
quick budget (4 steps) too small for a direction every model keeps.

Measured (quick preset, seed 0, CPU, fp32, the first 2 eval windows; ``pytest suites/test_finetune.py
--model M``), base / plain / noise:

    smollm2-135m                              base      plain     noise
    held-out perplexity                      20.012    17.719    17.841
    ppl ratio, super weights zeroed (3)       5.196     4.193     4.000
    uniform exp-MSB collapse rate (5 trials)  1.0       1.0       1.0
    ppl ratio, relative noise sigma=0.1       1.248     1.279     1.255   (plain 1.261/1.297, noise 1.248/1.262)
    ppl ratio, relative noise sigma=0.2       3.645     3.852     3.588   (plain 3.949/3.755, noise 3.754/3.422)
    super weights: Jaccard vs base              -       1.0       1.0     (11,507,1229) (28,507,678) (29,507,999)
    max |relative drift| of a super weight      -       2.6e-5    4.3e-5
    train loss, first -> last step              -       2.952->2.529  3.104->2.776

    gemma3-270m (no super weight: the candidate layer 0 [400, 1405] stands in and keeps its coordinates)
    perplexity on the training windows       19.968     7.672     8.379
    held-out perplexity                      24.740    24.788    25.131
    ppl ratio, strongest candidate zeroed     1.092     1.011     1.001
    uniform exp-MSB collapse rate (5 trials)  0.0       0.0       0.0
    ppl ratio, relative noise sigma=0.1       1.233     1.197     1.191   (plain 1.246/1.149, noise 1.232/1.150)
    ppl ratio, relative noise sigma=0.2       2.645     2.236     2.176   (plain 2.452/2.020, noise 2.376/1.977)
    train loss, first -> last step              -       3.319->2.505  3.485->2.618

On smollm2-135m plain fine-tuning makes the model slightly *more* noise-sensitive, noise-aware less so than
plain (every pair, both sigmas; one seed, 2 trials). The exp-MSB collapse rate does not move (on smollm2 a
flipped exponent MSB of an fp32 weight below 2 multiplies it by 2^128). On gemma3-270m at seed 1 the training-
window perplexity falls the same way (19.97 -> 7.69 / 8.87) while held-out perplexity rises (26.56 / 26.02),
and at sigma=0.1 the pairs go both ways (1.232 vs 1.246, 1.150 vs 1.149): hence the non-inferiority claim.
"""

from __future__ import annotations

import math

import pytest

from harness.claims import ClaimSet, greater, paired_greater
from harness.finetune.cells import NON_INFERIORITY, TRAIN_EFFECT, TRAIN_NOISE, FinetuneCells, grid, measure_rows
from harness.session import Grid

CLAIMS = ClaimSet("finetune")
LOWER_PPL = CLAIMS.relation(
    "finetune_lowers_training_perplexity",
    f"Fine-tuning lowers the perplexity of the calibration windows it trained on by more than "
    f"{TRAIN_EFFECT - 1:.0%} (plain and noise-aware alike)",
    statistic="perplexity", margin=f"before > {TRAIN_EFFECT} x after: a stated minimum effect; a no-op fails")
TOP_KEPT = CLAIMS.relation(
    "top_super_weight_keeps_coordinates",
    "The top super weight keeps its (layer, row, col) through fine-tuning",
    statistic="super weight coordinates", seeded=False, margin="exact coordinates")
NOISE_AWARE = CLAIMS.relation(
    "noise_aware_no_more_noise_sensitive",
    f"Noise-aware fine-tuning leaves the model no more sensitive to sigma={TRAIN_NOISE} relative noise than plain "
    "fine-tuning at the same budget (non-inferiority; that it lowers the ratio is recorded, not claimed)",
    statistic="ppl_ratio",
    margin=f"every seeded noise trial pair (same unit noise): noise-aware <= {NON_INFERIORITY} x plain")


@pytest.fixture(autouse=True)
def _base_model_only(esa):
    if reason := FinetuneCells.refused(esa):
        pytest.skip(reason)


GRIDS = (Grid("variant", lambda o: [v.name for v in grid(o.preset)]),)


@pytest.fixture
def cells(esa, lm) -> FinetuneCells:
    """This model's cells, shared by the session (the comparison reuses the variants' measures)."""
    return FinetuneCells.of(esa, lm)


def test_before(cells, recorder):
    base = cells.base()
    recorder.rows(measure_rows(base), method="base")
    assert math.isfinite(base.perplexity), f"the base model's held-out perplexity is {base.perplexity}"


def test_finetune_trains(cells, recorder, variant):
    """Training lowers the perplexity of the windows it trained on (the fine-tune alone, no measures)."""
    pert = cells.description(variant)
    recorder.rows(cells.train_rows(variant), method=variant)
    assert cells.trained(variant), f"training diverged or stopped: losses {cells.finetuned(variant).log.losses}"
    ppl = cells.training_perplexity(variant)
    recorder.rows(ppl.rows(), method=variant)
    recorder.claim(LOWER_PPL, greater(ppl.before, ppl.after, factor=TRAIN_EFFECT), clean_value=ppl.before,
                   method=variant, perturbation=pert)


def test_finetune(cells, recorder, variant):
    """The fine-tuned model's measures against the base model's: super weights kept, noise, flips."""
    base, after = cells.base(), cells.after(variant)
    recorder.rows(after.rows(base), method=variant)
    if base.none_reason:
        recorder.not_applicable(TOP_KEPT, f"{base.none_reason} in the base model", method=variant)
    else:
        recorder.claim(TOP_KEPT, cells.top_kept(variant), method=variant, perturbation=cells.description(variant))


def test_fault_aware_vs_plain(cells, recorder):
    """Noise-aware against plain fine-tuning at the same budget (the collapse rate and sigma=0.2 recorded only)."""
    both = cells.noise_aware_vs_plain()
    recorder.rows(both.rows(), method="plain-noise")
    recorder.claim(NOISE_AWARE, paired_greater(*both.ratios(TRAIN_NOISE), factor=1 / NON_INFERIORITY),
                   method="plain-noise", perturbation={"kind": "noise", "scale": "relative", "level": TRAIN_NOISE})
