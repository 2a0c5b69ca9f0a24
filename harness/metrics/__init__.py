"""Metrics: the metric registry, perplexity / KL / top-1 agreement, and the lm-eval adapter.

The registry imports without torch (reports read metric directions); the rest loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from harness.metrics.registry import METRICS, Metric, direction, metric

_LAZY = {"EvalResult": "perplexity", "Reference": "perplexity", "evaluate": "perplexity",
         "make_reference": "perplexity"}

__all__ = ["METRICS", "EvalResult", "Metric", "Reference", "direction", "evaluate", "make_reference", "metric"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"harness.metrics.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'harness.metrics' has no attribute {name!r}")
