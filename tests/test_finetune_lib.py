"""harness.finetune on the tiny random models: training lowers the loss, saving reloads exactly, bad input
is one line."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness.data import load_corpus
from harness.data.corpus import token_stream
from harness.errors import HarnessError
from harness.finetune import FinetuneConfig, ensure_finetuned, finetune, training_windows
from harness.finetune.hardening import WeightClip
from harness.finetune.lora import wrap_lora
from harness.finetune.options import FinetuneOptions, config_from_options, finetune_source
from harness.finetune.run import ADAPTER_DIR, FINETUNE_FILE, linear_weights
from harness.finetune.train import lr_factor
from harness.metrics import evaluate
from harness.models import load_model

WINDOW = 64


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


def _config(method: str = "full", **changes) -> FinetuneConfig:
    fields = dict(method=method, tokens=16 * WINDOW, window=WINDOW, lr=3e-3 if method == "full" else 1e-2,
                  schedule="constant", batch=2)
    return FinetuneConfig(**{**fields, **changes})


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt-neox"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_finetune_lowers_training_loss(model, method, corpus):
    loaded = load_model(model)
    config = _config(method)
    windows = training_windows(loaded.tokenizer, corpus, config)
    before = evaluate(loaded.model, windows).nll
    result = finetune(loaded, windows, config)
    after = evaluate(loaded.model, windows).nll
    assert len(result.points) == config.steps == 8
    assert after < before - 0.05, f"{method} fine-tuning of {model}: training loss {before:.4f} -> {after:.4f}"
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())


def test_training_is_seeded(corpus):
    runs = []
    for _ in range(2):
        loaded = load_model("tiny-llama")
        config = _config("full", noise=0.1)
        finetune(loaded, training_windows(loaded.tokenizer, corpus, config), config)
        runs.append({k: v.clone() for k, v in loaded.model.state_dict().items()})
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_training_uses_calibration_documents_only(corpus):
    loaded = load_model("tiny-llama")
    config = _config()
    windows = training_windows(loaded.tokenizer, corpus, config)
    calib = token_stream(loaded.tokenizer, corpus.calib_docs)
    evals = token_stream(loaded.tokenizer, corpus.eval_docs)
    assert torch.equal(windows.flatten(), calib[: windows.numel()])
    assert not torch.equal(windows.flatten(), evals[: windows.numel()])


def test_saved_model_reloads_with_the_same_perplexity(tmp_path, corpus):
    from transformers import AutoModelForCausalLM

    done = ensure_finetuned("tiny-llama", _config("lora"), results_dir=tmp_path)
    facts = json.loads((done.path / FINETUNE_FILE).read_text())
    assert facts["documents"] == "calibration" and len(facts["train"]["points"]) == 8
    assert (done.path / "model.safetensors").is_file()
    assert (done.path / ADAPTER_DIR / "adapter_model.safetensors").is_file()
    assert not list(done.path.rglob("*.bin"))

    by_zoo = load_model(done.path)
    windows = training_windows(by_zoo.tokenizer, corpus, _config()).flip(0)[:4]
    ppl = evaluate(by_zoo.model, windows).perplexity
    by_hf = AutoModelForCausalLM.from_pretrained(done.path)
    assert evaluate(by_hf, windows).perplexity == ppl
    base = load_model("tiny-llama")
    assert evaluate(base.model, windows).perplexity != ppl

    from peft import PeftModel

    merged = PeftModel.from_pretrained(base.model, done.path / ADAPTER_DIR).merge_and_unload()
    assert math.isclose(evaluate(merged, windows).perplexity, ppl, rel_tol=1e-5)


def test_cached_by_settings(tmp_path):
    first = ensure_finetuned("tiny-gpt-neox", _config(tokens=4 * WINDOW), results_dir=tmp_path)
    again = ensure_finetuned("tiny-gpt-neox", _config(tokens=4 * WINDOW), results_dir=tmp_path)
    other = ensure_finetuned("tiny-gpt-neox", _config(tokens=4 * WINDOW, seed=1), results_dir=tmp_path)
    assert not first.reused and again.reused and again.path == first.path
    assert again.log.losses == first.log.losses
    assert other.path != first.path


def test_finetune_option_loads_the_finetuned_model(tmp_path):
    options = SimpleNamespace(finetune=FinetuneOptions(method="full", tokens=4 * WINDOW), preset="quick", seed=0,
                              window=WINDOW, corpus=None, results_dir=tmp_path, device="cpu")
    source = finetune_source("tiny-llama", options)
    assert source != "tiny-llama" and (tmp_path / "finetuned") in Path(source).parents
    assert load_model(source).family == "llama"
    options.finetune = FinetuneOptions()
    assert finetune_source("tiny-llama", options) == "tiny-llama"


def test_weight_clip_keeps_each_matrix_in_range(corpus):
    loaded = load_model("tiny-llama")
    names = linear_weights(loaded.model)
    limits = {n: float(loaded.model.get_parameter(n).abs().max()) * 0.5 for n in names}
    config = _config("full", clip=0.5)
    result = finetune(loaded, training_windows(loaded.tokenizer, corpus, config), config)
    assert result.points[0]["clipped"] >= 0
    for n in names:
        assert float(loaded.model.get_parameter(n).abs().max()) <= limits[n]
    assert WeightClip(loaded.model, names, 1.0)() == 0


def test_lr_schedules():
    assert [lr_factor("constant", s, 4, 0) for s in range(4)] == [1.0] * 4
    assert [lr_factor("linear", s, 4, 0) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    cosine = [lr_factor("cosine", s, 4, 0) for s in range(4)]
    assert cosine[0] == 1.0 and all(a > b for a, b in itertools.pairwise(cosine))
    assert lr_factor("cosine", 0, 10, 2) < lr_factor("cosine", 1, 10, 2) < 1.0  # warm-up


# -- bad input: one line that says what is allowed ------------------------------------------------


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_zero_token_budget():
    with pytest.raises(HarnessError) as err:
        FinetuneConfig(tokens=0, window=WINDOW)
    assert "at least one window" in _one_line(err)


def test_corpus_too_small_for_the_budget(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("A short calibration text.\n\nAnd one more document.\n")
    loaded = load_model("tiny-llama")
    config = _config(corpus=str(small))
    with pytest.raises(HarnessError) as err:
        training_windows(loaded.tokenizer, load_corpus(small), config)
    assert "allowed: at most" in _one_line(err)


def test_lora_on_layers_peft_does_not_support():
    loaded = load_model("tiny-llama")
    with pytest.raises(HarnessError) as err:
        wrap_lora(loaded.model, ["model.norm"], 4, loaded.family)
    assert "use --finetune full" in _one_line(err)


def test_clip_with_lora_and_bad_settings():
    with pytest.raises(HarnessError, match="needs --finetune full"):
        FinetuneConfig(method="lora", clip=1.0)
    for bad in (dict(method="qlora"), dict(schedule="step"), dict(lr=0.0), dict(noise=1.5), dict(clip=-1.0)):
        with pytest.raises(HarnessError) as err:
            FinetuneConfig(**bad)
        assert "allowed" in _one_line(err) or "must be" in _one_line(err)


def test_unwritable_results_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(HarnessError) as err:
        ensure_finetuned("tiny-llama", _config(), results_dir=blocker)
    assert "writable results directory" in _one_line(err)


def test_finetune_none_has_no_config():
    options = SimpleNamespace(finetune=FinetuneOptions(), preset="quick", seed=0, window=WINDOW, corpus=None)
    with pytest.raises(HarnessError, match="--finetune lora or --finetune full"):
        config_from_options(options)
