"""``progressive``: the Bit-Flip Attack's progressive bit search (Rakin et al. 2019) adapted to LLMs.

Each iteration:

1. one forward+backward pass of the attack loss gives every target matrix's weight gradient ``g``
   (for int8 codes, the gradient with respect to the codes);
2. within each matrix the ``pool`` elements with the largest first-order sensitivity
   (``|g * w|`` for float weights, ``|g|`` for int8 codes) are expanded into every candidate bit,
   and each (element, bit) gets the first-order loss gain ``g * (flipped value - value)`` (``inf``
   when the flipped value is not finite);
3. the best ``per_layer`` candidates of each decoder layer are tried for real (flip, defense
   repair, loss on the attack windows, undo), at most ``max_trials`` of them by estimated gain
   (a candidate the defense undoes costs no pass and is replaced by the next of its layer);
4. the single flip that raised the loss most is committed, and perplexity on the evaluation windows
   is measured.

It repeats until collapse (perplexity x10 or non-finite) or the flip budget. The attacker adapts
to a defense: against a clamp it ranks flips by the gain of the clamped value (the ranges are the
weights' own min/max, which a white-box attacker sees), and a trial whose flip the defense undid
completely (a checksum) marks that element as off-limits for the rest of the attack. Elements
already flipped are not flipped again.

Cost per flip: one forward+backward pass of the attack windows, up to ``max_trials`` forward
passes of them, and one forward pass of the evaluation windows.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from harness.attacks.base import AttackSession, Target, attack
from harness.attacks.gradients import weight_gradients
from harness.errors import HarnessError
from harness.faults import FaultSite, layout, resolve_bits, stored_bits

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel

log = logging.getLogger(__name__)

RESERVE = 8  # candidates kept per matrix beyond per_layer, to replace ones a defense undoes


@dataclass(frozen=True)
class Candidate:
    """One (element, bit) flip and its first-order loss gain."""

    gain: float
    param: str
    flat: int
    bit: int
    layer: int = -1


def flip_gains(w: torch.Tensor, grad: torch.Tensor, bits: tuple[int, ...], *, pool: int,
               exclude: torch.Tensor | None = None,
               bounds: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """First-order loss gains of flipping each of ``bits`` in the ``pool`` most sensitive elements.

    Args:
        w: the stored weight (float32/float16/bfloat16 values or int8 codes).
        grad: float32 gradient of the loss with respect to ``w``'s stored elements, same shape.
        bits: bit positions to consider.
        pool: number of elements to expand (by ``|g * w|``, or ``|g|`` for int8; with ``bounds``
            by ``|g| * (|w| + max(|lo|, |hi|))``, the most a clamped flip can move).
        exclude: flat indices never to choose.
        bounds: (lo, hi) a defense clamps the flipped value to (NaN becomes 0); the gain is that
            of the clamped value.

    Returns:
        (elems (P,), gains (P, len(bits)) float64); ``inf`` where the flipped value is not finite
        (and not clamped).
    """
    lay = layout(w.dtype)
    flat_w = w.detach().reshape(-1)
    g = grad.reshape(-1).to(flat_w.device)
    if w.dtype == torch.int8:
        proxy = g.abs()
    elif bounds is not None:
        proxy = g.abs() * (flat_w.float().abs() + max(abs(bounds[0]), abs(bounds[1])))
    else:
        proxy = (g * flat_w.float()).abs()
    proxy = torch.nan_to_num(proxy, nan=0.0, posinf=0.0)
    if exclude is not None and len(exclude):
        proxy[exclude.to(proxy.device)] = -1.0
    elems = proxy.topk(min(pool, proxy.numel())).indices  # (P,)
    elems = elems[proxy[elems] >= 0]
    codes = flat_w.view(lay.int_dtype)[elems]  # (P,)
    masks = torch.tensor([(1 << b) - (1 << lay.width if b == lay.width - 1 else 0) for b in bits],
                         dtype=lay.int_dtype, device=codes.device)  # signed masks, (B,)
    new = codes[:, None] ^ masks[None, :]  # (P, B) stored codes after the flip
    old = (codes if w.dtype == torch.int8 else flat_w[elems]).to(torch.float64)[:, None]  # (P, 1)
    new_values = (new if w.dtype == torch.int8 else new.view(w.dtype)).to(torch.float64)  # (P, B)
    if bounds is not None:
        new_values = torch.nan_to_num(new_values, nan=0.0).clamp(bounds[0], bounds[1])
    finite = torch.isfinite(new_values)
    gains = g[elems].to(torch.float64)[:, None] * (new_values - old)
    gains = torch.where(finite, torch.nan_to_num(gains, nan=0.0), torch.full_like(gains, math.inf))
    return elems, gains


def rank_flips(model: torch.nn.Module, targets: list[Target], windows: torch.Tensor,
               bits_of: dict[str, tuple[int, ...]], *, pool: int, keep: int,
               off_limits: dict[str, set[int]] | None = None,
               bounds_of: dict[str, tuple[float, float]] | None = None) -> tuple[float, dict[int, list[Candidate]]]:
    """Gradient of the loss on ``windows``, then the ``keep`` best flips of each matrix by first-order gain.

    Args:
        model: the (attacked) model.
        targets: matrices to rank.
        windows: (B, T) attack tokens.
        bits_of: candidate bits per parameter.
        pool: elements expanded into bits per matrix (see :func:`flip_gains`).
        keep: candidates kept per matrix (only positive gains).
        off_limits: flat elements per parameter never to choose.
        bounds_of: per parameter, the (lo, hi) a clamping defense enforces (see :func:`flip_gains`).

    Returns:
        (loss, {layer: candidates of all its matrices}).

    Cost: one forward and one backward pass over ``windows``; the ranking holds one matrix's
    gradient at a time.
    """
    layer_of = {t.param: t.layer for t in targets}
    by_layer: dict[int, list[Candidate]] = {}

    def on_grad(param: str, grad: torch.Tensor) -> None:
        skip = (off_limits or {}).get(param)
        exclude = torch.tensor(sorted(skip), dtype=torch.long) if skip else None
        bounds = (bounds_of or {}).get(param)
        elems, gains = flip_gains(model.get_parameter(param), grad, bits_of[param], pool=pool, exclude=exclude,
                                  bounds=bounds)
        top = gains.reshape(-1).topk(min(keep, gains.numel()))
        found = by_layer.setdefault(layer_of[param], [])
        for gain, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            if gain > 0:
                found.append(Candidate(gain, param, int(elems[i // gains.shape[1]]),
                                       bits_of[param][i % gains.shape[1]], layer_of[param]))

    loss = weight_gradients(model, [(t.module, t.param) for t in targets], windows, on_grad)
    return loss, by_layer


@attack("progressive")
def progressive(session: AttackSession, *, loaded: LoadedModel = None, bits: Any = "any", per_layer: int = 1,
                pool: int = 32, max_trials: int | None = None) -> dict[str, Any]:
    """Progressive bit search (see the module docstring).

    Options:
        bits: candidate bits, a bit-class name or positions (default ``any``: every stored bit).
        per_layer: candidates tried per decoder layer and iteration (default 1).
        pool: most sensitive elements per matrix expanded into bits (default 32).
        max_trials: most trial forward passes per iteration (default: one per layer x per_layer).
    """
    if per_layer < 1 or pool < 1 or (max_trials is not None and max_trials < 1):
        raise HarnessError(f"progressive needs per_layer, pool and max_trials >= 1, got "
                           f"per_layer={per_layer}, pool={pool}, max_trials={max_trials}")
    model = session.model
    bits_of = {t.param: resolve_bits(bits, session.dtype_of(t.param)) for t in session.targets}
    off_limits: dict[str, set[int]] = {}  # flipped or fully repaired elements per param
    trials_total, undone, iterations = 0, 0, 0
    while not session.done:
        iterations += 1
        loss, by_layer = rank_flips(model, session.targets, session.attack_windows, bits_of, pool=pool,
                                    keep=per_layer * RESERVE, off_limits=off_limits, bounds_of=session.bounds())
        session.forwards += 1
        queues = {layer: sorted(found, key=lambda c: -c.gain) for layer, found in by_layer.items()}
        # the best per_layer of each layer, best first; a candidate the defense undid is replaced by
        # the next one of its layer
        todo = sorted((c for q in queues.values() for c in q[:per_layer]), key=lambda c: -c.gain)
        todo = todo[:max_trials] if max_trials is not None else todo
        if not todo:
            log.warning("progressive: no flip raises the loss to first order (loss %.4g); stopped after %d flips",
                        loss, len(session.flips))
            break
        taken = {layer: per_layer for layer in queues}
        best, best_loss = None, -math.inf
        while todo:
            c = todo.pop(0)
            if c.flat in off_limits.get(c.param, ()):
                continue
            site = _site(model, c)
            trial, neutralized = _trial(session, site)
            trials_total += not neutralized
            undone += neutralized
            if neutralized:
                off_limits.setdefault(c.param, set()).add(c.flat)
                if taken[c.layer] < len(queues[c.layer]):
                    todo.append(queues[c.layer][taken[c.layer]])
                    taken[c.layer] += 1
                continue
            if not math.isfinite(trial):  # the output went non-finite: nothing beats that
                best, best_loss = site, math.inf
                break
            if trial > best_loss:
                best, best_loss = site, trial
        if best is None:
            log.info("progressive: every candidate of this round was undone by the defense; searching again")
            continue
        session.commit(best)
        off_limits.setdefault(best.param, set()).add(_flat(model, best))
    return {"iterations": iterations, "trials": trials_total, "undone_trials": undone, "per_layer": per_layer,
            "pool": pool, "max_trials": max_trials, "bits": bits if isinstance(bits, str) else list(bits)}


def _site(model: torch.nn.Module, c: Candidate) -> FaultSite:
    shape = model.get_parameter(c.param).shape
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(c.flat), shape))
    return FaultSite(c.param, index, (c.bit,))


def _flat(model: torch.nn.Module, site: FaultSite) -> int:
    shape = model.get_parameter(site.param).shape
    return sum(i * math.prod(shape[d + 1:]) for d, i in enumerate(site.index))


def _trial(session: AttackSession, site: FaultSite) -> tuple[float, bool]:
    """(trial loss, whether the defense put the element back exactly).

    A flip the defense undid leaves the model as it was, so its loss is not measured (NaN): the
    attacker learns it had no effect without a pass.
    """
    store = stored_bits(session.model, site.param)
    elem = torch.tensor([_flat(session.model, site)], device=store.device)
    before = store.read(elem)
    with session.trying(site):
        if bool((store.read(elem) == before).all()):
            return math.nan, True
        return session.loss(), False
