"""Where a bit-flip campaign's trial puts its flips: the site sampler of each target.

Targets: ``uniform`` (uniform over the decoder blocks' linear weights), ``largest`` (among the ``POOL``
largest-|w| of those weights), ``list`` (a given list of sites: the detected super weights, or where none is
detected the detector's strongest candidate, ``harness.recipes.super_weight_sites``). Positions are drawn before
bits, so trial t hits the same weights in every bit class of a target (a paired design).

The uniform target's sampler (its regions and their sizes) is made once per model (:func:`uniform_sampler`),
not per trial: with smollm2-135m's 210 linear weights, finding them and their sizes again cost about 20 ms
of host time per trial.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch

from harness.errors import HarnessError
from harness.faults import FaultSite, distinct_positions, target_sites, top_magnitude_sites
from harness.faults.samplers import UniformSampler
from harness.models.archmap import select

TARGETS = ("uniform", "largest", "list")
POOL = 64  # candidates of the largest target

_UNIFORM: weakref.WeakKeyDictionary[torch.nn.Module, UniformSampler] = weakref.WeakKeyDictionary()


def uniform_sampler(model: torch.nn.Module) -> UniformSampler:
    """The ``uniform`` target's sampler of ``model`` (the decoder blocks' linear weights), made on first use and
    kept while the model lives."""
    sampler = _UNIFORM.get(model)
    if sampler is None:
        sampler = _UNIFORM[model] = UniformSampler(model, select(model, components="linear"))
    return sampler


def site_pool(model: torch.nn.Module, target: str, listed: Sequence[FaultSite] | None = None,
              listed_source: str = "list") -> tuple[list[FaultSite] | None, str]:
    """(candidate sites, where they come from) of ``target``; the uniform target has no pool (None).

    Args:
        model: the model.
        target: one of ``TARGETS``.
        listed: the ``list`` target's sites (``harness.recipes.super_weight_sites``).
        listed_source: how ``listed`` is named in the records (``super_weights:<id>``).

    Raises:
        HarnessError: an unknown target, or the ``list`` target without sites.
    """
    if target == "uniform":
        return None, "uniform_linear"
    if target == "largest":
        return top_magnitude_sites(model, select(model, components="linear"), POOL), f"top{POOL}_abs_linear"
    if target == "list":
        if not listed:
            raise HarnessError("the list target needs its sites (harness.recipes.super_weight_sites: the super "
                               "weights, or the detector's candidate where none is detected)")
        return list(listed), listed_source
    raise HarnessError(f"unknown bit-flip target {target!r}; allowed: {', '.join(TARGETS)}")


def sample_sites(model: torch.nn.Module, target: str, bit_class: str, n: int, *, generator: torch.Generator,
                 pool: Sequence[FaultSite] | None) -> list[FaultSite]:
    """``n`` flip sites of ``target`` with bits of ``bit_class`` (at most the pool's size for a pooled target)."""
    if target == "uniform":
        return uniform_sampler(model).draw(n, generator=generator, bits=bit_class)
    if not pool:
        raise HarnessError(f"target {target!r} needs a site pool (site_pool)")
    picks = distinct_positions(len(pool), min(n, len(pool)), generator).tolist()
    return target_sites(model, [pool[i] for i in picks], bits=bit_class, generator=generator)
