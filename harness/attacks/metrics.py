"""The metrics the attack and adversarial suites record, with their direction (for the model)."""

from __future__ import annotations

from harness.metrics import METRICS, metric

_METRICS = (
    ("flips_to_collapse", True, "median", "bit flips until perplexity x10 or non-finite (inf: not within budget)"),
    ("flips_ratio_to_random", True, "median", "flips to collapse of an attack / of the random baseline"),
    ("target_logprob_delta", True, "mean", "change of the target continuation's log-probability (nats)"),
    ("greedy_changed", False, "rate", "share of prompts whose greedy continuation changed"),
    ("greedy_agreement", True, "mean", "share of greedy continuation tokens equal to the clean ones"),
)


def register_metrics() -> None:
    """Register the metrics once (idempotent)."""
    for name, higher, aggregation, description in _METRICS:
        if name not in METRICS:
            metric(name, higher, aggregation, description)
