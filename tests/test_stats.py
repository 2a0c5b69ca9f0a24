"""The shared statistics of harness.stats: Jaccard (one rule for an empty pair), Spearman."""

from __future__ import annotations

import math

import pytest
import torch

from harness.errors import HarnessError
from harness.stats import jaccard, spearman


def test_jaccard_counts_sets_and_calls_two_empty_sets_equal():
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)
    assert jaccard([1, 1, 2], (2, 1)) == 1.0  # collections are taken as sets
    assert jaccard({1}, set()) == 0.0
    assert jaccard(set(), set()) == 1.0  # two models without super weights agree on them


def test_spearman_ranks_with_ties_and_refuses_constants():
    a = torch.tensor([0.1, 0.5, 0.3, 0.9])
    assert spearman(a, a * 10) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    # ties get their mean rank: ranks (0, 2, 2, 2) vs (0, 1, 2, 3) -> Pearson of ranks
    assert spearman(torch.tensor([0.0, 1.0, 1.0, 1.0]), torch.arange(4.0)) == pytest.approx(0.7745967, abs=1e-6)
    assert math.isnan(spearman(torch.ones(4), a))
    assert math.isnan(spearman(torch.tensor([1.0, float("nan"), 0.0, 2.0]), a))
    with pytest.raises(HarnessError):
        spearman(a, a[:3])


def test_spearman_agrees_with_scipy():
    spearmanr = pytest.importorskip("scipy.stats").spearmanr
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(500, generator=g) * 20).round()  # ties
    b = a + torch.rand(500, generator=g) * 5
    assert spearman(a, b) == pytest.approx(float(spearmanr(a.numpy(), b.numpy()).statistic), abs=1e-12)
