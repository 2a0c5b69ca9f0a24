"""Metrics: the metric registry, perplexity / KL / top-1 agreement (``reduce``: the one reduction and the
collapse rule), the next-token NLL, and the lm-eval adapter.

The registry imports without torch (reports read metric directions); the rest loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from harness.metrics.registry import METRICS, Metric, direction, metric

_LAZY = {"COLLAPSE_RATIO": "reduce", "EvalResult": "reduce", "Reference": "reduce", "is_collapse": "reduce",
         "evaluate": "perplexity", "make_reference": "perplexity", "next_token_nll": "perplexity"}

__all__ = ["COLLAPSE_RATIO", "METRICS", "EvalResult", "Metric", "Reference", "direction", "evaluate", "is_collapse",
           "make_reference", "metric", "next_token_nll"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"harness.metrics.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'harness.metrics' has no attribute {name!r}")
