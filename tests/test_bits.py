"""Property tests of stored-bit flips on plain tensors (``flip_tensor_bits``), checked against
numpy's integer view of the same bits, per dtype."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import HarnessError, UnknownNameError
from harness.faults import bit_class, check_bits, flip_tensor_bits, layout, resolve_bits
from harness.faults.bits import combine_flips

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
UNSIGNED = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}
SIGNED = {8: np.int8, 16: np.int16, 32: np.int32, 64: np.int64}
FAST = settings(max_examples=30, deadline=None)


def from_codes(codes: list[int], dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    """A tensor of ``dtype`` whose stored bits are the given unsigned integer codes."""
    lay = layout(dtype)
    arr = np.array(codes, dtype=UNSIGNED[lay.width]).view(SIGNED[lay.width])
    return torch.from_numpy(arr).view(dtype).to(device)


def bits_np(t: torch.Tensor) -> np.ndarray:
    """numpy's unsigned integer view of the stored bits."""
    lay = layout(t.dtype)
    return t.detach().cpu().view(lay.int_dtype).numpy().view(UNSIGNED[lay.width])


@st.composite
def flip_case(draw, dtype: torch.dtype):
    """(tensor codes, flat indices, per-index bit tuples) for one dtype; repeats allowed."""
    width = layout(dtype).width
    codes = draw(st.lists(st.integers(0, 2**width - 1), min_size=1, max_size=48))
    k = draw(st.integers(1, 12))
    idx = draw(st.lists(st.integers(0, len(codes) - 1), min_size=k, max_size=k))
    one = st.lists(st.integers(0, width - 1), min_size=1, max_size=3).map(tuple)
    bits = draw(st.lists(one, min_size=k, max_size=k))
    return codes, idx, bits


def expected_codes(codes: list[int], idx: list[int], bits: list[tuple[int, ...]], width: int) -> np.ndarray:
    exp = np.array(codes, dtype=UNSIGNED[width])
    for i, bs in zip(idx, bits, strict=True):
        for b in bs:
            exp[i] ^= UNSIGNED[width](1 << b)
    return exp


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@FAST
@given(data=st.data())
def test_exactly_the_requested_bits_change(dtype, device, data):
    codes, idx, bits = data.draw(flip_case(dtype))
    t = from_codes(codes, dtype, device)
    before = bits_np(t).copy()
    out = flip_tensor_bits(t, idx, bits)
    assert out.dtype == dtype and out.shape == t.shape and out.device == t.device
    np.testing.assert_array_equal(bits_np(out), expected_codes(codes, idx, bits, layout(dtype).width))
    np.testing.assert_array_equal(bits_np(t), before)  # pure: the input is untouched


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@FAST
@given(data=st.data())
def test_flip_twice_is_identity(dtype, data):
    codes, idx, bits = data.draw(flip_case(dtype))
    t = from_codes(codes, dtype).reshape(-1, 1)  # 2-d: flat indices are row-major
    twice = flip_tensor_bits(flip_tensor_bits(t, idx, bits), idx, bits)
    np.testing.assert_array_equal(bits_np(twice), bits_np(t))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@FAST
@given(data=st.data())
def test_sign_bit_negates_floats(dtype, data):
    width = layout(dtype).width
    codes = data.draw(st.lists(st.integers(0, 2**width - 1), min_size=1, max_size=48))
    t = from_codes(codes, dtype)
    sign = bit_class("sign", dtype)[0]
    out = flip_tensor_bits(t, range(t.numel()), sign)
    np.testing.assert_array_equal(bits_np(out), bits_np(t) ^ UNSIGNED[width](1 << sign))
    assert torch.equal(torch.signbit(out), ~torch.signbit(t))
    finite = ~torch.isnan(t)
    assert torch.equal(out[finite].float(), -t[finite].float())


@FAST
@given(values=st.lists(st.integers(-128, 127), min_size=1, max_size=64))
def test_int8_sign_bit_is_xor_minus_128(values):
    t = torch.tensor(values, dtype=torch.int8)
    out = flip_tensor_bits(t, range(len(values)), 7)
    np.testing.assert_array_equal(out.numpy(), np.array(values, dtype=np.int8) ^ np.int8(-128))


@FAST
@given(data=st.data())
def test_torch_quantized_tensor_flips_int_repr(data):
    warnings.filterwarnings("ignore", category=UserWarning)
    rows = data.draw(st.integers(1, 4))
    w = torch.randn(rows, 5, generator=torch.Generator().manual_seed(rows))
    scales = w.abs().amax(1) / 127
    q = torch.quantize_per_channel(w, scales, torch.zeros(rows, dtype=torch.long), 0, torch.qint8)
    idx = data.draw(st.lists(st.integers(0, q.numel() - 1), min_size=1, max_size=6))
    bit = data.draw(st.integers(0, 7))
    out = flip_tensor_bits(q, idx, bit)
    assert out.is_quantized and torch.equal(out.q_per_channel_scales(), q.q_per_channel_scales())
    codes = q.int_repr().reshape(-1).tolist()
    exp = expected_codes([c & 0xFF for c in codes], idx, [(bit,)] * len(idx), 8)
    np.testing.assert_array_equal(out.int_repr().reshape(-1).numpy().view(np.uint8), exp)


def test_bit_classes_per_dtype():
    table = {
        torch.float32: (31, (23, 30), (0, 22)),
        torch.float16: (15, (10, 14), (0, 9)),
        torch.bfloat16: (15, (7, 14), (0, 6)),
    }
    for dtype, (sign, (e0, e1), (m0, m1)) in table.items():
        assert bit_class("sign", dtype) == (sign,)
        assert bit_class("exp_msb", dtype) == (e1,)
        assert bit_class("exponent", dtype) == tuple(range(e0, e1 + 1))
        assert bit_class("mantissa_msb", dtype) == (m1,)
        assert bit_class("mantissa_lsb", dtype) == (m0,)
        assert bit_class("mantissa", dtype) == tuple(range(m0, m1 + 1))
        assert bit_class("any", dtype) == tuple(range(sign + 1))
    assert bit_class("sign", torch.int8) == (7,)
    assert bit_class("mantissa_msb", torch.int8) == (6,)
    assert bit_class("mantissa_lsb", torch.int8) == (0,)


def test_sign_class_negates_one_known_value():
    t = torch.tensor([1.5], dtype=torch.bfloat16)
    assert flip_tensor_bits(t, [0], bit_class("sign", torch.bfloat16)).item() == -1.5
    # fp32 1.0 = 0x3F800000; flipping the exponent MSB (bit 30) gives 0x7F800000 = +inf
    assert flip_tensor_bits(torch.tensor([1.0]), [0], 30).item() == float("inf")


def test_bit_out_of_range_message():
    with pytest.raises(HarnessError, match=r"^bit 40 out of range for torch\.float16 \(0-15\)$"):
        flip_tensor_bits(torch.zeros(3, dtype=torch.float16), [0], 40)
    with pytest.raises(HarnessError, match=r"bit -1 out of range for torch\.int8 \(0-7\)"):
        check_bits([-1], torch.int8)
    with pytest.raises(HarnessError, match=r"bit 32 out of range for torch\.float32 \(0-31\)"):
        resolve_bits([3, 32], torch.float32)


def test_bad_input_messages():
    with pytest.raises(HarnessError, match=r"flat index 3 out of range for a tensor of 3 elements"):
        flip_tensor_bits(torch.zeros(3), [3], 0)
    with pytest.raises(HarnessError, match=r"got 1 bit entries for 2 indices"):
        flip_tensor_bits(torch.zeros(3), [0, 1], [0])
    with pytest.raises(UnknownNameError, match=r"unknown bit class 'exp-msb'. Did you mean 'exp_msb'"):
        bit_class("exp-msb", torch.float32)
    with pytest.raises(HarnessError, match=r"bit class 'exp_msb' is not defined for torch.int8; defined: sign"):
        bit_class("exp_msb", torch.int8)
    with pytest.raises(HarnessError, match=r"no bit layout for torch.bool"):
        layout(torch.bool)
    with pytest.raises(HarnessError, match=r"torch.uint8 has no sign bits|not defined for torch.uint8"):
        bit_class("sign", torch.uint8)


def test_repeated_flip_cancels_and_masks_are_signed():
    elems, masks = combine_flips(torch.tensor([4, 4, 2, 2]), torch.tensor([3, 3, 31, 0]), 32)
    assert elems.tolist() == [2] and masks.tolist() == [-(2**31) + 1]
    _, masks64 = combine_flips(torch.tensor([0]), torch.tensor([63]), 64)
    assert masks64.tolist() == [-(2**63)]


def test_float64_and_noncontiguous():
    t = torch.tensor([1.0, -2.0], dtype=torch.float64)
    assert flip_tensor_bits(t, [1], 63).tolist() == [1.0, 2.0]
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # (4, 3), not contiguous
    out = flip_tensor_bits(base, [1], 31)  # row-major flat 1 = element (0, 1)
    assert out[0, 1].item() == -base[0, 1].item() and torch.equal(out[1:], base[1:])
