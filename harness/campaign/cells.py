"""What the cells of the campaign suites share (:mod:`~harness.campaign.noise_cells`,
:mod:`~harness.campaign.ablation_cells`): a cell of one component, the check that a model's family has it, and the
session's model with its windows and clean baseline (:class:`SessionSweep`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError

if TYPE_CHECKING:
    import torch

    from harness.campaign.trial import Clean
    from harness.models.loading import LoadedModel
    from harness.session import Session


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
    def grid(cls, presets: Mapping[str, Any], preset: str, variants: str) -> list[Any]:
        """Every cell of the depth preset ``preset`` of ``presets``: its field ``variants`` x its ``components``,
        variant-major.

        Raises:
            UnknownNameError: an unknown preset (the known ones listed).
        """
        from harness.option_values import pick_preset

        p = pick_preset(presets, preset)
        return [cls(v, c) for v in getattr(p, variants) for c in p.components]


@dataclass(frozen=True)
class SessionSweep:
    """What a campaign cell's measuring reads from the session: the model, the preset's first evaluation windows
    and their clean baseline (the session's, shared by every suite), the seed and the trials per cell.

    Attributes:
        loaded: the session's model (perturbed in place, restored after each trial).
        windows: the evaluation windows the cells measure on (the preset's first ones).
        clean: the session's clean baseline on ``windows``.
        seed: the campaign seed.
        trials: trials per cell (the session's trial rule on the preset's count).
    """

    loaded: LoadedModel
    windows: torch.Tensor
    clean: Clean
    seed: int
    trials: int

    @classmethod
    def of(cls, esa: Session, loaded: LoadedModel, windows: int | None, trials: int = 1) -> SessionSweep:
        """``loaded`` in the session ``esa``: its first ``windows`` evaluation windows (None: all), their clean
        baseline, ``--seed`` and ``esa.trials`` on ``trials`` (the preset's count)."""
        evaluation = esa.windows(loaded, "eval")[:windows]
        return cls(loaded, evaluation, esa.clean(loaded.name, loaded.model, evaluation), esa.options.seed,
                   esa.trials(loaded.name, trials))
