"""Metrics: the metric registry, perplexity / KL / top-1 agreement, and the lm-eval adapter."""

from harness.metrics.perplexity import EvalResult, Reference, evaluate, make_reference
from harness.metrics.registry import METRICS, Metric, direction, metric

__all__ = ["METRICS", "EvalResult", "Metric", "Reference", "direction", "evaluate", "make_reference", "metric"]
