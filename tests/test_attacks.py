"""Unit tests of harness.attacks on tiny random models: exact restore, replay, seeds, gains, defenses, errors."""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager

import pytest
import torch

from harness.attacks import AttackResult, attack_targets, make_defense, run_attack
from harness.attacks.defenses import ChecksumDefense, Repair, sensitive_sites
from harness.attacks.gradients import weight_gradients
from harness.attacks.input_attacks import HOMOGLYPHS, perturb_text, run_input_attack
from harness.attacks.progressive import flip_gains
from harness.attacks.suffix_search import suffix_gradient
from harness.errors import HarnessError, UnknownNameError
from harness.faults import FaultSite, flip_bits, flip_tensor_bits, quantize_int8
from harness.fingerprint import changed, fingerprint
from harness.metrics import evaluate

BUDGET = 3


@pytest.fixture(scope="module")
def tiny():
    from harness.models import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def windows(tiny):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ev = torch.randint(4, 260, (2, 32), generator=g)
    at = torch.randint(4, 260, (1, 32), generator=g)
    return ev, at


def _options(method: str, seed: int = 0) -> dict:
    if method == "random":
        return {"generator": torch.Generator().manual_seed(seed)}
    if method == "guided":
        return {"super_weights": [FaultSite("model.layers.1.mlp.down_proj.weight", (3, 5))]}
    return {}


@pytest.mark.parametrize("defense", ["none", "checksum", "clamp"])
@pytest.mark.parametrize("method", ["progressive", "guided", "random"])
def test_attack_restores_model_bit_exactly(tiny, windows, method, defense):
    ev, at = windows
    before = fingerprint(tiny.model)
    d = make_defense(defense, windows=at, k=16) if defense == "checksum" else make_defense(defense)
    result = run_attack(tiny, method, eval_windows=ev, attack_windows=at, budget=BUDGET, defense=d,
                        **_options(method))
    assert not changed(before, fingerprint(tiny.model))
    assert 1 <= len(result.flips) <= BUDGET and len(result.curve) == len(result.flips) + 1
    assert all(len(f.bits) == 1 for f in result.flips)
    assert result.curve[0] == evaluate(tiny.model, ev).perplexity
    assert result.defense == defense and result.dtype == "float32"


@pytest.mark.parametrize("method", ["progressive", "guided", "random"])
def test_replay_reproduces_the_damage_and_restores(tiny, windows, method):
    ev, at = windows
    before = fingerprint(tiny.model)
    result = run_attack(tiny.model, method, eval_windows=ev, attack_windows=at, budget=BUDGET, **_options(method))
    with result.replay(tiny.model):
        replayed = evaluate(tiny.model, ev).perplexity
    assert replayed == result.curve[-1] or (math.isinf(replayed) and math.isinf(result.curve[-1]))
    assert not changed(before, fingerprint(tiny.model))
    again = AttackResult.from_dict(result.to_dict())
    assert again.flips == result.flips and again.curve == result.curve


def test_progressive_first_flip_is_a_damaging_exponent_flip(tiny, windows):
    ev, at = windows
    result = run_attack(tiny, "progressive", eval_windows=ev, attack_windows=at, budget=BUDGET)
    assert result.flips[0].bits[0] >= 23  # sign or exponent bit of a float32
    assert result.curve[1] > result.curve[0]  # a random tiny model saturates near uniform instead of collapsing


def test_random_is_seeded(tiny, windows):
    ev, _ = windows
    a = run_attack(tiny, "random", eval_windows=ev, budget=BUDGET, **_options("random", 1))
    b = run_attack(tiny, "random", eval_windows=ev, budget=BUDGET, **_options("random", 1))
    c = run_attack(tiny, "random", eval_windows=ev, budget=BUDGET, **_options("random", 2))
    assert a.flips == b.flips and a.curve == b.curve
    assert a.flips != c.flips


@pytest.mark.parametrize(("bits", "threshold", "expected"), [("exponent", 1.001, 3), ("exponent", 1.01, 8),
                                                             ("sign", 1.001, None)])
def test_random_without_curve_finds_the_same_collapse(tiny, windows, bits, threshold, expected):
    ev, _ = windows
    before = fingerprint(tiny.model)
    kw = {"eval_windows": ev, "budget": 8, "threshold": threshold, "bits": bits}
    full = run_attack(tiny, "random", **kw, **_options("random", 3))
    cheap = run_attack(tiny, "random", **kw, **_options("random", 3), curve=False)
    assert cheap.flips_to_collapse == full.flips_to_collapse == expected  # measured on tiny-llama, seed 3
    assert cheap.flips == full.flips[: len(cheap.flips)]
    assert not changed(before, fingerprint(tiny.model))
    measured = [c for c in cheap.curve if not math.isnan(c)]
    assert measured[-1] == full.curve[len(cheap.flips)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_flip_gains_match_first_order(dtype):
    w = torch.tensor([[0.5, -0.25], [1.0, 3.0]], dtype=dtype)
    g = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    bits = (w.element_size() * 8 - 1, w.element_size() * 8 - 2, 0)  # sign, exponent MSB, mantissa LSB
    elems, gains = flip_gains(w, g, bits, pool=4)
    assert sorted(elems.tolist()) == [0, 1, 2, 3]
    for e, row in zip(elems.tolist(), gains.tolist(), strict=True):
        for b, gain in zip(bits, row, strict=True):
            new = flip_tensor_bits(w, [e], b).reshape(-1)[e].double()
            expected = g.reshape(-1)[e].double() * (new - w.reshape(-1)[e].double())
            assert gain == (math.inf if not torch.isfinite(new) else pytest.approx(float(expected)))
    elems, _ = flip_gains(w, g, bits, pool=4, exclude=torch.tensor([3]))
    assert 3 not in elems.tolist()


def test_flip_gains_with_clamp_bounds_use_the_clamped_value():
    w = torch.tensor([0.5, -0.25, 1.0, 3.0])
    g = torch.tensor([1.0, -2.0, 0.5, -1.0])
    elems, gains = flip_gains(w, g, (30,), pool=4, bounds=(-0.25, 3.0))
    for e, (gain,) in zip(elems.tolist(), gains.tolist(), strict=True):
        new = flip_tensor_bits(w, [e], 30)[e].double().nan_to_num(0.0).clamp(-0.25, 3.0)
        assert gain == pytest.approx(float(g[e] * (new - w[e].double())))
        assert math.isfinite(gain)


def test_flip_gains_int8_codes():
    codes = torch.tensor([[127, -127], [5, 0]], dtype=torch.int8)
    g = torch.tensor([[1.0, 1.0], [-1.0, 0.5]])
    elems, gains = flip_gains(codes, g, (7, 0), pool=4)
    expected = {0: (-128, -1), 1: (128, -1), 2: (-128, -1), 3: (-128, 1)}  # code change of bit 7, bit 0
    for e, row in zip(elems.tolist(), gains.tolist(), strict=True):
        grad = g.reshape(-1)[e].item()
        assert row == pytest.approx([grad * d for d in expected[e]])


def test_weight_gradients_equal_autograd(tiny, windows):
    _, at = windows
    model = tiny.model
    targets = attack_targets(model)
    grads = {}
    loss = weight_gradients(model, [(t.module, t.param) for t in targets], at, grads.__setitem__)
    p = model.get_parameter(targets[-1].param)
    try:
        p.requires_grad_(True)
        logits = model(input_ids=at, use_cache=False).logits
        ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), at[:, 1:].reshape(-1))
        ref.backward()
        assert loss == pytest.approx(float(ref.detach()))
        torch.testing.assert_close(grads[targets[-1].param], p.grad)
    finally:
        p.grad = None
        p.requires_grad_(False)


def test_int8_attack_flips_codes_and_restores(tiny, windows):
    ev, at = windows
    before = fingerprint(tiny.model)
    targets = attack_targets(tiny.model)
    with quantize_int8(tiny.model, [t.module for t in targets]):
        inside = fingerprint(tiny.model)
        result = run_attack(tiny.model, "progressive", eval_windows=ev, attack_windows=at, budget=BUDGET,
                            defense=make_defense("clamp"))
        assert result.dtype == "int8" and all(0 <= f.bits[0] < 8 for f in result.flips)
        assert not changed(inside, fingerprint(tiny.model))
    assert not changed(before, fingerprint(tiny.model))


def test_checksum_defense_restores_protected_flip(tiny, windows):
    _, at = windows
    model = tiny.model
    targets = attack_targets(model)
    sites = sensitive_sites(model, targets, at, 4)
    site = sites[0].with_bits(30)
    original = model.get_parameter(site.param)[site.index].item()
    with ChecksumDefense(sites=sites).guard(model, targets) as guard, flip_bits(model, [site]):
        assert model.get_parameter(site.param)[site.index].item() != original
        with guard.scrub({site.param}) as repair:
            assert repair.n_repaired == 1
            assert model.get_parameter(site.param)[site.index].item() == original
        assert model.get_parameter(site.param)[site.index].item() != original  # repair undone first
    assert model.get_parameter(site.param)[site.index].item() == original


def test_clamp_defense_clamps_to_matrix_range(tiny):
    model = tiny.model
    targets = attack_targets(model)
    param = targets[0].param
    w = model.get_parameter(param)
    hi = w.max().item()
    flat = int(w.abs().reshape(-1).argmin())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), w.shape))
    before = fingerprint(model)
    with make_defense("clamp").guard(model, targets) as guard, flip_bits(model, [FaultSite(param, index, (30,))]):
        assert abs(w[index].item()) > hi
        with guard.scrub({param}):
            assert w.min().item() >= guard.ranges[param][0].item() and w.max().item() <= hi
    assert not changed(before, fingerprint(model))


def test_repair_restores_after_error_in_body(tiny):
    model = tiny.model
    param = attack_targets(model)[0].param
    before = fingerprint(model)
    codes = torch.tensor([7], dtype=torch.int32)
    with pytest.raises(RuntimeError), Repair(model, [(param, torch.tensor([0]), codes)]):
        raise RuntimeError("boom")
    assert not changed(before, fingerprint(model))


def test_attack_that_fails_midway_restores(tiny, windows):
    ev, _ = windows

    class Crashing:
        """Repairs nothing on the first flip and raises on the second."""

        name = "crashing"

        @contextmanager
        def guard(self, model, targets):
            calls = []

            class Guard:
                def scrub(self, params):
                    calls.append(params)
                    if len(calls) == 2:
                        raise RuntimeError("defense crashed")
                    return Repair(model, [])

            yield Guard()

    before = fingerprint(tiny.model)
    with pytest.raises(RuntimeError, match="defense crashed"):
        run_attack(tiny, "random", eval_windows=ev, budget=BUDGET, defense=Crashing(), **_options("random"))
    assert not changed(before, fingerprint(tiny.model))


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0, -1, 1.5, True])
def test_budget_below_one_is_one_line_error(tiny, windows, budget):
    with pytest.raises(HarnessError, match="flip budget must be an integer >= 1") as err:
        run_attack(tiny, "progressive", eval_windows=windows[0], budget=budget)
    assert "\n" not in str(err.value)


def test_unsupported_dtype_names_supported_ones(windows):
    from harness.models import load_model

    model = load_model("tiny-llama").model.to(torch.float64)
    with pytest.raises(HarnessError, match=r"support float32, float16, bfloat16, int8 weights; .* is float64"):
        run_attack(model, "random", eval_windows=windows[0], budget=1, **_options("random"))


def test_unknown_attack_option_and_name(tiny, windows):
    with pytest.raises(UnknownNameError, match="Did you mean 'progressive'"):
        run_attack(tiny, "progresive", eval_windows=windows[0], budget=1)
    with pytest.raises(HarnessError, match="has no option 'seed'"):
        run_attack(tiny, "random", eval_windows=windows[0], budget=1, seed=3)
    with pytest.raises(HarnessError, match="needs generator"):
        run_attack(tiny, "random", eval_windows=windows[0], budget=1)


def test_target_that_tokenizes_to_nothing(tiny):
    with pytest.raises(HarnessError, match="target '' tokenizes to nothing") as err:
        run_input_attack(tiny, "typo", "The cat sat on", "")
    assert "\n" not in str(err.value)


# -- input attacks -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["typo", "homoglyph", "insertion"])
def test_character_edits_are_seeded(kind):
    text = "The quick brown fox jumps over the lazy dog"
    a = perturb_text(text, kind, 3, torch.Generator().manual_seed(0))
    b = perturb_text(text, kind, 3, torch.Generator().manual_seed(0))
    assert a == b and a != text
    if kind == "homoglyph":
        assert len(a) == len(text) and any(ch in HOMOGLYPHS.values() for ch in a)


@pytest.mark.parametrize("method", ["typo", "homoglyph", "insertion", "gcg", "hotflip"])
def test_input_attack_measures_and_leaves_weights(tiny, method):
    before = fingerprint(tiny.model)
    options = {"steps": 2, "length": 3, "batch": 4} if method in ("gcg", "hotflip") else {"tries": 3}
    r = run_input_attack(tiny, method, "The cat sat on the", " mat today", greedy=4,
                         generator=torch.Generator().manual_seed(0), **options)
    assert not changed(before, fingerprint(tiny.model))
    assert math.isfinite(r.logprob_delta) and len(r.clean_greedy) == 4 and 0 <= r.greedy_agreement <= 1
    if method in ("gcg", "hotflip"):
        trace = r.extra["trace"]
        assert all(b <= a for a, b in itertools.pairwise(trace))  # only improvements are kept
        assert r.attacked_logprob == pytest.approx(trace[-1], abs=1e-4)


def test_suffix_gradient_predicts_swap_direction(tiny):
    tok = tiny.tokenizer
    prompt = torch.tensor(tok("The cat", add_special_tokens=False)["input_ids"])
    target = torch.tensor(tok(" sat", add_special_tokens=False)["input_ids"])
    suffix = torch.tensor([40, 41])
    grad = suffix_gradient(tiny.model, prompt, suffix, target)
    assert grad.shape == (2, tiny.model.get_input_embeddings().weight.shape[0]) and torch.isfinite(grad).all()


def test_options_parse_and_reject_bad_values(capsys):
    import argparse

    from harness.attacks.options import AttackOptions
    from harness.option_values import add_option_set

    class Group:  # pytest's option group API over argparse
        def __init__(self, parser):
            self.addoption = parser.add_argument

    parser = argparse.ArgumentParser()
    add_option_set(Group(parser), AttackOptions)
    opt = parser.parse_args(["--flip-budget", "5", "--attacks", "random,guided", "--attack-dtypes", "int8"])
    assert opt.esa_flip_budget == 5 and opt.esa_attacks == ("random", "guided") and opt.esa_attack_dtypes == ("int8",)
    for bad, message in ((["--flip-budget", "0"], "flip budget must be an integer >= 1, got '0'"),
                         (["--defenses", "clmp"], "unknown defense 'clmp'. Did you mean 'clamp'? "
                                                  "Known: none, checksum, clamp")):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
        assert message in capsys.readouterr().err


def _session_options(preset: str = "quick", **attack):
    from types import SimpleNamespace

    from harness.attacks.options import AttackOptions

    return SimpleNamespace(preset=preset, seed=0, trials=None, device="cpu", attack=AttackOptions(**attack))


def test_grid_measures_bf16_defended_only_when_asked():
    from harness.attacks.cells import grid

    quick = grid("quick", ("random",))
    assert ("random", "bf16", "none") in quick and ("random", "bf16", "clamp") not in quick
    assert ("random", "int8", "checksum") in quick and quick[0] == ("random", "fp32", "none")
    assert ("random", "bf16", "clamp") in grid("quick", ("random",), defenses=("none", "clamp"))
    assert len(grid("full", ("random",))) == 9


def test_attack_sizes_take_the_options_over_the_preset():
    from harness.attacks.cells import attack_sizes
    from harness.attacks.options import SIZES

    assert attack_sizes(_session_options()) == SIZES["quick"]
    sizes = attack_sizes(_session_options("full", flip_budget=5))
    assert sizes.budget == 5 and sizes.trials == SIZES["full"].trials


def test_fewer_flips_and_defended_gain_are_strict():
    from harness.attacks.cells import defended_gain, fewer_flips

    assert fewer_flips(2.0, [3.0, math.inf]).holds
    assert not fewer_flips(3.0, [3.0, 5.0]).holds and not fewer_flips(math.inf, [math.inf]).holds
    assert defended_gain(math.inf, 2.0).holds and not defended_gain(2.0, 2.0).holds
    assert defended_gain(5.0, math.inf).undecidable


def test_ratio_to_random_counts_censored_runs_as_budget_plus_one():
    from harness.attacks.cells import AttackMeasurement

    run = AttackResult("guided", (), (1.0, 10.0), threshold=10.0, budget=4)  # collapsed at its first flip
    m = AttackMeasurement("guided", 4, [1, 2, 3], [math.inf, 2.0, math.inf], [(0, run)])
    assert m.flips == [1.0] and m.ratio_to_random() == (1 / 5, 5)


def test_model_in_forgets_a_copy_left_changed(tiny):
    from harness.attacks.cells import AttackCells

    windows = torch.zeros(1, 8, dtype=torch.long)
    cells = AttackCells(tiny, _session_options(), windows, windows)
    with cells.model_in("fp32") as same:
        assert same is tiny.model
    with pytest.raises(HarnessError, match="attack left 1 tensor"), cells.model_in("bf16") as copy:
        assert copy.dtype == torch.bfloat16 and copy is not tiny.model
        with torch.no_grad():
            copy.get_parameter("model.layers.0.mlp.down_proj.weight")[0, 0] += 1
    with cells.model_in("bf16") as fresh:
        assert fresh is not copy


def test_input_attack_cells_read_the_preset():
    from harness.attacks.input_cells import PROMPT_WORDS, TARGET_WORDS, preset_options, prompt_pairs
    from harness.data import load_corpus

    assert set(preset_options("gcg", "quick")) == {"length", "steps", "batch", "topk"}
    assert set(preset_options("hotflip", "full")) == {"length", "steps", "batch"}
    assert preset_options("typo", "full") == {"edits": 3, "tries": 32}
    pairs = prompt_pairs(load_corpus(), 3)
    assert len(pairs) == 3
    assert all(len(p.split()) == PROMPT_WORDS and len(t.split()) == TARGET_WORDS and t[0] == " " for p, t in pairs)
