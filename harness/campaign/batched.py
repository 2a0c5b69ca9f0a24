"""Batched weight faults: B bit-flip trials in one forward, each batch element with its own fault.

Changing ``W[i, j]`` of a linear layer by ``delta`` changes its output exactly by ``delta * x[..., j]``
in row ``i``. So the B trials share one forward over the windows repeated B times, with the clean
weights; a forward hook on every faulted linear layer adds ``delta_k * x[k-th copy, :, j]`` to output
``i`` of trial k's copy. ``delta`` is the flipped stored value minus the clean one (read while the flip is
applied and restored at once), so a non-finite flipped weight gives a non-finite output, as in the
per-trial path. The values agree with the per-trial path up to the rounding of the matmul (the
correction is added after it instead of being inside it): tests/test_campaign.py compares every
element; records that must equal the per-trial path bit for bit use the per-trial path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from harness.faults.injector import BitFlip

Correction = tuple[int, int, int, float]  # (trial k, output row i, input column j, delta)


def batchable(flip: object, model: torch.nn.Module) -> bool:
    """True when ``flip`` is a bit flip whose sites all lie in 2-D weights of ``nn.Linear`` layers."""
    if type(flip) is not BitFlip:
        return False
    for site in flip.sites:
        module_name, _, leaf = site.param.rpartition(".")
        if leaf != "weight" or len(site.index) != 2:
            return False
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            return False
        if not isinstance(module, torch.nn.Linear):
            return False
    return True


def corrections(model: torch.nn.Module, flips: Sequence[BitFlip]) -> dict[str, list[Correction]]:
    """Per faulted module path, the (trial, row, column, delta) of every changed weight.

    Each flip is applied and restored (bit-exactly) once to read its flipped values.
    """
    out: dict[str, list[Correction]] = {}
    for k, flip in enumerate(flips):
        with flip:
            changes = flip.value_changes()
        for change in changes:
            param = change["param"]
            cols = model.get_parameter(param).shape[1]
            i, j = divmod(change["flat_index"], cols)
            delta = change["after"] - change["before"]  # python floats: inf/nan when the flip makes them
            out.setdefault(param.rpartition(".")[0], []).append((k, i, j, delta))
    return out


@contextmanager
def corrected(model: torch.nn.Module, fixes: dict[str, list[Correction]], copies: int) -> Iterator[None]:
    """Within the block, each faulted linear layer's output gets its per-trial corrections; the input is
    ``copies`` trials of equal window batches stacked along dim 0. Hooks are removed in ``finally``."""
    handles = []

    def hook_for(items: list[Correction]):
        def hook(_module, args, output):
            x = args[0]  # (copies * W, T, in)
            per = x.shape[0] // copies
            for k, i, j, delta in items:
                rows = slice(k * per, (k + 1) * per)
                output[rows, ..., i] += (x[rows, ..., j].float() * delta).to(output.dtype)
        return hook

    try:
        for path, items in fixes.items():
            handles.append(model.get_submodule(path).register_forward_hook(hook_for(items)))
        yield
    finally:
        for h in handles:
            h.remove()
