"""Claims: comparisons, the four outcomes, bounds files and bounds derived from several seeds."""

from __future__ import annotations

import math

import pytest

from harness.claims import (
    MAX_LOOSENESS,
    ClaimSet,
    Outcome,
    check_bounds_file,
    declared,
    derive_bound,
    greater,
    has_effect,
    increasing,
    judge_bound,
    judge_relation,
    not_applicable,
    paired_greater,
    paired_majority,
    rate_greater,
    rate_interval,
    trial_changed,
    undecided,
    vacuous_reason,
)
from harness.errors import HarnessError

CLAIMS = ClaimSet("claims_unit")
PPL = CLAIMS.bound("ppl", "perplexity stays low", side="max", statistic="perplexity")
FLOOR = CLAIMS.bound("damage", "damage stays high", side="min", statistic="ppl_ratio")
RATE = CLAIMS.bound("rate", "collapse rate as measured", side="within", statistic="collapse_rate")
REL = CLAIMS.relation("a_beats_b", "a hurts more than b", statistic="ppl_ratio")


def test_declared_claims_are_found_by_suite():
    assert set(declared("claims_unit")) == {"claims_unit.ppl", "claims_unit.damage", "claims_unit.rate",
                                            "claims_unit.a_beats_b"}
    with pytest.raises(HarnessError, match="declared twice"):
        CLAIMS.bound("ppl", "another statement", side="min", statistic="perplexity")


def test_a_collapse_never_passes_a_max_and_nan_passes_nothing():
    assert judge_bound(PPL, math.inf, 20.0).outcome is Outcome.FAILED
    assert judge_bound(PPL, math.nan, 20.0).outcome is Outcome.FAILED
    assert judge_bound(FLOOR, math.nan, 2.0).outcome is Outcome.FAILED
    assert judge_bound(FLOOR, math.inf, 2.0).outcome is Outcome.PASSED
    assert judge_bound(PPL, 19.0, 20.0).outcome is Outcome.PASSED
    assert judge_bound(PPL, 21.0, 20.0).outcome is Outcome.FAILED
    assert judge_bound(RATE, 0.5, (0.2, 0.8)).outcome is Outcome.PASSED
    assert judge_bound(RATE, 0.9, (0.2, 0.8)).outcome is Outcome.FAILED
    vacuous = judge_bound(RATE, 0.4, (0.0, 1.0))  # no rate can break it: never reported as passed
    assert vacuous.outcome is Outcome.UNVERIFIED and "admits every rate" in vacuous.reason
    assert judge_bound(RATE, 0.4, (0.0, 0.35)).outcome is Outcome.FAILED


def test_no_number_is_unverified_and_not_applicable_needs_a_reason():
    verdict = judge_bound(PPL, 19.0, None)
    assert verdict.outcome is Outcome.UNVERIFIED and "suites/bounds/claims_unit.toml" in verdict.reason
    assert not_applicable(REL, "no super weight detected").outcome is Outcome.NOT_APPLICABLE
    with pytest.raises(HarnessError, match="needs a reason"):
        not_applicable(REL, "")
    with pytest.raises(HarnessError, match="is a relation"):
        judge_bound(REL, 1.0, 2.0)
    with pytest.raises(HarnessError, match="is a bound"):
        judge_relation(PPL, greater(2.0, 1.0))


def test_no_relation_passes_on_a_tie_or_a_no_op():
    assert not greater(1.0, 1.0).holds  # noise that does nothing: 1.0 vs 1.0
    assert not greater(0.0, 0.0, factor=2.0).holds  # pruning that removed nothing: 0 vs 2 x 0
    refused = greater(5.0, 0.0, factor=2.0)  # a factor cannot make a minimum effect out of 0
    assert not refused.holds and "states no minimum effect" in refused.detail["refused"]
    assert not greater(5.0, -1.0, factor=1.5).holds
    assert greater(5.0, -1.0).holds  # factor 1: plain order
    assert not greater(math.inf, math.inf).holds  # two collapses never hold, whatever the factor
    assert not paired_greater([5.0, 4.0], [5.0, 4.0]).holds  # a defense that repairs nothing
    assert not increasing([0.1, 0.2, 0.5], [1.0, 1.0, 1.0]).holds
    assert not has_effect([False] * 5).holds and has_effect([False, True]).holds
    assert not trial_changed(1.0, 0.0) and not trial_changed(1.3, 0.2, masked=True)
    assert trial_changed(1.0, 1e-9) and trial_changed(math.inf, None) and trial_changed(0.999, 0.0)


def test_an_undecidable_relation_is_never_passed_and_fails_under_strict():
    c = rate_greater(1, 1, 0, 1)
    assert undecided(REL, c, strict=False).outcome is Outcome.UNVERIFIED
    strict = undecided(REL, c, strict=True)
    assert strict.outcome is Outcome.FAILED and "undecided" in strict.message


def test_comparisons():
    assert greater(2.1, 1.0, factor=2.0).holds and not greater(1.9, 1.0, factor=2.0).holds
    assert greater(math.inf, 5.0, factor=10).holds  # a collapse beats any finite damage
    assert not greater(math.inf, math.inf, factor=2).holds  # two collapses: neither is larger
    assert not greater(math.nan, 1.0).holds
    # 20 trials a side: 15/20 vs 0/20 are apart, 3/5 vs 0/5 are not
    assert rate_greater(15, 20, 0, 20).holds
    assert not rate_greater(3, 5, 0, 5).holds and not rate_greater(3, 5, 0, 5).undecidable
    assert "cannot separate" in rate_greater(1, 1, 0, 1).undecidable  # --trials 1: no rates can be apart
    c = paired_greater([3.0, 2.0, math.inf], [1.0, 1.5, 2.0], factor=1.2)
    assert c.holds and c.value == 2.0 and c.other == 2.0 and c.detail["pairs_holding"] == 3
    assert not paired_greater([3.0, 1.0], [1.0, 1.5]).holds
    with pytest.raises(HarnessError, match="equal, non-empty"):
        paired_greater([1.0], [1.0, 2.0])
    # sign test: 15 of 20 pairs is a majority at 95%, 14 of 20 is not; inf vs inf and NaN never win
    assert paired_majority([2.0] * 15 + [0.0] * 5, [1.0] * 20).holds
    assert not paired_majority([2.0] * 14 + [0.0] * 6, [1.0] * 20).holds
    m = paired_majority([math.inf] * 10 + [math.nan] * 10, [math.inf] * 10 + [0.0] * 10)
    assert not m.holds and m.detail["pairs_holding"] == 0
    assert "cannot show a majority" in paired_majority([2.0] * 3, [1.0] * 3).undecidable
    assert not paired_majority([2.0] * 4, [1.0] * 4).undecidable
    assert increasing([0.1, 0.5, 0.2], [1.1, math.inf, 2.0]).holds
    assert not increasing([0.1, 0.2], [2.0, 1.0]).holds


def test_bounds_are_tight_and_a_no_op_never_passes_an_effect_bound():
    """The tightness stated in harness.claims: a ratio bound is at most MAX_LOOSENESS (10x) beyond its worst
    seed; a 0/100 rate bound stops below 0.10 (it used to allow 7 of 20); a bound that would pass a no-op is
    refused at export and unverified when judged, also when written by hand."""
    scattered = derive_bound(FLOOR, [745.4, 5421.0, 1200.0, 3000.0, 900.0])  # log sd 0.8, capped
    assert scattered.value == pytest.approx(745.4 / MAX_LOOSENESS, rel=1e-4) and "capped at 10x" in scattered.how
    wild = derive_bound(FLOOR, [7286.0, 3.35e6, 1e5, 5e4, 2e4])
    assert wild.value >= 7286.0 / MAX_LOOSENESS
    never = rate_interval(0, 100)
    assert never[0] == 0.0 and never[1] < 0.10
    acts = CLAIMS.bound("acts", "the attack lowers the target", side="max", statistic="delta", null=0.0)
    assert derive_bound(acts, [-9.5, -1.9, -4.0, -3.3, -6.0]).value is None  # 3 sd reaches past 0
    assert "vacuous" in derive_bound(acts, [-9.5, -1.9, -4.0, -3.3, -6.0]).how
    assert derive_bound(acts, [-21.9, -14.6, -18.0, -17.0, -20.0]).value < 0
    by_hand = judge_bound(acts, -2.0, 1.75)
    assert by_hand.outcome is Outcome.UNVERIFIED and "vacuous" in by_hand.reason
    assert judge_bound(acts, -2.0, -1.0).outcome is Outcome.PASSED
    assert judge_bound(acts, 0.0, -1.0).outcome is Outcome.FAILED  # a no-op fails a bound that is not vacuous
    assert vacuous_reason(FLOOR, 2.0) == ""  # FLOOR declares no null


def test_a_rate_bound_judges_the_runs_own_interval():
    bound = rate_interval(0, 25)  # [0, 0.30]: "never collapses" at 5 seeds x 5 trials
    assert judge_bound(RATE, 0.0, bound, trials=5).outcome is Outcome.PASSED
    assert judge_bound(RATE, 0.6, bound, trials=5).outcome is Outcome.PASSED  # 3/5 is still possible
    assert judge_bound(RATE, 0.8, bound, trials=5).outcome is Outcome.FAILED  # 4/5: apart at 95%
    often = rate_interval(87, 100)
    assert judge_bound(RATE, 0.0, often, trials=20).outcome is Outcome.FAILED  # flips that do nothing


def test_derived_bounds_hold_for_every_seed_they_came_from():
    values = [1.002, 0.998, 1.004, 1.0, 1.001]
    derived = derive_bound(PPL, values)
    assert derived.value is not None and all(judge_bound(PPL, v, derived.value).outcome is Outcome.PASSED
                                             for v in values)
    assert "5 seeds" in derived.how
    low = derive_bound(FLOOR, [3000.0, 800.0, 12000.0, 2500.0, 5000.0])
    assert 0 < low.value < 800.0  # log scale: the margin is a factor, never below zero


def test_derived_bounds_refuse_too_few_seeds_censored_values_and_collapses():
    assert derive_bound(PPL, [1.0, 1.0, 1.0]).value is None
    assert derive_bound(PPL, [1.0, 2.0, 3.0, math.inf, 1.0]).value is None
    censored = CLAIMS.bound("flips", "flips to collapse", side="max", statistic="flips")
    assert "censor" in derive_bound(censored, [3, 4, 13, 5, 6], censored=[13]).how
    seed_free = CLAIMS.bound("map", "ablation map", side="max", statistic="ppl_ratio", seeded=False)
    assert derive_bound(seed_free, [1.5, 1.5]).value == pytest.approx(1.5 * 1.05, rel=1e-5)
    assert derive_bound(seed_free, [1.5, 1.6]).value is None


def test_rate_bounds_are_one_wilson_interval_on_the_pooled_rate():
    derived = derive_bound(RATE, [0.6, 0.8, 0.8, 0.6, 0.8], rate_trials=5)
    low, high = derived.value
    assert 0.35 < low < 0.72 < high < 1.0 and "Wilson" in derived.how
    assert all(judge_bound(RATE, v, derived.value, trials=5).outcome is Outcome.PASSED for v in (0.4, 0.6, 1.0))
    never = derive_bound(RATE, [0.0] * 5, rate_trials=20)
    assert never.value[0] == 0.0 and 0.0 < never.value[1] < 0.1  # "never collapses" can still fail
    often = derive_bound(RATE, [0.75, 0.7, 0.8, 0.75, 0.65], rate_trials=20)
    assert 0.55 < often.value[0] < 0.73 and 0.8 < often.value[1] < 0.9


def test_bounds_file_errors_are_one_line(tmp_path):
    (tmp_path / "claims_unit.toml").write_text("[m]\nppl = 20.0\nrate = [0.1, 0.9]\n")
    check_bounds_file(tmp_path, "claims_unit")
    for text, message in (("[m]\nunknown = 1\n", "unknown is not declared; suite claims_unit declares the bounds"),
                          ("[m]\na_beats_b = 1\n", "a_beats_b is a relation"),
                          ("[m]\nrate = 0.5\n", "'within' bound and takes a \\[low, high\\] pair"),
                          ("[m]\nppl = 'x'\n", "ppl = 'x' must be a number"),
                          ("ppl = 3\n", "must be a \\[model\\] table")):
        (tmp_path / "claims_unit.toml").write_text(text)
        with pytest.raises(HarnessError, match=message):
            check_bounds_file(tmp_path, "claims_unit")


def test_export_bounds_from_a_store_uses_the_newest_declaration(tmp_path):
    """Two runs of one deterministic bound, the older declared seeded (needs five seeds), the newer
    seed-independent (two): the newer declaration decides, and the written table says how."""
    from harness.records import ResultStore
    from reports.bounds import export_bounds

    with ResultStore(tmp_path / "results") as store:
        for seed, seeded in ((0, True), (1, False)):
            run = store.start_run({"model": "m"})
            store.record(run_id=run, test_id="t", suite="claims_unit", model="m", metric="ppl", value=2.0,
                         seed=seed, outcome="unverified",
                         extra={"kind": "bound", "claim": "ppl", "side": "max", "statistic": "perplexity",
                                "seeded": seeded})
            store.finish_run(run)
    bounds = tmp_path / "bounds"
    bounds.mkdir()
    exported, written = export_bounds(tmp_path / "results", "m", bounds)
    assert [(e.claim, e.seeds) for e in exported] == [("ppl", (0, 1))]
    assert exported[0].value == pytest.approx(2.0 * 1.05, rel=1e-4) and "seed-independent" in exported[0].how
    text = written[0].read_text()
    assert "[m]\n" in text and "ppl = 2.1" in text and "seeds 0,1" in text
    assert 'trials = "preset"' in (bounds / "config.toml").read_text() and written[-1].name == "config.toml"


def test_bounds_carry_their_configuration(tmp_path):
    """A run under options other than the ones a model's bounds were derived under gets them unverified."""
    from harness.claims import bound_config, config_mismatch

    (tmp_path / "config.toml").write_text('[m]\npreset = "quick"\neval_tokens = 1024\ntrials = "preset"\n')
    assert config_mismatch(tmp_path, "m", bound_config({"preset": "quick", "eval_tokens": 1024})) == ""
    why = config_mismatch(tmp_path, "m", bound_config({"preset": "full", "eval_tokens": 1024, "trials": 3}))
    assert "preset quick (this run: full)" in why and "trials preset (this run: 3)" in why
    assert config_mismatch(tmp_path, "unknown-model", bound_config({})) == ""
    (tmp_path / "config.toml").write_text('[m]\nbatch = 3\n')
    with pytest.raises(HarnessError, match="has 'batch'; a model's table takes preset"):
        config_mismatch(tmp_path, "m", bound_config({}))
