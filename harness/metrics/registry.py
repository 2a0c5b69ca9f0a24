"""Metrics carry their direction and aggregation, so reports and regression checks never guess."""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry import Registry


@dataclass(frozen=True)
class Metric:
    """A measured quantity.

    Attributes:
        name: the ``metric`` column of stored records.
        higher_is_better: direction used by reports and regression tracking.
        aggregation: how trials combine ("mean", "median", "max", "rate").
        description: one line for reports.
    """

    name: str
    higher_is_better: bool
    aggregation: str = "mean"
    description: str = ""


METRICS: Registry[Metric] = Registry("metric")


def metric(name: str, higher_is_better: bool, aggregation: str = "mean", description: str = "") -> Metric:
    """Register and return a metric."""
    return METRICS.register(name, Metric(name, higher_is_better, aggregation, description))


def direction(name: str) -> bool | None:
    """``higher_is_better`` of a registered metric, or None for an unregistered one."""
    return METRICS.get(name).higher_is_better if name in METRICS else None


metric("perplexity", False, description="token perplexity over fixed windows (exp of mean NLL)")
metric("nll", False, description="mean negative log-likelihood per predicted token (nats)")
metric("ppl_ratio", False, description="perplexity divided by the clean model's perplexity")
metric("kl", False, description="mean KL(clean || perturbed) of next-token distributions (nats)")
metric("top1", True, description="share of positions where the top-1 token equals the clean model's")
metric("collapse_rate", False, "rate", "share of trials whose output went non-finite or ppl x10")
metric("seconds", False, description="wall time of the measured work")
metric("token_perplexity", False, description="our token perplexity of an lm-eval rolling task's documents (no BOS)")
metric("word_perplexity", False, description="lm-eval: exp(-log-likelihood / words) of a rolling task")
metric("byte_perplexity", False, description="lm-eval: exp(-log-likelihood / UTF-8 bytes) of a rolling task")
metric("bits_per_byte", False, description="lm-eval: -log2-likelihood per UTF-8 byte of a rolling task")
metric("acc", True, description="lm-eval: share of multiple-choice items whose true choice scores highest")
metric("acc_norm", True, description="lm-eval: acc with each choice's log-likelihood divided by its bytes")
metric("lmeval_perplexity", False, description="lm-eval's per-target perplexity (e.g. lambada), not token ppl")
