"""Noise, ablation, activation faults and the int8 representation: effects, bit-exact restore,
restore after exceptions, nesting, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from harness.errors import HarnessError
from harness.faults import (
    FaultSite,
    QuantizedLinear,
    Region,
    SiteNoise,
    ablate,
    activation_fault,
    add_noise,
    flip_bits,
    quantize_int8,
)
from tests.stored_bits import assert_same, snapshot

FLOATS = ["float32", "float16", "bfloat16"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def make_model(dtype: str = "float32", device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    return Tiny().eval().requires_grad_(False).to(device=device, dtype=getattr(torch, dtype))


def changed(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: a[k] != b[k] for k in a if (a[k] != b[k]).any()}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------- noise


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS)
@settings(max_examples=15, deadline=None)
@given(
    level=st.floats(0, 10),
    kind=st.sampled_from(["gaussian", "uniform"]),
    scale=st.sampled_from(["absolute", "relative", "std"]),
    rows=st.none() | st.lists(st.integers(0, 15), min_size=1, max_size=4, unique=True).map(tuple),
    fail=st.booleans(),
)
def test_noise_restores_bit_exactly(dtype, device, level, kind, scale, rows, fail):
    model = make_model(dtype, device)
    before = snapshot(model)
    targets = [Region("a.weight", rows=rows), "b.bias"]
    try:
        with add_noise(model, targets, level, kind=kind, scale=scale, generator=gen()):
            diff = changed(snapshot(model), before)
            assert set(diff) <= {"a.weight", "b.bias"}
            if rows is not None and "a.weight" in diff:
                untouched = [r for r in range(16) if r not in rows]
                assert not diff["a.weight"][untouched].any()
            if fail:
                raise KeyError("body failed")
    except KeyError:
        assert fail
    assert_same(snapshot(model), before)


def test_noise_scales_and_seeds():
    model = make_model()
    w = model.a.weight
    w.data[0, :4] = 0.0
    orig = w.detach().clone()
    with add_noise(model, "a.weight", 0.1, scale="relative", generator=gen(5)):
        assert torch.all(w[0, :4] == 0)  # relative: zeros stay zero
        rel = (w / orig - 1)[orig != 0]
        assert abs(rel.std().item() - 0.1) < 0.03
        first = w.detach().clone()
    with add_noise(model, "a.weight", 0.1, scale="relative", generator=gen(5)):
        assert torch.equal(w, first)  # same seed, same numbers
    with add_noise(model, "a.weight", 0.5, scale="std", generator=gen(1)):
        ratio = (w - orig).std().item() / orig.std().item()
        assert abs(ratio - 0.5) < 0.15
    with add_noise(model, "a.weight", 0.2, kind="uniform", generator=gen(1)):
        assert (w - orig).abs().max().item() <= 0.2 + 1e-6
    assert torch.equal(w, orig)


@pytest.mark.parametrize("dtype", FLOATS)
def test_site_noise_touches_only_its_sites_and_restores_bit_exactly(dtype):
    model = make_model(dtype)
    sites = [FaultSite("a.weight", (0, 1)), FaultSite("b.weight", (3, 2)), FaultSite("a.weight", (5, 7))]
    before = snapshot(model)
    with SiteNoise(model, sites, 1.0, generator=gen(3)):
        diff = changed(snapshot(model), before)
        assert set(diff) == {"a.weight", "b.weight"}
        moved = {(n, i) for n in diff for i in zip(*np.nonzero(snapshot(model)[n] != before[n]), strict=True)}
        assert moved <= {(s.param, s.index) for s in sites}
        first = {n: t.detach().clone() for n, t in model.named_parameters()}
    assert_same(snapshot(model), before)
    with SiteNoise(model, sites, 1.0, generator=gen(3)):  # same seed, same numbers
        assert all(torch.equal(t, first[n]) for n, t in model.named_parameters())
    with pytest.raises(HarnessError, match=r"noise level must be a finite number >= 0"):
        SiteNoise(model, sites, -1.0, generator=gen())
    with pytest.raises(HarnessError, match=r"index \(4, 8\) out of range for b.weight of shape \(4, 16\)"):
        SiteNoise(model, [FaultSite("b.weight", (4, 8))], 1.0, generator=gen())


def test_noise_whole_model_skips_int8_and_bad_input():
    model = make_model()
    quantize_int8(model, ["a"]).apply()
    before = snapshot(model)
    with add_noise(model, None, 0.1, generator=gen()):  # None: every float parameter
        diff = changed(snapshot(model), before)
        assert "a.weight" not in diff and {"b.weight", "a.bias"} <= set(diff)
    assert_same(snapshot(model), before)
    for level in (-0.1, float("nan"), float("inf")):
        with pytest.raises(HarnessError, match=r"noise level must be a finite number >= 0, got"):
            add_noise(model, "b.weight", level, generator=gen())
    with pytest.raises(HarnessError, match=r"unknown noise kind 'cauchy'; allowed: gaussian, uniform"):
        add_noise(model, "b.weight", 0.1, kind="cauchy", generator=gen())
    with pytest.raises(HarnessError, match=r"unknown noise scale 'rel'; allowed: absolute, relative, std"):
        add_noise(model, "b.weight", 0.1, scale="rel", generator=gen())
    with pytest.raises(HarnessError, match=r"noise needs floating-point weights; a.weight is torch.int8"):
        add_noise(model, "a.weight", 0.1, generator=gen())
    with pytest.raises(HarnessError, match=r"unknown parameter 'c.weight'"):
        add_noise(model, "c.weight", 0.1, generator=gen())


# ------------------------------------------------------------------------------------- ablation


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("mode", ["zero", "mean", "random", "scale"])
def test_ablation_targets_and_restore(dtype, device, mode):
    model = make_model(dtype, device)
    before = snapshot(model)
    w = model.a.weight
    mean = w.float().mean().to(w.dtype)  # on the device, as the ablation computes it
    targets = [Region("a.weight", rows=(1, 3)), Region("b.weight", cols=(2,)), FaultSite("a.weight", (0, 5)), "a.bias"]
    old = w.detach().clone()
    factor = 0.375 if mode == "scale" else None
    with ablate(model, targets, mode, generator=gen(), factor=factor):
        mask = torch.zeros(16, 8, dtype=torch.bool)
        mask[[1, 3]] = True
        mask[0, 5] = True
        diff = changed(snapshot(model), before)
        assert set(diff) <= {"a.weight", "b.weight", "a.bias"}
        assert not diff["a.weight"][~mask.numpy()].any()
        if mode == "zero":
            assert torch.all(w[mask.to(device)] == 0) and torch.all(model.b.weight[:, 2] == 0)
            assert torch.all(model.a.bias == 0)
        if mode == "mean":
            assert torch.all(w[mask.to(device)] == mean)
        if mode == "scale":
            m = mask.to(device)
            assert torch.equal(w[m], old[m] * factor)
    assert_same(snapshot(model), before)


def test_ablation_scale_replaces_overlapping_targets_once():
    """A row given twice (a whole matrix and one of its rows, an element inside) is scaled once."""
    model = make_model()
    old = model.a.weight.detach().clone()
    with ablate(model, ["a.weight", Region("a.weight", rows=(2,)), FaultSite("a.weight", (2, 3))], "scale",
                factor=0.5):
        assert torch.equal(model.a.weight, old * 0.5)
    assert torch.equal(model.a.weight, old)


def test_ablation_restores_after_exception_and_nests_with_noise():
    model = make_model("bfloat16")
    s0 = snapshot(model)
    with pytest.raises(ZeroDivisionError):
        with add_noise(model, None, 0.3, generator=gen()):
            s1 = snapshot(model)
            with ablate(model, ["a.weight", "b.weight"], "random", generator=gen(2)):
                with flip_bits(model, [FaultSite("a.weight", (0, 0), (15,))]):
                    raise ZeroDivisionError
            assert_same(snapshot(model), s1)
    assert_same(snapshot(model), s0)


def test_ablation_fused_rows_and_int8_codes():
    from collections import namedtuple

    ComponentRef = namedtuple("ComponentRef", "layer component module param rows")
    model = make_model()
    quantize_int8(model, ["a"]).apply()
    before = snapshot(model)
    value_rows = ComponentRef(0, "value", "a", "a.weight", (8, 9, 10, 11))
    with ablate(model, [value_rows], "mean"):
        diff = changed(snapshot(model), before)["a.weight"]
        assert diff[:8].sum() == 0 and diff[12:].sum() == 0
        assert model.a.weight.dtype == torch.int8 and model.a.weight[8:12].unique().numel() == 1
    assert_same(snapshot(model), before)


def test_ablation_bad_input():
    model = make_model()
    with pytest.raises(HarnessError, match=r"unknown ablation mode 'mean_'; allowed: zero, mean, random"):
        ablate(model, "a.weight", "mean_")
    with pytest.raises(HarnessError, match=r"ablation mode 'random' needs a generator"):
        ablate(model, "a.weight", "random")
    with pytest.raises(HarnessError, match=r"index \(16, 0\) out of range for a.weight"):
        ablate(model, FaultSite("a.weight", (16, 0)))
    with pytest.raises(HarnessError, match=r"index 16 out of range for dim 1 of b.weight \(0-15\)"):
        ablate(model, Region("b.weight", cols=(16,)))
    with pytest.raises(HarnessError, match=r"ablation needs at least one target"):
        ablate(model, [])
    for mode, factor in (("scale", None), ("zero", 0.5)):
        with pytest.raises(HarnessError, match=r"ablation takes a factor with mode 'scale' and only then"):
            ablate(model, "a.weight", mode, factor=factor)
    with pytest.raises(HarnessError, match=r"ablation mode 'scale' needs a finite factor, got nan"):
        ablate(model, "a.weight", "scale", factor=float("nan"))


# ------------------------------------------------------------------------------------- activation


@pytest.mark.parametrize("device", DEVICES)
def test_activation_ops(device):
    model = make_model(device=device)
    x = torch.randn(3, 8, generator=gen()).to(device)
    clean = model.a(x)
    with activation_fault(model, "a", "set", 7.0, channels=[2, 5]) as f:
        out = model.a(x)
        assert torch.all(out[:, [2, 5]] == 7) and torch.equal(out[:, :2], clean[:, :2])
    assert f.calls == 1
    with activation_fault(model, "a", "add", 1.0, index=(0, 3)):
        out = model.a(x)
        assert out[0, 3] == clean[0, 3] + 1 and torch.equal(out[1:], clean[1:])
    with activation_fault(model, "a", "scale", -2.0, index=(slice(None), 4)):
        assert torch.equal(model.a(x)[:, 4], clean[:, 4] * -2)
    with activation_fault(model, "a", "bitflip", bits=31, channels=1):
        assert torch.equal(model.a(x)[:, 1], -clean[:, 1])
    assert torch.equal(model.a(x), clean)
    assert not model.a._forward_hooks


def test_activation_hook_removed_on_exception_and_tuple_outputs():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x + 1

    model = nn.Sequential(Pair())
    x = torch.zeros(2, 4)
    with pytest.raises(RuntimeError):
        with activation_fault(model, "0", "set", 5.0, channels=[0], output_index=1):
            _, b = model(x)
            assert torch.all(b[:, 0] == 5) and torch.all(b[:, 1:] == 1)
            assert torch.all(x == 0)  # output cloned, input untouched
            raise RuntimeError
    assert not model[0]._forward_hooks
    assert torch.equal(model(x)[1], x + 1)


def test_activation_bad_input():
    model = make_model("float16")
    with pytest.raises(HarnessError, match=r"unknown activation op 'zero'; allowed: set, add, scale, bitflip"):
        activation_fault(model, "a", "zero")
    with pytest.raises(HarnessError, match=r"unknown module 'c' in Tiny"):
        activation_fault(model, "c")
    with pytest.raises(HarnessError, match=r"pass index or channels, not both"):
        activation_fault(model, "a", index=(0,), channels=[1])
    with pytest.raises(HarnessError, match=r"needs bits"):
        activation_fault(model, "a", "bitflip")
    with pytest.raises(HarnessError, match=r"bit 20 out of range for torch\.float16 \(0-15\)"):
        activation_fault(model, "a", "bitflip", bits=20)


# ------------------------------------------------------------------------------------- int8


def test_quantized_linear_matches_linear_and_restores_modules():
    model = make_model()
    a, b = model.a, model.b
    x = torch.randn(5, 8, generator=gen())
    clean = model(x)
    before = snapshot(model)
    with quantize_int8(model) as q:
        assert isinstance(model.a, QuantizedLinear) and set(q.quantized) == {"a", "b"}
        assert model.a.weight.dtype == torch.int8 and model.a.weight.shape == a.weight.shape
        assert int(model.a.weight.abs().max()) <= 127
        assert model.a.bias is a.bias  # shared, not copied
        err = (model.a.dequantize() - a.weight).abs().max()
        assert err <= model.a.scale.max() / 2 + 1e-7  # round-to-nearest
        assert torch.allclose(model(x), clean, atol=0.02)
    assert model.a is a and model.b is b
    assert_same(snapshot(model), before)
    assert torch.equal(model(x), clean)


def test_quantized_conv1d_keeps_orientation():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(12, 6))  # weight (in=6, out=12)
    x = torch.randn(2, 6)
    clean = model(x)
    with quantize_int8(model):
        q = model[0]
        assert q.channel_axis == 1 and q.weight.shape == (6, 12) and q.scale.shape == (12,)
        assert torch.allclose(model(x), clean, atol=0.02)


def test_quantize_bad_input():
    model = make_model()
    with pytest.raises(HarnessError, match=r"unknown module 'c' in Tiny"):
        quantize_int8(model, ["c"])
    model.e = nn.Embedding(3, 4)
    with pytest.raises(HarnessError, match=r"e is Embedding; only nn.Linear and Conv1D can be quantized"):
        quantize_int8(model, ["e"])
    with pytest.raises(HarnessError, match=r"unknown quantization backend 'bnb'; allowed: int8, torch"):
        quantize_int8(model, backend="bnb")
    assert math.isfinite(float(make_model()(torch.zeros(1, 8)).sum()))
