"""The plan before loading (``harness/plan.py``, ``python -m harness plan``) and the shape-alike family's config."""

from __future__ import annotations

import pytest
import torch

from harness import plan as planmod
from harness.__main__ import find_analyses, main
from harness.errors import HarnessError
from harness.models import MODELS, has_random_weights
from harness.models.tiny import random_model, shape_config

pytest_plugins = ["pytester"]


def test_shape_alike_family_is_random_and_has_a_7b_models_matrix_shapes():
    spec = MODELS.get("shape-llama-7b")
    assert has_random_weights("shape-llama-7b") and spec.family == "llama" and spec.source == "shape"
    c = shape_config("shape-llama-7b")
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.vocab_size) == (4096, 11008, 32, 32000)
    shape = planmod.model_shape("shape-llama-7b")  # counted on a meta model: no memory
    assert shape.params == spec.params and 0.6e9 < shape.params < 0.8e9 and shape.weight_bytes == 4 * spec.params


def test_random_model_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    config = planmod.model_config("tiny-llama")
    a, b, c = random_model(config), random_model(config), random_model(config, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[n], pb[n]) for n in pa) and not torch.equal(pa["lm_head.weight"], pc["lm_head.weight"])
    assert torch.equal(pa["model.norm.weight"], torch.ones_like(pa["model.norm.weight"]))
    assert 0.015 < float(pa["lm_head.weight"].detach().std()) < 0.025


def test_every_suite_has_a_cost_for_both_presets():
    suites = {a.name for a in find_analyses()}
    for preset in ("quick", "full"):
        assert set(planmod.COSTS[preset]) == suites, preset
        assert all(c.forward >= 1 and c.grad >= 0 and c.x_model >= 0 and c.source
                   for c in planmod.COSTS[preset].values())


def test_check_fits_stops_in_one_line_naming_the_placement_options():
    shape = planmod.model_shape("shape-llama-7b")
    with pytest.raises(HarnessError) as err:
        planmod.check_fits("shape-llama-7b", preset="quick", device="cpu", free=2 * 10**9, shape=shape)
    text = str(err.value)
    assert "\n" not in text and "--device-map" in text and "--max-memory" in text and "shape-llama-7b" in text
    planmod.check_fits("shape-llama-7b", preset="quick", device="cpu", free=10**12, shape=shape)
    planmod.check_fits("shape-llama-7b", preset="quick", device="cpu", free=1, shape=shape, device_map="auto")


def test_estimate_grows_with_the_model_and_the_suite():
    small, large = planmod.model_shape("tiny-llama"), planmod.model_shape("shape-llama-7b")
    smoke, heavy = planmod.COSTS["quick"]["smoke"], max(planmod.COSTS["quick"].values(), key=lambda c: c.x_model)
    for shape in (small, large):
        assert planmod.estimate_peak(shape, smoke, "cpu", 1024) < planmod.estimate_peak(shape, heavy, "cpu", 1024)
    assert planmod.estimate_peak(small, smoke, "cpu", 1024) < planmod.estimate_peak(large, smoke, "cpu", 1024)
    half = planmod.model_shape("shape-llama-7b", dtype="bf16")
    assert half.weight_bytes * 2 == large.weight_bytes


def test_plan_command_prints_every_suite_with_passes_memory_and_time(capsys):
    assert main(["plan", "--model", "tiny-llama", "--preset", "full", "--device", "cpu", "--eval-tokens", "256",
                 "--window", "128"]) == 0
    out = capsys.readouterr().out
    for suite in (a.name for a in find_analyses()):
        line = next(row for row in out.splitlines() if row.startswith(suite + " "))
        assert "fwd" in line and "GB" in line and line.rstrip().endswith((" s", " h")), line
    assert "nightly" in out and "one forward over the evaluation tokens" in out


def test_plan_command_refuses_an_unknown_suite():
    with pytest.raises(SystemExit) as err:
        main(["plan", "--model", "tiny-llama", "--suites", "bitflips", "--no-time"])
    assert err.value.code == 2


def test_a_session_that_cannot_fit_stops_before_loading(pytester: pytest.Pytester, monkeypatch):
    """The plugin plans every model for the selected suites at collection: one line, exit 4, nothing loaded."""
    import harness.plan

    monkeypatch.setattr(harness.plan, "free_bytes", lambda device: 10**6)
    pytester.makepyfile(test_smoke="def test_clean(lm):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "fixtures.plugin", "-p", "no:cacheprovider", "--model", "tiny-llama",
                                          "--results-dir", str(pytester.path / "res"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*tiny-llama * needs about * GB for the smoke suite (quick) but cpu has 0.0 GB "
                                 "in all: place it with --device-map auto*"])
    assert not (pytester.path / "res" / "results.sqlite").exists()  # nothing measured, nothing written
