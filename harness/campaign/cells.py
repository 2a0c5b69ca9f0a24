"""What the cells of the campaign suites share (:mod:`~harness.campaign.bitflip_cells`,
:mod:`~harness.campaign.noise_cells`, :mod:`~harness.campaign.ablation_cells`): the depth preset lookup and the
check that a model's family has a cell's component."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from harness.errors import HarnessError
from harness.option_values import choice

T = TypeVar("T")


def pick_preset(presets: Mapping[str, T], name: str) -> T:
    """The preset ``name`` (``quick``, ``full``) of a cells module's ``PRESETS``.

    Raises:
        UnknownNameError: another name; the message lists the presets.
    """
    return presets[choice(name, presets, "preset")]


def missing_component(loaded: Any, component: str) -> str | None:
    """Why ``loaded`` (a ``LoadedModel``) has no ``component`` (a canonical component or group) to perturb, as a
    skip reason; None when every layer has it."""
    from harness.models.archmap import select

    try:
        select(loaded.model, components=component)
    except HarnessError as err:
        return f"{loaded.family}: {err}"
    return None


@dataclass(frozen=True)
class ComponentCell:
    """A cell that perturbs ``component`` (a canonical component or group) of the layers in one way
    (``variant``: a noise kind, an ablation mode)."""

    variant: str
    component: str

    @property
    def id(self) -> str:
        return f"{self.variant}-{self.component}"

    def skip_reason(self, loaded: Any) -> str | None:
        """Why the cell does not apply to ``loaded`` (its family lacks the component), else None."""
        return missing_component(loaded, self.component)

    @classmethod
    def grid(cls, variants: Iterable[str], components: Iterable[str]) -> list[Any]:
        """Every cell of variants x components, variant-major."""
        components = tuple(components)
        return [cls(v, c) for v in variants for c in components]
