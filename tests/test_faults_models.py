"""Perturbations on tiny transformers models addressed through the architecture map: the model's
logits come back bit-identical after every perturbation, fused q/k/v rows are respected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.faults import (
    ablate,
    ablate_layer,
    activation_fault,
    add_noise,
    bit_error_rate,
    flip_bits,
    layout,
    quantize_int8,
    uniform_sites,
)
from harness.models.archmap import select
from harness.models.tiny import build_tiny

UNSIGNED = {8: np.uint8, 16: np.uint16, 32: np.uint32}
TOKENS = torch.tensor([[5, 17, 99, 3, 42, 7, 250, 11]])


def snapshot(model: torch.nn.Module) -> dict[str, np.ndarray]:
    out = {}
    for name, t in model.named_parameters():
        lay = layout(t.dtype)
        out[name] = t.detach().view(lay.int_dtype).numpy().view(UNSIGNED[lay.width]).copy()
    return out


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        np.testing.assert_array_equal(value, b[name], err_msg=name)


@pytest.fixture(scope="module")
def llama():
    return build_tiny("llama").requires_grad_(False)


@pytest.fixture(scope="module")
def neox():
    return build_tiny("gpt-neox").requires_grad_(False)


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_float_flips_noise_ablation_restore_logits_exactly(llama):
    clean, before = logits(llama), snapshot(llama)
    refs = select(llama)
    sites = uniform_sites(llama, refs, 4, generator=gen(), bits="exp_msb")
    with flip_bits(llama, sites):
        assert not torch.equal(logits(llama), clean)
    with add_noise(llama, select(llama, components="mlp"), 0.5, scale="std", generator=gen()):
        assert not torch.equal(logits(llama), clean)
    with ablate_layer(llama, 1) as ab:
        assert all(torch.all(llama.get_parameter(r.param) == 0) for r in select(llama, layers=[1]))
        assert ab.describe()["mode"] == "zero"
    with bit_error_rate(llama, refs, 1e-4, generator=gen()):
        pass
    assert torch.equal(logits(llama), clean)
    assert_same(snapshot(llama), before)


def test_int8_model_flips_codes_and_restores(llama):
    clean, before = logits(llama), snapshot(llama)
    refs = select(llama)
    with quantize_int8(llama, refs):
        q_clean = logits(llama)
        assert torch.allclose(q_clean, clean, atol=0.05)
        assert llama.get_parameter(refs[0].param).dtype == torch.int8  # same names after the swap
        sites = uniform_sites(llama, refs, 8, generator=gen(), bits="sign")
        with flip_bits(llama, sites):
            assert not torch.equal(logits(llama), q_clean)
        assert torch.equal(logits(llama), q_clean)
    assert torch.equal(logits(llama), clean)
    assert_same(snapshot(llama), before)


def test_activation_fault_on_a_decoder_layer(llama):
    clean = logits(llama)
    layer = llama.model.layers[0]
    with pytest.raises(RuntimeError, match="body"):
        with activation_fault(llama, "model.layers.0", "set", 100.0, channels=[3]) as fault:
            assert not torch.equal(logits(llama), clean)
            assert fault.calls == 1
            raise RuntimeError("body")
    assert not layer._forward_hooks
    assert torch.equal(logits(llama), clean)


def test_fused_value_rows_are_respected(neox):
    before = snapshot(neox)
    (value,) = select(neox, layers=[0], components="value")
    assert value.rows is not None
    rows = set(value.rows)
    sites = uniform_sites(neox, [value], 50, generator=gen(), bits="sign")
    assert {s.index[0] for s in sites} <= rows
    with add_noise(neox, [value], 0.1, generator=gen()):
        diff = snapshot(neox)[value.param] != before[value.param]
        touched = set(np.nonzero(diff.any(axis=1))[0].tolist())
        assert touched and touched <= rows
    with ablate(neox, [value], "zero"):
        w = neox.get_parameter(value.param)
        assert torch.all(w[list(value.rows)] == 0)
        others = [r for r in range(w.shape[0]) if r not in rows]
        assert torch.count_nonzero(w[others]) > 0
    assert_same(snapshot(neox), before)
