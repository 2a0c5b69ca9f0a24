"""Named perturbation recipes: the model, the session's super-weight detection (or sites an analysis chose) and a
seeded generator, turned into a :class:`~harness.faults.Perturbation` and the description its records carry.

``prepare(name, Subject(model, detection=..., sites=..., generator=...), **params)`` builds recipe ``name`` of
``RECIPES``; each recipe is one decorated function below. Two policies live here and nowhere else:

- **No super weight detected** (:func:`super_weight_sites`): the detector's strongest candidate stands in, and
  the description says so (``target: candidate``, ``count: 1``). A claim about super weights is then not
  applicable; that is the analysis's call, the recipe only measures.
- **The random control** (``zero_random``): as many weights as the super weights (or the candidate), drawn
  uniformly over the same matrices, the super weights themselves excluded.

Recipes tagged ``action`` (``zero``, ``noise``, ``exponent_lsb``) act on the caller's ``sites`` (a scorer's
top-ranked weights, or seeded random ones): ``RECIPES.names(tag="action")``. Recipes tagged ``matrices``
(``std_noise_linear``) perturb whole matrices: their ``Prepared.sites`` is empty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.errors import HarnessError
from harness.faults import (
    FaultSite,
    Perturbation,
    SiteNoise,
    ablate,
    add_noise,
    flip_bits,
    layout,
    top_magnitude_sites,
)
from harness.faults import uniform_sites as draw_uniform
from harness.registry import Registry

OTHERS = 7_000  # zero_largest_others: Yu et al.'s 7,000 next-largest weights of the super weight's matrix
NOISE_LEVEL = 1.0  # noise: relative, w + eps * |w|
STD_NOISE_LEVEL = 0.01  # std_noise_linear: w + level * eps * std(W)


@dataclass(frozen=True)
class Subject:
    """What a recipe reads.

    Attributes:
        model: the model to perturb in place (restored bit-exactly when the perturbation exits).
        detection: the session's super-weight detection (``harness.scoring.superweights.Detection``), for the
            recipes that perturb super weights.
        sites: sites the caller chose (the ``action`` recipes perturb them).
        generator: the seeded source of any draw (``zero_random``, ``noise``, ``exp_msb_flip``).

    ``needs_detection``, ``needs_generator`` and ``needs_sites`` return the field a recipe reads, or raise
    ``HarnessError`` naming the recipe when it is missing.
    """

    model: nn.Module
    detection: Any = None
    sites: Sequence[FaultSite] = ()
    generator: torch.Generator | None = None

    def needs_detection(self, recipe: str) -> Any:
        if self.detection is None:
            raise HarnessError(f"perturbation recipe {recipe!r} needs the super-weight detection")
        return self.detection

    def needs_generator(self, recipe: str) -> torch.Generator:
        if self.generator is None:
            raise HarnessError(f"perturbation recipe {recipe!r} needs a seeded generator")
        return self.generator

    def needs_sites(self, recipe: str) -> list[FaultSite]:
        if not self.sites:
            raise HarnessError(f"perturbation recipe {recipe!r} needs sites")
        return list(self.sites)


@dataclass(frozen=True)
class Prepared:
    """A recipe's perturbation (not yet applied: use it as a context manager), its record description and the
    weights it touches (empty for a recipe tagged ``matrices``: it touches whole matrices)."""

    perturbation: Perturbation
    description: dict[str, Any]
    sites: tuple[FaultSite, ...]


Recipe = Callable[..., Prepared]  # (Subject, **params) -> Prepared
RECIPES: Registry[Recipe] = Registry("perturbation recipe")


def prepare(name: str, subject: Subject, **params: Any) -> Prepared:
    """Build recipe ``name`` for ``subject``.

    Raises:
        UnknownNameError: an unknown recipe (the known ones listed).
        HarnessError: the subject lacks what the recipe reads (detection, sites, generator).
    """
    return RECIPES.get(name)(subject, **params)


def super_weight_sites(detection: Any) -> tuple[list[FaultSite], str]:
    """The one policy for "no super weight detected": (sites, target).

    Returns:
        the detected super weights, strongest first, and ``"super_weights"``; where none is detected, the
        detector's strongest candidate and ``"candidate"``.

    Raises:
        HarnessError: nothing detected and no candidate (the detector scanned no block).
    """
    if detection:
        return detection.fault_sites(), "super_weights"
    if detection.candidate is None:
        raise HarnessError(f"no super weight and no candidate: the detector scanned no block of {detection.model}")
    return [detection.candidate.site], "candidate"


def _on_super_weights(kind: str, detection: Any, sites: list[FaultSite], target: str) -> dict[str, Any]:
    return {"kind": kind, "target": target, **detection.describe(), "count": len(sites)}


def _prepared(perturbation: Perturbation, description: dict[str, Any], sites: Sequence[FaultSite]) -> Prepared:
    return Prepared(perturbation, description, tuple(sites))


@RECIPES.register("zero_super_weights", tags=("super_weights",))
def zero_super_weights(subject: Subject) -> Prepared:
    """Every detected super weight set to 0 (the candidate where none is detected)."""
    detection = subject.needs_detection("zero_super_weights")
    sites, target = super_weight_sites(detection)
    return _prepared(ablate(subject.model, sites, "zero"), _on_super_weights("zero", detection, sites, target),
                     sites)


@RECIPES.register("zero_top_super_weight", tags=("super_weights",))
def zero_top_super_weight(subject: Subject) -> Prepared:
    """The strongest super weight alone set to 0 (the candidate where none is detected)."""
    detection = subject.needs_detection("zero_top_super_weight")
    sites, target = super_weight_sites(detection)
    top = sites[:1]
    target = "top_super_weight" if target == "super_weights" else target
    return _prepared(ablate(subject.model, top, "zero"), _on_super_weights("zero", detection, top, target), top)


@RECIPES.register("row_mean_super_weights", tags=("super_weights",))
def row_mean_super_weights(subject: Subject) -> Prepared:
    """Each super weight set to the mean of its row (Sun et al. 2024's zero-versus-mean control)."""
    detection = subject.needs_detection("row_mean_super_weights")
    sites, target = super_weight_sites(detection)
    return _prepared(ablate(subject.model, sites, "row_mean"),
                     _on_super_weights("row_mean", detection, sites, target), sites)


def random_control_sites(model: nn.Module, detection: Any, generator: torch.Generator) -> list[FaultSite]:
    """The random control's sites: as many as :func:`super_weight_sites`, drawn uniformly over their matrices,
    the super weights excluded (draw order; the first ``n`` of a draw of ``n + len(excluded)``)."""
    exclude, _ = super_weight_sites(detection)
    n, taken = len(exclude), set(exclude)
    drawn = draw_uniform(model, sorted({s.param for s in exclude}), n + len(taken), generator=generator)
    return [site for site in (FaultSite(s.param, s.index) for s in drawn) if site not in taken][:n]


@RECIPES.register("zero_random", tags=("super_weights",))
def zero_random(subject: Subject) -> Prepared:
    """The random control: as many seeded random weights of the super weights' matrices set to 0."""
    detection = subject.needs_detection("zero_random")
    sites = random_control_sites(subject.model, detection, subject.needs_generator("zero_random"))
    return _prepared(ablate(subject.model, sites, "zero"),
                     {"kind": "zero", "target": "random", "count": len(sites), "matrices": "super weights'",
                      "detection": detection.id}, sites)


@RECIPES.register("zero_largest_others", tags=("super_weights",))
def zero_largest_others(subject: Subject, count: int = OTHERS) -> Prepared:
    """The ``count`` largest-magnitude weights of the top super weight's matrix other than the super weights, set to 0
    (Yu et al.: they barely matter); fewer when the matrix holds fewer."""
    detection = subject.needs_detection("zero_largest_others")
    exclude, _ = super_weight_sites(detection)
    taken, matrix = set(exclude), exclude[0].param
    count = min(count, subject.model.get_parameter(matrix).numel() - len(taken))
    ranked = top_magnitude_sites(subject.model, [matrix], count + len(taken))
    others = [site for site in (FaultSite(s.param, s.index) for s in ranked) if site not in taken][:count]
    return _prepared(ablate(subject.model, others, "zero"),
                     {"kind": "zero", "target": "largest_others", "count": len(others), "matrices": [matrix],
                      "detection": detection.id}, others)


@RECIPES.register("exp_msb_flip")
def exp_msb_flip(subject: Subject) -> Prepared:
    """The exponent MSB of one seeded random weight of the decoder blocks' linear layers flipped."""
    from harness.models.archmap import select

    g = subject.needs_generator("exp_msb_flip")
    sites = draw_uniform(subject.model, select(subject.model, components="linear"), 1, generator=g, bits="exp_msb")
    return _prepared(flip_bits(subject.model, sites),
                     {"kind": "exp_msb_flip", "site": {"param": sites[0].param, "index": list(sites[0].index)}},
                     sites)


@RECIPES.register("std_noise_linear", tags=("matrices",))
def std_noise_linear(subject: Subject, level: float = STD_NOISE_LEVEL) -> Prepared:
    """Gaussian noise of ``level`` x each matrix's own standard deviation on every linear weight of the decoder
    blocks, seeded."""
    from harness.models.archmap import select

    g = subject.needs_generator("std_noise_linear")
    p = add_noise(subject.model, select(subject.model, components="linear"), level, scale="std", generator=g)
    return _prepared(p, {"kind": "noise", "scale": "std", "level": level, "components": "linear"}, ())


def _action(name: str, perturbation: Perturbation, sites: list[FaultSite]) -> Prepared:
    return _prepared(perturbation, {"action": name, "count": len(sites)}, sites)


@RECIPES.register("zero", tags=("action",))
def zero(subject: Subject) -> Prepared:
    """The subject's sites set to 0."""
    sites = subject.needs_sites("zero")
    return _action("zero", ablate(subject.model, sites, "zero"), sites)


@RECIPES.register("noise", tags=("action",))
def noise(subject: Subject, level: float = NOISE_LEVEL) -> Prepared:
    """Relative Gaussian noise at the subject's sites: w + level * eps * |w|, eps ~ N(0, 1) seeded."""
    sites = subject.needs_sites("noise")
    return _action("noise", SiteNoise(subject.model, sites, level, generator=subject.needs_generator("noise")),
                   sites)


@RECIPES.register("exponent_lsb", tags=("action",))
def exponent_lsb(subject: Subject) -> Prepared:
    """The lowest exponent bit of each of the subject's sites flipped (|w| doubled or halved); the exponent MSB
    would make every weight huge."""
    sites = subject.needs_sites("exponent_lsb")
    model = subject.model
    flips = [FaultSite(s.param, s.index, (layout(model.get_parameter(s.param).dtype).exponent[0],)) for s in sites]
    return _action("exponent_lsb", flip_bits(model, flips), sites)
