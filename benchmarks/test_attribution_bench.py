"""Attribution cost (harness.attribution, Captum) against the plain passes it is built on.

Groups (``<model>`` is the ``--model``), on the first shipped prompt (its first ``TINY_PROMPT_CHARS``
characters on a tiny byte-token model) and its greedy continuation of ``TARGET_TOKENS`` tokens:

- ``attribution-ablation-<model>``: one feature-ablation attribution against one plain no-grad forward
  of the same prompt + target tokens, one ablated prompt per call (``perturbations_per_eval=1``) and
  batched (``BATCH``). Expected: about ``n_prompt + 1`` forwards, so a ratio near ``n_prompt + 1``
  unbatched and below it batched (``extra_info``: ``calls``, ``forwards``, ``n_prompt``,
  ``ratio_per_forward`` = ratio / forwards).
- ``attribution-ig-<model>``: layer integrated gradients on the embeddings with ``IG_STEPS`` steps
  against ``IG_STEPS x n_target`` plain forward+backward passes of one sequence (Captum attributes each
  target token separately): ``ratio_per_step`` is the cost of one step of one target token in plain
  forward+backward passes (``extra_info["seconds_per_step"]`` the same in seconds).

Ratios use the fastest of ``benchmarks.timing.ROUNDS`` runs of each side, timed in the same test. No wall
time is asserted.
"""

from __future__ import annotations

import pytest
import torch

from harness.attribution import attribute, greedy_target
from harness.attribution.cells import TINY_PROMPT_CHARS  # a tiny model's byte tokenizer: keep CI short
from harness.attribution.prompts import select_prompts

from .timing import fastest, measure_ratio, rounds_for

TARGET_TOKENS = 4
BATCH = 8
IG_STEPS = 8




@pytest.fixture
def target(lm):
    text = select_prompts(1)[0].text
    if lm.spec.source == "tiny":
        text = text[:TINY_PROMPT_CHARS]
    return greedy_target(lm, text, TARGET_TOKENS)


def _ids(lm, target) -> torch.Tensor:
    return torch.cat([target.prompt_ids, target.ids]).unsqueeze(0).to(lm.device)  # (1, n_prompt + n_target)


def _plain_forward(model, ids):
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)


def _plain_forward_backward(model, ids):
    """A forward and a backward to the input embeddings (the gradient integrated gradients needs), no weight grads."""
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    with torch.enable_grad():
        model(inputs_embeds=embeds, use_cache=False).logits[0, -1].logsumexp(-1).backward()


@pytest.mark.parametrize("batch", [1, BATCH], ids=["one-per-call", f"batch{BATCH}"])
def test_feature_ablation_vs_forward(benchmark, lm, target, batch):
    ids = _ids(lm, target)
    _plain_forward(lm.model, ids)  # warm-up
    baseline = fastest(lambda: _plain_forward(lm.model, ids), rounds_for(benchmark))
    last = []

    def run():
        last[:] = [attribute(lm, target, "feature_ablation", perturbations_per_eval=batch)]

    ratio = measure_ratio(benchmark, run, baseline, "ratio_to_forward", group=f"attribution-ablation-{lm.name}",
                          name=f"feature-ablation-{batch}")
    result = last[0]
    benchmark.extra_info.update(calls=result.calls, forwards=result.forwards, n_prompt=len(result.input_tokens),
                                tokens=ids.numel(), perturbations_per_eval=batch,
                                ratio_per_forward=ratio / result.forwards)


def test_integrated_gradients_per_step(benchmark, lm, target):
    ids = _ids(lm, target)
    _plain_forward_backward(lm.model, ids)  # warm-up
    one = fastest(lambda: _plain_forward_backward(lm.model, ids), rounds_for(benchmark))
    steps = IG_STEPS * target.ids.numel()
    last = []

    def run():
        last[:] = [attribute(lm, target, "integrated_gradients", n_steps=IG_STEPS)]

    ratio = measure_ratio(benchmark, run, one * steps, "ratio_per_step", group=f"attribution-ig-{lm.name}",
                          name=f"ig-{IG_STEPS}-steps")
    benchmark.extra_info.update(calls=last[0].calls, forwards=last[0].forwards, n_steps=IG_STEPS,
                                n_target=target.ids.numel(), tokens=ids.numel(),
                                seconds_per_step=benchmark.extra_info["seconds"] / steps,
                                ratio_to_forward_backward=ratio * steps)
