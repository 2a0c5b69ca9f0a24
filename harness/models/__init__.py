"""Model zoo, architecture map and loading.

``from harness.models import load_model, select, MODELS`` and so on. The registry (``MODELS``,
``ModelSpec``) imports without torch; everything else is imported on first use, so listing models
stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from harness.models.specs import MODELS, ModelSpec, has_random_weights, offline_models

_LAZY = {
    "LoadedModel": "loading", "load_model": "loading", "resolve_spec": "loading",
    "ARCH_MAPS": "archmap", "COMPONENTS": "archmap", "GROUPS": "archmap", "ArchMap": "archmap",
    "ComponentRef": "archmap", "arch_map": "archmap", "num_layers": "archmap", "parse_layers": "archmap",
    "parse_components": "archmap", "select": "archmap", "mlp_down_modules": "archmap",
    "resolve_device": "device", "resolve_dtype": "device",
    "build_tiny": "tiny", "byte_tokenizer": "tiny",
    "cache_root": "gguf", "ensure_converted": "gguf",
}

__all__ = ["MODELS", "ModelSpec", "has_random_weights", "offline_models", *_LAZY]  # noqa: PLE0604


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"harness.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'harness.models' has no attribute {name!r}")
