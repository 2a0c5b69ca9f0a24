"""Bit-flip attacks on the weights: how many flips an attacker needs, against defenses and a random baseline.

Cells (``harness.attacks.cells``): model x attack (``--attacks``: progressive, guided, random) x weight
dtype (``--attack-dtypes``: fp32, bf16, int8) x defense (``--defenses``: none, checksum, clamp). Select with
``-k attack``. Unless ``--attack-dtypes`` or ``--defenses`` is given, the quick preset measures bf16 without
a defense only (``DEFENDED_DTYPES``: bf16 runs about 6x slower than fp32 on a CPU).

Every cell runs the attack with ``--flip-budget`` flips on the live model and puts it back bit-exactly. Perplexity
is measured after every flip on the first evaluation window(s) (quick: one window of ``--window`` tokens); gradients
and trial losses use the first calibration window (quick: its first 128 tokens), so the attack does not fit the text
it is judged on (sizes per preset: ``harness.attacks.options.SIZES``). Collapse: perplexity x10 of the clean model
in the same dtype, or non-finite. The progressive and guided attacks are deterministic; the random baseline runs
``--trials`` seeds (``trial_seed(--seed, i, "attack.random")``). A run that does not collapse within the budget is
censored: it counts as +inf flips ("did not collapse within the budget"), never as a number. Models per dtype:
``AttackCells.model_in`` (bf16 a second copy, checked bit-identical after each test; int8 the session model's
decoder linears as per-channel int8 codes). The guided attack starts from the session's super weights
(``fixtures.superweights``), detected on fp32.

Records (suite ``attack``; ``method`` = attack; ``perturbation`` = {kind, attack, dtype, defense,
budget}): ``flips_to_collapse`` (inf and collapsed=0 when the budget ran out first), ``ppl_ratio`` after
each measured flip (``extra.flips``), ``seconds``, ``flips_ratio_to_random`` (attack cells: the attack's
flips / the random baseline's median, censored values counted as budget+1 in this record only),
``flips_vs_undefended`` (defended cells), and the claims below. Which claims a cell checks is the cell's
(``AttackMeasurement.claims``): a random cell none; an undefended search its flips bound and, on int8, beating
random; a defended attack on floating-point weights the defense's gain.
"""

from __future__ import annotations

import pytest

from harness.attacks.cells import SEARCHES, AttackCells, GuidedStart, grid
from harness.attacks.options import ATTACK_DTYPES, defense_names
from harness.claims import ClaimSet
from harness.session import Grid

CLAIMS = ClaimSet("attack")
# On int8 weights a flip moves a weight by at most 255 steps of its channel's scale, so random flips
# rarely collapse the model within the budget and a search must beat them clearly. On fp32/bf16 one
# random exponent-MSB flip collapses it, so a random run can collapse at its first flip at any seed
# (history in attack.toml: random runs at 4 and 5 flips vs progressive 1, guided 2): no seed-proof
# margin at the preset's trial count, so there the claim is not made; the attacks' flips are bounds.
BEATS_RANDOM = {("beats_random", a): CLAIMS.relation(
    f"{a}_beats_random_int8",
    f"Undefended on int8 weights, the {a} attack collapses the model in fewer flips than every seeded "
    "random-flip run (a run that does not collapse within the budget counts as +inf flips)",
    statistic="flips_to_collapse", margin="paired over the random seeds: every random run needs more flips")
    for a in SEARCHES}
# A defense is judged on the same flips with and without it: the undefended search's flips, replayed in order on the
# defended model (``AttackCell.replay``), so the pair isolates the defense. It must show a measured gain: strictly
# more flips to collapse (+inf: held off), where the undefended run collapses within the budget. Not on int8: a
# flipped int8 code stays inside the matrix's code range, which clamping cannot repair. Recorded, not claimed: random
# flips under a defense (they almost never hit the ~1e3 weights checksum protects) and the searches' own runs under
# it (another greedy path, e.g. gemma3-270m, int8, clamp: progressive 2 flips vs 3 undefended).
DEFENSE_GAIN = {("defense_gain", d): CLAIMS.relation(
    f"{d}_defends_search_flips",
    f"Under the {d} defense the flips with which an undefended search collapsed the model (fp32, bf16), replayed "
    "in order, need strictly more flips to collapse it, or never do",
    statistic="flips_to_collapse", margin="strict; a tie fails; undecided when the undefended run never collapsed")
    for d in defense_names() if d != "none"}
FLIPS = {("flips", a, dt): CLAIMS.bound(f"{a}_{dt}_flips", f"The undefended {a} attack on {dt} weights collapses "
                                        "the model within its measured number of flips (a run that never collapses "
                                        "fails)", side="max", statistic="flips_to_collapse")
         for a in SEARCHES for dt in ATTACK_DTYPES}
CLAIM_OF = {**BEATS_RANDOM, **DEFENSE_GAIN, **FLIPS}  # by ClaimCheck.key


GRIDS = (Grid(("attack_name", "attack_dtype", "defense_name"),
              lambda o: grid(o.preset, o.attack.attacks, o.attack.dtypes, o.attack.defenses)),)


@pytest.fixture
def cells(esa, lm) -> AttackCells:
    return AttackCells.of(esa, lm)


@pytest.fixture
def guided(esa, lm, cells) -> GuidedStart:
    """Where the guided attack starts: the session's super-weight detection on the fp32 model (``esa.detection``),
    made before any int8 swap; the detector's strongest candidate (source ``candidate``) where none is detected
    (tiny random models, gemma3-270m)."""
    return cells.guided(esa.detection(lm))


@pytest.fixture
def attacked(cells, guided, attack_dtype):
    """The model to attack in ``attack_dtype`` (see the module docstring; after ``guided``: the detection is made on
    the model before any int8 swap); checked unchanged afterwards."""
    with cells.model_in(attack_dtype) as model:
        yield model


def test_attack(cells, guided, attacked, recorder, attack_name, attack_dtype, defense_name):
    """One cell: its runs and comparisons recorded, then the claims that apply to it."""
    cell = cells.cell(attacked, attack_dtype, defense_name, guided)
    measured = cells.measure(cell, attack_name)
    columns = {"method": attack_name, "perturbation": measured.perturbation}
    recorder.rows(measured.rows(), method=attack_name)
    for check in measured.claims():
        if check.not_applicable:  # e.g. the guided attack on gemma3-270m: its strongest candidate is a mild outlier
            recorder.not_applicable(CLAIM_OF[check.key], check.not_applicable, **columns)
        else:
            recorder.claim(CLAIM_OF[check.key], check.evidence, extra=check.extra, **columns)
