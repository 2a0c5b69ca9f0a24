"""Campaigns sized by the precision asked for (``harness.campaign.sizing``)."""

from __future__ import annotations

import math
import random

import pytest

from harness.campaign.sizing import Precision, Sizing, sequential
from harness.errors import HarnessError


def _cell(p: float, seed: int = 0):
    """A fake rate cell: ``run(first, count)`` yields one bool per trial, a hit with probability ``p``."""
    rng = random.Random(seed)
    draws = [rng.random() < p for _ in range(100_000)]
    return lambda first, count: iter(draws[first:first + count])


def _size(p: float, precision: Precision | None, start: int = 20, population: float = math.inf):
    out = list(sequential(_cell(p), bool, start=start, precision=precision, population=population))
    sizing = out[-1]
    assert isinstance(sizing, Sizing) and len(out) - 1 == sizing.trials
    return sizing


def test_leveugle_sample_size():
    """Leveugle et al. (DATE 2009): about 16.6k trials for +-1% at 99% in a large population."""
    assert Precision(0.01, 0.99).leveugle() == pytest.approx(16_588, abs=5)
    assert Precision(0.05, 0.95).leveugle() == 385
    assert Precision(0.05, 0.95).leveugle(population=1000) == 278  # a finite site population needs fewer


@pytest.mark.parametrize("p", [0.0, 0.05, 0.5, 0.87])
def test_sequential_cells_stop_at_the_margin_asked(p):
    precision = Precision(0.05, 0.95)
    s = _size(p, precision)
    assert s.rule == "sequential Wilson" and (s.ci[1] - s.ci[0]) / 2 <= 0.05 and s.trials <= 385
    assert s.to_dict()["half_width"] <= 0.05 and s.to_dict()["margin_asked"] == 0.05
    if p in (0.0, 0.87):  # a rate near 0 or 1 is pinned down well before Leveugle's worst case
        assert s.trials < 0.7 * precision.leveugle()


def test_fixed_cells_keep_the_presets_count():
    s = _size(0.5, None, start=20)
    assert s.rule == "fixed" and s.trials == 20 and s.margin is None


def test_the_cap_ends_a_cell_that_cannot_reach_the_margin():
    s = _size(0.5, Precision(0.05, 0.95), population=50)
    assert s.trials == s.cap <= 50


def test_bad_precision_is_one_line():
    with pytest.raises(HarnessError, match=r"--margin \(a half-width of a rate\) must be in \(0, 0\.5\), got 0\.7"):
        Precision(0.7, 0.95)
    with pytest.raises(HarnessError, match=r"--confidence \(e\.g\. 0\.95\) must be in \[0\.5, 1\), got 95"):
        Precision(0.05, 95)
