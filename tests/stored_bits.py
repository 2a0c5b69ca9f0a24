"""Shared by the fault and perturbation tests: every parameter's and buffer's stored bits, and their comparison."""

from __future__ import annotations

import numpy as np
from torch import nn

from harness.faults import layout

UNSIGNED = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}  # stored width -> numpy's unsigned type


def snapshot(model: nn.Module) -> dict[str, np.ndarray]:
    """Stored bits of every parameter and buffer, as unsigned numpy integers."""
    out = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        lay = layout(t.dtype)
        out[name] = t.detach().cpu().view(lay.int_dtype).numpy().view(UNSIGNED[lay.width]).copy()
    return out


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """The same tensors with the same bits."""
    assert a.keys() == b.keys()
    for name, value in a.items():
        np.testing.assert_array_equal(value, b[name], err_msg=name)
