"""Perplexity equals a direct transformers computation; KL / top-1 / collapse behave."""

from __future__ import annotations

import math

import pytest
import torch

from harness.data import load_corpus, token_windows
from harness.metrics import evaluate, make_reference
from harness.models import load_model


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt-neox"])
def tiny(request):
    loaded = load_model(request.param)
    windows = token_windows(loaded.tokenizer, load_corpus().eval_docs, 48, 5)
    return loaded, windows


def test_perplexity_equals_transformers_loss(tiny):
    loaded, windows = tiny
    with torch.no_grad():
        losses = [loaded.model(input_ids=w[None], labels=w[None]).loss.double() for w in windows]
    expected = math.exp(float(torch.stack(losses).mean()))
    result = evaluate(loaded.model, windows, batch_size=2)
    assert result.perplexity == pytest.approx(expected, rel=1e-5)
    assert result.n_tokens == 5 * 47 and not result.collapsed


def test_clean_model_against_itself(tiny):
    loaded, windows = tiny
    ref = make_reference(loaded.model, windows)
    result = evaluate(loaded.model, windows, ref)
    assert result.kl == pytest.approx(0.0, abs=1e-6)
    assert result.top1 == 1.0


def test_non_finite_weights_are_a_collapse_not_a_crash(tiny):
    loaded, windows = tiny
    ref = make_reference(loaded.model, windows)
    weight = next(p for n, p in loaded.model.named_parameters() if n.endswith("weight") and p.dim() == 2)
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.fill_(math.inf)
        result = evaluate(loaded.model, windows, ref)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert result.collapsed and result.perplexity == math.inf and result.kl == math.inf
    assert 0.0 <= result.top1 <= 1.0


@pytest.mark.parametrize("level", [1e-3, 1e-1])
def test_kl_and_top1_equal_a_direct_float64_computation(tiny, level):
    """KL(clean || perturbed) and top-1 agreement against torch's kl_div on float64 log-probabilities."""
    loaded, windows = tiny
    model = loaded.model

    def logprobs():
        with torch.no_grad():
            return torch.log_softmax(model(input_ids=windows).logits[:, :-1].double(), dim=-1)

    ref = make_reference(model, windows, batch_size=2)
    clean = logprobs()
    weight = next(p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() == 2)
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(level * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
        result = evaluate(model, windows, ref, batch_size=2)
        perturbed = logprobs()
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    positions = clean.shape[0] * clean.shape[1]
    expected_kl = torch.nn.functional.kl_div(perturbed, clean, log_target=True, reduction="sum") / positions
    assert result.kl == pytest.approx(float(expected_kl), rel=1e-3, abs=1e-7)
    expected_top1 = float((perturbed.argmax(-1) == clean.argmax(-1)).double().mean())
    assert result.top1 == pytest.approx(expected_top1)
    assert result.kl > 0


def test_bos_windows_are_scored_as_transformers_scores_bos_plus_text():
    """With a tokenizer that adds BOS, each window is scored like HF scores ``tokenizer(text)`` with
    ``labels=input_ids``, and predicts the same tokens as the windows without BOS."""
    from tokenizers import processors

    loaded = load_model("tiny-llama")
    tok = loaded.tokenizer
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    docs = load_corpus().eval_docs
    with_bos = token_windows(tok, docs, 48, 3)
    without = token_windows(tok, docs, 48, 3, bos=False)
    losses = []
    with torch.no_grad():
        for window in with_bos:
            ids = tok(tok.decode(window[1:].tolist()), return_tensors="pt")["input_ids"]  # (1, 48), BOS first
            assert ids[0, 0] == 1 and ids.shape == (1, 48)
            losses.append(loaded.model(input_ids=ids, labels=ids).loss.double())
    result, plain = evaluate(loaded.model, with_bos), evaluate(loaded.model, without)
    assert result.perplexity == pytest.approx(math.exp(float(torch.stack(losses).mean())), rel=1e-5)
    assert result.n_tokens == plain.n_tokens == 3 * 47
    assert result.perplexity != plain.perplexity  # the BOS is seen: the first predicted token's context differs


def test_reference_is_copied_to_a_device_once(tiny):
    """An evaluation on another device uses one kept copy of the reference (not a host copy per trial)."""
    model, windows = tiny[0].model, tiny[1]
    ref = make_reference(model, windows)
    assert ref.on(torch.device("cpu")) is ref
    meta = ref.on(torch.device("meta"))
    assert meta is not ref and meta.logprobs.is_meta and meta.top1.is_meta and meta.stride == ref.stride
    assert ref.on(torch.device("meta")) is meta
    assert evaluate(model, windows, ref) == evaluate(model, windows, ref.on(torch.device("cpu")))
