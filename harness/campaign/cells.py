"""What the cells of the campaign suites share (:mod:`~harness.campaign.noise_cells`,
:mod:`~harness.campaign.ablation_cells`): a cell of one component, and the check that a model's family has it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel


def missing_component(loaded: LoadedModel, component: str) -> str | None:
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

    def skip_reason(self, loaded: LoadedModel) -> str | None:
        """Why the cell does not apply to ``loaded`` (its family lacks the component), else None."""
        return missing_component(loaded, self.component)

    @classmethod
    def grid(cls, variants: Iterable[str], components: Iterable[str]) -> list[Any]:
        """Every cell of variants x components, variant-major."""
        components = tuple(components)
        return [cls(v, c) for v in variants for c in components]
