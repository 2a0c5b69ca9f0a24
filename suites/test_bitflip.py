"""Bit-flip campaigns on the stored bits of the weights: model x target x bit class x dtype.

A cell runs seeded trials: quick preset 5 (``uniform`` target: 20, the cells the relation below
compares), full 20; ``--trials`` overrides. Trial t draws its sites with a ``torch.Generator``
seeded from (``--seed``, t), flips them in place (``harness.faults.flip_bits``), evaluates and
restores; positions are drawn before bits, so trial t hits the same weights in every bit class of
a target (a paired design).

- bit class: the campaign classes of ``harness.faults.BIT_CLASSES`` (sign, exp_msb, exponent,
  mantissa_msb, mantissa_lsb).
- target, where the flipped weights are:
  ``uniform``  uniform over the decoder blocks' linear weights (archmap group ``linear``);
  ``largest``  drawn among the ``POOL`` (``harness.campaign.bitflip``) largest-|w| of those weights;
  ``list``     the detected super weights (one detector for every suite, ``esa.detection``);
               where none is detected (tiny random models, gemma3-270m) the detector's strongest
               candidate (``harness.recipes.super_weight_sites``, the one fallback), its rate claims
               then not applicable. The source is
               recorded as ``target_source``.
- dtype: the model's own (``native``); the full preset adds ``bf16`` (a second copy, loaded once
  per module; skipped when the model already is bf16). Flips per trial: 1; full adds 8.

Evaluation: quick preset the first 2 eval windows, full all; ratio and KL against the clean model of
the same dtype on the same windows (``esa.clean``). Collapse: non-finite output or ratio >= 10. The
grid and the measuring are ``harness.campaign.bitflip_cells``; a cell is measured once per model and
dtype (the relation reuses the campaign's cells), and its trial rows are recorded by its own test.

Records (suite ``bitflip``, method = target): per trial ``ppl_ratio`` and ``kl`` with perturbation
``{kind: bitflip, bit_class, target, target_source, dtype, n_flips, sites}``; per cell
``collapse_rate`` (Wilson 95% in extra) and ``seconds``.

Claims:
- relation ``exp_msb_damages_more_than_mantissa_lsb``: an exponent-MSB flip of a random linear
  weight moves the output distribution (KL to the clean model, a collapse +inf) more than a
  mantissa-LSB flip of the same weight, in most paired trials (sign test: the Wilson 95% interval
  of the share of pairs lies above 1/2; 15 of the 20 quick trials). Both cells' collapse rates are
  recorded beside it. A collapse-rate relation does not hold for every healthy model: on
  gemma3-270m, whose blocks normalize their outputs again (post-attention and post-feed-forward
  norms), 0 of 20 uniform exp-MSB flips collapse (ratio 1.0-1.7, KL up to 2.1; seed 0), where
  smollm2-135m collapses in most trials;
- bound ``<cell>_collapse_rate`` (within): each cell's collapse rate stays in the interval its
  model's runs at five seeds give (``python -m reports export-bounds``).
"""

from __future__ import annotations

import pytest

from harness.campaign.bitflip import TARGETS
from harness.campaign.bitflip_cells import ACTING_BITS, CAMPAIGN_BITS, BitflipCell, BitflipCells, grid
from harness.claims import ClaimSet, has_effect, paired_majority
from harness.session import Grid

CLAIMS = ClaimSet("bitflip")
EXP_VS_LSB = CLAIMS.relation(
    "exp_msb_damages_more_than_mantissa_lsb",
    "Flipping the exponent MSB of a random linear weight moves the output distribution more than flipping "
    "its mantissa LSB", statistic="kl",
    margin="sign test over the paired trials: Wilson 95% interval of the share of pairs above 1/2")
RATE = {
    (d, t, b, n): CLAIMS.bound(f"{d}_{t}_{b}" + (f"_{n}flips" if n > 1 else "") + "_collapse_rate",
                               f"{b} flips of {n} {t} weight(s) in {d} collapse the model as often as measured",
                               side="within", statistic="collapse_rate")
    for d in ("fp32", "fp16", "bf16") for t in TARGETS for b in CAMPAIGN_BITS for n in (1, 8)
}
# The effect guard of every cell whose flips must act (ACTING_BITS: no mantissa LSB; tiny-llama's largest weight
# masks it). On random weights (one trial per cell) even a sign flip can be rounded away (tiny-gpt-neox, a key
# weight of -0.0027: bit-identical block output), so the guards are for trained models, with 5-20 trials a cell.
EFFECT = {(d, t, b, n): CLAIMS.effect(f"{d}_{t}_{b}" + (f"_{n}flips" if n > 1 else ""),
                                      f"Flipping the {b} bit of {n} {t} weight(s) in {d}", pretrained_only=True)
          for d in ("fp32", "fp16", "bf16") for t in TARGETS for b in ACTING_BITS for n in (1, 8)}


GRIDS = (Grid("cell", lambda o: grid(o.preset)),)


@pytest.fixture
def cells(esa, lm):
    """The model's measured cells, kept by the session (the relation reuses the campaign's)."""
    return BitflipCells.of(esa, lm)


def test_bitflip_campaign(lm, cells, recorder, timer, cell):
    if reason := cell.skip_reason(lm):
        pytest.skip(reason)
    with timer() as t:
        measured = cells.measure(cell)
    recorder.rows(measured.rows(), dtype=measured.torch_dtype)
    n, k = measured.n, measured.collapses
    columns = dict(method=cell.target, dtype=measured.torch_dtype, perturbation=measured.perturbation)
    recorder.record("seconds", t.seconds, extra={"trials": n}, **columns)
    key = (measured.dtype, cell.target, cell.bit_class, cell.n_flips)
    if cell.bit_class in ACTING_BITS:
        recorder.claim(EFFECT[key], has_effect(measured.changed), **columns)
    if measured.stand_in:  # no super weight detected: the rate is the candidate's, not the super weights'
        recorder.not_applicable(RATE[key], measured.stand_in, **columns)
    else:
        recorder.claim(RATE[key], k / n, trials=n, extra={"trials": n, "collapses": k}, **columns)


def test_exp_msb_damages_more_than_mantissa_lsb(cells, recorder):
    exp, lsb = (cells.measure(BitflipCell("uniform", b)) for b in ("exp_msb", "mantissa_lsb"))
    pairs = min(len(exp.kls), len(lsb.kls))  # sequential cells may differ in length: trial t pairs with t
    recorder.claim(EXP_VS_LSB, paired_majority(exp.kls[:pairs], lsb.kls[:pairs]), method="uniform",
                   dtype=exp.torch_dtype,
                   perturbation={"kind": "bitflip", "target": "uniform", "bit_class": "exp_msb vs mantissa_lsb"},
                   extra={"collapse_rate": exp.collapse_rate, "other_collapse_rate": lsb.collapse_rate})
