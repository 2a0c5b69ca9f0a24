"""The attribution cells (harness.attribution.cells): presets, the memoized cells of one model, the named
perturbations restored bit-exactly with the descriptions the suite records, and the claims' statistics."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from harness.attribution.cells import (
    PERTURBATIONS,
    PRESETS,
    SHIFT_FACTOR,
    TINY_PROMPT_CHARS,
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


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama")


class FakeSession:
    """What ``AttributionCells.of`` reads of the pytest session."""

    def __init__(self, preset: str = "quick") -> None:
        self.options = SimpleNamespace(preset=preset, corpus="offline", seed=3)
        self.store: dict[tuple, object] = {}

    def cached(self, key: tuple, make):
        if key not in self.store:
            self.store[key] = make()
        return self.store[key]


@pytest.fixture(scope="module")
def cells(llama):
    calib = torch.randint(0, llama.model.config.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
    return AttributionCells.of(FakeSession(), llama, calib)


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
    esa, calib = FakeSession(), torch.zeros(4, 8, dtype=torch.long)
    first = AttributionCells.of(esa, llama, calib)
    assert AttributionCells.of(esa, llama, calib) is first
    assert [k[0] for k in esa.store] == [llama.name]
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
    assert list(measured.rows) == list(cells.clean())
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
    assert [r.prompt for r in agreement.rows] == list(cells.clean())


def test_statistics():
    pairs = SuperVsRandom(["a", "b"], [1.0, 0.5], [0.4, 0.2], [0.0, 0.0], [0.0, 0.0])
    assert pairs.comparison().holds
    assert not replace(pairs, rel_change=[1.0, 0.5 * SHIFT_FACTOR * 0.2]).comparison().holds
    assert Repeat([0.0, 0.0]).comparison().holds
    worse = Repeat([0.0, 1e-9]).comparison()
    assert not worse.holds and worse.other == 1e-9
    row = SimpleNamespace(rho=0.5)
    assert Agreement([row, AgreementRow("p", None, None, 0.7)]).mean == pytest.approx(0.6)
    assert math.isnan(Agreement([row, SimpleNamespace(rho=math.nan)]).mean)
