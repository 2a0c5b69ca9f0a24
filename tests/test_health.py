"""The model under test judged once per session (harness/health.py, fixtures/health.py) and its weights' identity
(harness/models/identity.py): the measures, the claims' failures, the plugin's session behaviour."""

from __future__ import annotations

import math
import sqlite3

import pytest
import torch

from harness.campaign import clean_baseline
from harness.claims import WEIGHTS_DIFFER, Outcome, config_mismatch, judge_relation
from harness.health import BELOW_UNIFORM, BELOW_UNIGRAM, OUTPUT_FINITE, TOP1_ABOVE_CHANCE, evidence, failure, measure
from harness.metrics import evaluate
from harness.models import load_model
from harness.models.identity import weights_digest, weights_identity

pytest_plugins = ["pytester"]


def _relations(health) -> dict[str, Outcome]:
    return {c.name: judge_relation(c, ev).outcome for c, ev in evidence(health).items() if c.kind == "relation"}


def test_random_weights_fail_every_relation_but_finite_output():
    """A random-weight model is what a grossly broken one looks like: perplexity near V, top-1 near chance."""
    lm = load_model("tiny-llama")
    windows = torch.randint(0, 260, (2, 32), generator=torch.Generator().manual_seed(0))
    health = measure(lm.model, windows)
    assert health.positions == health.finite == 2 * 31 and health.vocab == 260
    # one pass, evaluate's: the same perplexity as the suites' clean capture, to the bit
    assert health.perplexity == clean_baseline(lm.model, windows, keep_blocks=True).result.perplexity
    assert health.perplexity == evaluate(lm.model, windows).perplexity
    assert health.perplexity > math.sqrt(260)
    outcomes = _relations(health)
    assert outcomes == {OUTPUT_FINITE.name: Outcome.PASSED, BELOW_UNIFORM.name: Outcome.FAILED,
                        BELOW_UNIGRAM.name: Outcome.FAILED, TOP1_ABOVE_CHANCE.name: Outcome.FAILED}


def test_a_model_that_predicts_the_text_passes_and_non_finite_output_fails():
    from harness.health import Health

    healthy = Health(perplexity=17.5, vocab=49152, unigram_perplexity=168.4, top1=0.44, chance=0.057, finite=1020,
                     positions=1020)
    assert set(_relations(healthy).values()) == {Outcome.PASSED}
    tie = Health(perplexity=84.2, vocab=49152, unigram_perplexity=168.4, top1=0.157, chance=0.057, finite=1019,
                 positions=1020)  # exactly at each margin: a tie never passes
    assert _relations(tie) == {OUTPUT_FINITE.name: Outcome.FAILED, BELOW_UNIFORM.name: Outcome.PASSED,
                               BELOW_UNIGRAM.name: Outcome.FAILED, TOP1_ABOVE_CHANCE.name: Outcome.FAILED}
    nan = Health(perplexity=math.nan, vocab=49152, unigram_perplexity=168.4, top1=0.44, chance=0.057, finite=1020,
                 positions=1020)
    assert _relations(nan)[BELOW_UNIGRAM.name] is Outcome.FAILED
    assert failure(BELOW_UNIGRAM, 168.4, 200.0) == "clean perplexity 200 is not below the unigram's 168.4 / 2"


def test_weights_digest_sees_one_bit_and_names():
    lm = load_model("tiny-llama")
    first = weights_digest(lm.model)
    assert first.startswith("w1:") and weights_digest(lm.model) == first
    p = next(lm.model.parameters())
    with torch.no_grad():
        bits = p.view(-1)[:1].view(torch.int32)
        bits ^= 1  # the lowest mantissa bit of one weight
        try:
            assert weights_digest(lm.model) != first
        finally:
            bits ^= 1
    assert weights_digest(lm.model) == first
    identity = weights_identity(lm)
    assert identity["parameters"] == sum(q.numel() for q in lm.model.parameters())
    assert identity["source"]["name"] == "tiny-llama" and identity["source"]["source"] == "tiny"


def test_bounds_of_other_weights_are_named(tmp_path):
    (tmp_path / "config.toml").write_text('[m]\npreset = "quick"\nweights = "w1:aaaa"\n')
    assert config_mismatch(tmp_path, "m", {"preset": "quick", "weights": "w1:aaaa"}) == ""
    assert config_mismatch(tmp_path, "m", {"preset": "quick", "weights": None}) == ""  # not loaded: not compared
    why = config_mismatch(tmp_path, "m", {"preset": "quick", "weights": "w1:bbbb"})
    assert why.startswith(WEIGHTS_DIFFER) and "w1:aaaa" in why and "w1:bbbb" in why


SUITE = """
from harness.claims import ClaimSet

CLAIMS = ClaimSet("demo")
PPL = CLAIMS.bound("clean_perplexity", "perplexity stays low", side="max", statistic="perplexity")

def test_one(lm, recorder, clean):
    recorder.claim(PPL, clean.result.perplexity)

def test_two(lm):
    pass
"""


@pytest.fixture(scope="module")
def local_random(tmp_path_factory):
    """A random-weight llama in a local directory: taken as trained, so it is judged as a model users bring."""
    from harness.models.tiny import saved_tiny

    load_model("tiny-llama")  # import the model code outside the in-process runs
    return str(saved_tiny("llama"))


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess("-p", "fixtures.plugin", "-p", "no:cacheprovider",
                                        "--results-dir", str(pytester.path / "res"), "--eval-tokens", "64",
                                        "--window", "32", *args)


def test_an_unhealthy_model_is_not_measured_and_fails_the_session(pytester: pytest.Pytester, local_random):
    pytester.makepyfile(test_demo=SUITE)
    bounds = pytester.path / "suites" / "bounds"
    bounds.mkdir(parents=True)
    (bounds / "demo.toml").write_text(f'["{local_random}"]\nclean_perplexity = 1e9\n')
    result = _run(pytester, "--model", local_random, "-k", "two")
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # not strict: a broken model fails any session
    result.assert_outcomes(skipped=1, deselected=1)
    result.stdout.fnmatch_lines(["*= claims =*", f"UNHEALTHY model {local_random} is not healthy: clean perplexity * "
                                 "is not below sqrt(V) = 16.1245*; 1 test(s) skipped",
                                 "claims: 1 passed, 3 failed, 1 unverified, 0 not applicable (0%), 0 unchecked",
                                 "  model: 1 passed, 3 failed, 1 unverified, 0 n/a (0%), 0 unchecked"])
    with sqlite3.connect(pytester.path / "res" / "results.sqlite") as conn:
        rows = conn.execute("SELECT test_id, suite, metric, outcome FROM records ORDER BY id").fetchall()
        done = conn.execute("SELECT test_id, outcome FROM tests").fetchall()
    assert {r[2] for r in rows} == {"weights", "output_finite", "below_uniform", "below_unigram", "top1_above_chance",
                                    "clean_perplexity"}
    assert {r[:2] for r in rows} == {(f"model::{local_random}", "model")}
    assert (f"model::{local_random}", "failed") in done
    result = _run(pytester, "--model", local_random, "-k", "one")  # judged in every session, whatever -k selects
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(skipped=1, deselected=1)


def test_random_weights_health_is_not_applicable(pytester: pytest.Pytester):
    pytester.makepyfile(test_demo=SUITE)
    result = _run(pytester, "--model", "tiny-llama", "-k", "two", "-v")
    assert result.ret == 0
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(["  model: 1 passed, 0 failed, 0 unverified, 4 n/a (80%), 0 unchecked",
                                 "NOT APPLICABLE model.clean_perplexity ?tiny-llama?: random weights*"])
