"""The guard's fingerprint: position-sensitive (opposite leaks never cancel), tied weights once."""

from __future__ import annotations

import pytest
import torch

from harness.fingerprint import _device_sums, _stored, _tensor_sums, changed, fingerprint
from harness.models import build_tiny

INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("delta_bit", [0, 7, "top"])
def test_two_opposite_leaks_never_cancel(dtype, delta_bit):
    t = torch.randn(3 * 4096 + 5, generator=torch.Generator().manual_seed(0)).to(dtype)
    codes = t.view(INT[t.element_size()])
    bit = 8 * t.element_size() - 1 if delta_bit == "top" else delta_bit
    for i, j in [(2, 4), (2, 9), (0, 4096), (1, 3 * 4096 + 3)]:
        leaked = codes.clone()
        leaked[i] ^= 1 << bit if bit < 8 * t.element_size() - 1 else -(1 << bit)
        leaked[j] ^= 1 << bit if bit < 8 * t.element_size() - 1 else -(1 << bit)
        assert _tensor_sums(leaked.view(dtype)) != _tensor_sums(t)
        assert _device_sums(_stored(leaked.view(dtype))) != _device_sums(_stored(t))


def test_fingerprint_names_tied_parameters_once_and_sees_a_leak():
    model = build_tiny("llama")
    model.lm_head.weight = model.model.embed_tokens.weight
    before = fingerprint(model)
    assert "lm_head.weight" not in before and "model.embed_tokens.weight" in before
    with torch.no_grad():
        model.lm_head.weight[3, 5] += 1.0
    assert changed(before, fingerprint(model)) == ["model.embed_tokens.weight"]


def test_crc32_is_zlibs_whichever_kernel_computes_it():
    """zlib-ng's CRC-32 (the fast kernel) gives zlib's values: fingerprints and the checksum detector's references
    are the same numbers with or without it, at every length and alignment."""
    import zlib

    from harness.fingerprint import CRC32

    data = torch.randint(0, 256, (3 * 2**20 + 7,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    for lo, hi in [(0, 0), (0, 1), (3, 64), (1, 2**20 + 5), (0, data.numel())]:
        view = memoryview(data[lo:hi].numpy())
        assert CRC32(view) == zlib.crc32(view)
