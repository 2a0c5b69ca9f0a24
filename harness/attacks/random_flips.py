"""``random``: the baseline — uniformly random bit flips with the same budget, seeded.

Sites are drawn with :func:`harness.faults.uniform_sites` (each target matrix hit in proportion to
its size, a uniformly random stored bit per site, no element twice) from the ``generator`` passed
in and applied in draw order until collapse or the budget. Same seed, same flips.

With ``curve=True`` perplexity is measured after every flip. With ``curve=False`` (cheaper, the
suites' default for the baseline) the whole budget is probed first; when it does not collapse the
attack stops there (one evaluation); when it does, the first collapsing prefix is found by
bisection (assuming damage does not shrink as flips are added) and only those flips are committed.
The unmeasured points of the curve are NaN.

Cost: ``curve=True``: one forward pass of the evaluation windows per flip; ``curve=False``: one, or
about ``2 + log2(budget)`` when the budget collapses the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from harness.attacks.base import AttackSession, attack
from harness.errors import HarnessError
from harness.faults import uniform_sites

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel


@attack("random")
def random_flips(session: AttackSession, *, loaded: LoadedModel = None, generator: torch.Generator | None = None,
                 bits: Any = "any", curve: bool = True) -> dict[str, Any]:
    """Random flips (see the module docstring).

    Options:
        generator: a seeded ``torch.Generator`` (required).
        bits: bit class or positions to draw from (default ``any``: every stored bit).
        curve: measure after every flip (default) or only what flips-to-collapse needs.
    """
    if generator is None:
        raise HarnessError("the random attack needs generator= (a seeded torch.Generator)")
    seed = generator.initial_seed()
    sites = uniform_sites(session.model, [t.param for t in session.targets], session.budget,
                          generator=generator, bits=bits)
    extra = {"seed": seed, "bits": bits if isinstance(bits, str) else list(bits), "curve": curve}
    if curve:
        for site in sites:
            if session.done:
                break
            session.commit(site)
        return extra
    everything = session.probe(sites)
    if not session.collapses(everything):
        for site in sites[:-1]:
            session.commit(site, measure=False)
        session.commit(sites[-1], perplexity=everything)
        return extra
    lo, hi, at_hi = 0, len(sites), everything  # prefix lo does not collapse, prefix hi does
    while hi - lo > 1:
        mid = (lo + hi) // 2
        perplexity = session.probe(sites[:mid])
        if session.collapses(perplexity):
            hi, at_hi = mid, perplexity
        else:
            lo = mid
    for site in sites[:hi - 1]:
        session.commit(site, measure=False)
    session.commit(sites[hi - 1], perplexity=at_hi)
    return extra


@attack("replay", grid=False)
def replay(session: AttackSession, *, loaded: LoadedModel = None, sites: Any = None) -> dict[str, Any]:
    """The given flips, in order, until collapse or the budget: another run's flips replayed, e.g. an
    undefended attack's flips on the defended model, so that the pair isolates the defense.

    Options:
        sites: the flips (one bit each), e.g. ``AttackResult.flips`` of the run to replay (required).
    """
    if not sites:
        raise HarnessError("the replay attack needs sites= (the flips of the run to replay)")
    for site in sites[: session.budget]:
        if session.done:
            break
        session.commit(site)
    return {"replayed": len(sites)}
