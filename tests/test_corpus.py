"""The offline corpus is deterministic, and bad corpus input is a one-line error."""

from __future__ import annotations

import json

import pytest
import torch

from harness.data import generation_prompts, load_corpus, token_windows
from harness.data.corpus import bos_token_id, window_metadata
from harness.errors import HarnessError


class _CharTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 256 for c in text]}


def test_default_corpus_is_deterministic_and_split():
    a, b = load_corpus(), load_corpus()
    assert a == b
    assert len(a.eval_docs) > 40 and len(a.calib_docs) > 5
    assert not set(a.eval_docs) & set(a.calib_docs)
    assert generation_prompts(a, 5) == generation_prompts(b, 5)
    assert all(len(p.split()) == 10 for p in generation_prompts(a, 8))


def test_windows_are_the_stream_prefix():
    corpus = load_corpus()
    w = token_windows(_CharTokenizer(), corpus.eval_docs, 64, 3)
    assert w.shape == (3, 64)
    text = "\n\n".join(corpus.eval_docs)
    assert w.reshape(-1).tolist() == [ord(c) % 256 for c in text[:192]]


def _bos_byte_tokenizer():
    """The tiny models' byte tokenizer, made to add ``<s>`` (id 1) in front of a text, as Gemma's adds its BOS."""
    from tokenizers import processors

    from harness.models.tiny import byte_tokenizer

    tok = byte_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def test_bos_is_what_the_tokenizer_adds_not_what_it_names():
    from harness.models.tiny import byte_tokenizer

    plain = byte_tokenizer()
    assert plain.bos_token_id == 1 and bos_token_id(plain) is None  # names <s>, never adds it
    assert bos_token_id(_bos_byte_tokenizer()) == 1
    assert bos_token_id(_CharTokenizer()) is None


@pytest.mark.parametrize(("name", "bos"), [("gemma3-270m", 2), ("smollm2-135m", None)])
def test_bos_of_the_offline_pretrained_tokenizers(name, bos):
    """Gemma's tokenizer adds <bos> (id 2, though its ``add_bos_token`` attribute reads False); SmolLM2's adds none."""
    from transformers import AutoTokenizer

    from harness.models import MODELS
    from harness.models.gguf import is_converted, model_dir

    spec = MODELS.get(name)
    if not is_converted(spec):
        pytest.skip(f"{name} is not converted in the model cache yet (loading it once converts it)")
    assert bos_token_id(AutoTokenizer.from_pretrained(model_dir(spec))) == bos


def test_bos_windows_predict_the_same_tokens():
    """With BOS the window is [BOS] + (length-1) stream tokens: only the context-only first position differs."""
    docs = load_corpus().eval_docs
    tok = _bos_byte_tokenizer()
    with_bos = token_windows(tok, docs, 32, 4)
    without = token_windows(tok, docs, 32, 4, bos=False)
    assert with_bos.shape == without.shape == (4, 32)
    assert with_bos[:, 0].tolist() == [1] * 4 and 1 not in without[:, 0].tolist()
    assert torch.equal(with_bos[:, 1:], without[:, 1:])
    assert window_metadata(tok, with_bos) == {"windows": 4, "window": 32, "predicted_tokens": 124, "bos": True,
                                              "bos_token_id": 1}
    assert window_metadata(tok, without)["bos"] is False


def test_a_bos_window_is_what_the_tokenizer_makes_of_its_text():
    """The window equals the tokenizer's own encoding (special tokens on) of the text it predicts."""
    tok = _bos_byte_tokenizer()
    windows = token_windows(tok, load_corpus().eval_docs, 24, 3)
    for window in windows:
        text = tok.decode(window[1:].tolist())
        assert tok(text)["input_ids"] == window.tolist()


def test_bos_option():
    docs = load_corpus().eval_docs
    assert torch.equal(token_windows(_CharTokenizer(), docs, 16, 2, bos=None),
                       token_windows(_CharTokenizer(), docs, 16, 2, bos=False))
    with pytest.raises(HarnessError, match="adds no BOS token"):
        token_windows(_CharTokenizer(), docs, 16, 2, bos=True)


def test_too_many_tokens_is_a_clear_error():
    with pytest.raises(HarnessError, match=r"asked for, but .* has only"):
        token_windows(_CharTokenizer(), ("short text",), 8, 4)


def test_local_files(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("\n\n".join(f"paragraph number {i} " * 5 for i in range(20)))
    assert len(load_corpus(txt).eval_docs) + len(load_corpus(txt).calib_docs) == 20
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(10)))
    assert load_corpus(jl).name == "c.jsonl"
    (tmp_path / "bad.jsonl").write_text('{"body": 1}\n')
    with pytest.raises(HarnessError, match=r"bad.jsonl:1: expected a JSON object"):
        load_corpus(tmp_path / "bad.jsonl")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(HarnessError, match="is empty"):
        load_corpus(tmp_path / "empty.txt")
    with pytest.raises(HarnessError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt")


def test_finetune_training_windows_follow_the_models_bos_convention():
    """Fine-tuning trains on windows cut as the evaluation's are: BOS first where the tokenizer adds one
    (gemma3-270m trained on raw stream windows saw inputs it never sees in evaluation)."""
    from harness.finetune import FinetuneConfig, training_windows

    tok, corpus = _bos_byte_tokenizer(), load_corpus()
    windows = training_windows(tok, corpus, FinetuneConfig(tokens=4 * 32, window=32))
    assert windows[:, 0].tolist() == [1] * 4
    assert torch.equal(windows, token_windows(tok, corpus.calib_docs, 32, 4))
