"""Cheap exact-change detection for model parameters and buffers.

A fingerprint holds, per tensor, a position-sensitive checksum of its stored bytes, so that two
opposite leaks (``+d`` at one element, ``-d`` at another, which a plain sum cannot see) never cancel:

- CPU tensors: CRC-32 of the bytes (one pass, no copy; zlib-ng's kernel where the ``zlib-ng`` package is installed,
  else zlib's: the same polynomial, so the same values, :data:`CRC32`). CRC-32 sees every change of one or
  two bits anywhere in a tensor of up to 512 MB, every burst of up to 32 bits, and misses any other
  change (two opposite multi-bit leaks included) only with probability 2^-32; unlike a sum, it
  depends on where each byte is.
- other devices (no zlib there): four sums over the bytes read as int64 words ``w_i`` with
  ``h_i = w_i >> 32`` (the upper halves, exact): ``sum w``, ``sum i w`` (mod 2^64), ``sum h``,
  ``sum i h``. A change of one or two words is always seen: the low halves move ``sum i w`` by
  ``d (i - j)`` with ``0 < |d| < 2^32`` whenever the low bits changed, and ``sum i h`` likewise when
  only upper bits changed. Computed on the device, without an index tensor.

Tensors are checksummed in parallel (``torch.get_num_threads()`` threads, at most 8). Measured on
smollm2-135m (134.5M fp32 weights, 538 MB) on this project's 2-core CPU machine, idle: with zlib-ng
(2026-12-07) 0.048-0.053 s per fingerprint on 2 threads, 0.064-0.067 s on one (7 calls each; one slow
call of 0.095 s); with zlib (2026-12-02) 0.102-0.128 s on 2 threads, and 0.72-0.83 s under load 19
(2 cores shared with ~18 busy processes), where the former int64 sums took 2.5-11 s.
"""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor

import torch

try:  # zlib-ng's CRC-32 (PCLMUL / AVX-512 folding): zlib's values at 8.2 GB/s against zlib's 2.2 GB/s on this machine
    from zlib_ng.zlib_ng import crc32 as CRC32
except ImportError:  # pragma: no cover - zlib-ng is a dependency; a bare install still gets the same checksums
    CRC32 = zlib.crc32

_COLS = 4096  # words per row of the (R, C) view of the device path


def _stored(t: torch.Tensor) -> torch.Tensor:
    """The tensor's stored bytes as a flat contiguous uint8 view (no copy for contiguous tensors)."""
    t = t.detach()
    if t.is_quantized:
        t = t.int_repr()
    return t.contiguous().reshape(-1).view(torch.uint8)


def word_sums(t: torch.Tensor) -> tuple[int, ...]:
    """The device path's four word sums of ``t``'s stored bytes: the same integers on every device (the weights'
    identity, :mod:`harness.models.identity`, uses them so that a CPU and a GPU run of one model agree)."""
    return _device_sums(_stored(t))


def _crc(data: torch.Tensor) -> tuple[int, ...]:
    return (CRC32(memoryview(data.numpy())), data.numel())


def _device_sums(data: torch.Tensor) -> tuple[int, ...]:
    """(sum w, sum i w, sum h, sum i h) over int64 words w (zero-padded) and their upper halves h."""
    pad = -data.numel() % 8
    if pad:
        data = torch.cat([data, data.new_zeros(pad)])
    words = data.view(torch.int64)  # (n,)
    n = words.numel()
    rows = -(-n // _COLS)
    if rows * _COLS != n:
        words = torch.cat([words, words.new_zeros(rows * _COLS - n)])
    out = []
    r = torch.arange(rows, dtype=torch.int64, device=words.device)
    c = torch.arange(_COLS, dtype=torch.int64, device=words.device)
    for block in (words.view(rows, _COLS), (words >> 32).view(rows, _COLS)):
        row_sums, col_sums = block.sum(dim=1), block.sum(dim=0)  # (R,), (C,)
        out += [row_sums.sum(), _COLS * (r * row_sums).sum() + (c * col_sums).sum()]  # int64 wraps mod 2^64
    return (*(int(v) for v in out), data.numel())


def _tensor_sums(t: torch.Tensor) -> tuple[int, ...]:
    data = _stored(t)
    return _crc(data) if data.device.type == "cpu" else _device_sums(data)


def fingerprint(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Per-tensor checksum (module docstring) of the stored bytes of every parameter and buffer.

    Tied parameters (``lm_head.weight`` sharing ``embed_tokens.weight``) appear once, under the
    first name ``named_parameters`` gives. A tensor a device map offloaded counts by the value its
    accelerate hook holds in CPU memory; one offloaded to disk is left out (nothing can edit it there).
    """
    from harness.faults.storage import offloaded_value

    tensors = dict(model.named_parameters(remove_duplicate=True))
    tensors.update(model.named_buffers(remove_duplicate=True))
    for name in [n for n, t in tensors.items() if t.is_meta]:
        value = offloaded_value(model, name)
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
    workers = max(1, min(8, torch.get_num_threads()))
    if workers == 1 or len(tensors) < 2:
        return {name: _tensor_sums(t) for name, t in tensors.items()}
    with ThreadPoolExecutor(workers) as pool:  # zlib.crc32 releases the GIL on large buffers
        return dict(zip(tensors, pool.map(_tensor_sums, tensors.values()), strict=True))


def changed(before: dict[str, tuple[int, ...]], after: dict[str, tuple[int, ...]]) -> list[str]:
    """Names of tensors whose fingerprint differs, or that appeared or disappeared."""
    return sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
