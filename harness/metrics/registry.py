"""Metrics carry their direction and aggregation, so reports and regression checks never guess.

Every metric a suite records is registered here, in one place, whatever module measures it: the recorder
fills each record's ``higher_is_better`` from this table, so no suite passes a direction by hand, and the
reports (which import no analysis module) read the same directions and aggregations as the run.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry import Registry


@dataclass(frozen=True)
class Metric:
    """A measured quantity.

    Attributes:
        name: the ``metric`` column of stored records.
        higher_is_better: direction used by reports and regression tracking; None for a quantity with no
            better side (a difference, a drift, a layer index), which regression tracking compares two-sided.
        aggregation: how trials combine ("mean", "median", "max", "rate").
        description: one line for reports.
    """

    name: str
    higher_is_better: bool | None
    aggregation: str = "mean"
    description: str = ""


METRICS: Registry[Metric] = Registry("metric")


def metric(name: str, higher_is_better: bool | None, aggregation: str = "mean", description: str = "") -> Metric:
    """Register and return a metric."""
    return METRICS.register(name, Metric(name, higher_is_better, aggregation, description))


def direction(name: str) -> bool | None:
    """``higher_is_better`` of a registered metric; None for an unregistered or a directionless one."""
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
# attribution (suites/test_attribution.py, harness.attribution.measures)
metric("target_logprob", None, description="log p(fixed target | prompt) of one attribution run (nats)")
metric("target_logprob_change", True, description="log p(fixed target | prompt), perturbed minus clean (nats)")
metric("attr_spearman", True, description="Spearman correlation of per-token attributions, clean vs perturbed")
metric("attr_shift", False, description="1 - Spearman of per-token attributions clean vs perturbed; inf: collapse")
metric("attr_rel_change", False, description="sum |perturbed - clean| / sum |clean| of per-token attributions")
metric("attr_topk_jaccard", True, description="Jaccard index of the top-k |attribution| prompt tokens")
metric("attr_sign_flip_share", False, description="share of prompt tokens whose attribution changed sign")
metric("attr_method_spearman", True, description="Spearman of two attribution methods' per-token attributions")
metric("attr_repeat_max_abs_diff", False, description="largest |difference| of an attribution computed twice")
# weight and input attacks (suites/test_attack.py, suites/test_adversarial.py)
metric("flips_to_collapse", True, "median", "bit flips until perplexity x10 or non-finite (inf: not within budget)")
metric("flips_ratio_to_random", True, "median", "flips to collapse of an attack / of the random baseline")
metric("flips_vs_undefended", None, "median", "flips to collapse under a defense (extra: the undefended run's)")
metric("target_logprob_delta", True, description="change of the target continuation's log-probability (nats)")
metric("random_suffix_logprob_delta", None, description="target log-probability change of a random suffix (control)")
metric("greedy_changed", False, "rate", "share of prompts whose greedy continuation changed")
metric("greedy_agreement", True, description="share of greedy continuation tokens equal to the clean ones")
# generations of pruned models (suites/test_selective_pruning.py, harness.pruning.compare)
metric("first_diff_token", True, description="index of the first generated token where the perturbed model differs")
metric("token_edit_distance", False, description="token edit distance between clean and perturbed greedy generations")
metric("identical_generations", True, description="share of prompts whose greedy generation is unchanged")
# scoring and super weights (suites/test_compare_sensitivity.py, suites/test_super_weights.py)
metric("jaccard", True, description="Jaccard index of two top-k weight sets (two empty sets: 1.0)")
metric("spearman", True, description="Spearman's rho of two methods' |scores| on a common sample of weights")
metric("super_weight_score", None, description="a super-weight candidate's score (spike or scorer value)")
metric("known_found_fraction", True, description="share of the super weights on record that the detector found")
metric("worst_layer", None, description="index of the layer whose ablation hurts most")
# fine-tuning (suites/test_finetune.py)
metric("train_loss", False, description="training loss at a logged step")
metric("training_perplexity", None, description="perplexity on the fine-tuning windows (clean_value: before)")
metric("top_super_weight_kept", True, description="1.0 when the strongest super weight keeps its coordinates")
metric("super_weight_drift", None, description="(after - before) / |before| of a super weight's value")
metric("noise_ratio_difference", None, description="noise ppl ratio of plain minus noise-aware fine-tuning")
metric("collapse_rate_difference", None, description="exp-MSB collapse rate of plain minus noise-aware fine-tuning")
# fault detection (suites/test_detection.py, harness.detection)
metric("detection_rate", True, "rate", "share of bit flips a detector flagged (among harmful flips, or all)")
metric("harm_rate", False, "rate", "share of random bit flips that raised perplexity >= 1% or collapsed the model")
metric("false_alarm_rate", False, "rate", "share of checks of the clean model in which a detector fired")
metric("overhead_ratio", False, "mean", "seconds of one detector check / seconds of a plain forward of one window")
metric("recovery_ratio", True, "median", "seconds to reload the model / seconds to find and restore flagged tensors")
