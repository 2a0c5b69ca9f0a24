"""The attribution cells (harness.attribution.cells): presets, the memoized cells of one model, the named
perturbations restored bit-exactly with the descriptions the suite records, and the claims' statistics."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from harness.attribution.cells import (
    AGREEMENT_METHOD,
    CLEAN,
    PERTURBATIONS,
    PRESETS,
    SHIFT_FACTOR,
    TINY_PROMPT_CHARS,
    TOP_K,
    Agreement,
    AgreementRow,
    AttributionCells,
    Repeat,
    SuperVsRandom,
    preset_for,
)
from harness.errors import HarnessError, UnknownNameError
from harness.fingerprint import fingerprint
from harness.models import load_model
from harness.scoring.superweights import detect
from tests.fake_session import FakeSession


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def cells(llama):
    calib = torch.randint(0, llama.model.config.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
    return AttributionCells.of(FakeSession(windows=calib, corpus="offline", seed=3), llama)


@pytest.fixture(scope="module")
def detection(llama):
    return detect(llama)


def test_presets():
    assert preset_for("quick", False) == PRESETS["quick"]
    assert preset_for("full", False).prompts is None
    tiny = preset_for("full", True)
    assert (tiny.prompts, tiny.prompt_chars, tiny.target_tokens, tiny.ig_steps) == (1, TINY_PROMPT_CHARS, 2, 4)
    assert tiny.calib_windows == PRESETS["full"].calib_windows
    with pytest.raises(UnknownNameError):
        preset_for("deep", False)


def test_of_memoizes_under_the_model_name(llama):
    esa = FakeSession(windows=torch.zeros(4, 8, dtype=torch.long), corpus="offline", seed=3)
    first = AttributionCells.of(esa, llama)
    assert AttributionCells.of(esa, llama) is first
    assert [k[0] for k in esa.memo] == [llama.name]
    assert first.calib_windows.shape[0] == PRESETS["quick"].calib_windows
    assert first.seed == 3 and first.preset == preset_for("quick", True)


def test_clean_prompts_cut_on_a_random_weight_model(cells):
    [(_, text)] = cells.prompts()
    assert len(text) == TINY_PROMPT_CHARS
    [clean] = cells.clean().values()
    assert len(clean.target.tokens) == 2 and cells.clean() is cells.clean()


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_perturbed_restores_the_model_and_describes_it(cells, detection, llama, name):
    before = fingerprint(llama.model)
    measured = cells.perturbed(name, detection)
    assert fingerprint(llama.model) == before
    assert cells.perturbed(name, detection) is measured
    assert measured.description["kind"] == name
    assert list(measured.by_prompt) == list(cells.clean())
    if name == "zero_super_weights":  # a random-weight model: the candidate stands in
        assert measured.description["source"] == "candidate below the detector's factor"
        assert measured.description["detection"] == detection.id
    elif name == "zero_random":
        assert measured.description == {"kind": name, "count": 1, "matrices": "those of the super weights"}
    elif name == "exp_msb_flip":
        assert set(measured.description["site"]) == {"param", "index"}
    else:
        assert measured.description == {"kind": name, "sparsity": 0.5, "granularity": "row"}


def test_unknown_and_unavailable_perturbations(cells, detection):
    with pytest.raises(HarnessError, match="allowed"):
        cells.perturbed("noise", detection)
    assert cells.unavailable("zero_random", detection) is None
    assert cells.unavailable("exp_msb_flip", None) is None
    blind = replace(detection, candidate=None)
    assert "scanned no block" in cells.unavailable("zero_super_weights", blind)


def test_repeat_and_agreement_on_the_model(cells):
    repeat = cells.repeat()
    assert len(repeat.diffs) == len(cells.clean()) + 1 and repeat.comparison().holds
    agreement = cells.method_agreement()
    assert [r.prompt for r in agreement.per_prompt] == list(cells.clean())


def test_statistics():
    pairs = SuperVsRandom(["a", "b"], [1.0, 0.5], [0.4, 0.2], [0.0, 0.0], [0.0, 0.0])
    assert pairs.comparison().holds
    assert not replace(pairs, rel_change=[1.0, 0.5 * SHIFT_FACTOR * 0.2]).comparison().holds
    assert Repeat([0.0, 0.0]).comparison().holds
    worse = Repeat([0.0, 1e-9]).comparison()
    assert not worse.holds and worse.other == 1e-9
    row = SimpleNamespace(rho=0.5)
    assert Agreement([row, AgreementRow("p", None, None, 0.7)], 4).mean == pytest.approx(0.6)
    assert math.isnan(Agreement([row, SimpleNamespace(rho=math.nan)], 4).mean)


def test_rows_carry_the_records_columns(cells, detection):
    [(pid, clean)] = cells.clean().items()
    [row] = cells.clean_rows()
    assert (row.metric, row.value, row.perturbation) == ("target_logprob", clean.attribution.target_logprob, CLEAN)
    assert row.columns == {"method": "feature_ablation", "seconds": clean.attribution.seconds}
    assert (row.extra["condition"], row.extra["prompt"]) == ("clean", pid)
    measured = cells.perturbed("exp_msb_flip", detection)
    logprob, *measures = measured.rows()
    assert logprob.extra["condition"] == "exp_msb_flip" and logprob.perturbation == measured.description
    assert [m.metric for m in measures] == list(measured.by_prompt[pid][1].to_dict())
    assert all(m.extra == {"prompt": pid, "top_k": TOP_K} and m.columns == {"method": "feature_ablation"}
               for m in measures)
    agreement = cells.method_agreement()
    ig, rho = agreement.rows()
    assert (ig.metric, ig.perturbation, ig.columns["method"]) == ("target_logprob", CLEAN, "integrated_gradients")
    assert (rho.metric, rho.perturbation, rho.columns) == ("attr_method_spearman", None, {"method": AGREEMENT_METHOD})
    assert rho.extra["ig_steps"] == cells.preset.ig_steps == agreement.ig_steps


def test_statistics_rows_and_extra():
    pairs = SuperVsRandom(["a"], [1.0], [0.4], [0.1], [0.0])
    assert pairs.extra() == {"prompts": ["a"], "attr_shift": [0.1], "attr_shift_random": [0.0]}
    [row] = Repeat([0.0, 2.0]).rows()
    assert (row.metric, row.value, row.perturbation, row.extra) == ("attr_repeat_max_abs_diff", 2.0, None,
                                                                    {"per_run": [0.0, 2.0]})
