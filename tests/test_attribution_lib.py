"""Attribution on Captum (harness.attribution): feature ablation against hand-made ablations, batching
changes nothing, integrated-gradient completeness, every family's embedding path, the model left as it
was, one-line errors, the clean-versus-perturbed measures, the prompt file and the report heatmaps."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from harness.attribution import attribute, baseline_token, greedy_target, target_logprob
from harness.attribution.llm import Target
from harness.attribution.measures import compare, relative_change, sign_flip_share, top_k_jaccard
from harness.attribution.prompts import KINDS, load_prompts, select_prompts
from harness.errors import HarnessError, UnknownNameError
from harness.fingerprint import fingerprint
from harness.models import load_model
from harness.stats import spearman

PROMPT = "x = len(ab)"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def target(llama) -> Target:
    return greedy_target(llama, PROMPT, 2)


def test_greedy_target_is_the_argmax_continuation(llama, target):
    ids = torch.cat([target.prompt_ids, target.ids]).unsqueeze(0)
    with torch.no_grad():
        logits = llama.model(input_ids=ids).logits[0]
    n = target.prompt_ids.numel()
    assert target.ids.tolist() == logits[n - 1:-1].argmax(-1).tolist()
    assert len(target.tokens) == 2


def test_feature_ablation_is_the_log_prob_drop_of_each_ablated_token(llama, target):
    result = attribute(llama, target, "feature_ablation", perturbations_per_eval=1)
    assert result.input_tokens == tuple(PROMPT)  # byte tokenizer, no special tokens added
    assert result.target_logprob == pytest.approx(target_logprob(llama, target), abs=1e-6)
    for i in (0, 4, len(PROMPT) - 1):
        ablated = target.prompt_ids.clone()
        ablated[i] = baseline_token(llama.tokenizer)
        drop = target_logprob(llama, Target(PROMPT, ablated, target.ids, target.tokens))
        assert float(result.seq_attr[i]) == pytest.approx(result.target_logprob - drop, abs=1e-4)
    # the sequence attribution is the sum of the per-target-token rows (log-probabilities add)
    torch.testing.assert_close(result.token_attr.sum(0), result.seq_attr, atol=1e-5, rtol=1e-5)


def test_batched_ablation_matches_one_at_a_time_in_fewer_calls(llama, target):
    one = attribute(llama, target, "feature_ablation", perturbations_per_eval=1)
    batched = attribute(llama, target, "feature_ablation", perturbations_per_eval=4)
    torch.testing.assert_close(batched.token_attr, one.token_attr, atol=1e-5, rtol=1e-5)
    n = len(PROMPT)
    assert one.calls == n + 1 and one.forwards == n + 1
    assert batched.calls == 1 + math.ceil(n / 4) and batched.forwards == n + 1


def test_integrated_gradients_completeness(llama, target):
    """Per target token, the attributions sum to log p(prompt) - log p(all-baseline prompt) (IG's completeness)."""
    result = attribute(llama, target, "integrated_gradients", n_steps=64)
    base = torch.full_like(target.prompt_ids, baseline_token(llama.tokenizer))
    for j in range(target.ids.numel()):
        prefix = Target(PROMPT, target.prompt_ids, target.ids[: j + 1], target.tokens[: j + 1])
        shorter = Target(PROMPT, target.prompt_ids, target.ids[:j], target.tokens[:j])
        gain = target_logprob(llama, prefix) - (target_logprob(llama, shorter) if j else 0.0)
        prefix_b = Target(PROMPT, base, target.ids[: j + 1], target.tokens[: j + 1])
        shorter_b = Target(PROMPT, base, target.ids[:j], target.tokens[:j])
        gain_b = target_logprob(llama, prefix_b) - (target_logprob(llama, shorter_b) if j else 0.0)
        assert float(result.token_attr[j].sum()) == pytest.approx(gain - gain_b, abs=0.02 + 0.02 * abs(gain - gain_b))


@pytest.mark.parametrize("name", ["tiny-gpt-neox", "tiny-opt", "tiny-gemma3"])
def test_every_method_runs_and_leaves_the_model_as_it_was(name):
    loaded = load_model(name)
    before = fingerprint(loaded.model)
    embeddings = loaded.model.get_submodule(loaded.arch.embeddings)
    hooks = len(embeddings._forward_hooks)
    t = greedy_target(loaded, "def f():", 2)
    for method, options in (("feature_ablation", {"perturbations_per_eval": 3}),
                            ("shapley_sampling", {"n_samples": 1, "generator": torch.Generator().manual_seed(0)}),
                            ("integrated_gradients", {"n_steps": 4})):
        result = attribute(loaded, t, method, **options)
        assert result.token_attr.shape == (2, len("def f():")), method
        assert result.finite, method
    assert fingerprint(loaded.model) == before
    assert len(embeddings._forward_hooks) == hooks


def test_attribution_is_deterministic(llama, target):
    a = attribute(llama, target, "feature_ablation", perturbations_per_eval=4)
    b = attribute(llama, target, "feature_ablation", perturbations_per_eval=4)
    assert torch.equal(a.token_attr, b.token_attr)
    s1, s2 = (attribute(llama, target, "shapley_sampling", n_samples=2, generator=torch.Generator().manual_seed(3))
              for _ in range(2))
    assert torch.equal(s1.token_attr, s2.token_attr)


def test_bad_prompt_target_and_options_are_one_line_errors(llama, target):
    with pytest.raises(HarnessError, match="prompt is empty"):
        greedy_target(llama, "", 2)
    with pytest.raises(HarnessError, match="at least one token"):
        greedy_target(llama, PROMPT, 0)
    with pytest.raises(HarnessError, match="longer than the context"):
        greedy_target(llama, "a" * 2047, 2)
    with pytest.raises(HarnessError, match="perturbations_per_eval"):
        attribute(llama, target, "feature_ablation", perturbations_per_eval=0)
    with pytest.raises(HarnessError, match="n_steps"):
        attribute(llama, target, "integrated_gradients", n_steps=0)
    with pytest.raises(UnknownNameError, match="feature_ablation"):
        attribute(llama, target, "feature_ablations")
    other = Target("another prompt", target.prompt_ids, target.ids, target.tokens)
    with pytest.raises(HarnessError, match="another tokenization"):
        attribute(llama, other, "feature_ablation")


def test_top_k_jaccard_and_sign_flips():
    a = torch.tensor([5.0, -4.0, 0.1, 0.2])
    b = torch.tensor([0.3, -4.0, 9.0, 0.2])
    assert top_k_jaccard(a, b, 2) == pytest.approx(1 / 3)  # {0, 1} vs {2, 1}
    assert top_k_jaccard(a, a, 2) == 1.0
    assert sign_flip_share(a, torch.tensor([-5.0, -4.0, 0.0, -1.0])) == pytest.approx(0.5)  # 0 and 3 flip; 0.0 not
    with pytest.raises(HarnessError):
        top_k_jaccard(a, b, 5)


def test_relative_change_sees_what_ranks_do_not():
    a = torch.tensor([1.0, -2.0, 3.0, 4.0])
    nudged = a + torch.tensor([0.1, 0.0, -0.1, 0.0])  # same order, same signs
    assert spearman(a, nudged) == pytest.approx(1.0)
    assert relative_change(a, nudged) == pytest.approx(0.2 / 10)
    assert relative_change(a, torch.tensor([1.0, float("inf"), 0.0, 0.0])) == math.inf
    assert math.isnan(relative_change(torch.zeros(4), a))


def test_compare_counts_a_collapse_as_the_largest_shift(llama, target):
    clean = attribute(llama, target, "feature_ablation", perturbations_per_eval=4)
    same = compare(clean, clean, k=3)
    assert (same.attr_spearman, same.attr_shift, same.attr_rel_change, same.attr_topk_jaccard,
            same.attr_sign_flip_share) == (1.0, 0.0, 0.0, 1.0, 0.0)
    broken = type(clean)(**{**clean.__dict__, "seq_attr": torch.full_like(clean.seq_attr, float("nan")),
                            "target_logprob": float("nan")})
    moved = compare(clean, broken)
    assert moved.attr_shift == math.inf and moved.attr_rel_change == math.inf
    assert moved.target_logprob_change == -math.inf
    with pytest.raises(HarnessError, match="same prompt"):
        compare(clean, type(clean)(**{**clean.__dict__, "input_tokens": ("z",)}))


def test_prompt_file_has_doc_and_code_prompts():
    prompts = load_prompts()
    assert {p.kind for p in prompts} == set(KINDS)
    assert {p.kind for p in select_prompts(2)} == set(KINDS)
    with pytest.raises(HarnessError, match="prompt file has"):
        select_prompts(len(prompts) + 1)


def test_report_heatmaps_from_records(tmp_path):
    from reports.attribution import draw

    def row(condition, method, attr, logprob):
        x = {"condition": condition, "prompt": "p1", "method": method, "input_tokens": ["a", " b", "\n"],
             "target_tokens": [" c"], "seq_attr": attr}
        return {"suite": "attribution", "metric": "target_logprob", "model": "m", "value": logprob, "xtra": x,
                "extra": json.dumps(x)}

    records = pd.DataFrame([row("clean", "feature_ablation", [0.5, -1.0, 0.1], -2.0),
                            row("exp_msb_flip", "feature_ablation", [None, None, None], float("nan")),
                            row("zero_random", "feature_ablation", [0.4, -1.0, 0.2], -2.1),
                            row("clean", "integrated_gradients", [1.0, -0.5, 0.0], -2.0)])
    figures = draw(type("Run", (), {"records": records})(), tmp_path)
    assert [f.section for f in figures] == ["attribution"]
    assert (tmp_path / figures[0].path).stat().st_size > 1000
