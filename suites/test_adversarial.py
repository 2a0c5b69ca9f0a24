"""Input attacks: how far a changed prompt moves the model off the text that really follows it.

Cells: model x input attack (``--input-attacks``: typo, homoglyph, insertion, gcg, hotflip). Select
with ``-k adversarial``.

Prompts, seeds and sizes per preset: ``harness.attacks.input_cells`` (quick: 3 prompts, full: 8, of
``PROMPT_WORDS`` words each, followed by a target continuation of ``TARGET_WORDS`` words whose
log-probability the attack lowers; prompt i seeded with ``trial_seed(--seed, i, stream="adversarial.<attack>")``).
Character attacks: best of ``tries`` random prompts with ``edits`` edits; token attacks: a suffix of
``length`` tokens searched for ``steps`` steps of ``batch`` candidates. Weights are never touched.

Records (suite ``adversarial``; ``method`` = attack; ``perturbation`` = {kind, attack, options};
``extra`` = {prompt, target, adversarial, clean_logprob, attacked_logprob, queries}), per prompt:
``target_logprob_delta`` (attacked - clean, nats; negative = damage), ``greedy_changed`` (0/1),
``greedy_agreement``, ``seconds``; suffix attacks also ``random_suffix_logprob_delta`` (the same prompt with
as many uniformly random tokens appended, seeded like the attack: what mere extra tokens do). And the claims
below. (A suffix search is judged against its own starting suffix: at the quick sizes a random suffix can
lower the target as much as HotFlip does, e.g. smollm2-135m at --seed 1, prompt 3: -13.6 vs -12.1 nats.)
"""

from __future__ import annotations

import pytest

from harness.attacks.input_cells import SUFFIX_ATTACKS, InputAttackCells
from harness.attacks.options import input_attack_names
from harness.claims import ClaimSet, greater
from harness.session import Grid

MIN_GAIN = 1.0  # nats: the least a suffix search must lower the target's log-probability below its start

CLAIMS = ClaimSet("adversarial")
SEARCH_GAIN = {a: CLAIMS.relation(
    f"{a}_search_gain",
    f"On every prompt, the {a} search lowers the target's log-probability at least {MIN_GAIN:g} nat below the "
    "suffix it starts from (the same length of '!' tokens)", statistic="smallest gain over the prompts (nats)",
    margin=f"stated minimum effect {MIN_GAIN:g} nat on the worst prompt")
    for a in SUFFIX_ATTACKS}
MIN_DAMAGE = 0.25  # nats: the least mean drop of the target's log-probability a character attack must cause
# Suffix searches: a bound (their damage is large and stable over seeds). Character attacks: their mean delta
# scatters over seeds by ~1-3.5 nats on both models, so a bound from five seeds reaches past 0 and would pass an
# attack that does nothing; the claim is the relation that they damage at all, by a stated minimum.
MEAN_DELTA = {a: CLAIMS.bound(f"{a}_mean_logprob_delta", f"The {a} attack lowers the target's log-probability "
                              "(mean over prompts, nats; negative = damage) at least as much as measured",
                              side="max", statistic="target_logprob_delta", null=0.0)
              for a in SUFFIX_ATTACKS}
LOWERS = {a: CLAIMS.relation(
    f"{a}_lowers_target",
    f"The {a} attack lowers the target's log-probability by more than {MIN_DAMAGE:g} nat on average over the prompts",
    statistic="mean target_logprob_delta drop (nats)", margin=f"stated minimum effect {MIN_DAMAGE:g} nat")
    for a in input_attack_names() if a not in SUFFIX_ATTACKS}


GRIDS = (Grid("input_attack", lambda o: list(o.attack.input_attacks or input_attack_names())),)


@pytest.fixture
def cells(esa, lm) -> InputAttackCells:
    return InputAttackCells.of(esa, lm)


def test_input_attack(cells, recorder, input_attack):
    assert cells.prompts, "the corpus gave no prompts"
    m = cells.measure(input_attack)
    recorder.rows(m.rows())
    columns = {"method": input_attack, "perturbation": m.perturbation}
    if input_attack in SUFFIX_ATTACKS:  # the search's own contribution: final vs starting suffix, per prompt
        recorder.claim(SEARCH_GAIN[input_attack], greater(min(m.search_gains), MIN_GAIN),
                       extra={"gains": m.search_gains, "start_logprobs": m.start_logprobs,
                              "attacked_logprobs": m.attacked_logprobs, "deltas": m.deltas,
                              "random_suffix_deltas": m.control_deltas}, **columns)
    if input_attack in MEAN_DELTA:
        recorder.claim(MEAN_DELTA[input_attack], m.mean_delta, extra={"prompts": len(m.deltas), "deltas": m.deltas},
                       **columns)
    if input_attack in LOWERS:
        recorder.claim(LOWERS[input_attack], greater(-m.mean_delta, MIN_DAMAGE),
                       extra={"prompts": len(m.deltas), "deltas": m.deltas}, **columns)
