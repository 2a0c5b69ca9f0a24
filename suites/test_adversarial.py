"""Input attacks: how far a changed prompt moves the model off the text that really follows it.

Cells: model x input attack (``--input-attacks``: typo, homoglyph, insertion, gcg, hotflip). Select
with ``-k adversarial``.

Prompts: the opening words of the first evaluation documents (``harness.data.generation_prompts``,
quick: 3 prompts, full: 8); the first ``PROMPT_WORDS`` words are the prompt and the next
``TARGET_WORDS`` words the target continuation whose log-probability the attack lowers. Seeds:
prompt i uses ``harness.stats.trial_seed(--seed, i, stream="adversarial.<attack>")``. Character
attacks: best of ``tries`` random prompts with ``edits`` edits; token attacks: a suffix of
``length`` tokens searched for ``steps`` steps of ``batch`` candidates (quick sizes in ``_options``).
Weights are never touched.

Records (suite ``adversarial``; ``method`` = attack; ``perturbation`` = {kind, attack, options};
``extra`` = {prompt, target, adversarial, clean_logprob, attacked_logprob, queries}), per prompt:
``target_logprob_delta`` (attacked - clean, nats; negative = damage), ``greedy_changed`` (0/1),
``greedy_agreement``, ``seconds``; suffix attacks also ``random_suffix_logprob_delta`` (the same prompt with
as many uniformly random tokens appended, seeded like the attack: what mere extra tokens do). And the claims
below. (A suffix search is judged against its own starting suffix: at the quick sizes a random suffix can
lower the target as much as HotFlip does, e.g. smollm2-135m at --seed 1, prompt 3: -13.6 vs -12.1 nats.)
"""

from __future__ import annotations

import statistics

import pytest
import torch

from harness.attacks.input_attacks import run_input_attack
from harness.attacks.options import INPUT_ATTACK_NAMES
from harness.attacks.random_suffix import random_suffix_logprob
from harness.claims import ClaimSet, greater
from harness.stats import trial_seed

PROMPT_WORDS, TARGET_WORDS = 10, 6
SUFFIX_ATTACKS = ("gcg", "hotflip")
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
    for a in INPUT_ATTACK_NAMES if a not in SUFFIX_ATTACKS}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "input_attack" in metafunc.fixturenames:
        names = list(metafunc.config.option.esa_input_attacks or INPUT_ATTACK_NAMES)
        metafunc.parametrize("input_attack", names, ids=names)


def _options(esa, method: str) -> dict:
    if method in ("gcg", "hotflip"):
        sizes = esa.pick(quick={"length": 6, "steps": 4, "batch": 8}, full={"length": 12, "steps": 32, "batch": 64})
        return sizes if method == "hotflip" else {**sizes, "topk": esa.pick(quick=32, full=128)}
    return esa.pick(quick={"edits": 2, "tries": 6}, full={"edits": 3, "tries": 32})


def _prompts(esa, lm) -> list[tuple[str, str]]:
    from harness.data import generation_prompts, load_corpus

    corpus = esa.cached(("corpus", esa.options.corpus), lambda: load_corpus(esa.options.corpus))
    openings = generation_prompts(corpus, esa.pick(quick=3, full=8), words=PROMPT_WORDS + TARGET_WORDS)
    pairs = []
    for text in openings:
        words = text.split()
        if len(words) == PROMPT_WORDS + TARGET_WORDS:
            pairs.append((" ".join(words[:PROMPT_WORDS]), " " + " ".join(words[PROMPT_WORDS:])))
    return pairs


def test_input_attack(esa, lm, recorder, input_attack):
    options = _options(esa, input_attack)
    prompts = _prompts(esa, lm)
    assert prompts, "the corpus gave no prompts"
    perturbation = {"kind": "input_attack", "attack": input_attack, "options": options}
    deltas, controls, starts, attacked = [], [], [], []
    for i, (prompt, target) in enumerate(prompts):
        seed = trial_seed(esa.options.seed, i, stream=f"adversarial.{input_attack}")
        r = run_input_attack(lm, input_attack, prompt, target, generator=torch.Generator().manual_seed(seed),
                             greedy=esa.pick(quick=6, full=16), **options)
        extra = {"prompt_index": i, "prompt": prompt, "target": target, "adversarial": r.adversarial,
                 "clean_logprob": r.clean_logprob, "attacked_logprob": r.attacked_logprob, "queries": r.queries}
        common = {"method": input_attack, "seed": seed, "perturbation": perturbation, "extra": extra}
        recorder.record("target_logprob_delta", r.logprob_delta, clean_value=r.clean_logprob, **common)
        recorder.record("greedy_changed", float(r.greedy_changed), **common)
        recorder.record("greedy_agreement", r.greedy_agreement, **common)
        recorder.record("seconds", r.seconds, **common)
        deltas.append(r.logprob_delta)
        if input_attack in SUFFIX_ATTACKS:
            starts.append(r.extra["trace"][0])
            attacked.append(r.attacked_logprob)
            lp, text = random_suffix_logprob(lm, prompt, target, options["length"],
                                             torch.Generator().manual_seed(seed))
            controls.append(lp - r.clean_logprob)
            recorder.record("random_suffix_logprob_delta", controls[-1], clean_value=r.clean_logprob,
                            **{**common, "extra": {**extra, "adversarial": text, "attacked_logprob": lp}})
    columns = {"method": input_attack, "perturbation": perturbation}
    if input_attack in SUFFIX_ATTACKS:  # the search's own contribution: final vs starting suffix, per prompt
        gains = [s - a for s, a in zip(starts, attacked, strict=True)]
        recorder.claim(SEARCH_GAIN[input_attack], greater(min(gains), MIN_GAIN),
                       extra={"gains": gains, "start_logprobs": starts, "attacked_logprobs": attacked,
                              "deltas": deltas, "random_suffix_deltas": controls}, **columns)
    mean = statistics.mean(deltas)
    if input_attack in MEAN_DELTA:
        recorder.claim(MEAN_DELTA[input_attack], mean, extra={"prompts": len(deltas), "deltas": deltas}, **columns)
    if input_attack in LOWERS:
        recorder.claim(LOWERS[input_attack], greater(-mean, MIN_DAMAGE), extra={"prompts": len(deltas),
                                                                              "deltas": deltas}, **columns)
