"""LoRA through peft: adapters on the decoder's linear layers (the archmap group ``linear``)."""

from __future__ import annotations

import logging
from typing import Any

from harness.errors import HarnessError

log = logging.getLogger(__name__)

BASE_LAYER = "base_layer"  # peft keeps the frozen weight of a wrapped module under this child
PREFIX = "base_model.model."  # what peft puts before every name of the base model


def _peft():
    try:
        import peft
    except ImportError:
        raise HarnessError("LoRA needs the peft package: pip install peft (or use --finetune full)") from None
    return peft


def wrap_lora(model: Any, modules: list[str], rank: int, family: str) -> Any:
    """Add rank-``rank`` LoRA adapters (alpha = 2 rank, no dropout) to ``modules`` of ``model``.

    Only the adapters train; the base weights are frozen. peft injects the adapters into ``model``
    in place, so ``model``'s wrapped modules keep their weight under ``<module>.base_layer.weight``.

    Raises:
        HarnessError: peft missing, or peft cannot put an adapter on this family's layers.
    """
    peft = _peft()
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=modules, bias="none")
    try:
        wrapped = peft.get_peft_model(model, config)
    except (ValueError, TypeError, NotImplementedError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HarnessError(f"LoRA (peft) does not support the {family} family's linear layers ({first}); "
                           "use --finetune full") from None
    return wrapped


def base_weight(wrapped: Any, param: str) -> str:
    """The name in ``wrapped`` (a peft model) of the base model's parameter ``param``.

    peft prefixes every name with ``base_model.model.`` and keeps a wrapped module's frozen weight
    under ``<module>.base_layer.<leaf>``.

    Raises:
        HarnessError: no such parameter.
    """
    module, _, leaf = param.rpartition(".")
    for name in (param, f"{PREFIX}{param}", f"{PREFIX}{module}.{BASE_LAYER}.{leaf}"):
        try:
            wrapped.get_parameter(name)
            return name
        except AttributeError:
            continue
    raise HarnessError(f"{param} is not a parameter of the LoRA-wrapped model")


def merge(wrapped: Any) -> Any:
    """Fold the adapters into the base weights and remove them; returns the plain transformers model."""
    return wrapped.merge_and_unload()
