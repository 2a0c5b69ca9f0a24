"""Cells of the per-layer sensitivity map: each decoder layer's component ablated in turn, one cell per
(mode, component).

For every layer (:func:`harness.faults.ablate_layer`): replace the cell's weights, evaluate, restore; each trial
starts at the ablated block, on its kept clean input (:class:`harness.campaign.Campaign`). Component ``all`` is
the whole block. The grid of each depth preset is :data:`PRESETS`; :meth:`AblationCells.measure` returns a
:class:`LayerMap`. It records nothing: the suite does. The map does not depend on the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.campaign.cells import ComponentCell, SessionSweep
from harness.campaign.engine import Campaign
from harness.faults import ablate_layer
from harness.models.archmap import COMPONENTS, num_layers
from harness.records.row import Row

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel
    from harness.session import Session

MODES = ("zero", "mean")  # mean: each matrix replaced by its own mean (the control that tells components apart)
# Zeroing any factor of a product silences the whole sublayer (value, attn_out and attention alike; mlp_up,
# mlp_down and mlp alike); a zeroed query or key makes the attention uniform instead: one of each.
QUICK_COMPONENTS = ("all", "attention", "mlp_down", "query")


@dataclass(frozen=True)
class AblationPreset:
    """The ablation grid and sizes of one depth preset.

    Attributes:
        modes: ablation modes.
        components: ``all``, groups or canonical components (one a family lacks is skipped).
        windows: the first this many eval windows (None: all).
    """

    modes: tuple[str, ...]
    components: tuple[str, ...]
    windows: int | None


PRESETS = {
    "quick": AblationPreset(modes=MODES[:1], components=QUICK_COMPONENTS, windows=1),
    "full": AblationPreset(modes=MODES, windows=None, components=(
        *QUICK_COMPONENTS, "mlp", *(c for c in COMPONENTS if c not in QUICK_COMPONENTS))),
}


class AblationCell(ComponentCell):
    """One cell: ``component`` of each layer in turn ablated by ``mode``."""

    @property
    def mode(self) -> str:
        return self.variant

    @property
    def perturbation(self) -> dict[str, Any]:
        return {"kind": "ablation", "mode": self.mode, "component": self.component}


def grid(preset: str) -> list[AblationCell]:
    """Every cell of ``preset``: mode x component."""
    return AblationCell.grid(PRESETS, preset, "modes")


@dataclass(frozen=True)
class LayerAblation:
    """One layer's ablation."""

    layer: int
    ratio: float  # perplexity / clean perplexity (inf: non-finite output)
    perplexity: float
    collapsed: bool


@dataclass(frozen=True)
class LayerMap:
    """What one cell measured: one :class:`LayerAblation` per layer, in layer order."""

    cell: AblationCell
    layers: tuple[LayerAblation, ...]
    clean_perplexity: float

    @property
    def ratios(self) -> list[float]:
        return [a.ratio for a in self.layers]

    @property
    def worst(self) -> int:
        """The most damaging layer (a collapse, inf, is the worst; the first of equals)."""
        ratios = self.ratios
        return max(range(len(ratios)), key=lambda i: ratios[i])

    @property
    def mildest(self) -> int:
        """The most benign layer (the first of equals)."""
        ratios = self.ratios
        return min(range(len(ratios)), key=lambda i: ratios[i])

    def rows(self) -> list[Row]:
        """Per layer its ``ppl_ratio`` and ``perplexity`` (against the clean perplexity), then the ``worst_layer``."""
        out = []
        for a in self.layers:
            where = {"layer": a.layer, "component": self.cell.component, "mode": self.cell.mode}
            columns = {"method": self.cell.mode, "collapsed": a.collapsed}
            pert = {"kind": "ablation", **where}
            out += [Row("ppl_ratio", a.ratio, pert, where, self.clean_perplexity, columns),
                    Row("perplexity", a.perplexity, pert, where, self.clean_perplexity, columns)]
        summary = self.summary()
        out.append(Row("worst_layer", self.worst, summary["perturbation"], summary["extra"],
                       columns={"method": summary["method"]}))
        return out

    def summary(self) -> dict[str, Any]:
        """The columns of the map's ``worst_layer`` row and of its claims (method, perturbation, extra)."""
        ratios = self.ratios
        return {"method": self.cell.mode, "perturbation": self.cell.perturbation,
                "extra": {"worst_layer": self.worst, "mildest_layer": self.mildest, "layers": len(ratios),
                          "finite": all(math.isfinite(r) for r in ratios)}}


class AblationCells:
    """The ablation cells of a session's model (:meth:`of`): :meth:`measure` ablates one cell's component of each
    layer in turn.

    Args:
        sweep: the model, the preset's first evaluation windows and their clean baseline (the map uses no seed and
            no trials).
    """

    def __init__(self, sweep: SessionSweep) -> None:
        self.sweep = sweep

    @classmethod
    def of(cls, esa: Session, loaded: LoadedModel) -> AblationCells:
        """``loaded``'s cells in the session ``esa``, on the preset's windows."""
        return cls(SessionSweep.of(esa, loaded, esa.preset(PRESETS).windows))

    def measure(self, cell: AblationCell) -> LayerMap:
        """Ablate ``cell``'s component of each layer in turn (restored after each), evaluate; check
        :meth:`AblationCell.skip_reason` first."""
        s = self.sweep
        model = s.loaded.model
        components = None if cell.component == "all" else cell.component
        campaign = Campaign(model, s.windows, s.clean)  # a trial starts at the ablated block, on its kept clean input
        rows = []
        for layer in range(num_layers(model)):
            t = campaign.trial(ablate_layer(model, layer, components, cell.mode))
            rows.append(LayerAblation(layer, t.ratio, t.result.perplexity, t.collapsed))
        return LayerMap(cell, tuple(rows), s.clean.result.perplexity)
