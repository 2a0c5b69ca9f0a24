"""Evaluation data: the offline corpus, token windows (in the model's BOS convention) and generation prompts."""

from harness.data.corpus import (
    Corpus,
    bos_token_id,
    generation_prompts,
    load_corpus,
    token_stream,
    token_windows,
    window_metadata,
)

__all__ = ["Corpus", "bos_token_id", "generation_prompts", "load_corpus", "token_stream", "token_windows",
           "window_metadata"]
