"""The offline corpus is deterministic, and bad corpus input is a one-line error."""

from __future__ import annotations

import json

import pytest

from harness.data import generation_prompts, load_corpus, token_windows
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
