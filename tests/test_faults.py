"""The injector on models (per dtype, fp32/fp16/bf16/int8), fault sites, samplers, the
bit-error-rate mode and the perturbation registry."""

from __future__ import annotations

import hashlib
import json
import math
from collections import namedtuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from harness.errors import HarnessError
from harness.faults import (
    PERTURBATIONS,
    FaultSite,
    Region,
    bit_class,
    bit_error_rate,
    distinct_positions,
    expected_flips,
    flip_bits,
    layout,
    per_component_sites,
    per_layer_sites,
    quantize_int8,
    sample_ber_sites,
    target_sites,
    top_magnitude_sites,
    uniform_sites,
)
from harness.faults import ber as ber_module
from harness.faults import samplers as samplers_module
from harness.faults.bits import xor_masks
from harness.faults.samplers import UniformSampler
from tests.stored_bits import assert_same, snapshot

DTYPES = ["float32", "float16", "bfloat16", "int8"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FAST = settings(max_examples=25, deadline=None)
ComponentRef = namedtuple("ComponentRef", "layer component module param rows")  # archmap's shape


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)
        self.register_buffer("buf", torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def make_model(dtype: str = "float32", device: str = "cpu", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = Tiny().eval().requires_grad_(False)
    if dtype == "int8":
        quantize_int8(model).apply()  # a.weight / b.weight become int8 codes
    else:
        model.to(getattr(torch, dtype))
    return model.to(device)


def apply_np(snap: dict[str, np.ndarray], sites: list[FaultSite]) -> dict[str, np.ndarray]:
    """The expected stored bits after flipping ``sites`` one (element, bit) at a time."""
    out = {k: v.copy() for k, v in snap.items()}
    for s in sites:
        arr = out[s.param]
        for b in s.bits:
            arr[s.index] ^= arr.dtype.type(1 << b)
    return out


@st.composite
def site_lists(draw, model: nn.Module, max_sites: int = 8):
    params = [(n, p) for n, p in model.named_parameters()]
    sites = []
    for _ in range(draw(st.integers(1, max_sites))):
        name, p = draw(st.sampled_from(params))
        index = tuple(draw(st.integers(0, n - 1)) for n in p.shape)
        width = layout(p.dtype).width
        bits = draw(st.lists(st.integers(0, width - 1), min_size=1, max_size=3))
        sites.append(FaultSite(name, index, tuple(bits)))
    return sites


# ------------------------------------------------------------------------------------- injector


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(data=st.data())
def test_injector_flips_exactly_the_sites_and_restores(dtype, device, data):
    model = make_model(dtype, device)
    sites = data.draw(site_lists(model))
    before = snapshot(model)
    with flip_bits(model, sites) as flip:
        assert_same(snapshot(model), apply_np(before, sites))
        saved = sum(len(old) for _, _, old in flip._saved)
        assert saved <= len(sites)  # O(sites) memory: only touched codes are saved
    assert_same(snapshot(model), before)


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(data=st.data())
def test_injector_restores_after_exception(dtype, data):
    model = make_model(dtype)
    sites = data.draw(site_lists(model))
    before = snapshot(model)
    with pytest.raises(RuntimeError, match=r"boom"):
        with flip_bits(model, sites):
            raise RuntimeError("boom")
    assert_same(snapshot(model), before)


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(data=st.data())
def test_nested_flips_restore_inner_first(dtype, data):
    model = make_model(dtype)
    outer, inner = data.draw(site_lists(model)), data.draw(site_lists(model))  # may overlap
    s0 = snapshot(model)
    with flip_bits(model, outer):
        s1 = snapshot(model)
        assert_same(s1, apply_np(s0, outer))
        with flip_bits(model, inner):
            assert_same(snapshot(model), apply_np(s1, inner))
        assert_same(snapshot(model), s1)
    assert_same(snapshot(model), s0)


def test_flip_values_on_a_model():
    model = make_model("float32")
    w = model.a.weight
    w.data[2, 3] = 1.0
    with flip_bits(model, [FaultSite("a.weight", (2, 3), bit_class("exp_msb", torch.float32))]) as f:
        assert w[2, 3].item() == math.inf
        assert f.value_changes() == [{"param": "a.weight", "flat_index": 2 * 8 + 3, "before": 1.0, "after": math.inf}]
    assert w[2, 3].item() == 1.0


def test_int8_codes_flip_and_dequantize():
    model = make_model("int8")
    q = model.a
    code = int(q.weight[0, 0])
    with flip_bits(model, [FaultSite("a.weight", (0, 0), (7,))]):
        assert int(q.weight[0, 0]) == int(np.int8(code) ^ np.int8(-128))
        assert q.dequantize()[0, 0].item() == pytest.approx(float(q.weight[0, 0]) * q.scale[0].item())
    assert int(q.weight[0, 0]) == code


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's quantized tensors are deprecated
def test_torch_quantized_module_flip_restores():
    model = make_model("float32")
    with quantize_int8(model, ["a"], backend="torch"):
        codes = model.a.weight().int_repr().clone()
        x = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
        y = model(x)
        with flip_bits(model, [FaultSite("a.weight", (1, 2), (7, 0))]):
            flipped = model.a.weight().int_repr()
            assert int(flipped[1, 2]) == int(np.int8(int(codes[1, 2])) ^ np.int8(-127))
            assert torch.equal(flipped[0], codes[0])
        assert torch.equal(model.a.weight().int_repr(), codes)
        assert torch.equal(model(x), y)
    assert isinstance(model.a, nn.Linear)


def test_apply_twice_and_restore_twice():
    model = make_model()
    flip = flip_bits(model, [FaultSite("a.weight", (0, 0), (1,))])
    before = snapshot(model)
    flip.apply()
    with pytest.raises(HarnessError, match=r"already applied"):
        flip.apply()
    flip.restore()
    flip.restore()
    assert_same(snapshot(model), before)
    with flip:  # reusable
        pass
    assert_same(snapshot(model), before)


def test_injector_bad_input_messages():
    model = make_model("float16")
    with pytest.raises(HarnessError, match=r"^bit 40 out of range for torch\.float16 \(0-15\)$"):
        flip_bits(model, [FaultSite("a.weight", (0, 0), (40,))])
    with pytest.raises(HarnessError, match=r"unknown parameter 'a.wieght' in Tiny; did you mean 'a.weight'"):
        flip_bits(model, [FaultSite("a.wieght", (0, 0), (1,))])
    with pytest.raises(HarnessError, match=r"index \(16, 0\) out of range for a.weight of shape \(16, 8\)"):
        flip_bits(model, [FaultSite("a.weight", (16, 0), (1,))])
    with pytest.raises(HarnessError, match=r"index \(1,\) out of range"):
        flip_bits(model, [FaultSite("a.weight", (1,), (1,))])
    with pytest.raises(HarnessError, match=r"has no bits to flip"):
        flip_bits(model, [FaultSite("a.weight", (0, 0))])
    with pytest.raises(HarnessError, match=r"no fault sites given"):
        flip_bits(model, [])


# ------------------------------------------------------------------------------------- sites


def test_fault_site_is_frozen_hashable_and_json():
    site = FaultSite("a.weight", [1, np.int64(2)], [31])
    assert site.index == (1, 2) and site.bits == (31,)
    assert {site, FaultSite("a.weight", (1, 2), (31,))} == {site}
    with pytest.raises(AttributeError):
        site.param = "b"  # type: ignore[misc]
    assert FaultSite.from_dict(json.loads(json.dumps(site.to_dict()))) == site
    region = Region("a.weight", rows=[1, 2])
    assert Region.from_dict(json.loads(json.dumps(region.to_dict()))) == region
    with pytest.raises(HarnessError, match=r"non-empty string"):
        FaultSite("", (0,))
    with pytest.raises(HarnessError, match=r"needs 'param' and 'index'; missing 'index'"):
        FaultSite.from_dict({"param": "a.weight"})


# ------------------------------------------------------------------------------------- samplers


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_same_seed_same_sites():
    model = make_model()
    for sampler in (
        lambda g: uniform_sites(model, None, 20, generator=g, bits="exponent", bits_per_site=2),
        lambda g: sample_ber_sites(model, None, 0.01, generator=g),
        lambda g: top_magnitude_sites(model, None, 5, bits="exponent", generator=g),
    ):
        assert sampler(gen(3)) == sampler(gen(3))
    assert uniform_sites(model, None, 20, generator=gen(3)) != uniform_sites(model, None, 20, generator=gen(4))


def test_uniform_is_weight_count_proportional():
    model = nn.Module()
    model.small = nn.Parameter(torch.zeros(1000))
    model.big = nn.Parameter(torch.zeros(90, 100))
    sites = uniform_sites(model, None, 3000, generator=gen(0), bits="sign")
    assert len(set(sites)) == 3000
    share = sum(s.param == "small" for s in sites) / 3000
    sd = math.sqrt(0.1 * 0.9 / 3000)  # a tolerance of 4 sd (sampling without replacement is tighter)
    assert abs(share - 0.1) < 4 * sd


@pytest.mark.parametrize("dtype", DTYPES)
def test_sampled_bits_come_from_the_class(dtype):
    model = make_model(dtype)
    cls = "exponent" if dtype != "int8" else "mantissa"
    targets = ["a.weight", "b.weight"]
    allowed = set(bit_class(cls, model.a.weight.dtype))
    sites = uniform_sites(model, targets, 50, generator=gen(1), bits=cls, bits_per_site=2)
    assert all(len(s.bits) == 2 and len(set(s.bits)) == 2 and set(s.bits) <= allowed for s in sites)
    assert len({b for s in sites for b in s.bits}) > 2  # draws vary
    fixed = uniform_sites(model, targets, 5, generator=gen(1), bits=[0, 3])
    assert all(s.bits == (0, 3) for s in fixed)


def test_samplers_respect_fused_rows_and_cols():
    model = make_model()
    ref = ComponentRef(0, "value", "a", "a.weight", (4, 5, 6))
    sites = uniform_sites(model, [ref], 21, generator=gen(0), bits="sign")
    assert {s.index[0] for s in sites} == {4, 5, 6} and len(set(sites)) == 21  # all 3*8 minus 3
    sites = uniform_sites(model, [Region("a.weight", cols=(7,))], 16, generator=gen(0), bits="sign")
    assert sorted(s.index for s in sites) == [(r, 7) for r in range(16)]
    with pytest.raises(HarnessError, match=r"cannot draw 25 distinct positions from 24"):
        uniform_sites(model, [ref], 25, generator=gen(0))
    with pytest.raises(HarnessError, match=r"index 16 out of range for dim 0 of a.weight"):
        uniform_sites(model, [Region("a.weight", rows=(16,))], 1, generator=gen(0))


def test_grouped_samplers():
    model = make_model()
    refs = [ComponentRef(0, "mlp_up", "a", "a.weight", None), ComponentRef(1, "mlp_down", "b", "b.weight", None),
            ComponentRef(1, "mlp_up", "a", "a.bias", None)]
    by_layer = per_layer_sites(model, refs, 3, generator=gen(0), bits="sign")
    assert list(by_layer) == [0, 1] and all(len(v) == 3 for v in by_layer.values())
    assert {s.param for s in by_layer[0]} == {"a.weight"}
    by_comp = per_component_sites(model, refs, 2, generator=gen(0), bits="sign")
    assert list(by_comp) == ["mlp_up", "mlp_down"]
    assert {s.param for s in by_comp["mlp_down"]} == {"b.weight"}


def test_top_magnitude_sites(monkeypatch):
    model = make_model()
    model.b.weight.data[2, 5] = 100.0
    model.a.weight.data[7, 1] = -50.0
    sites = top_magnitude_sites(model, ["a.weight", "b.weight"], 2, bits="sign")
    assert [(s.param, s.index, s.bits) for s in sites] == [("b.weight", (2, 5), (31,)), ("a.weight", (7, 1), (31,))]
    full = top_magnitude_sites(model, None, 10)
    monkeypatch.setattr(samplers_module, "CHUNK", 8)  # one row per block
    assert top_magnitude_sites(model, None, 10) == full
    with pytest.raises(HarnessError, match=r"pass a generator to choose"):
        top_magnitude_sites(model, None, 1, bits="exponent")


def test_top_magnitude_int8_uses_scales():
    model = make_model("int8")
    q = model.a
    q.weight.data[:] = 1
    q.weight.data[3, 3] = 2
    q.scale[5] = 10.0  # row 5 codes 1 * 10 beat row 3's 2 * small
    sites = top_magnitude_sites(model, "a.weight", 1, bits="sign")
    assert sites[0].index[0] == 5


def test_target_sites():
    model = make_model()
    sites = target_sites(model, [("a.weight", (1, 2)), {"param": "b.weight", "index": [0, 0]}], bits="exp_msb")
    assert sites == [FaultSite("a.weight", (1, 2), (30,)), FaultSite("b.weight", (0, 0), (30,))]
    with pytest.raises(HarnessError, match=r"index \(9, 9\) out of range for b.weight"):
        target_sites(model, [("b.weight", (9, 9))], bits="sign")


def test_trial_count_below_one():
    model = make_model()
    for n in (0, -3):
        with pytest.raises(HarnessError, match=f"^n must be an integer >= 1, got {n}$"):
            uniform_sites(model, None, n, generator=gen(0))
    with pytest.raises(HarnessError, match=r"n must be an integer >= 1"):
        top_magnitude_sites(model, None, 0)
    with pytest.raises(HarnessError, match=r"bits_per_site=9 but bit class 'exponent' has 8 bits"):
        uniform_sites(model, None, 1, generator=gen(0), bits="exponent", bits_per_site=9)


def _digest(sites) -> str:
    return hashlib.sha256(json.dumps([s.to_dict() for s in sites]).encode()).hexdigest()[:16]


def test_uniform_sampler_draws_as_before():
    """The sampler holding its region sizes draws what ``uniform_sites`` drew when it recomputed them per draw
    (digests recorded at commit f1d61e7, before the change): the randperm path, the rejection path, fused rows,
    column regions, a vector, bits per site."""
    model = make_model()
    refs = [ComponentRef(0, "value", "a", "a.weight", (4, 5, 6, 11)), Region("b.weight", cols=(1, 3, 9)), "a.bias"]
    sampler = UniformSampler(model, refs)
    assert sampler.total == 4 * 8 + 4 * 3 + 16
    first = sampler.draw(9, generator=gen(7), bits="any")
    assert [(s.param, s.index, s.bits) for s in first[:3]] == [
        ("a.weight", (5, 7), (11,)), ("a.bias", (8,), (12,)), ("a.weight", (4, 1), (23,))]
    assert _digest(first) == "e3bb0370b7759915"
    assert _digest(sampler.draw(sampler.total, generator=gen(2), bits="sign")) == "aa1eaa499ed94889"
    everything = uniform_sites(model, None, 12, generator=gen(5), bits="exponent", bits_per_site=2)
    assert _digest(everything) == "5719fc22b0fb78a7"
    assert UniformSampler(model).draw(12, generator=gen(5), bits="exponent", bits_per_site=2) == everything
    with pytest.raises(HarnessError, match=r"cannot draw 61 distinct positions from 60"):
        sampler.draw(61, generator=gen(0))


@pytest.mark.parametrize(("total", "k"), [(1000, 900), (1000, 3), (2**40, 50), (7, 7), (10**6, 1)])
def test_distinct_positions_few_equal_the_tensor_path(monkeypatch, total, k):
    monkeypatch.setattr(samplers_module, "RANDPERM_MAX", 0)  # the rejection loop, with repeats at 900 of 1000
    few = distinct_positions(total, k, gen(4))
    monkeypatch.setattr(samplers_module, "FEW", 0)
    assert torch.equal(few, distinct_positions(total, k, gen(4)))
    g1, g2 = gen(9), gen(9)  # and the generator is left in the same state
    monkeypatch.setattr(samplers_module, "FEW", 1024)
    distinct_positions(total, k, g1)
    monkeypatch.setattr(samplers_module, "FEW", 0)
    distinct_positions(total, k, g2)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_xor_masks_cancel_and_sign():
    assert xor_masks([(4, 3), (4, 3), (2, 31), (2, 0), (9, 1)], 32) == ([2, 9], [-(2**31) + 1, 2])
    assert xor_masks([(0, 63), (0, 0)], 64) == ([0], [-(2**63) + 1])
    assert xor_masks([(5, 7)], 8) == ([5], [-128])
    assert xor_masks([], 16) == ([], [])


# ------------------------------------------------------------------------------------- BER

BER_TRIALS = 10


@pytest.mark.parametrize("path", ["randperm", "rejection"])
def test_ber_expected_count(path, monkeypatch):
    """Total flips over 10 seeded trials of 2^20 fp16 bits at p=1e-3 lie within 4 sigma of n*p
    (mean 10486, sd 102)."""
    if path == "rejection":
        monkeypatch.setattr(samplers_module, "RANDPERM_MAX", 0)
    else:
        monkeypatch.setattr(samplers_module, "RANDPERM_MIN_FRACTION", 0.0)
    model = nn.Module()
    model.w = nn.Parameter(torch.zeros(256, 256, dtype=torch.float16), requires_grad=False)
    n_bits, p = 256 * 256 * 16, 1e-3
    g = gen(1234)
    per_bit = np.zeros(16)
    total = 0
    for _ in range(BER_TRIALS):
        sites = sample_ber_sites(model, None, p, generator=g)
        assert len(set((s.param, s.index) for s in sites)) == len(sites)  # one site per element
        for s in sites:
            assert list(s.bits) == sorted(set(s.bits))
            per_bit[list(s.bits)] += 1
        total += sum(len(s.bits) for s in sites)
    mean, sd = expected_flips(n_bits * BER_TRIALS, p)
    assert abs(total - mean) < 4 * sd
    # every bit position equally likely: each gets total/16 flips within 4 sigma
    share_sd = math.sqrt(total * (1 / 16) * (15 / 16))
    assert np.all(np.abs(per_bit - total / 16) < 4 * share_sd)


def test_distinct_positions_by_rejection_are_distinct(monkeypatch):
    monkeypatch.setattr(samplers_module, "RANDPERM_MAX", 0)
    pos = distinct_positions(1000, 900, gen(0))  # forces many repeats
    assert len(pos) == 900 and len(torch.unique(pos)) == 900 and int(pos.max()) < 1000
    big = distinct_positions(2**60, 1000, gen(0))
    assert len(torch.unique(big)) == 1000


def test_ber_trial_flips_and_restores():
    model = make_model("bfloat16")
    before = snapshot(model)
    trial = bit_error_rate(model, ["a.weight"], 0.05, generator=gen(7), bits="exponent")
    assert trial.n_flips > 0 and all(set(s.bits) <= set(range(7, 15)) for s in trial.sites)
    with trial:
        assert_same(snapshot(model), apply_np(before, list(trial.sites)))
    assert_same(snapshot(model), before)


def test_ber_extremes_and_errors(monkeypatch):
    model = make_model("int8")
    before = snapshot(model)
    with bit_error_rate(model, None, 0.0, generator=gen(0)) as trial:
        assert trial.sites == ()
    with bit_error_rate(model, ["a.weight"], 1.0, generator=gen(0)):
        assert np.array_equal(snapshot(model)["a.weight"], ~before["a.weight"])
    assert_same(snapshot(model), before)
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(HarnessError, match=r"bit error rate p must be in \[0, 1\], got"):
            sample_ber_sites(model, None, p, generator=gen(0))
    monkeypatch.setattr(ber_module, "MAX_FLIPS", 10)
    with pytest.raises(HarnessError, match=r"at most 10 per trial"):
        sample_ber_sites(model, None, 0.5, generator=gen(0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gen_device", ["cpu", "same"])
def test_samplers_and_ber_on_the_model_device(device, gen_device):
    model = make_model("float16", device)
    g_dev = device if gen_device == "same" else "cpu"

    def g(seed: int) -> torch.Generator:
        return torch.Generator(device=g_dev).manual_seed(seed)

    before = snapshot(model)
    sites = uniform_sites(model, None, 10, generator=g(0), bits="exponent")
    assert sites == uniform_sites(model, None, 10, generator=g(0), bits="exponent")
    sites += top_magnitude_sites(model, None, 3, bits="exponent", generator=g(1))
    with flip_bits(model, sites), bit_error_rate(model, None, 0.01, generator=g(2)) as trial:
        assert trial.n_flips > 0
        assert all(p.device.type == device for p in model.parameters())
    assert_same(snapshot(model), before)


# ------------------------------------------------------------------------------------- row mean


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_row_mean_ablation_sets_each_element_to_its_row_mean_and_restores(dtype):
    """Elements, a row and a column take their rows' means (taken before any edit); restored bit-exactly."""
    from harness.faults import ablate

    model = make_model(dtype)
    before = snapshot(model)
    w = model.a.weight
    old = w.detach().clone()
    means = old.float().mean(dim=1)  # (16,): the rows' means before the ablation
    elements = [FaultSite("a.weight", (2, 5)), FaultSite("a.weight", (2, 6)), FaultSite("a.weight", (9, 0))]
    with ablate(model, [*elements, Region("a.weight", rows=(4,)), Region("a.weight", cols=(7,))], "row_mean") as ab:
        mask = torch.zeros_like(old, dtype=torch.bool)
        mask[2, 5] = mask[2, 6] = mask[9, 0] = True
        mask[4] = True
        mask[:, 7] = True
        expected = means[:, None].expand_as(old)
        if dtype == "int8":  # integer codes: the mean rounded to the nearest code
            expected = expected.round()
        assert torch.equal(w[mask], expected[mask].to(w.dtype))
        assert torch.equal(w[~mask], old[~mask])
        assert ab.describe()["mode"] == "row_mean"
    assert_same(snapshot(model), before)


def test_row_mean_ablation_of_a_vector_is_refused():
    from harness.faults import ablate

    with pytest.raises(HarnessError, match=r"row_mean.*matrices"):
        with ablate(make_model(), ["a.bias"], "row_mean"):
            pass


# ------------------------------------------------------------------------------------- registry


def test_registry_builds_every_kind_from_name_and_params():
    model = make_model()
    assert set(PERTURBATIONS.names()) == {"bitflip", "ber", "noise", "site_noise", "ablation", "activation"}
    built = [
        PERTURBATIONS.get("bitflip")(model, [FaultSite("a.weight", (0, 0), (30,))]),
        PERTURBATIONS.get("ber")(model, None, 0.01, generator=gen(0)),
        PERTURBATIONS.get("noise")(model, ["a.weight"], 0.1, generator=gen(0)),
        PERTURBATIONS.get("site_noise")(model, [FaultSite("b.weight", (1, 2))], 0.5, generator=gen(0)),
        PERTURBATIONS.get("ablation")(model, ["b.weight"], "mean"),
        PERTURBATIONS.get("activation")(model, "a", "set", 0.0, channels=[1]),
    ]
    before = snapshot(model)
    for p in built:
        json.dumps(p.describe())
        with p:
            model(torch.randn(1, 8))
    assert_same(snapshot(model), before)
    with pytest.raises(HarnessError, match=r"unknown perturbation 'nosie'. Did you mean 'noise'"):
        PERTURBATIONS.get("nosie")
