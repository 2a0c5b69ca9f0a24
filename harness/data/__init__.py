"""Evaluation data: the offline corpus, token windows and generation prompts."""

from harness.data.corpus import (
    Corpus,
    generation_prompts,
    load_corpus,
    token_stream,
    token_windows,
)

__all__ = ["Corpus", "generation_prompts", "load_corpus", "token_stream", "token_windows"]
