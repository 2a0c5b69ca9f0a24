"""LLM attribution on Captum: which prompt tokens a fixed target continuation depends on, and how a
perturbation of the weights changes that.

    from harness.attribution import attribute, greedy_target
    target = greedy_target(loaded, "Assert statements are a convenient way to", 6)   # on the clean model
    clean = attribute(loaded, target, "feature_ablation", perturbations_per_eval=8)
    with flip_bits(loaded.model, sites):
        moved = attribute(loaded, target, "feature_ablation", perturbations_per_eval=8)
    compare(clean, moved, k=3)

Modules: ``llm`` (targets, the Captum methods, memory), ``measures`` (clean-versus-perturbed
measures), ``prompts`` (the shipped prompt set, ``prompts.json``), ``cells`` (the attribution suite's grid,
perturbations and statistics).
"""

from harness.attribution.llm import (
    ATTRIBUTION_METHODS,
    Target,
    TokenAttribution,
    ablation_batch_bytes,
    attribute,
    baseline_token,
    context_length,
    greedy_target,
    target_logprob,
)

__all__ = [
    "ATTRIBUTION_METHODS", "Target", "TokenAttribution", "ablation_batch_bytes", "attribute", "baseline_token",
    "context_length", "greedy_target", "target_logprob",
]
