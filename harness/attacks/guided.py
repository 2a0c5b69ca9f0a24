"""``guided``: flip exponent bits of the detected super weights and of their neighbours.

Super weights come from the shared super-weight detector (:mod:`harness.scoring.superweights`,
Yu et al. 2024): pass the session's ``Detection`` (or its sites) as ``super_weights``; otherwise the
model is scanned with the detector's defaults. The flip order is: the strongest super weight, then its
``neighbours`` largest-magnitude neighbours (the other weights of the same down-projection input
channel, which read the same massive activation), then the next super weight and its neighbours;
when the list is spent and budget is left, further neighbours round-robin.

Bit per target (``bit``):

- ``exp_msb`` (default): the exponent MSB. A weight with ``|w| < 2`` grows by 2^128 (fp32/bf16) or
  2^16 (fp16); one with ``|w| >= 2`` shrinks to about 0, which is what zeroing a super weight does.
- ``shrink``: the highest set exponent bit, so every target shrinks to about 0 (what survives a
  clamp-to-range defense).

For int8 codes both modes flip bit 7 (the two's-complement sign bit): a code of +-127 becomes -+1
(about 0) and a small code moves by 128 steps.

Cost per flip: one forward pass of the evaluation windows; detection (when not given) adds one
forward pass of the detector's prompt.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from harness.attacks.base import AttackSession, attack
from harness.errors import HarnessError
from harness.faults import FaultSite, layout

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel

log = logging.getLogger(__name__)

BIT_MODES = ("exp_msb", "shrink")


def detect_super_weights(source: Any, count: int = 4, max_rounds: int | None = None) -> tuple[list[FaultSite], str]:
    """Up to ``count`` super weights, strongest first, and where they come from.

    Args:
        source: a ``Detection`` (the shared one; preferred), or a model / ``LoadedModel`` to scan
            with the detector's defaults.
        count: most sites returned.
        max_rounds: detector rounds when scanning (default: the detector's).

    Where the detection holds no site (tiny random models), the detector's strongest candidate stands in
    (``harness.recipes.super_weight_sites``, the one no-super-weight fallback).

    Returns:
        (sites, source): source is ``detection:<id>`` or ``candidate:<id>`` (the fallback).
    """
    from harness.recipes import super_weight_sites
    from harness.scoring.superweights import ROUNDS, Detection, detect

    detection = source if isinstance(source, Detection) else detect(source, rounds=max_rounds or ROUNDS)
    sites, found = super_weight_sites(detection)
    if found != "super_weights":
        log.warning("guided: no super weight detected; starting from the detector's strongest candidate")
    return sites[:count], f"{'detection' if found == 'super_weights' else found}:{detection.id}"


def guided_bit(value_codes: torch.Tensor, dtype: torch.dtype, mode: str) -> int:
    """The bit to flip at one element (``value_codes``: its stored code, a 0-d int tensor)."""
    lay = layout(dtype)
    if dtype == torch.int8:
        return lay.width - 1
    if mode == "exp_msb":
        return lay.exponent[-1]
    code = int(value_codes) & ((1 << lay.width) - 1)
    set_bits = [b for b in lay.exponent if code >> b & 1]
    return set_bits[-1] if set_bits else lay.exponent[-1]


def _targets(model: torch.nn.Module, supers: list[FaultSite], neighbours: int, budget: int) -> list[tuple[int, ...]]:
    """(super weight number, row, col) in flip order: each super weight, then its neighbours."""
    columns = []
    for s in supers:
        w = model.get_parameter(s.param).detach()
        col = w[:, s.index[1]].float().abs()  # (rows,)
        col[s.index[0]] = -1.0
        order = col.argsort(descending=True)[: budget].tolist()
        columns.append([r for r in order if r != s.index[0]])
    plan: dict[tuple[str, int, int], tuple[int, int, int]] = {}  # element -> (super, row, col), in order

    def add(i: int, row: int, col: int) -> None:  # super weights sharing a column are each other's neighbours
        plan.setdefault((supers[i].param, row, col), (i, row, col))

    for i, s in enumerate(supers):
        add(i, *s.index)
        for r in columns[i][:neighbours]:
            add(i, r, s.index[1])
    depth = neighbours
    while len(plan) < budget and any(len(c) > depth for c in columns):
        for i, c in enumerate(columns):
            if len(c) > depth:
                add(i, c[depth], supers[i].index[1])
        depth += 1
    return list(plan.values())[:budget]


@attack("guided")
def guided(session: AttackSession, *, loaded: LoadedModel = None, super_weights: Any = None,
           count: int = 4, neighbours: int = 2, bit: str = "exp_msb", max_rounds: int | None = None) -> dict[str, Any]:
    """Super-weight-guided exponent flips (see the module docstring).

    Options:
        super_weights: the shared ``Detection``, or the super weights as 2-d sites of target
            matrices, strongest first; default: detected now with the detector's defaults.
        count: super weights to use (default 4).
        neighbours: neighbours flipped after each super weight before moving on (default 2).
        bit: ``exp_msb`` or ``shrink``.
        max_rounds: detector rounds when detecting here (default: the detector's).
    """
    if bit not in BIT_MODES:
        raise HarnessError(f"guided bit mode {bit!r} is unknown; use one of {', '.join(BIT_MODES)}")
    model = session.model
    params = {t.param for t in session.targets}
    source = "given"
    if super_weights is None or not isinstance(super_weights, (list, tuple)):
        super_weights, source = detect_super_weights(
            super_weights if super_weights is not None else (loaded if loaded is not None else model),
            count=count, max_rounds=max_rounds)
    supers = [s for s in super_weights if s.param in params and len(s.index) == 2][:count]
    if not supers:
        raise HarnessError("guided attack found no super weight among its target matrices; pass super_weights= "
                           "or include mlp_down in components")
    for i, row, col in _targets(model, supers, neighbours, session.budget):
        if session.done:
            break
        param = supers[i].param
        w = model.get_parameter(param).detach()
        code = w[row, col].view(layout(w.dtype).int_dtype)
        session.commit(FaultSite(param, (row, col), (guided_bit(code, w.dtype, bit),)))
    return {"super_weights": [s.to_dict() for s in supers], "source": source, "neighbours": neighbours, "bit": bit}
