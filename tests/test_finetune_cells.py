"""Cells of the finetune suite: presets and grid, the rows of the measures, the session memo, and the measuring of a
base model and its fine-tunes on a tiny model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.campaign import clean_baseline, run_trial
from harness.data import load_corpus, token_windows
from harness.errors import UnknownNameError
from harness.faults import ablate
from harness.finetune import cells as F
from harness.finetune.compare import Measures, SuperWeightShift, measure
from harness.finetune.options import FinetuneOptions
from harness.fingerprint import changed, fingerprint
from harness.models import load_model
from tests.fake_session import FakeSession

WINDOW = 32


def _session(results_dir: Path, windows: torch.Tensor | None = None, **options: Any) -> FakeSession:
    """The session ``FinetuneCells.of`` sees: windows of WINDOW tokens, a budget of two windows, the real detection."""
    from harness.scoring.superweights import detect

    finetune = options.pop("finetune", FinetuneOptions(tokens=2 * WINDOW))
    return FakeSession(results_dir, windows=windows, detection=detect, window=WINDOW, corpus=None, finetune=finetune,
                       **options)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def windows(tiny):
    return token_windows(tiny.tokenizer, load_corpus().eval_docs, WINDOW, 3)


def _measures(noise: dict[float, list[float]], collapses: int = 1, trials: int = 4) -> Measures:
    return Measures(perplexity=10.0, super_weights=[(1, 2, 3, 4.0)], none_reason="", detection={"detection": "d"},
                    zeroed_ratio=2.0, exp_msb_collapses=collapses, exp_msb_trials=trials, noise_ratios=noise)


def test_grid_is_the_presets_variants():
    assert [v.name for v in F.grid("quick")] == ["plain", "noise"]
    assert [v.name for v in F.grid("full")] == ["plain", "noise", "clip"]
    assert F.VARIANTS["noise"].noise == F.TRAIN_NOISE and F.VARIANTS["clip"].clip == F.CLIP
    assert F.PRESETS["quick"].eval_windows == 2 and F.PRESETS["full"].eval_windows is None
    with pytest.raises(UnknownNameError):
        F.grid("medium")


def test_measure_rows_describe_each_measure():
    m = _measures({0.1: [1.1, 1.3], 0.2: [2.0, math.inf]})
    rows = F.measure_rows(m, clean=9.0)
    assert [r.metric for r in rows] == ["perplexity", "ppl_ratio", "collapse_rate", "ppl_ratio", "ppl_ratio"]
    assert rows[0].clean_value == 9.0 and all(r.clean_value is None for r in rows[1:])
    assert rows[1].perturbation["target_source"] == "detected" and rows[1].perturbation["count"] == 1
    assert rows[2].value == 0.25 and rows[2].extra["trials"] == 4 and rows[2].extra["ci_low"] < 0.25
    assert rows[3].value == pytest.approx(1.2) and rows[4].value == math.inf  # a collapsed trial: inf


def test_after_rows_and_the_noise_aware_comparison():
    base, plain = _measures({0.1: [1.2]}), _measures({0.1: [1.5]}, collapses=2)
    shift = SuperWeightShift(True, 1.0, [(1, 2, 3, 4.0, 4.4, 0.1)])
    rows = F.After("plain", None, plain, shift).rows(base)
    assert [r.metric for r in rows][-3:] == ["jaccard", "top_super_weight_kept", "super_weight_drift"]
    assert rows[-1].extra == {"layer": 1, "row": 2, "col": 3, "before": 4.0, "after": 4.4}
    both = F.NoiseAwareVsPlain(plain, base)
    assert both.ratios(0.1) == ([1.5], [1.2])
    diff = {r.metric: r for r in both.rows()}
    assert diff["noise_ratio_difference"].value == pytest.approx(0.3)
    assert diff["collapse_rate_difference"].value == pytest.approx(0.25)


def test_training_perplexity_row_is_after_against_before():
    budget = {"windows": 2, "window": WINDOW, "corpus": None}
    [row] = F.TrainingPerplexity(9.0, 4.0, {"kind": "finetune", "variant": "plain"}, budget).rows()
    assert (row.metric, row.value, row.clean_value, row.extra) == ("training_perplexity", 4.0, 9.0, budget)
    assert row.perturbation == {"kind": "finetune", "variant": "plain"} and row.columns == {}


def test_cells_measure_the_base_and_its_finetunes_once(tiny, windows, tmp_path):
    esa = _session(tmp_path, windows)
    assert F.FinetuneCells.refused(esa) is None
    cells = F.FinetuneCells.of(esa, tiny)
    assert F.FinetuneCells.of(esa, tiny) is cells and cells.windows.shape[0] == 2
    assert cells.flip_trials == cells.noise_trials == 1  # a random-weight model
    before = fingerprint(tiny.model)
    base = cells.base()
    assert not changed(before, fingerprint(tiny.model)) and cells.base() is base and esa.detections == 1
    assert base.sw_source == "candidate" and base.none_reason and math.isfinite(base.zeroed_ratio)
    assert list(base.noise_ratios) == list(F.NOISE_SIGMAS)

    assert cells.trained("plain") and len(cells.train_rows("plain")) == cells.configs["plain"].steps + 1
    assert cells.description("noise")["noise"] == F.TRAIN_NOISE and cells.description("plain")["key"]
    plain, noise = cells.training_perplexity("plain"), cells.training_perplexity("noise")
    assert plain.before == noise.before and math.isfinite(plain.after)
    assert plain.perturbation == cells.description("plain") and plain.windows["window"] == WINDOW
    after = cells.after("plain")
    assert cells.after("plain") is after and after.measures.perplexity != base.perplexity
    assert after.shift.drift and len(cells.noise_aware_vs_plain().ratios(0.1)[0]) == 1
    assert F.FinetuneCells.refused(_session(tmp_path, finetune=FinetuneOptions(method="full")))


def test_zeroing_is_the_super_weights_or_the_candidate(tiny, windows):
    """The ``zero_super_weights`` recipe zeroes what the measure names: here the candidate of a random model."""
    from harness.scoring.superweights import detect

    detection = detect(tiny)
    m = measure(tiny, windows, seed=0, flip_trials=1, noise_sigmas=(), noise_trials=1, detection=detection)
    clean = clean_baseline(tiny.model, windows)
    assert m.super_weights == [(detection.candidate.layer, detection.candidate.row, detection.candidate.col,
                                detection.candidate.value)]
    assert m.zeroed_ratio == run_trial(tiny.model, windows, clean,
                                       ablate(tiny.model, [detection.candidate.site], "zero")).ratio
