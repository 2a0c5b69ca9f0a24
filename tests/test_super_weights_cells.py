"""The super-weights cells (harness.super_weights.cells): each result carries the records the suite commits."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from harness.campaign import clean_baseline
from harness.faults import FaultSite
from harness.super_weights.cells import DETECTOR, KnownCheck, ScoredTop, SuperWeightCells, detection_rows


@pytest.fixture(scope="module")
def windows(model):
    return torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def clean(model, windows):
    return clean_baseline(model, windows)


@pytest.fixture(scope="module")
def detection(nothing):
    """The candidate detected as the one super weight."""
    return dataclasses.replace(nothing, sites=(nothing.candidate,), id="one")


def test_ablation_rows(model, windows, clean, detection):
    zero = SuperWeightCells(model, windows, clean, detection, seed=0).measure("zero_super_weights")
    ratio, kl = zero.rows()
    assert (ratio.metric, ratio.value, ratio.clean_value) == ("ppl_ratio", zero.ratio, clean.result.perplexity)
    assert (kl.metric, kl.value, kl.clean_value) == ("kl", zero.result.kl, None)
    assert all(r.perturbation == zero.perturbation and r.extra == {} and r.columns == {"method": "super_weights"}
               for r in (ratio, kl))
    assert zero.claim_columns() == {"method": "super_weights", "perturbation": zero.perturbation}


def test_candidate_and_random_control_rows(model, windows, clean, nothing):
    cells = SuperWeightCells(model, windows, clean, nothing, seed=0)
    candidate, _ = cells.measure("zero_super_weights").rows()
    assert candidate.columns == {"method": "candidate"} and candidate.extra == {"site": nothing.candidate.to_dict()}
    draws = cells.random_control()
    assert [a.rows()[0].extra["draw"] for a in draws] == list(range(len(draws)))
    assert all(a.rows()[0].columns == {"method": "random"} for a in draws)


def test_restore_rows(model, windows, clean, detection):
    check = SuperWeightCells(model, windows, clean, detection, seed=0).restore_check()
    [row] = check.rows()
    assert (row.metric, row.value, row.clean_value) == ("perplexity", check.perplexity, clean.result.perplexity)
    assert row.perturbation == {"kind": "restored", "target": "super_weights", "count": 1, "detection": "one"}
    assert row.columns == {"method": "super_weights"}


def test_detection_and_scorer_rows(detection):
    [row] = detection_rows(detection)
    assert (row.metric, row.value) == ("super_weight_score", abs(detection.candidate.output_spike))
    assert row.perturbation == {"kind": "score", **detection.describe()} and row.extra["rank"] == 0
    site = SimpleNamespace(site=FaultSite("w", (1, 2)), layer=0, component="mlp_down", value=0.5, score=3.0)
    *scores, seconds = ScoredTop(4, [site], 0.1, 1, 0, False).rows()
    assert [(r.metric, r.value, r.perturbation, r.extra["col"]) for r in scores] == [
        ("super_weight_score", 3.0, {"kind": "score"}, 2)]
    assert (seconds.metric, seconds.perturbation) == ("seconds", {"kind": "score", "k": 4})
    assert seconds.extra == {"found": 1, "forward": 1, "backward": 0}


def test_known_rows(detection):
    known = KnownCheck([(1, 2, 3), (4, 5, 6)], [(4, 5, 6)], "paper", detection)
    [row] = known.rows()
    assert (row.metric, row.value, row.extra) == ("known_found_fraction", 0.5, known.extra())
    assert known.columns() == {"method": DETECTOR, "perturbation": {"kind": "score", "detection": "one"}}
    assert row.perturbation == known.columns()["perturbation"] and row.columns == {"method": DETECTOR}
