"""Published super-weight coordinates, as data keyed by Hugging Face hub id.

Source: Yu et al. 2024, "The Super Weight in Large Language Models" (arXiv:2411.07191), Table 2,
as listed in the authors' code (mengxiayu/LLMSuperWeight, ``SUPER_WEIGHTS_MAP`` in
``outliers/model.py``). Coordinates are ``(layer, row, col)`` of the MLP down projection
``model.layers.<layer>.mlp.down_proj.weight`` of the hub checkpoint (the OLMo entries are the
``-hf`` conversions, which use the same path). A test checks, wherever the model's weights can be
loaded, that the super-weight detector (:mod:`harness.scoring.superweights`) finds these.

``MEASURED_SUPER_WEIGHTS`` holds coordinates measured here (not published), with how they were
found, for the offline zoo models; they are checked the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.faults.sites import FaultSite

SOURCE = "Yu et al. 2024 (arXiv:2411.07191) Table 2; mengxiayu/LLMSuperWeight outliers/model.py"
DOWN_PROJ = "model.layers.{layer}.mlp.down_proj.weight"

# hub id -> ((layer, row, col), ...)
KNOWN_SUPER_WEIGHTS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "huggyllama/llama-7b": ((2, 3968, 7003),),
    "huggyllama/llama-13b": ((2, 2231, 2278), (2, 2231, 6939)),
    "huggyllama/llama-30b": ((3, 5633, 12817), (3, 5633, 17439), (10, 5633, 14386)),
    "meta-llama/Meta-Llama-3-8B": ((1, 788, 2427), (1, 1384, 2427), (1, 4062, 2427)),
    "meta-llama/Meta-Llama-3-8B-Instruct": ((1, 788, 2427), (1, 1384, 2427), (1, 4062, 2427)),
    "mistralai/Mistral-7B-v0.1": ((1, 2070, 7310),),
    "mistralai/Mistral-7B-Instruct-v0.1": ((1, 2070, 7310),),
    "allenai/OLMo-1B-0724-hf": ((1, 1764, 1710), (2, 1764, 8041)),
    "allenai/OLMo-7B-0724-hf": ((1, 269, 7467), (2, 269, 8275), (7, 269, 453), (24, 269, 2300)),
    "microsoft/Phi-3-mini-4k-instruct": ((2, 525, 808), (2, 1693, 808), (2, 1113, 808),
                                         (4, 525, 2723), (4, 1113, 2723), (4, 1693, 2723)),
}

# hub id -> ((layer, row, col), ...): the strongest super weight measured on the offline models
MEASURED_SOURCE = ("measured in this harness: superweights.detect defaults (reference prompt, 50x the typical "
                   "per-token peak, round 0), 2026-12-01; zeroing it alone: ppl x4.96 on the default eval windows")
MEASURED_SUPER_WEIGHTS: dict[str, tuple[tuple[int, int, int], ...]] = {
    # SmolLM2-135M-Instruct (Q4_1 GGUF dequantized): W = 5.876, input spike 2996 at token 0, output 24022
    "HuggingFaceTB/SmolLM2-135M-Instruct": ((11, 507, 1229),),
}


@dataclass(frozen=True)
class KnownSuperWeight:
    """One published (or measured, see ``source``) super weight."""

    hub_id: str
    layer: int
    row: int
    col: int
    source: str = SOURCE

    @property
    def param(self) -> str:
        return DOWN_PROJ.format(layer=self.layer)

    @property
    def site(self) -> FaultSite:
        return FaultSite(self.param, (self.row, self.col))


def hub_id_of(model: Any) -> str | None:
    """The hub id behind a registry name, a hub id or a ``LoadedModel`` (None when there is none)."""
    if not isinstance(model, str):
        spec = getattr(model, "spec", None)
        return getattr(spec, "hub_id", None) or getattr(model, "name", None)
    from harness.models.specs import MODELS

    return MODELS.get(model).hub_id if model in MODELS else model


def known_super_weights(model: Any) -> list[KnownSuperWeight]:
    """Published super weights of ``model`` (a registry name, a hub id — case-insensitive — or a
    ``LoadedModel``), else the ones measured here (``MEASURED_SUPER_WEIGHTS``); empty when neither has it."""
    hub_id = hub_id_of(model)
    if not hub_id:
        return []
    for table, source in ((KNOWN_SUPER_WEIGHTS, SOURCE), (MEASURED_SUPER_WEIGHTS, MEASURED_SOURCE)):
        key = {k.lower(): k for k in table}.get(hub_id.lower())
        if key is not None:
            return [KnownSuperWeight(key, *coords, source=source) for coords in table[key]]
    return []
