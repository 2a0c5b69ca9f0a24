"""Claims: comparisons, the four outcomes, bounds files and bounds derived from several seeds."""

from __future__ import annotations

import math

import pytest

from harness.claims import (
    ClaimSet,
    Outcome,
    check_bounds_file,
    declared,
    derive_bound,
    greater,
    increasing,
    judge_bound,
    judge_relation,
    not_applicable,
    paired_greater,
    paired_majority,
    rate_greater,
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
    assert vacuous.outcome is Outcome.NOT_APPLICABLE and "admits every rate" in vacuous.reason
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


def test_rate_bounds_use_the_wilson_interval_at_the_trial_count():
    derived = derive_bound(RATE, [0.6, 0.8, 0.8, 0.6, 0.8], rate_trials=5)
    low, high = derived.value
    assert 0.0 <= low < 0.6 and high == 1.0 and "Wilson" in derived.how  # 5/5 is a likely run, not a regression
    never = derive_bound(RATE, [0.0] * 5, rate_trials=20)
    assert never.value[0] == 0.0 and 0.0 < never.value[1] < 0.5  # "never collapses" can still fail
    often = derive_bound(RATE, [0.75, 0.7, 0.8, 0.75, 0.65], rate_trials=20)
    assert 0.2 < often.value[0] < 0.65 and often.value[1] == 1.0
    one_sided = CLAIMS.bound("always", "always collapses", side="max", statistic="collapse_rate")
    assert derive_bound(one_sided, [1.0] * 5, rate_trials=5).value is None  # a max bound of 1 cannot fail


def test_bounds_file_errors_are_one_line(tmp_path):
    (tmp_path / "claims_unit.toml").write_text("[m]\nppl = 20.0\nrate = [0.1, 0.9]\n")
    check_bounds_file(tmp_path, "claims_unit")
    for text, message in (("[m]\nunknown = 1\n", "unknown is not declared; suite claims_unit declares the bounds"),
                          ("[m]\na_beats_b = 1\n", "a_beats_b is a relation"),
                          ("[m]\nrate = 0.5\n", "'within' bound and takes a \\[low, high\\] pair"),
                          ("[m]\nppl = 'x'\n", "ppl must be a number"),
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
    assert exported[0].value == pytest.approx(2.0 * 1.05, rel=1e-5) and "seed-independent" in exported[0].how
    text = written[0].read_text()
    assert "[m]\n" in text and "ppl = 2.1" in text and "seeds 0,1" in text
